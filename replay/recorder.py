"""``smartmine record``: subscribe (QoS 1) and write what arrives into a recording, losing nothing.

The MQTT network thread only appends ``(receive time, topic, payload, qos, retain)`` to a list; a writer
thread swaps the list out, validates each message once (:func:`~replay.sources.classify`), and writes a
compressed chunk every ``flush_interval_s`` or ``chunk_messages``. Keeping the network thread this light is
what keeps the broker's queue for us empty under full simulator load. The session survives a broker
reconnect (MQTT 5 session expiry), so a short outage does not lose messages either.

Stops on ``duration``, ``count`` or :meth:`Recorder.stop` (Ctrl-C, SIGTERM): disconnects, writes the last
chunk and the manifest.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from replay.format import Chunk, Manifest, RecordingWriter
from replay.lines import LineEncoder, classify
from smartmine.catalog import load_catalog
from smartmine.config import Settings
from smartmine.mqtt import make_client

log = logging.getLogger(__name__)

# Long enough for the broker to keep our queue across a restart or a network blip.
SESSION_EXPIRY_S = 300


@dataclass(slots=True)
class RecordResult:
    manifest: Manifest
    path: Path
    elapsed_s: float
    stop_reason: str
    disconnects: int
    bytes_written: int


class Recorder:
    """Records ``topics`` (MQTT filters) from the broker in ``settings`` into ``out``."""

    def __init__(self, settings: Settings, out: Path, topics: Sequence[str], *, client_id: str | None = None,
                 chunk_messages: int = 20_000, flush_interval_s: float = 1.0) -> None:
        self.settings = settings
        self.out = out
        self.topics = list(topics)
        self.client_id = client_id or f"smartmine-record-{uuid.uuid4().hex[:8]}"
        self.chunk_messages = chunk_messages
        self.flush_interval_s = flush_interval_s
        self.received = 0
        self.disconnects = 0
        self._limit: int | None = None
        self._buffer: list[tuple[int, str, bytes, int, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._stop_reason = "stopped"
        self._writer: RecordingWriter | None = None
        self._encoder: LineEncoder | None = None
        self._writer_error: BaseException | None = None

    @property
    def subscribed(self) -> threading.Event:
        """Set once the broker acknowledged the subscription: from then on nothing published is missed."""
        return self._subscribed

    # ---------------------------------------------------------------- MQTT callbacks (network thread)
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, reasons: Any, _props: Any = None) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._fail(ConnectionError(f"broker refused the subscription to {', '.join(self.topics)}: "
                                       f"{', '.join(failed)}"))
            return
        self._subscribed.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if not self._stop.is_set():
            self.disconnects += 1
            log.warning("disconnected from the broker (%s); reconnecting, the session keeps our messages", reason)

    def _on_message(self, _client: Any, _userdata: Any, msg: MQTTMessage) -> None:
        now = time.time_ns()
        with self._lock:
            if self._limit is not None and self.received >= self._limit:
                return  # past --count: not part of this recording
            self._buffer.append((now, msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self.received += 1
            if self._limit is not None and self.received >= self._limit:
                self._stop_reason = f"count {self._limit} reached"
                self._stop.set()

    # ---------------------------------------------------------------- writer thread
    def _drain(self) -> list[tuple[int, str, bytes, int, bool]]:
        with self._lock:
            batch, self._buffer = self._buffer, []
        return batch

    def _write(self, batch: list[tuple[int, str, bytes, int, bool]]) -> None:
        assert self._writer is not None
        for start in range(0, len(batch), self.chunk_messages):
            chunk = Chunk.empty()
            for now, topic, payload, qos, retain in batch[start:start + self.chunk_messages]:
                chunk.append(now, topic, payload, qos, retain, classify(topic, payload, self._encoder))
            self._writer.write(chunk)
        self._writer.flush()

    def _writer_loop(self) -> None:
        try:
            while not self._stop.wait(self.flush_interval_s):
                self._write(self._drain())
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._writer_error = exc
        self._stop_reason = f"error: {exc}"
        self._stop.set()

    # ---------------------------------------------------------------- control
    def stop(self, reason: str = "interrupted") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def run(self, *, duration_s: float | None = None, count: int | None = None,
            on_tick: Callable[[int], None] | None = None, connect_timeout_s: float = 15.0) -> RecordResult:
        """Record until ``duration_s`` passed, ``count`` messages arrived or :meth:`stop` was called."""
        self._limit = count
        url = self.settings.mqtt
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._encoder = LineEncoder(load_catalog(self.settings.catalog_dir))
        self._writer = RecordingWriter(self.out, "mqtt", created, meta={
            "broker": url.masked(), "subscriptions": self.topics, "client_id": self.client_id,
            "catalog_sha256": self._encoder.fingerprint,
        })
        client = make_client(url, self.client_id, ca_file=self.settings.mqtt_ca_file)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = 65535
        started = time.monotonic()
        writer_thread = threading.Thread(target=self._writer_loop, name="record-writer", daemon=True)
        try:
            try:
                client.connect(url.host, url.port, clean_start=MQTT_CLEAN_START_FIRST_ONLY, properties=props)
            except OSError as exc:
                raise ConnectionError(f"cannot reach the MQTT broker at {url.masked()}: {exc}") from None
            client.loop_start()
            deadline = time.monotonic() + connect_timeout_s
            while not self._subscribed.wait(0.05):
                if self._writer_error is not None:
                    raise self._writer_error
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no subscription acknowledged by {url.masked()} within "
                                          f"{connect_timeout_s:.0f} s")
            started = time.monotonic()
            writer_thread.start()
            end = started + duration_s if duration_s else None
            try:
                while not self._stop.wait(0.1):
                    if on_tick:
                        on_tick(self.received)
                    if end is not None and time.monotonic() >= end:
                        self.stop(f"duration {duration_s:g} s reached")
            except KeyboardInterrupt:
                self.stop("interrupted (Ctrl-C)")
        except BaseException:
            self._stop.set()
            client.disconnect()
            client.loop_stop()
            if writer_thread.is_alive():
                writer_thread.join()
            if self._writer_error is None:
                # Ctrl-C and the like: keep what was received, close the recording properly.
                self._write(self._drain())
                self._writer.close()
            else:
                self._writer.abort()
            raise
        client.disconnect()
        client.loop_stop()
        writer_thread.join()
        if self._writer_error is not None:
            self._writer.abort()
            raise self._writer_error
        self._write(self._drain())
        elapsed = time.monotonic() - started
        if on_tick:
            on_tick(self.received)
        self._writer.manifest.meta.update({"stop_reason": self._stop_reason, "disconnects": self.disconnects})
        size = self._writer.bytes_written
        manifest = self._writer.close()
        return RecordResult(manifest, self.out, elapsed, self._stop_reason, self.disconnects, size)
