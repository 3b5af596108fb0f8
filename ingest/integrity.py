"""Reporting what ingest can tell was lost before it: sequence gaps and the broker's own drop count.

The service hands each message's source and ``seq`` to :meth:`IntegrityReporter.observe` on the network
thread (one dictionary look-up and a comparison in the usual case, :mod:`ingest.sequence`); a thread of
its own, twice a second, takes the gaps found and the holes that waited too long and reports each:

- a WARNING naming source, range and count (at most ``_WARNINGS_PER_10S`` of them per 10 s, then one line
  saying how many more: a broker that dropped a queue drops it for every publisher at once);
- ``smartmine_ingest_sequence_gap_messages_total{source}`` (labels bounded) and ``..._sequence_gaps_total``;
- a record in ``gaps.jsonl`` beside the dead letters and on ``<dead-letter topic>/gaps``.

It also takes Mosquitto's ``$SYS/broker/publish/messages/dropped`` (2.0.11 publishes it every
``sys_interval``, 10 s by default): an increase is counted and logged at WARNING, and so is the first value
after ingest connects (what the broker dropped while ingest was away; after an ingest restart, drops seen by
the previous run are counted again). The counter is the whole broker's (any client's queue, not only
ingest's), and starts again at 0 when the broker restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ingest.deadletter import DeadLetterSink
from ingest.metrics import MAX_SOURCE_LABELS, OTHER_SOURCES, IngestMetrics
from ingest.sequence import Gap, SequenceCounts, SequenceTracker

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
_WARNINGS_PER_10S = 10
_ERROR_EVERY_S = 30.0


class IntegrityReporter:
    """Sequence gaps and broker drops, to metrics, the log, ``gaps.jsonl`` and MQTT. Thread-safe."""

    def __init__(self, metrics: IngestMetrics, tracker: SequenceTracker | None, gap_sink: DeadLetterSink,
                 interval_s: float = 0.5) -> None:
        self.metrics = metrics
        self.tracker = tracker
        self.gap_sink = gap_sink
        self.interval_s = interval_s
        self.gaps_reported = 0
        self.missing_reported = 0
        self.broker_dropped = 0
        self._found: deque[Gap] = deque()
        self._labels: set[str] = set()
        self._counts = SequenceCounts()
        self._sys_dropped: int | None = None
        self._warned_at = 0.0
        self._warned = 0
        self._unwarned = 0
        self._error_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingest-integrity", daemon=True)

    # ------------------------------------------------------------------ network thread
    def observe(self, source: str, seq: int) -> None:
        if self.tracker is not None:
            gaps = self.tracker.observe(source, seq)
            if gaps:
                self._found.extend(gaps)

    def on_sys_dropped(self, payload: bytes) -> None:
        try:
            now = int(payload)
        except ValueError:
            return
        last, self._sys_dropped = self._sys_dropped, now
        # The first value counts what the broker dropped before ingest (re)connected: the queue that overflowed
        # while ingest was down is exactly what to report. A lower value: the broker restarted, began again.
        if last is None or now < last:
            last = 0
        if now > last:
            self.broker_dropped += now - last
            self.metrics.broker_dropped.inc(now - last)
            log.warning("the MQTT broker dropped %d messages (a client's queue was full or it was not allowed to "
                        "deliver them; %d since it started): telemetry may be lost, see the sequence gaps",
                        now - last, now)

    # ------------------------------------------------------------------ own thread
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Report what is left, holes still open included: at stop they will not be filled here."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.flush(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # a report failing must not end the reporting
                log.exception("could not report sequence gaps")

    def flush(self, final: bool = False) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        gaps: list[Gap] = []
        while self._found:
            gaps.append(self._found.popleft())
        gaps += tracker.sweep(everything=final)
        c, seen = tracker.counts, self._counts
        for counter, name in ((self.metrics.seq_duplicates, "duplicates"), (self.metrics.seq_late, "late"),
                              (self.metrics.seq_restarts, "restarts")):
            delta = getattr(c, name) - getattr(seen, name)
            if delta:
                counter.inc(delta)
                setattr(seen, name, getattr(seen, name) + delta)
        if not gaps:
            return
        for g in gaps:
            label = g.source
            if label not in self._labels:
                if len(self._labels) < MAX_SOURCE_LABELS:
                    self._labels.add(label)
                else:
                    label = OTHER_SOURCES
            self.metrics.gap_messages.labels(label).inc(g.count)
            self._warn(g)
        self.metrics.gaps.inc(len(gaps))
        self.gaps_reported += len(gaps)
        self.missing_reported += sum(g.count for g in gaps)
        try:
            self.gap_sink.write(gaps)
        except OSError as exc:
            self.metrics.dead_letter_failures.inc()
            if time.monotonic() - self._error_at > _ERROR_EVERY_S:
                self._error_at = time.monotonic()
                log.error("cannot write %d sequence-gap records to %s: %s (they are in the log and the metrics)",
                          len(gaps), self.gap_sink.file, exc)

    def _warn(self, g: Gap) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 10.0:
            if self._unwarned:
                log.warning("... and %d more sequence gaps in the last 10 s (all in %s)", self._unwarned,
                            self.gap_sink.file)
            self._warned_at, self._warned, self._unwarned = now, 0, 0
        if self._warned < _WARNINGS_PER_10S:
            self._warned += 1
            log.warning("sequence gap: %d messages of %s never arrived (seq %d to %d)", g.count, g.source,
                        g.first, g.last)
        else:
            self._unwarned += 1
