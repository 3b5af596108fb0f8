"""The ingest service: MQTT telemetry in, InfluxDB points out, nothing lost and nothing duplicated.

Two threads do the work:

- paho's network thread receives each message (QoS 1, persistent MQTT 5 session, shared subscription),
  validates and encodes it (:mod:`ingest.validate`) and appends it to the open batch;
- the writer thread seals a batch when it is full (points, bytes, or half the in-flight window) or old
  (``flush_interval_s``), writes it (:mod:`ingest.writer`) or, when InfluxDB is unreachable, puts it in
  the on-disk spool (:mod:`ingest.spool`), and only then acknowledges its messages to the broker.

Nothing lost: a message is acknowledged (manual PUBACK) only once its point is in InfluxDB or fsync'd
in the spool and its dead letter, if any, fsync'd in the dead-letter file. A crash before that leaves it
unacknowledged and the broker redelivers it to the resumed session. Nothing duplicated: a redelivered
message encodes to the same series and timestamp, which InfluxDB overwrites. While the spool holds
anything, new batches go behind it, so the spool replays in order when InfluxDB is back.

Acknowledgements are sent in the order messages arrived and only on the connection they arrived on: the
broker numbers messages per connection, so an old packet id acknowledged on a new connection could
acknowledge a different, unwritten message.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.deadletter import DeadLetter, DeadLetterSink
from ingest.integrity import SYS_DROPPED, IntegrityReporter
from ingest.metrics import IngestMetrics, MetricsServer
from ingest.mqtt_client import LeanPublishClient
from ingest.sequence import SequenceTracker
from ingest.spool import Spool, SpoolFull
from ingest.validate import REJECTED_BY_INFLUXDB, TOO_LARGE_KEPT_BYTES, Validator
from ingest.writer import BatchWriter, WriteRefused, WriteUnavailable, backoff_delays, configuration_problem
from smartmine.catalog import Catalog, load_catalog
from smartmine.config import ConfigError, Settings
from smartmine.influx import InfluxClient, InfluxError, quote_ident
from smartmine.mqtt import make_client
from smartmine.schema import ensure_database
from smartmine.wire import subscription

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0
# While InfluxDB refuses writes because of a setting, retry this seldom and repeat the ERROR this often.
CONFIG_RETRY_S = 30.0
# Exit status when the writer thread died: not 2 (a usage error), so a supervisor restarts ingest.
WRITER_DIED_EXIT = 1


def deadletter_topic(settings: Settings) -> str:
    return settings.ingest.deadletter_topic or f"{settings.topic_prefix}/deadletter/ingest"


def deadletter_file(settings: Settings) -> Path:
    return settings.ingest.deadletter_file or settings.data_dir / "deadletter.jsonl"


def gap_file(settings: Settings) -> Path:
    """Sequence-gap records, beside the dead letters."""
    return deadletter_file(settings).with_name("gaps.jsonl")


def spool_dir(settings: Settings, client_id: str) -> Path:
    # One spool per client id: two instances on one host must not replay each other's segments.
    return settings.ingest.spool_dir or settings.data_dir / "spool" / client_id


def telemetry_subscription(settings: Settings) -> str:
    """The plain subscription, or with a group the MQTT 5 shared one (``$share/<group>/...``).

    Plain is the default because Mosquitto 2.0 does not restore a shared subscription from its persistence
    file: after a broker restart, what is published before ingest re-subscribes would have no subscriber
    and be dropped (tests/test_hardening_faults.py). A plain subscription of a persistent session is
    restored and queues it. Several instances need the group, and so accept that window.
    """
    plain = subscription("telemetry", settings.topic_prefix)
    return f"$share/{settings.ingest.group}/{plain}" if settings.ingest.group else plain


@dataclass(slots=True)
class _Batch:
    """Messages received together, written together, acknowledged together."""

    epoch: int                                   # connection the messages arrived on
    opened: float                                # time.monotonic() of the first message
    acks: list[tuple[int, int]] = field(default_factory=list)        # (packet id, qos)
    lines: list[str] = field(default_factory=list)
    origins: list[tuple[str, bytes]] = field(default_factory=list)   # (topic, payload) of each line
    letters: list[DeadLetter] = field(default_factory=list)
    readings: int = 0
    out_of_range: int = 0
    nbytes: int = 0
    oldest_sample: float = float("inf")
    letters_done: bool = False
    write: Future[list[tuple[int, str]]] | None = None  # its write to InfluxDB, when started ahead of its turn


@dataclass
class Totals:
    """Counts for the progress log and the summary at exit."""

    messages: int = 0
    points: int = 0
    dead_letters: int = 0
    spooled: int = 0


class IngestService:
    """One ingest consumer. ``start()``, then ``stop()`` (flushes everything); or ``run()`` until a signal."""

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None, client_id: str | None = None,
                 metrics_port: int | None = None) -> None:
        cfg = settings.ingest
        self.settings = settings
        self.cfg = cfg
        self.client_id = client_id or cfg.client_id
        self.catalog = catalog or load_catalog(settings.catalog_dir)
        self.metrics = IngestMetrics()
        self.totals = Totals()
        self._validator = Validator(self.catalog, settings.topic_prefix, max_sample_age_s=cfg.max_sample_age_s,
                                    max_clock_skew_s=cfg.max_clock_skew_s, max_payload_bytes=cfg.max_payload_bytes,
                                    same_timestamp_guard=True)
        self._influx = InfluxClient.from_settings(settings, timeout_s=cfg.write_timeout_s)
        self._writer = BatchWriter(self._influx, retry_initial_s=cfg.retry_initial_s, retry_max_s=cfg.retry_max_s,
                                   observe=self._observe_write, ensure_database=self._ensure_database)
        self._spool = Spool(spool_dir(settings, self.client_id), int(cfg.spool_max_mb * 1_000_000),
                            on_quarantine=self._on_quarantine)
        client = make_client(settings.mqtt, self.client_id, ca_file=settings.mqtt_ca_file, manual_ack=True,
                             client_class=LeanPublishClient)
        assert isinstance(client, LeanPublishClient)
        self._client = client
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(1, 30)
        dl_topic = deadletter_topic(settings)
        limits: dict[str, Any] = {"max_bytes": cfg.deadletter_max_mb * 1_000_000, "keep_bytes": TOO_LARGE_KEPT_BYTES,
                  "rate_per_s": cfg.deadletter_rate_per_s, "burst": max(10, int(10 * cfg.deadletter_rate_per_s)),
                  "on_suppressed": lambda reason: self.metrics.dead_letters_suppressed.labels(reason).inc()}
        self._dead = DeadLetterSink(deadletter_file(settings), self.client_id,
                                    lambda data: self._client.publish(dl_topic, data, qos=1, retain=False), **limits)
        self._dead_failed_logged = 0.0
        self._dead_failure: str | None = None
        gaps_on = cfg.sequence_gaps if cfg.sequence_gaps is not None else not cfg.group
        self.integrity = IntegrityReporter(
            self.metrics,
            SequenceTracker(reorder_window=cfg.sequence_reorder_window, reorder_s=cfg.sequence_reorder_s,
                            restart_below=max(cfg.receive_maximum, 1000)) if gaps_on else None,
            DeadLetterSink(gap_file(settings), self.client_id,
                           lambda data: self._client.publish(dl_topic + "/gaps", data, qos=1, retain=False), **limits))
        self._sys_mid: int | None = None
        # A batch may hold at most a share of the in-flight window, so that the next one fills while
        # write_concurrency batches are written: otherwise the broker would wait for their acknowledgements.
        self._max_batch_messages = max(1, cfg.receive_maximum // (cfg.write_concurrency + 1))
        self._write_pool = (ThreadPoolExecutor(cfg.write_concurrency, f"ingest-write-{self.client_id}")
                            if cfg.write_concurrency > 1 else None)

        self._lock = threading.Lock()        # open batch and sealed queue (network thread <-> writer)
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # the in-flight window has room again (see _on_message)
        self._conn_lock = threading.Lock()   # connection epoch vs. acknowledgements
        self._open: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._pending: deque[_Batch] = deque()  # writer thread only: sealed, not yet durable
        self._epoch = 0
        self._connected = False
        self._subscribed = False
        self._stopping = False
        self._received = 0                   # network thread
        self._settled = 0                    # writer thread (acknowledged or left for redelivery)
        self._db_ready = not cfg.ensure_database
        self._influx_retry_at = 0.0
        self._influx_error: str | None = None
        self._influx_backoff = backoff_delays(cfg.retry_initial_s, cfg.retry_max_s)
        self._spool_full: str | None = None
        self._spool_full_logged = 0.0
        self._config_error: str | None = None
        self._config_error_logged = 0.0
        self._writer_failure: str | None = None
        self._ever_connected = False
        self._writer_thread = threading.Thread(target=self._write_loop, name=f"ingest-writer-{self.client_id}",
                                               daemon=True)
        self._metrics_server: MetricsServer | None = None
        port = cfg.metrics_port if metrics_port is None else metrics_port
        if port:
            self._metrics_server = MetricsServer(self.metrics, self.health, cfg.metrics_host, port)
        self.metrics.unacked.set_function(lambda: self._received - self._settled)
        self.metrics.spool_batches.set_function(lambda: self._spool.depth)
        self.metrics.spool_bytes.set_function(lambda: self._spool.size_bytes)
        self.metrics.config_error.set_function(lambda: 1 if self._config_error else 0)
        self.metrics.writer_alive.set_function(lambda: 1 if self._writer_thread.is_alive() else 0)

    # ------------------------------------------------------------------ lifecycle
    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    def start(self) -> None:
        url = self.settings.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        if self._spool:
            log.info("spool %s holds %d batches from an earlier run; replaying them first",
                     self._spool.directory, self._spool.depth)
        self._writer_thread.start()
        self.integrity.start()
        if self._metrics_server:
            self._metrics_server.start()
            log.info("metrics on http://%s:%d/metrics, health on /healthz", self.cfg.metrics_host,
                     self._metrics_server.port)
        self._client.connect_async(url.host, url.port, keepalive=30, clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop taking messages, write or spool everything received, acknowledge it, disconnect."""
        with self._lock:
            self._stopping = True
            self._seal_locked()
            self._wake.notify()
            self._room.notify_all()
        self._writer_thread.join(timeout_s)
        if self._writer_thread.is_alive():
            log.error("writer did not finish within %.0f s; unacknowledged messages will be redelivered", timeout_s)
        self.integrity.stop()
        # DISCONNECT goes out behind the acknowledgements already queued; the session stays on the broker.
        self._client.disconnect()
        self._client.loop_stop()
        if self._write_pool is not None:
            self._write_pool.shutdown(wait=True)
        if self._metrics_server:
            self._metrics_server.stop()
        self._influx.close()
        t = self.totals
        log.info("ingest %s stopped: %d messages, %d points written, %d dead letters, %d batches spooled, "
                 "%d in the spool", self.client_id, t.messages, t.points, t.dead_letters, t.spooled, self._spool.depth)
        if self.integrity.gaps_reported:
            log.warning("ingest %s saw %d sequence gaps, %d messages that never arrived (%s)", self.client_id,
                        self.integrity.gaps_reported, self.integrity.missing_reported, self.integrity.gap_sink.file)

    def check_influx_settings(self) -> None:
        """Fail fast on settings InfluxDB refuses (credentials, retention policy): :class:`ConfigError`.

        An InfluxDB that does not answer is not a settings error: ingest starts and spools until it is back.
        """
        rp = self.settings.influx_rp
        try:
            results = self._influx.query(f"SHOW RETENTION POLICIES ON {quote_ident(self.settings.influx_db)}")
        except InfluxError as exc:
            # 403 on a query: a write-only user (the recommended one) may not read; its writes decide.
            problem = configuration_problem(exc) if exc.status != 403 else None
            if problem:
                raise ConfigError(problem) from None
            return  # unreachable, or the database is not made yet (ingest makes it): checked on the first write
        names = {row[0] for r in results for series in r.get("series", []) for row in series.get("values", [])}
        if rp and names and rp not in names:
            raise ConfigError(f"InfluxDB database {self.settings.influx_db!r} has no retention policy {rp!r} "
                              f"(it has {', '.join(sorted(names))}); check SMARTMINE_INFLUX_RP")

    def run(self, stop_event: threading.Event | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``stop_event``), then flush. Returns the exit status: 0, or
        :data:`WRITER_DIED_EXIT` when the writer thread died (so that a supervisor restarts ingest)."""
        self.check_influx_settings()
        stop = stop_event or threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("%s: flushing and stopping", signal.Signals(signum).name)
            stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        self.start()
        last = time.monotonic()
        while not stop.wait(1.0):
            if self._writer_failure is not None:
                log.critical("ingest stops because its writer died (%s); unacknowledged messages stay on the "
                             "broker and are redelivered to the restarted ingest", self._writer_failure)
                break
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                t = self.totals
                log.info("ingest: %d messages, %d points written, %d dead letters, spool %d batches, %d unacked",
                         t.messages, t.points, t.dead_letters, self._spool.depth, self._received - self._settled)
        self.stop()
        return WRITER_DIED_EXIT if self._writer_failure is not None else 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        if not self._connected:
            problems.append("not connected to the MQTT broker")
        elif not self._subscribed:
            problems.append("not subscribed to the telemetry topics")
        if self._spool_full:
            problems.append(self._spool_full)
        if self._config_error:
            problems.append("configuration error: " + self._config_error)
        if self._writer_failure is not None:
            problems.append("writer thread died: " + self._writer_failure)
        elif not self._writer_thread.is_alive() and not self._stopping:
            problems.append("writer thread died")
        if self._dead_failure:
            problems.append(self._dead_failure)
        influxdb = ("configuration error: " + self._config_error if self._config_error
                    else "unreachable: " + self._influx_error if self._influx_error else "ok")
        details = {
            "mqtt_connected": self._connected,
            "subscribed": self._subscribed,
            "influxdb": influxdb,
            "spool_batches": self._spool.depth,
            "unacknowledged": self._received - self._settled,
        }
        if problems:
            details["problems"] = problems
        return not problems, details

    # ------------------------------------------------------------------ MQTT (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT broker refused the connection: %s", reason)
            return
        with self._conn_lock:
            self._epoch += 1
            self._connected = True
        self.metrics.connected.set(1)
        topic = telemetry_subscription(self.settings)
        if self._ever_connected and not flags.session_present:
            # We asked to resume (clean_start off) and had a session: the broker lost it (restarted without
            # its persistence, or the session expired). What was queued for it, and what was published while
            # no subscription existed, is gone; the sequence-gap report names which samples.
            self.metrics.sessions_lost.inc()
            log.warning("connected to %s as %s, but the broker had lost ingest's session: messages published "
                        "meanwhile may be lost; subscribing to %s again", self.settings.mqtt.masked(),
                        self.client_id, topic)
        else:
            log.info("connected to %s as %s (session %s); subscribing to %s", self.settings.mqtt.masked(),
                     self.client_id, "resumed" if flags.session_present else "new", topic)
        self._ever_connected = True
        client.subscribe(topic, qos=1)
        # The broker's count of messages it dropped (a full queue): a second subscription, so that a broker or
        # ACL that refuses $SYS does not stop the telemetry one.
        self._sys_mid = client.subscribe(SYS_DROPPED, qos=0)[1]

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._sys_mid:
            if any(r.is_failure for r in reasons):
                log.info("the broker does not let ingest read %s (%s): broker drops are seen from the sequence "
                         "gaps only", SYS_DROPPED, reasons[0])
            return
        for r in reasons:
            if r.is_failure:
                log.error("the broker refused the subscription %s: %s", telemetry_subscription(self.settings), r)
                return
        self._subscribed = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._conn_lock:
            self._epoch += 1
            self._connected = False
            self._subscribed = False
        self.metrics.connected.set(0)
        with self._lock:
            self._seal_locked()
            self._wake.notify()
        if not self._stopping:
            log.warning("disconnected from the MQTT broker (%s); reconnecting, unacknowledged messages "
                        "will be redelivered", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._stopping:
            return  # not acknowledged: the broker redelivers it to the next session
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        topic = msg.topic  # paho decodes the topic on every access
        if topic[:1] == "$":  # $SYS, QoS 0: nothing to acknowledge
            if topic == SYS_DROPPED:
                self.integrity.on_sys_dropped(payload)
            return
        checked = self._validator.check(topic, payload, time.time())
        if checked.seq >= 0:
            self.integrity.observe(checked.src or topic, checked.seq)
        with self._lock:
            b = self._open
            if b is None or b.epoch != self._epoch:
                self._seal_locked()
                b = self._open = _Batch(self._epoch, time.monotonic())
            self._received += 1
            b.acks.append((msg.mid, msg.qos))
            line = checked.line
            if line is not None:
                b.lines.append(line)
                b.origins.append((topic, payload))
                b.nbytes += len(line) + 1
                b.readings += checked.readings
                b.out_of_range += checked.out_of_range
                if checked.sample_ts < b.oldest_sample:
                    b.oldest_sample = checked.sample_ts
            if checked.rejection is not None:
                r = checked.rejection  # the sink keeps the payload's first TOO_LARGE_KEPT_BYTES
                b.letters.append(DeadLetter(r.reason, r.detail, topic, payload, time=time.time()))
            if (len(b.lines) >= self.cfg.batch_size or b.nbytes >= self.cfg.batch_max_bytes
                    or len(b.acks) >= self._max_batch_messages):
                self._seal_locked()
                self._wake.notify()
            # Our own in-flight window. Mosquitto 2.0 does not hold to the receive maximum we ask for: in a
            # backlog it sends thousands of QoS 1 messages beyond it (2,700 unacknowledged to a client that
            # asked for 20; docs/ingest.md), and each one held here costs memory until its batch is written.
            # So the network thread stops reading until writes have settled some: the backlog waits in the
            # broker's queue (bounded by its max_queued_messages), not in this process.
            while self._received - self._settled >= self.cfg.receive_maximum and not self._stopping:
                self._seal_locked()  # what is held must be written for the window to open again
                self._wake.notify()
                self._room.wait(1.0)

    def _seal_if_due_locked(self, now: float) -> None:
        if self._open is not None and (self._stopping or now - self._open.opened >= self.cfg.flush_interval_s):
            self._seal_locked()

    def _seal_locked(self) -> None:
        if self._open is not None and self._open.acks:
            self._sealed.append(self._open)
        self._open = None

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        """The writer thread. No exception ends it silently: /healthz fails and :meth:`run` exits non-zero."""
        try:
            self._write_loop_inner()
        except BaseException as exc:
            self._writer_failure = f"{type(exc).__name__}: {exc}"
            log.critical("the ingest writer died; nothing more is written or acknowledged", exc_info=True)

    def _write_loop_inner(self) -> None:
        interval = self.cfg.flush_interval_s
        self._ensure_database_at_start()
        while True:
            with self._lock:
                now = time.monotonic()
                self._seal_if_due_locked(now)
                batches = list(self._sealed)
                self._sealed.clear()
                stopping = self._stopping
                if not batches and not self._pending and not self._drain_due():
                    if stopping:
                        return
                    waits = [interval if self._open is None else max(0.0, self._open.opened + interval - now)]
                    if self._spool or self._pending:
                        waits.append(max(0.0, self._influx_retry_at - now))
                    self._wake.wait(max(0.005, min(waits)))
                    continue
            self._take(batches)
            self._advance()
            if self._pending:
                if stopping:
                    self._abandon_pending()
                    return
                # Blocked (spool full, or InfluxDB refuses): drain the spool meanwhile, since it may be what
                # holds the way. Meanwhile the in-flight window stays full, so the network thread takes no
                # more from the broker: the backlog waits there, unacknowledged (back-pressure).
                if not self._drain_one():
                    time.sleep(min(1.0, max(0.05, self._influx_retry_at - time.monotonic())))
                continue
            self._drain_one()

    def _take(self, batches: list[_Batch]) -> None:
        for b in batches:
            good = len(b.lines)
            self.metrics.messages.labels("accepted").inc(good)
            self.metrics.messages.labels("rejected").inc(len(b.acks) - good)
            self.metrics.readings.inc(b.readings)
            self.metrics.out_of_range.inc(b.out_of_range)
            self.totals.messages += len(b.acks)
            self._pending.append(b)

    def _drain_due(self) -> bool:
        return bool(self._spool) and time.monotonic() >= self._influx_retry_at

    def _advance(self) -> None:
        """Make pending batches durable, in order, acknowledging each as soon as it (and all before it) is.

        With ``write_concurrency`` above 1, up to that many batches are written at once (InfluxDB parses
        concurrent requests on several cores); each is still acknowledged only in arrival order, and a batch
        whose write failed goes to the spool when its turn comes, as in the one-at-a-time case.
        """
        while self._pending:
            self._start_writes()
            b = self._pending[0]
            if not self._make_durable(b):
                return
            self._pending.popleft()
            self._ack(b)
            if self._write_pool is not None:
                # Take what sealed meanwhile, and the open batch once it is due, so that a write starts as
                # soon as one ends (a sliding window) and a batch still waits at most flush_interval_s.
                with self._lock:
                    self._seal_if_due_locked(time.monotonic())
                    batches = list(self._sealed)
                    self._sealed.clear()
                self._take(batches)

    def _start_writes(self) -> None:
        """Start writing the first ``write_concurrency`` pending batches, when writing straight to InfluxDB."""
        pool = self._write_pool
        if pool is None or self._spool or time.monotonic() < self._influx_retry_at or not self._db_ready:
            return
        for b in itertools.islice(self._pending, self.cfg.write_concurrency):
            if b.lines and b.write is None:
                b.write = pool.submit(self._writer.write, b.lines, time.monotonic() + self.cfg.spool_after_s)

    def _make_durable(self, b: _Batch) -> bool:
        if not b.letters_done:
            if not self._dead_letter(b.letters):
                return False  # not acknowledged: neither stored nor dead-lettered, the broker keeps it
            b.letters_done = True
        if not b.lines:
            return True
        if self._config_error is not None and time.monotonic() < self._influx_retry_at:
            return False  # not spooled: it would fill the disk with what only a settings change can write
        writing, b.write = b.write, None
        if writing is not None or (not self._spool and time.monotonic() >= self._influx_retry_at):
            try:
                if writing is not None:
                    rejected = writing.result()
                else:
                    if not self._db_ready:
                        self._ensure_database()
                    rejected = self._writer.write(b.lines, time.monotonic() + self.cfg.spool_after_s)
            except WriteRefused as exc:
                self._influx_refuses(exc)
                return False
            except (WriteUnavailable, InfluxError) as exc:
                self._influx_down(exc)
            else:
                self._influx_up()
                self._written(len(b.lines), b.oldest_sample, [
                    DeadLetter(REJECTED_BY_INFLUXDB, reason, b.origins[i][0], b.origins[i][1], b.lines[i], time.time())
                    for i, reason in rejected])
                return True
        try:
            self._spool.append("\n".join(b.lines).encode())
        except (SpoolFull, OSError) as exc:
            self._spool_full = str(exc)
            if time.monotonic() - self._spool_full_logged > 30:
                self._spool_full_logged = time.monotonic()
                log.error("cannot spool a batch: %s; not acknowledging %d messages, the broker keeps them",
                          exc, len(b.acks))
            return False
        self._spool_full = None
        self.metrics.spooled.inc()
        self.totals.spooled += 1
        return True

    def _drain_one(self) -> bool:
        """Replay the oldest spool segment, if InfluxDB is (believed) back. True when one was written."""
        if not self._drain_due():
            return False
        segment = self._spool.oldest()
        if segment is None:
            return False
        number, data = segment
        lines = data.decode().split("\n")
        try:
            if not self._db_ready:
                self._ensure_database()
            rejected = self._writer.write(lines, time.monotonic())  # one attempt; backoff happens here
        except WriteRefused as exc:
            self._influx_refuses(exc)
            return False
        except (WriteUnavailable, InfluxError) as exc:
            self._influx_down(exc)
            return False
        # The spool keeps line protocol only, so a line refused now is dead-lettered as that line.
        self._written(len(lines), float("inf"), [
            DeadLetter(REJECTED_BY_INFLUXDB, reason, "", lines[i].encode(), lines[i], time.time())
            for i, reason in rejected])
        self._spool.remove(number)
        self._influx_up()
        if not self._spool:
            log.info("spool replayed; writing directly again")
        return True

    def _written(self, points: int, oldest_sample: float, rejected: list[DeadLetter]) -> None:
        self._dead_letter(rejected)
        stored = points - len(rejected)
        self.metrics.points_written.inc(stored)
        self.metrics.batch_points.observe(points)
        self.totals.points += stored
        if oldest_sample != float("inf"):
            self.metrics.lag.set(max(0.0, time.time() - oldest_sample))

    def _dead_letter(self, letters: list[DeadLetter]) -> bool:
        """Write ``letters`` durably; False (counted, logged at ERROR every 30 s) when the file cannot be."""
        if not letters:
            return True
        try:
            self._dead.write(letters)
        except OSError as exc:
            self.metrics.dead_letter_failures.inc()
            self._dead_failure = f"cannot write dead letters to {self._dead.file}: {exc}"
            if time.monotonic() - self._dead_failed_logged > 30:
                self._dead_failed_logged = time.monotonic()
                log.error("%s; their messages are not acknowledged (the broker keeps them) until it can",
                          self._dead_failure)
            return False
        self._dead_failure = None
        for dl in letters:
            self.metrics.dead_letters.labels(dl.reason).inc()
            log.debug("dead letter %s: %s (%s)", dl.reason, dl.detail[:200], dl.topic[:200])
        self.totals.dead_letters += len(letters)
        return True

    def _ack(self, b: _Batch) -> None:
        with self._conn_lock:
            if b.epoch == self._epoch and self._connected:
                # The subscription is QoS 1, so the broker sends at most QoS 1: one write acknowledges them all.
                self._client.ack_qos1([mid for mid, qos in b.acks if qos == 1])
                for mid, qos in b.acks:
                    if qos == 2:  # never with the QoS 1 subscription; acknowledged the way paho does
                        self._client.ack(mid, qos)
            # else: the connection they came on is gone; the broker redelivers them to the resumed session
        self._settle(len(b.acks))

    def _settle(self, messages: int) -> None:
        with self._lock:
            self._settled += messages
            self._room.notify()

    def _abandon_pending(self) -> None:
        """At shutdown with InfluxDB down and the spool full: leave these to the broker's redelivery."""
        n = sum(len(b.acks) for b in self._pending)
        log.error("stopping with %d messages neither written nor spooled; they stay unacknowledged on the "
                  "broker and are redelivered on restart", n)
        self._settle(n)
        self._pending.clear()

    def _influx_down(self, exc: Exception) -> None:
        first = self._influx_error is None
        self._influx_error = str(exc)
        delay = self._influx_backoff()
        self._influx_retry_at = time.monotonic() + delay
        if first:
            log.warning("InfluxDB unavailable (%s); spooling to %s until it is back", exc, self._spool.directory)

    def _influx_refuses(self, exc: WriteRefused) -> None:
        """A settings error: keep the messages unacknowledged on the broker, say so loudly, retry seldom."""
        self._config_error = str(exc)
        self._influx_retry_at = time.monotonic() + CONFIG_RETRY_S
        if time.monotonic() - self._config_error_logged >= CONFIG_RETRY_S:
            self._config_error_logged = time.monotonic()
            log.error("configuration error: %s; not spooling, %d messages stay unacknowledged on the broker; "
                      "retrying every %.0f s", exc, self._received - self._settled, CONFIG_RETRY_S)

    def _on_quarantine(self, path: Path, reason: str) -> None:
        self.metrics.spool_quarantined.inc()
        log.error("spool segment %s cannot be read (%s); moved aside, its points are not replayed, the rest "
                  "of the spool drains", path, reason)

    def _influx_up(self) -> None:
        if self._config_error is not None:
            log.info("InfluxDB accepts writes again; the configuration error is resolved")
            self._config_error = None
        if self._influx_error is not None:
            log.info("InfluxDB is back")
        self._influx_error = None
        self._influx_retry_at = 0.0
        self._influx_backoff = backoff_delays(self.cfg.retry_initial_s, self.cfg.retry_max_s)

    def _observe_write(self, seconds: float, points: int, outcome: str) -> None:
        self.metrics.write_seconds.labels(outcome).observe(seconds)

    def _ensure_database(self) -> None:
        try:
            ensure_database(self._influx, self.catalog, retention=self.cfg.retention,
                            rollup_retention=self.cfg.rollup_retention)
        except InfluxError as exc:
            if exc.retryable:
                raise
            # 2.x/3.x refuse CREATE DATABASE / continuous queries: the bucket and its tasks are set up there.
            log.warning("could not create the database, retention policies or rollups (%s); writing anyway", exc)
        self._db_ready = True

    def _ensure_database_at_start(self) -> None:
        if self._db_ready:
            return
        try:
            self._ensure_database()
        except InfluxError as exc:
            log.warning("InfluxDB not reachable at start (%s); will retry before the first write", exc)

