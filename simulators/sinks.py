"""Where simulated telemetry goes: a JSON Lines file, or an MQTT broker.

A sink has three verbs (``open``, ``write(batch)``, ``close``), like a Telegraf output; the runner drives
it. :class:`MqttSink` keeps a bounded buffer while the broker is away (oldest messages dropped first and
counted), reconnects with exponential backoff (paho), announces each device's retained ``online`` status,
and leaves an ``offline`` last will for the simulator itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from simulators.engine import Message, Simulation
from smartmine.config import Settings
from smartmine.errors import UsageError
from smartmine.wire import encode_status, topic

log = logging.getLogger(__name__)

# QoS 1 messages allowed to wait in paho's queue. Paho scans that queue on every acknowledgement, so a
# short queue is much faster than a long one: 100 gave 3x the throughput of 1000 (docs/benchmarks.md).
QOS1_QUEUE = 100


class Sink(Protocol):
    def open(self, sim: Simulation) -> None: ...
    def write(self, batch: list[Message]) -> None: ...
    def close(self) -> dict[str, Any]: ...


class FileSink:
    """JSON Lines: ``{"topic": "...", "payload": {...}}`` per message, the payload as a JSON object."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fh: IO[bytes] | None = None
        self._topic_json: dict[str, bytes] = {}
        self.bytes = 0

    def open(self, sim: Simulation) -> None:
        if self.path == "-":
            self._fh = sys.stdout.buffer
            return
        try:
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise UsageError(f"--out {self.path}: cannot write: {exc.strerror or exc}") from None

    def write(self, batch: list[Message]) -> None:
        assert self._fh is not None
        cache = self._topic_json
        parts = []
        for t, payload in batch:
            head = cache.get(t)
            if head is None:
                head = cache[t] = b'{"topic":' + json.dumps(t).encode() + b',"payload":'
            parts.append(head + payload + b"}\n")
        data = b"".join(parts)
        self.bytes += len(data)
        self._fh.write(data)

    def close(self) -> dict[str, Any]:
        if self._fh is not None:
            self._fh.flush()
            if self._fh is not sys.stdout.buffer:
                self._fh.close()
        return {"out": self.path, "bytes_written": self.bytes}


def simulator_id(sites: list[str], seed: int) -> str:
    """The simulator's own publisher id: stable across restarts, so its retained status is replaced."""
    name = sites[0] if len(sites) == 1 else "all"
    return f"sim_{name}_s{seed}"[:63]


def simulator_status_topic(site: str, sites: list[str], seed: int, prefix: str) -> str:
    """The simulator's own status topic (its last will): ``<prefix>/<site>/gateway/<simulator id>/status``."""
    return topic(site, "gateway", simulator_id(sites, seed), "status", prefix)


class MqttSink:
    """Publishes to the broker of the settings, surviving broker restarts."""

    def __init__(self, settings: Settings, *, qos: int = 0, buffer_messages: int = 100_000,
                 connect_timeout_s: float = 15.0, reconnect_max_s: int = 30, max_inflight: int = 20,
                 client_id: str | None = None) -> None:
        if qos not in (0, 1):
            raise UsageError(f"--qos {qos}: must be 0 or 1")
        self.settings = settings
        self.qos = qos
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.max_inflight = max_inflight
        self.client_id = client_id
        self.buffer: deque[Message] = deque(maxlen=buffer_messages)
        self.dropped = 0
        self.published = 0
        self.reconnects = 0
        self._connected = threading.Event()
        self._statuses: list[tuple[str, str]] = []   # (status topic, src)
        self._will: tuple[str, str] | None = None
        self._client: Any = None
        self._last: Any = None
        self._closing = False
        self._warned_inflight = False
        self._window: deque[Any] = deque()
        self._refused: str | None = None
        self._answered = threading.Event()   # the broker accepted or refused us

    # ------------------------------------------------------------------ lifecycle

    def open(self, sim: Simulation) -> None:
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: F401 - paho is imported lazily for the CLI

        from smartmine.mqtt import make_client

        sites = list(dict.fromkeys(s for _, s, _ in sim.site_list))
        sim_id = simulator_id(sites, sim.seed)
        # Under the (first) site it simulates: a site's broker user may write only that site's topics
        # (smartmine/security.py), and its last will must be one of them or the broker drops it.
        self._will = (simulator_status_topic(sim.site_list[0][0], sites, sim.seed, sim.prefix), sim_id)
        self._statuses = [(topic(d.site, d.area, d.equipment, "status", sim.prefix), d.publisher)
                          for d in sim.devices]
        client_id = self.client_id or f"{sim_id}-{os.getpid()}"
        url = self.settings.mqtt
        client = make_client(url, client_id, ca_file=self.settings.mqtt_ca_file)
        will_topic, will_src = self._will
        client.will_set(will_topic, encode_status(_now(), "offline", will_src), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=self.reconnect_max_s)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            client.connect_async(url.host, url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise UsageError(f"MQTT broker {url.masked()}: {exc}") from None
        client.loop_start()
        self._answered.wait(self.connect_timeout_s)
        if not self._connected.is_set():
            client.loop_stop()
            if self._refused:
                raise UsageError(f"MQTT broker {url.masked()} refused the connection: {self._refused} (check the "
                                 "user and password in the URL or SMARTMINE_MQTT_USERNAME/PASSWORD)")
            raise UsageError(f"MQTT broker {url.masked()} not reachable within {self.connect_timeout_s:.0f} s "
                             "(is it running? smartmine up starts one)")

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT connect refused: %s", reason)
            self._refused = str(reason)
            self._answered.set()
            return
        # QoS 1 throughput is the in-flight window, fixed before connecting; the broker says in its CONNACK
        # how many it takes (MQTT 5 Receive Maximum, 65535 when it does not say).
        receive_max = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        if self.qos and receive_max < self.max_inflight and not self._warned_inflight:
            log.warning("the broker takes %d QoS 1 messages in flight, fewer than the %d configured; set "
                        "SMARTMINE_SIMULATOR__MAX_INFLIGHT=%d", receive_max, self.max_inflight, receive_max)
            self._warned_inflight = True
        if self._connected.is_set() or self.reconnects or self.published:
            self.reconnects += 1
            log.info("reconnected to the MQTT broker (%d buffered messages to send)", len(self.buffer))
        # Announce first, so a dashboard shows the devices online before their first sample arrives.
        now = _now()
        assert self._will is not None
        client.publish(self._will[0], encode_status(now, "online", self._will[1]), qos=1, retain=True)
        for status_topic, src in self._statuses:
            client.publish(status_topic, encode_status(now, "online", src), qos=1, retain=True)
        self._connected.set()
        self._answered.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if self._connected.is_set() and not self._closing:
            log.warning("lost the MQTT broker (%s); buffering up to %d messages", reason, self.buffer.maxlen)
        self._connected.clear()

    # ------------------------------------------------------------------ publishing

    def write(self, batch: list[Message]) -> None:
        if not self._connected.is_set():
            self._buffer(batch)
            return
        if self.buffer:
            pending = list(self.buffer)
            self.buffer.clear()
            self._publish(pending)
        self._publish(batch)

    def _buffer(self, batch: list[Message]) -> None:
        maxlen = self.buffer.maxlen or 0
        overflow = len(self.buffer) + len(batch) - maxlen
        if overflow > 0:
            self.dropped += overflow
        self.buffer.extend(batch)

    def _publish(self, batch: list[Message]) -> None:
        from paho.mqtt.enums import MQTTErrorCode

        publish = self._client.publish
        qos = self.qos
        window = self._window
        last = None
        for i, (t, payload) in enumerate(batch):
            info = publish(t, payload, qos)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # The link dropped mid-batch: keep the rest for the reconnect. Paho itself keeps a QoS 1
                # message it could not send and resends it, so only a QoS 0 one is buffered here.
                self._connected.clear()
                self._buffer(batch[i + 1:] if qos else batch[i:])
                return
            self.published += 1
            last = info
            if qos:
                # Keep no more than the in-flight window queued in paho: its acknowledgement handling
                # scans the whole queue, which turns quadratic when a batch of thousands waits there.
                window.append(info)
                if len(window) > min(self.max_inflight, QOS1_QUEUE):
                    self._wait(window.popleft())
        # Back-pressure: wait until the previous batch has left, so the client's queue stays bounded
        # however fast the simulation runs.
        if self._last is not None:
            self._wait(self._last)
        self._last = last

    def _wait(self, info: Any, timeout_s: float = 10.0) -> None:
        # Not sent because the link dropped: paho resends QoS 1 after the reconnect; QoS 0 is lost.
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout_s)

    def close(self) -> dict[str, Any]:
        client = self._client
        if client is None:
            return {}
        if self._connected.is_set():
            if self.buffer:
                pending = list(self.buffer)
                self.buffer.clear()
                self._publish(pending)
            now = _now()
            infos = [client.publish(t, encode_status(now, "offline", src), qos=1, retain=True)
                     for t, src in self._statuses]
            assert self._will is not None
            infos.append(client.publish(self._will[0], encode_status(now, "offline", self._will[1]), qos=1,
                                        retain=True))
            if self._last is not None:
                self._wait(self._last)
            for info in infos[-1:]:
                self._wait(info)
        lost = len(self.buffer)
        self._closing = True
        client.disconnect()
        client.loop_stop()
        return {"published": self.published, "dropped_while_disconnected": self.dropped + lost,
                "reconnects": self.reconnects}


def _now() -> datetime:
    # Status messages describe the live connection, so they carry wall-clock time (telemetry never does).
    return datetime.now(UTC)
