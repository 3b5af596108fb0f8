"""The alerts service: anomaly events in over MQTT, alert transitions out to every channel.

One thread owns the :class:`~alerts.engine.AlertEngine` (MQTT callbacks only enqueue), so events, ops
commands and the once-a-second clock tick never race. The engine's state is saved to a JSON file after
every change, so a restart keeps open alerts, acknowledgements and silences; the MQTT session is
persistent (clean start off), so events published while the service restarts are delivered afterwards.
Every message is acknowledged to the broker (manual QoS 1 ack) only once its effect is in the fsync'd state
file: a SIGTERM or a crash leaves the rest unacknowledged and the broker delivers them again. A damaged state
file is set aside (``state.json.damaged-<time>``) with an ERROR, and the open alerts are rebuilt from the
retained alert topics. A lost MQTT session (CONNACK without session present on a resume) is a WARNING.
An event or command that does not parse goes to a dead letter or a refusal with the reason, never a crash.
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
from paho.mqtt.subscribeoptions import SubscribeOptions

from alerts.commands import (
    AckRequest,
    Command,
    ListRequest,
    SilenceRequest,
    UnsilenceRequest,
    parse_request,
    reply_space,
    reply_topic_ok,
    request_topic,
)
from alerts.engine import AlertEngine, EngineState
from alerts.model import Alert, Notification
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


class DamagedState(ValueError):
    """The state file does not parse; ``moved_to`` is where the damaged copy was kept."""

    def __init__(self, path: Path, moved_to: Path, reason: str) -> None:
        super().__init__(f"{path}: the alerts state file is damaged ({reason}); kept as {moved_to}")
        self.moved_to = moved_to


def load_state(path: Path) -> EngineState | None:
    """The saved state, None without a file; a damaged file is moved aside and :class:`DamagedState` raised."""
    if not path.exists():
        return None
    try:
        return EngineState.model_validate_json(path.read_bytes())
    except ValueError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        moved = path.with_name(f"{path.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
        os.replace(path, moved)
        raise DamagedState(path, moved, reason) from None


def save_state(path: Path, state: EngineState) -> None:
    """Write durably: tmp file, fsync, rename, fsync the folder; a power cut leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(state.model_dump_json(indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself is only durable once the folder is
    finally:
        os.close(folder)


@dataclass
class ServiceSummary:
    events: int = 0
    bad_events: int = 0
    commands: int = 0
    notifications: dict[str, int] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_alerts: int = 0
    sessions_lost: int = 0
    damaged_state: str | None = None
    rebuilt_alerts: int = 0
    bad_commands: int = 0


class AlertService:
    def __init__(self, settings: Settings, *, notifiers: Callable[[mqtt.Client], list[Notifier]] | None = None,
                 clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.state_path = state_file(settings)
        cfg = settings.alerts
        self.summary = ServiceSummary()
        try:
            state = load_state(self.state_path)
        except DamagedState as exc:
            log.error("%s; starting without it and rebuilding the open alerts from the retained alert topics "
                      "(acknowledgements, silences and resolved alerts of the damaged file are not recovered)", exc)
            state, self.summary.damaged_state = None, str(exc.moved_to)
        # Whether a new session on connect means loss: we have run before (a state file) or connected once.
        self._had_session = state is not None
        self._rebuild = self.summary.damaged_state is not None
        self.engine = AlertEngine(clear_hold_s=cfg.clear_hold_s, cooldown_s=cfg.cooldown_s,
                                  escalate_after_s=cfg.escalate_after_s,
                                  escalate_min_severity=cfg.escalate_min_severity, state=state)
        self.deadletter_path = settings.data_dir / "alerts" / "deadletter.jsonl"
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._dirty = False  # a clock transition changed the state since the last save
        self.connected = threading.Event()
        # Manual acks: a message is acknowledged once its effect is saved, so a stop cannot lose it.
        self.client = make_client(settings.mqtt, cfg.client_id, ca_file=settings.mqtt_ca_file, manual_ack=True)
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

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, rc: Any, _props: Any) -> None:
        if rc.is_failure:
            log.error("MQTT broker refused the connection: %s", rc)
            return
        if not flags.session_present and self._had_session:
            self.summary.sessions_lost += 1
            log.warning("alerts: the broker had no session for %s (lost %d time(s)): events published meanwhile "
                        "may be lost (broker restarted without its persistence, or the session expired)",
                        self.settings.alerts.client_id, self.summary.sessions_lost)
        else:
            log.info("alerts: MQTT session %s", "resumed" if flags.session_present else "new")
        self._had_session = True
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            # An alert is a small message that should leave now: without this, Nagle's algorithm holds the
            # state publish back until the broker acknowledges our previous segment (~40 ms of delayed ACK).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        prefix = self.settings.topic_prefix
        subs: list[tuple[str, Any]] = [(subscription("event", prefix), SubscribeOptions(qos=1)),
                                       (request_topic(prefix), SubscribeOptions(qos=1))]
        if self._rebuild:
            # The retained alert topics hold every open alert per equipment; noLocal: not our own updates.
            subs.append((subscription("alert", prefix), SubscribeOptions(qos=1, noLocal=True)))
        client.subscribe(subs)
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
                batch = self._take_batch()
                for msg in batch:
                    self._handle_safely(msg)
                if time.monotonic() >= next_tick:
                    self._apply(self.engine.tick(self.clock()))
                    next_tick = time.monotonic() + TICK_S
                if batch or self._dirty:
                    # One fsync'd save per batch, then the acks: what the broker forgets is on disk.
                    save_state(self.state_path, self.engine.state())
                    self._dirty = False
                    for msg in batch:
                        if msg.qos > 0:
                            self.client.ack(msg.mid, msg.qos)
        finally:
            # Messages still in the inbox stay unacknowledged: the broker delivers them again after a restart.
            self.dispatcher.close()
            save_state(self.state_path, self.engine.state())
            self.client.disconnect()
            self.client.loop_stop()
        self.summary.open_alerts = len(self.engine.open_alerts())
        self.summary.channels = {name: vars(s).copy() for name, s in self.dispatcher.stats.items()}
        return self.summary

    def _take_batch(self, limit: int = 500) -> list[mqtt.MQTTMessage]:
        try:
            batch = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < limit:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle_safely(self, msg: mqtt.MQTTMessage) -> None:
        """A bug on one message is logged with its topic and dead-lettered; the service goes on."""
        try:
            self._handle(msg)
        except Exception as exc:  # one message must never stop alerting
            log.exception("alerts: internal error on a message on %s", msg.topic)
            self._dead_letter(msg, f"internal error: {type(exc).__name__}: {exc}")

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == request_topic(self.settings.topic_prefix):
            self._command(msg)
            return
        if msg.topic.endswith("/alert"):
            self._adopt(msg)
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

    def _adopt(self, msg: mqtt.MQTTMessage) -> None:
        """A retained alert state (after a damaged state file): take over the open alerts it lists."""
        try:
            body = json.loads(msg.payload)
            alerts = [Alert.model_validate(a) for a in body.get("alerts", {}).values()]
        except (ValueError, AttributeError, TypeError) as exc:
            self._dead_letter(msg, f"unreadable retained alert state: {exc}")
            return
        adopted = self.engine.adopt(alerts)
        if adopted:
            self.summary.rebuilt_alerts += adopted
            log.warning("alerts: rebuilt %d open alert(s) from the retained %s", adopted, msg.topic)

    def _apply(self, notifications: list[Notification]) -> None:
        if not notifications:
            return
        self._dirty = True
        for n in notifications:
            self.summary.notifications[n.transition] = self.summary.notifications.get(n.transition, 0) + 1
            log.info("alert %s %s: %s", n.alert.id, n.transition, n.subject())
        self.dispatcher.submit(notifications)

    def _dead_letter(self, msg: mqtt.MQTTMessage, reason: str) -> None:
        self.summary.bad_events += 1
        log.warning("bad event on %s: %s", msg.topic, reason)
        self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)
        with self.deadletter_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"at": self.clock().isoformat(), "topic": msg.topic, "reason": reason,
                                "payload": msg.payload.decode("utf-8", "replace")[:4000]}, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------ ops commands
    def _command(self, msg: mqtt.MQTTMessage) -> None:
        """Validate, execute, reply: a bad command is refused with the reason, never raises."""
        self.summary.commands += 1
        prefix = self.settings.topic_prefix
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        correlation = getattr(msg.properties, "CorrelationData", None)
        if not response_topic or not reply_topic_ok(prefix, response_topic):
            # Not ours to publish to (an alert topic, a wildcard, someone else's space): refuse, tell the log.
            self.summary.bad_commands += 1
            log.warning("ops command refused: response topic %r is not under %s/<user>/<token>; payload %r",
                        response_topic, reply_space(prefix), bytes(msg.payload[:200]))
            return
        try:
            request = parse_request(bytes(msg.payload))
            reply: dict[str, Any] = {"ok": True, "result": self._execute(request)}
        except ValueError as exc:  # AlertError too
            self.summary.bad_commands += 1
            log.warning("ops command refused (reply to %s): %s", response_topic, exc)
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not stop alerting; the sender still hears of it
            self.summary.bad_commands += 1
            log.exception("ops command failed (reply to %s)", response_topic)
            reply = {"ok": False, "error": f"internal error in the alerts service: {type(exc).__name__}: {exc}"}
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = correlation
        self.client.publish(response_topic, json.dumps(reply, ensure_ascii=False).encode(), qos=1, properties=props)

    def _execute(self, request: Command) -> Any:
        now, by = self.clock(), request.by
        if isinstance(request, ListRequest):
            alerts = self.engine.alerts.values() if request.args.all else self.engine.open_alerts()
            return [a.model_dump(mode="json") for a in alerts]
        if isinstance(request, AckRequest):
            notifications = self.engine.acknowledge(request.args.id, by, now)
            self._apply(notifications)
            return notifications[0].alert.model_dump(mode="json")
        if isinstance(request, SilenceRequest):
            a = request.args
            silence = self.engine.add_silence(site=a.site, equipment=a.equipment, rule=a.rule,
                                              duration_s=a.duration_s, reason=a.reason, by=by, now=now)
            self._dirty = True
            return silence.model_dump(mode="json")
        if isinstance(request, UnsilenceRequest):
            self._apply(self.engine.remove_silence(request.args.id, now))
            self._dirty = True
            return {"removed": request.args.id}
        return [s.model_dump(mode="json") for s in self.engine.silences.values()]
