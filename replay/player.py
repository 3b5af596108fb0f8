"""The replay engine: read a source, select, pace, shift time, and hand messages to one sink.

A sink is a small class with ``send(chunk, index, shift_ns)`` and ``close()`` (Telegraf's output shape):
:class:`MqttSink` publishes to the broker, :class:`InfluxSink` writes line protocol in big gzip batches
through concurrent writers. Pacing and selection live here, once, for both.

Deterministic: the same input and options send the same messages in the same order with the same
content; only ``--rebase-time`` depends on the clock (it shifts every timestamp by one constant).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from replay.format import Chunk
from replay.lines import LineEncoder
from replay.sources import Source
from replay.timeutil import format_ns
from replay.topics import split_topic
from smartmine.influx import InfluxClient, InfluxError, PartialWriteError

log = logging.getLogger(__name__)
_DROPPED = re.compile(r"dropped=(\d+)")


class Sink(Protocol):
    def send(self, chunk: Chunk, index: Sequence[int], shift_ns: int) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Selection:
    """Which messages to replay: by site, equipment and time (on the recording's time axis)."""

    sites: frozenset[str] = frozenset()
    equipment: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None

    def index(self, chunk: Chunk) -> Sequence[int]:
        """The selected messages' positions in ``chunk`` (a ``range`` when all are)."""
        lo, hi = self.start_ns, self.end_ns
        if lo is None and hi is None and not self.sites and not self.equipment:
            return range(len(chunk))
        idx: Sequence[int] = range(len(chunk))
        if lo is not None or hi is not None:
            idx = [i for i, t in enumerate(chunk.time_ns) if (lo is None or t >= lo) and (hi is None or t < hi)]
        if self.sites or self.equipment:
            topics = chunk.topic
            keep = []
            for i in idx:
                parts = split_topic(topics[i])
                if parts is None:
                    continue
                if (not self.sites or parts.site in self.sites) and (
                        not self.equipment or parts.equipment in self.equipment):
                    keep.append(i)
            idx = keep
        return idx


class Pacer:
    """Keeps the recorded spacing between messages, divided by ``speed``. Times that go backwards (late or
    out-of-order samples in JSON Lines) are sent at once, in file order."""

    def __init__(self, speed: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed
        self._sleep = sleep
        self._origin_ns: int | None = None
        self._wall0 = 0.0
        self._last_ns = 0

    def wait(self, t_ns: int) -> float:
        """Block until the message at recording time ``t_ns`` is due; returns how late it is (s)."""
        now = time.perf_counter()
        if self._origin_ns is None:
            self._origin_ns, self._wall0, self._last_ns = t_ns, now, t_ns
            return 0.0
        t_ns = max(t_ns, self._last_ns)
        self._last_ns = t_ns
        due = self._wall0 + (t_ns - self._origin_ns) / 1e9 / self.speed
        delay = due - now
        if delay > 0:
            self._sleep(delay)
            return 0.0
        return -delay


@dataclass(slots=True)
class ReplayStats:
    messages: int = 0          # sent to the sink
    loops: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    shift_ns: int = 0
    elapsed_s: float = 0.0
    bad_messages: int = 0      # lost in corrupt regions skipped with --skip-bad
    bad_regions: list[str] = field(default_factory=list)
    max_lateness_s: float = 0.0


def replay(source: Source, sink: Sink, *, speed: float | None = None, rebase_to_ns: int | None = None,
           selection: Selection | None = None, loops: int | None = 1,
           on_progress: Callable[[int], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False) -> ReplayStats:
    """Replay ``source`` into ``sink`` and close the sink (also when reading fails half-way: what was read
    before the failure is delivered). ``speed`` None: as fast as possible. ``rebase_to_ns``: the replay's start
    (now); every time is shifted by one constant (:func:`rebase_shift`) so that no message carries a time later
    than the moment it is sent. ``loops`` None: until ``should_stop``; each pass after the first is shifted by the
    span of one pass, so timestamps keep increasing."""
    sel = selection or Selection()
    stats = ReplayStats()
    pacer = Pacer(speed) if speed is not None else None
    started = time.perf_counter()
    period_ns = 0
    base_shift: int | None = 0
    if rebase_to_ns is not None:
        bounds = source.sample_bounds(sel.start_ns, sel.end_ns)
        base_shift = None if bounds is None else rebase_shift(rebase_to_ns, *bounds, speed)
        stats.shift_ns = base_shift or 0
    try:
        loop = 0
        while loops is None or loop < loops:
            first, last, sent = _one_pass(source, sink, sel, pacer, stats, base_shift, rebase_to_ns,
                                          loop * period_ns, on_progress, should_stop)
            stats.messages += sent
            stats.loops = loop + 1
            if loop == 0 and first is not None and last is not None:
                stats.first_ns, stats.last_ns = first, last
                base_shift = stats.shift_ns if rebase_to_ns is not None else 0
                # The next pass follows this one after its span plus one average gap.
                gap = (last - first) // max(sent - 1, 1) or 1_000_000_000
                period_ns = last - first + gap
            if sent == 0 or should_stop():
                break
            loop += 1
    finally:
        sink.close()
    stats.elapsed_s = time.perf_counter() - started
    seen = set()
    for region in source.bad:
        if region.offset not in seen:  # a loop reads a damaged chunk again: count it once
            seen.add(region.offset)
            stats.bad_messages += region.messages or 0
            stats.bad_regions.append(f"offset {region.offset}: {region.problem}")
    return stats


def rebase_shift(start_ns: int, first_ns: int, last_ns: int, speed: float | None) -> int:
    """The constant added to every time so the replay reads as live: at ``speed`` 1 or faster (max: all at
    once) the last message carries the time it is sent at and every earlier one an earlier time; slower than 1,
    the first message carries the start. Never a sample from the future: ingest would refuse it."""
    if speed is not None and speed < 1:
        return start_ns - first_ns
    replay_ns = 0 if speed is None else int((last_ns - first_ns) / speed)
    return start_ns + replay_ns - last_ns


def _one_pass(source: Source, sink: Sink, sel: Selection, pacer: Pacer | None, stats: ReplayStats,
              base_shift: int | None, rebase_to_ns: int | None, shift_loop: int,
              on_progress: Callable[[int], None] | None,
              should_stop: Callable[[], bool]) -> tuple[int | None, int | None, int]:
    """One pass over the source: (first time, last time, messages sent)."""
    first: int | None = None
    last: int | None = None
    sent = 0
    for chunk in source.chunks(sel.start_ns, sel.end_ns):
        index = sel.index(chunk)
        if not index:
            continue
        earliest, latest = chunk.time_range(index)
        if base_shift is None:
            assert rebase_to_ns is not None  # bounds unknown: the first sample lands at the start
            stamp = chunk.ts_ns[index[0]]
            base_shift = stats.shift_ns = rebase_to_ns - (stamp if stamp is not None else chunk.time_ns[index[0]])
        if first is None:
            first = earliest
        last = latest if last is None else max(last, latest)
        shift = base_shift + shift_loop
        if pacer is None:
            sink.send(chunk, index, shift)
            sent += len(index)
            if on_progress:
                on_progress(len(index))
        else:
            times = chunk.time_ns
            for i in index:
                stats.max_lateness_s = max(stats.max_lateness_s, pacer.wait(times[i] + shift_loop))
                sink.send(chunk, (i,), shift)
                sent += 1
                if on_progress:
                    on_progress(1)
                if should_stop():
                    break
        if should_stop():
            break
    return first, last, sent


# ------------------------------------------------------------------------------------------------ MQTT
class MqttSink:
    """Publishes to the broker, on the recorded topics or under a new prefix, with the recorded QoS and
    retain flag (or ``qos``). With a time shift, each telemetry payload's ``ts`` is rewritten."""

    def __init__(self, client: Any, *, prefix: str | None = None, qos: int | None = None,
                 max_outstanding: int = 10_000, timeout_s: float = 30.0) -> None:
        self.client = client
        self.prefix = prefix
        self.qos = qos
        self.timeout_s = timeout_s
        self._topics: dict[str, str] = {}
        self._max_outstanding = max_outstanding
        self._outstanding = 0
        self._lock = threading.Condition()
        self.published = 0
        client.on_publish = self._on_publish

    def _on_publish(self, *_args: Any) -> None:
        with self._lock:
            self._outstanding -= 1
            self._lock.notify_all()

    def _topic(self, topic: str) -> str:
        out = self._topics.get(topic)
        if out is None:
            parts = split_topic(topic)
            out = parts.with_prefix(self.prefix) if (parts and self.prefix) else topic
            self._topics[topic] = out
        return out

    def send(self, chunk: Chunk, index: Sequence[int], shift_ns: int) -> None:
        for i in index:
            payload = chunk.payload[i]
            stamp = chunk.ts_ns[i]
            if shift_ns and stamp is not None:
                payload = shift_payload(payload, stamp + shift_ns)
            qos = chunk.qos[i] if self.qos is None else self.qos
            with self._lock:
                # Bound what paho queues in memory when publishing faster than the broker acknowledges.
                if not self._lock.wait_for(lambda: self._outstanding < self._max_outstanding, self.timeout_s):
                    raise ConnectionError(f"the MQTT broker acknowledged no publish for {self.timeout_s:.0f} s")
                self._outstanding += 1
            info = self.client.publish(self._topic(chunk.topic[i]), payload, qos=qos, retain=chunk.retain[i])
            if info.rc != 0:
                raise ConnectionError(f"MQTT publish failed (rc={info.rc}); is the broker up?")
            if qos == 0:
                with self._lock:
                    self._outstanding -= 1
            self.published += 1

    def close(self) -> None:
        with self._lock:
            done = self._lock.wait_for(lambda: self._outstanding <= 0, self.timeout_s)
        if not done:
            raise ConnectionError(f"{self._outstanding} publishes were not acknowledged by the broker within "
                                  f"{self.timeout_s:.0f} s")


def shift_payload(payload: bytes, ts_ns: int) -> bytes:
    """The payload with ``ts`` replaced by ``ts_ns`` (kept at millisecond precision unless it needs more)."""
    body = json.loads(payload)
    body["ts"] = format_ts_ns(ts_ns)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def format_ts_ns(ts_ns: int) -> str:
    text = format_ns(ts_ns)
    micros = (ts_ns // 1000) % 1_000_000
    return text if micros % 1000 == 0 else f"{text[:-5]}.{micros:06d}Z"


# ------------------------------------------------------------------------------------------------ InfluxDB
class InfluxSink:
    """Line protocol into InfluxDB: big batches, gzip, ``writers`` concurrent requests, retries on transient
    errors. Lines the server rejects are counted with its reason; nothing is dropped silently."""

    def __init__(self, client: InfluxClient, encoder: LineEncoder, *, batch_lines: int = 20_000,
                 writers: int = 2, flush_interval_s: float = 0.5, retries: int = 5) -> None:
        self.client = client
        self.encoder = encoder
        self.batch_lines = batch_lines
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self.readings = 0  # sent to InfluxDB; what it stored is readings_written, what it refused readings_refused
        self.lines = 0  # points InfluxDB stored
        self.readings_written = 0
        self.rejected_lines = 0  # points InfluxDB refused
        self.readings_refused = 0
        # A batch InfluxDB refused in part without naming the lines (1.x: "... dropped=N") has its readings
        # split by share: the refused readings are then an estimate, and the summary says so.
        self.readings_refused_estimated = False
        self._count_lock = threading.Lock()
        self.rejected_by_server: dict[str, str] = {}
        self.refused_by_reason: dict[str, int] = {}  # the server's reason -> points refused for it
        self._pending: list[bytes] = []
        self._pending_lines = 0
        self._pending_readings = 0
        self._last_flush = time.perf_counter()
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="replay-write")
        self._slots = threading.BoundedSemaphore(writers * 2)  # batches in flight or queued: bounded memory
        self._futures: list[Future[None]] = []

    def send(self, chunk: Chunk, index: Sequence[int], shift_ns: int) -> None:
        body, lines, readings = self.encoder.encode_chunk(chunk, index, shift_ns)
        self.readings += readings
        if lines:
            self._pending.append(body)
            self._pending_lines += lines
            self._pending_readings += readings
        if self._pending_lines >= self.batch_lines or (
                self._pending and time.perf_counter() - self._last_flush >= self.flush_interval_s):
            self.flush()

    def flush(self) -> None:
        """Hand what is pending to a writer (a batch holds whole chunks: ``batch_lines`` or a little more)."""
        pieces, lines, readings = self._pending, self._pending_lines, self._pending_readings
        self._pending, self._pending_lines, self._pending_readings = [], 0, 0
        self._last_flush = time.perf_counter()
        if lines:
            self._submit(b"\n".join(pieces), lines, readings)

    def _submit(self, body: bytes, lines: int, readings: int) -> None:
        self._check_failed()
        self._slots.acquire()
        future = self._pool.submit(self._write, body, lines, readings)
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(future)

    def _check_failed(self) -> None:
        keep = []
        for f in self._futures:
            if f.done():
                f.result()  # re-raises a writer's error in the replay thread
            else:
                keep.append(f)
        self._futures = keep

    def _write(self, body: bytes, lines: int, readings: int) -> None:
        for attempt in range(self.retries + 1):
            try:
                self.client.write_lines(body)
                with self._count_lock:
                    self.lines += lines
                    self.readings_written += readings
                return
            except PartialWriteError as exc:
                # The server kept the valid lines; count what it refused with its reason.
                dropped = _DROPPED.search(exc.body)
                n_rejected = min(lines, len(exc.rejected) or (int(dropped.group(1)) if dropped else lines))
                refused = readings if n_rejected == lines else round(readings * n_rejected / lines)
                reasons = list(exc.rejected.values()) or [_DROPPED.sub("", exc.body).strip()] * n_rejected
                with self._count_lock:
                    self.rejected_by_server.update(exc.rejected or {f"({n_rejected} lines)": exc.body.strip()})
                    for reason in reasons:
                        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
                    self.rejected_lines += n_rejected
                    self.lines += lines - n_rejected
                    self.readings_refused += refused
                    self.readings_written += readings - refused
                    self.readings_refused_estimated |= n_rejected != lines
                return
            except InfluxError as exc:
                if not exc.retryable or attempt == self.retries:
                    raise
                delay = min(0.2 * 2 ** attempt, 5.0)
                log.warning("write failed (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)

    def close(self) -> None:
        try:
            if self._pending:
                self.flush()
            for f in self._futures:
                f.result()
        finally:
            self._pool.shutdown(wait=True)
