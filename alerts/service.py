"""The alerts service: anomaly events in over MQTT, alert transitions out to every channel.

One thread owns the :class:`~alerts.engine.AlertEngine` (MQTT callbacks only enqueue), so events, ops
commands and the once-a-second clock tick never race. The engine's state is saved to a JSON file after
every change, so a restart keeps open alerts, acknowledgements and silences; the MQTT session is
persistent (clean start off), so events published while the service restarts are delivered afterwards.
An event that does not parse goes to a dead-letter file with the reason and never stops the service.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerts.commands import request_topic
from alerts.engine import AlertEngine, AlertError, EngineState
from alerts.model import Notification
from alerts.notifiers.base import Dispatcher, Notifier
from smartmine.config import Settings
from smartmine.errors import UsageError
from smartmine.mqtt import make_client
from smartmine.wire import WireError, parse_event, parse_topic, subscription

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600  # the broker keeps our queued events this long while the service is down
TICK_S = 1.0

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def state_file(settings: Settings) -> Path:
    return settings.alerts.state_file or settings.data_dir / "alerts" / "state.json"


def load_state(path: Path) -> EngineState | None:
    if not path.exists():
        return None
    try:
        return EngineState.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise UsageError(f"{path}: the alerts state file is damaged ({exc}); move it away to start afresh") from None


def save_state(path: Path, state: EngineState) -> None:
    """Write atomically: a crash mid-write leaves the previous state, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(state.model_dump_json(indent=1).encode())
    os.replace(tmp, path)


@dataclass
class ServiceSummary:
    events: int = 0
    bad_events: int = 0
    commands: int = 0
    notifications: dict[str, int] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_alerts: int = 0


class AlertService:
    def __init__(self, settings: Settings, *, notifiers: Callable[[mqtt.Client], list[Notifier]] | None = None,
                 clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.state_path = state_file(settings)
        cfg = settings.alerts
        self.engine = AlertEngine(clear_hold_s=cfg.clear_hold_s, cooldown_s=cfg.cooldown_s,
                                  escalate_after_s=cfg.escalate_after_s,
                                  escalate_min_severity=cfg.escalate_min_severity, state=load_state(self.state_path))
        self.deadletter_path = settings.data_dir / "alerts" / "deadletter.jsonl"
        self.summary = ServiceSummary()
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.client = make_client(settings.mqtt, cfg.client_id, ca_file=settings.mqtt_ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self._inbox.put(msg)
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        # "connected" means subscribed: an event published before the SUBACK could otherwise be missed.
        self.client.on_subscribe = lambda *_a: self.connected.set()
        if notifiers is None:
            from alerts.channels import build_notifiers

            notifiers = lambda client: build_notifiers(settings, client)  # noqa: E731
        self.dispatcher = Dispatcher(notifiers(self.client), retry_max=cfg.retry_max,
                                     retry_backoff_s=cfg.retry_backoff_s)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if rc.is_failure:
            log.error("MQTT broker refused the connection: %s", rc)
            return
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            # An alert is a small message that should leave now: without this, Nagle's algorithm holds the
            # state publish back until the broker acknowledges our previous segment (~40 ms of delayed ACK).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        prefix = self.settings.topic_prefix
        client.subscribe([(subscription("event", prefix), 1), (request_topic(prefix), 1)])
        log.info("alerts: listening on %s", subscription("event", prefix))

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None, duration_s: float | None = None) -> ServiceSummary:
        stop = stop or threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(self.settings.mqtt.host, self.settings.mqtt.port, keepalive=30,
                                clean_start=False, properties=props)
        except OSError as exc:
            self.dispatcher.close(0)
            raise UsageError(f"cannot reach the MQTT broker at {self.settings.mqtt.masked()}: {exc}") from None
        self.client.loop_start()
        deadline = time.monotonic() + duration_s if duration_s is not None else None
        next_tick = time.monotonic()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    msg: mqtt.MQTTMessage | None = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    self._handle(msg)
                if time.monotonic() >= next_tick:
                    self._apply(self.engine.tick(self.clock()))
                    next_tick = time.monotonic() + TICK_S
        finally:
            self.client.loop_stop()
            self.dispatcher.close()
            self.client.disconnect()
            save_state(self.state_path, self.engine.state())
        self.summary.open_alerts = len(self.engine.open_alerts())
        self.summary.channels = {name: vars(s).copy() for name, s in self.dispatcher.stats.items()}
        return self.summary

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == request_topic(self.settings.topic_prefix):
            self._command(msg)
            return
        self.summary.events += 1
        try:
            where = parse_topic(msg.topic, self.settings.topic_prefix)
            event = parse_event(bytes(msg.payload))
            if (event.site, event.area, event.equipment) != (where.site, where.area, where.equipment):
                raise WireError(f"event for {event.site}/{event.area}/{event.equipment} published on another "
                                "equipment's topic")
        except WireError as exc:
            self._dead_letter(msg, str(exc))
            return
        self._apply(self.engine.on_event(event, self.clock()))

    def _apply(self, notifications: list[Notification]) -> None:
        if not notifications:
            return
        for n in notifications:
            self.summary.notifications[n.transition] = self.summary.notifications.get(n.transition, 0) + 1
            log.info("alert %s %s: %s", n.alert.id, n.transition, n.subject())
        self.dispatcher.submit(notifications)
        save_state(self.state_path, self.engine.state())

    def _dead_letter(self, msg: mqtt.MQTTMessage, reason: str) -> None:
        self.summary.bad_events += 1
        log.warning("bad event on %s: %s", msg.topic, reason)
        self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)
        with self.deadletter_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"at": self.clock().isoformat(), "topic": msg.topic, "reason": reason,
                                "payload": msg.payload.decode("utf-8", "replace")[:4000]}, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------ ops commands
    def _command(self, msg: mqtt.MQTTMessage) -> None:
        self.summary.commands += 1
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        correlation = getattr(msg.properties, "CorrelationData", None)
        try:
            request = json.loads(msg.payload)
            reply: dict[str, Any] = {"ok": True, "result": self._execute(request)}
        except (AlertError, ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if not response_topic:
            log.warning("ops command without a response topic ignored: %r", msg.payload[:200])
            return
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = correlation
        self.client.publish(response_topic, json.dumps(reply, ensure_ascii=False).encode(), qos=1, properties=props)

    def _execute(self, request: dict[str, Any]) -> Any:
        cmd, args, by = request["cmd"], request.get("args", {}), str(request.get("by", "unknown"))
        now = self.clock()
        if cmd == "list":
            alerts = self.engine.alerts.values() if args.get("all") else self.engine.open_alerts()
            return [a.model_dump(mode="json") for a in alerts]
        if cmd == "ack":
            notifications = self.engine.acknowledge(str(args["id"]), by, now)
            self._apply(notifications)
            return notifications[0].alert.model_dump(mode="json")
        if cmd == "silence":
            silence = self.engine.add_silence(site=args.get("site"), equipment=args.get("equipment"),
                                              rule=args.get("rule") or "*", duration_s=float(args["duration_s"]),
                                              reason=str(args["reason"]), by=by, now=now)
            save_state(self.state_path, self.engine.state())
            return silence.model_dump(mode="json")
        if cmd == "unsilence":
            self._apply(self.engine.remove_silence(str(args["id"]), now))
            save_state(self.state_path, self.engine.state())
            return {"removed": args["id"]}
        if cmd == "silences":
            return [s.model_dump(mode="json") for s in self.engine.silences.values()]
        raise ValueError(f"unknown command {cmd!r}")
