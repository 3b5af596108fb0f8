"""Sequence tracking: finds the telemetry that never reached ingest, from each publisher's ``seq``.

Every sample carries ``seq`` (+1 per message of its publisher) and, optionally, ``src`` (the publisher,
the scope of ``seq``; docs/wire-format.md). A message the broker dropped (its queue for ingest was full),
lost (SIGKILLed between autosaves) or that a radio outage ate shows here as a hole in a source's numbers.
The tracker keeps, per source, the highest ``seq`` seen and the holes not yet filled:

- ``seq == high + 1``: the usual case, one comparison;
- ``seq > high + 1``: a hole ``high+1 .. seq-1`` opens. It is *pending*: a message overtaken by another
  (a redelivery, a second connection) may still fill it. It is reported as a gap once it is clearly not
  going to be filled: when the source has moved ``reorder_window`` numbers past it, or it has been open
  ``reorder_s`` seconds (:meth:`SequenceTracker.sweep`), or the source restarted;
- ``seq`` inside a pending hole: a late message, the hole shrinks; nothing is reported;
- ``seq`` inside a gap already reported: late beyond the window: counted as ``late`` (the gap's count
  stays as reported, the late count says how much of it arrived after all);
- ``seq`` at or below ``high`` otherwise: a duplicate (a redelivery), not a gap;
- ``seq == 0`` after a higher one, or more than ``restart_below`` under ``high``: the publisher restarted
  (its counter began again), not a gap. What it sent between its last message seen and its restart cannot
  be known from the numbers.

Without ``src`` a message's topic is its source. Memory is bounded: at most ``max_sources`` sources (the
oldest forgotten first; a forgotten source starts afresh), a few holes per source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

# Holes remembered per source: a source with more open holes reports its oldest at once.
_PENDING_PER_SOURCE = 16
_REPORTED_PER_SOURCE = 8


@dataclass(frozen=True, slots=True)
class Gap:
    """``count`` messages of ``source``, ``first`` to ``last`` (inclusive), never arrived."""

    source: str
    first: int
    last: int
    time: float                       # when it was reported (seconds since the epoch)
    reason: str = "sequence_gap"

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def record(self, ingest_id: str, keep_bytes: int = 0) -> dict[str, object]:
        from datetime import UTC, datetime

        when = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"time": when, "reason": "sequence_gap", "source": self.source, "first_seq": self.first,
                "last_seq": self.last, "missing": self.count, "ingest": ingest_id}


@dataclass(slots=True)
class _Hole:
    first: int
    last: int
    opened: float                     # time.monotonic()


@dataclass(slots=True)
class _Source:
    high: int
    holes: list[_Hole] = field(default_factory=list)
    reported: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class SequenceCounts:
    """What the tracker saw, for the metrics (read by the service after each call)."""

    restarts: int = 0
    duplicates: int = 0
    late: int = 0


class SequenceTracker:
    """Per-source sequence state: ``observe`` from one thread (the network thread), ``sweep`` from any."""

    def __init__(self, *, reorder_window: int = 100, reorder_s: float = 5.0, restart_below: int = 100_000,
                 max_sources: int = 100_000, clock: Callable[[], float] | None = None) -> None:
        import time

        self.reorder_window = reorder_window
        self.reorder_s = reorder_s
        self.restart_below = restart_below
        self.max_sources = max_sources
        self.counts = SequenceCounts()
        self._clock = clock or time.monotonic
        self._wall = time.time
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()
        self._holes_open = False       # a hole may be open: sweep has nothing to do while False

    def observe(self, source: str, seq: int) -> list[Gap] | None:
        """Take one message's ``seq``; returns the gaps this makes certain (None: none, the usual case)."""
        s = self._sources.get(source)
        if s is not None and seq == s.high + 1 and not s.holes:
            # Without the lock: only this thread adds sources, holes or changes ``high``; sweep only takes
            # holes away, and there are none here.
            s.high = seq
            return None
        with self._lock:
            return self._observe_slow(source, self._sources.get(source), seq)

    def _observe_slow(self, source: str, s: _Source | None, seq: int) -> list[Gap] | None:
        if s is None:
            if len(self._sources) >= self.max_sources:
                del self._sources[next(iter(self._sources))]
            self._sources[source] = _Source(seq)
            return None
        gaps: list[Gap] = []
        if seq > s.high + 1:
            self._holes_open = True
            s.holes.append(_Hole(s.high + 1, seq - 1, self._clock()))
            s.high = seq
            if len(s.holes) > _PENDING_PER_SOURCE:
                self._report(source, s, s.holes.pop(0), gaps)
        elif seq == s.high + 1:
            s.high = seq
        elif (seq == 0 and s.high > 0) or seq < s.high - self.restart_below:
            self.counts.restarts += 1
            while s.holes:
                self._report(source, s, s.holes.pop(0), gaps)
            s.high = seq
            s.reported.clear()
            return gaps or None
        elif not self._fill(s, seq):
            if any(first <= seq <= last for first, last in s.reported):
                self.counts.late += 1
            else:
                self.counts.duplicates += 1
        # Holes the source has moved far enough past.
        while s.holes and s.high - s.holes[0].last > self.reorder_window:
            self._report(source, s, s.holes.pop(0), gaps)
        return gaps or None

    def _fill(self, s: _Source, seq: int) -> bool:
        for i, h in enumerate(s.holes):
            if h.first <= seq <= h.last:
                if h.first == h.last:
                    del s.holes[i]
                elif seq == h.first:
                    h.first += 1
                elif seq == h.last:
                    h.last -= 1
                else:
                    s.holes.insert(i + 1, _Hole(seq + 1, h.last, h.opened))
                    h.last = seq - 1
                return True
        return False

    def _report(self, source: str, s: _Source, hole: _Hole, gaps: list[Gap]) -> None:
        gaps.append(Gap(source, hole.first, hole.last, self._wall()))
        s.reported.append((hole.first, hole.last))
        if len(s.reported) > _REPORTED_PER_SOURCE:
            del s.reported[0]

    def sweep(self, everything: bool = False) -> list[Gap]:
        """The holes open longer than ``reorder_s`` (every hole with ``everything``, at stop), as gaps."""
        gaps: list[Gap] = []
        with self._lock:
            if not self._holes_open and not everything:
                return gaps
            due = self._clock() - self.reorder_s
            still_open = False
            for source, s in self._sources.items():
                while s.holes and (everything or s.holes[0].opened <= due):
                    self._report(source, s, s.holes.pop(0), gaps)
                still_open = still_open or bool(s.holes)
            self._holes_open = still_open
        return gaps

    def pending(self) -> int:
        """Messages in holes not (yet) reported."""
        with self._lock:
            return sum(h.last - h.first + 1 for s in self._sources.values() for h in s.holes)
