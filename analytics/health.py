"""Sensor health: is the instrument telling the truth? Stuck, spikes, dropout, thinning data, out of
range, counter going back.

A sensor fault is not a process fault, and ops treat it differently (send an instrument technician,
not stop the face). These detectors say so in their message. Drift against a redundant neighbour
needs two series and lives in :mod:`analytics.multivariate`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, about, level_of, ratio_score, ratio_scores


class Flatline(Detector):
    """Stuck / flatline: the same value, bit for bit, for ``samples`` samples in a row.

    A live analogue sensor always carries some noise in its last digits; a frozen transmitter
    repeats its last value exactly. A run at the bottom of the physical range (0 A, 0 m³/h) is a
    stopped machine, not a frozen transmitter, and is not flagged.
    """

    name = "stuck"
    resume_from = 64

    def __init__(self, ctx: SensorContext, *, samples: int = 600, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.rule = f"health:stuck:{self.ctx.sensor}"
        self.samples = samples
        self.floor = ctx.physical[0] if ctx.physical is not None else math.nan
        self._level = level_of(severity)
        self.prev = math.nan
        self.run_len = 0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self.run_len = self.run_len + 1 if x == self.prev else 1
        self.prev = x
        if x == self.floor:
            return 0.0, 0
        return ratio_score(float(self.run_len), float(self.samples)), (
            self._level if self.run_len >= self.samples else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        return self._verdicts(x, math.nan, 0)

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        v = self._verdicts(x, self.prev, self.run_len)
        self.prev, self.run_len = float(x[-1]), int(v.evidence["run_samples"][-1])
        return v

    def _verdicts(self, x: FloatArray, prev: float, run_len: int) -> Verdicts:
        """Both array forms: ``prev`` and ``run_len`` are the value and run carried in (NaN, 0: none)."""
        n = len(x)
        idx = np.arange(n)
        change = np.ones(n, dtype=bool)
        change[1:] = x[1:] != x[:-1]
        if n:
            change[0] = x[0] != prev
        start = np.maximum.accumulate(np.where(change, idx, -1)) if n else idx
        # samples before the first change continue the run carried in
        run = np.where(start >= 0, idx - start + 1, run_len + idx + 1).astype(np.float64)
        stopped = x == self.floor
        level = np.where((run >= self.samples) & ~stopped, self._level, 0).astype(np.int8)
        score = np.where(stopped, 0.0, ratio_scores(run, float(self.samples)))
        return Verdicts(score, level, {"run_samples": run})

    def evidence(self) -> dict[str, float]:
        return {"run_samples": float(self.run_len)}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return float(self.samples)

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        dur = ev["run_samples"] * self.ctx.sample_period_s
        return f"{self.ctx.where} has read exactly {self.ctx.fmt(x)} for {about(dur)}: sensor stuck?"


class Spike(Detector):
    """A spike: one reading far off both its neighbours, out and straight back (electrical noise, a loose
    contact). A process has inertia: a motor current, a gas concentration or a force cannot move by
    ``jump`` of its normal range and return within one sample period, while a start, a step or a bar
    entering a stand moves and stays. Known only when the next reading is back, so the flag is on that
    reading (one sample late) and the spike's value is in the evidence.
    """

    name = "spike"
    resume_from = 32

    def __init__(self, ctx: SensorContext, *, jump: float = 0.5, severity: str = "warning") -> None:
        super().__init__(ctx)
        if self.ctx.span() <= 0:
            raise ValueError(f"{self.ctx.sensor}: no normal range in the catalog to size a spike by")
        self.rule = f"health:spike:{self.ctx.sensor}"
        self.min_jump = jump * self.ctx.span()
        self._level = level_of(severity)
        self.before = math.nan  # the two readings before this one
        self.last = math.nan
        self.ev = (0.0, math.nan)  # (size of the smaller of the two jumps, the spike's value)

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        up = self.last - self.before
        back = self.last - x
        size = min(abs(up), abs(back)) if up * back > 0 else 0.0  # NaN before two readings: 0
        self.ev = (size, self.last)
        self.before, self.last = self.last, x
        return ratio_score(size, self.min_jump), (self._level if size > self.min_jump else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        return self._verdicts(x, math.nan, math.nan)

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        v = self._verdicts(x, self.before, self.last)
        self.before, self.last = (float(x[-2]) if len(x) > 1 else self.last), float(x[-1])
        self.ev = (float(v.evidence["jump"][-1]), float(v.evidence["spike"][-1]))
        return v

    def _verdicts(self, x: FloatArray, before: float, last: float) -> Verdicts:
        """Both array forms: ``before`` and ``last`` are the two readings carried in (NaN: none yet)."""
        if len(x) == 0:
            return Verdicts(np.zeros(0), np.zeros(0, dtype=np.int8), {"jump": np.zeros(0), "spike": np.zeros(0)})
        xs = np.concatenate([[before, last], x])
        up = xs[1:-1] - xs[:-2]
        back = xs[1:-1] - xs[2:]
        size = np.where(up * back > 0, np.minimum(np.abs(up), np.abs(back)), 0.0)  # NaN before two readings: 0
        level = np.where(size > self.min_jump, self._level, 0).astype(np.int8)
        return Verdicts(ratio_scores(size, self.min_jump), level, {"jump": size, "spike": xs[1:-1]})

    def evidence(self) -> dict[str, float]:
        return {"jump": self.ev[0], "spike": self.ev[1]}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.min_jump

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        return (f"{self.ctx.where} read {fmt(ev['spike'])} for one sample and is back at {fmt(x)}: "
                "a spike (electrical noise, loose contact?)")


class Dropout(Detector):
    """Missing data: a gap longer than ``factor`` sample periods before this sample.

    The streaming job also watches for silence as it happens (no sample at all); this detector marks
    the gap once data resumes, in both forms, so a backfill shows the same gaps the live job saw.
    """

    name = "dropout"
    resume_from = 32

    def __init__(self, ctx: SensorContext, *, factor: float = 10.0, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.rule = f"health:dropout:{self.ctx.sensor}"
        self.max_gap_s = factor * self.ctx.sample_period_s
        self._level = level_of(severity)
        self.prev_ts: int | None = None
        self.gap_s = 0.0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self.gap_s = 0.0 if self.prev_ts is None else (ts - self.prev_ts) / 1e9
        self.prev_ts = ts
        return ratio_score(self.gap_s, self.max_gap_s), (self._level if self.gap_s > self.max_gap_s else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        return self._verdicts(ts, None)

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        v = self._verdicts(ts, self.prev_ts)
        self.prev_ts, self.gap_s = int(ts[-1]), float(v.evidence["gap_s"][-1])
        return v

    def _verdicts(self, ts: np.ndarray, prev_ts: int | None) -> Verdicts:
        gap = np.zeros(len(ts))
        gap[1:] = (ts[1:] - ts[:-1]) / 1e9
        if prev_ts is not None and len(ts):
            gap[0] = (int(ts[0]) - prev_ts) / 1e9
        level = np.where(gap > self.max_gap_s, self._level, 0).astype(np.int8)
        return Verdicts(ratio_scores(gap, self.max_gap_s), level, {"gap_s": gap})

    def evidence(self) -> dict[str, float]:
        return {"gap_s": self.gap_s}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.max_gap_s

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        return (f"No data from {self.ctx.where} for {about(ev['gap_s'])} before this sample "
                f"(expected every {self.ctx.sample_period_s:g} s)")


class MissingReadings(Detector):
    """Thinning data: more than ``share`` of the readings expected in the last ``window_s`` did not
    arrive, while data keeps coming (a weak radio link underground, an overloaded gateway). No single
    gap is long enough for :class:`Dropout`, yet half the readings may be lost. A silence longer than
    ``max_gap_s`` is Dropout's to report; after one, this detector watches a full window again before it
    judges, so a gap is not reported twice.
    """

    name = "missing"
    resume_from = 128

    def __init__(self, ctx: SensorContext, *, window_s: float = 600.0, share: float = 0.2,
                 max_gap_s: float = 10.0, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.rule = f"health:missing:{self.ctx.sensor}"
        self.window_s = window_s
        self.window_ns = round(window_s * 1e9)
        self.max_gap_ns = max_gap_s * 1e9
        self.expected = window_s / self.ctx.sample_period_s
        self.share = share
        self._level = level_of(severity)
        self.times: deque[int] = deque()
        self.since = 0  # the first reading after the start or after a long silence
        self.prev: int | None = None
        self.missing = 0.0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        if self.prev is None or ts - self.prev > self.max_gap_ns:
            self.since = ts
            self.times.clear()
        self.prev = ts
        self.times.append(ts)
        while self.times[0] <= ts - self.window_ns:
            self.times.popleft()
        if ts - self.since < self.window_ns:
            self.missing = 0.0
            return 0.0, 0
        self.missing = max(0.0, 1.0 - len(self.times) / self.expected)
        return ratio_score(self.missing, self.share), (self._level if self.missing > self.share else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        n = len(ts)
        idx = np.arange(n)
        gap = np.zeros(n)
        gap[1:] = ts[1:] - ts[:-1]
        restart = (idx == 0) | (gap > self.max_gap_ns)
        since = np.maximum.accumulate(np.where(restart, idx, 0)) if n else idx
        first = np.maximum(np.searchsorted(ts, ts - self.window_ns, side="right"), since)
        received = (idx - first + 1).astype(np.float64)
        ready = (ts - ts[since]) >= self.window_ns if n else np.zeros(0, dtype=bool)
        missing = np.where(ready, np.maximum(0.0, 1.0 - received / self.expected), 0.0)
        level = np.where(missing > self.share, self._level, 0).astype(np.int8)
        return Verdicts(ratio_scores(missing, self.share), level, {"missing_share": missing})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        if (self.prev is not None and ts[0] < self.prev) or (ts[1:] < ts[:-1]).any():
            return super()._resume(ts, x)  # out of time order: the window arithmetic below needs order
        n = len(ts)
        held = np.fromiter(self.times, dtype=np.int64, count=len(self.times))
        idx = np.arange(n)
        restart = ts - np.concatenate([[ts[0] if self.prev is None else self.prev], ts[:-1]]) > self.max_gap_ns
        if self.prev is None:
            restart[0] = True
        last = np.maximum.accumulate(np.where(restart, idx, -1))  # -1: the run carried in goes on
        since = np.where(last >= 0, ts[np.maximum(last, 0)], self.since)
        times = np.concatenate([held, ts])
        first = np.maximum(np.searchsorted(times, ts - self.window_ns, side="right"),
                           np.where(last >= 0, len(held) + last, 0))
        received = (len(held) + idx - first + 1).astype(np.float64)
        missing = np.where(ts - since >= self.window_ns, np.maximum(0.0, 1.0 - received / self.expected), 0.0)
        self.prev, self.since, self.missing = int(ts[-1]), int(since[-1]), float(missing[-1])
        self.times = deque(times[first[-1]:].tolist())
        level = np.where(missing > self.share, self._level, 0).astype(np.int8)
        return Verdicts(ratio_scores(missing, self.share), level, {"missing_share": missing})

    def evidence(self) -> dict[str, float]:
        return {"missing_share": self.missing}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.share

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        return (f"{self.ctx.where}: {ev['missing_share']:.0%} of the readings expected in the last "
                f"{about(self.window_s)} did not arrive (expected every {self.ctx.sample_period_s:g} s): "
                "radio link or gateway?")


class PhysicalRange(Detector):
    """A reading the instrument cannot produce (outside the catalog's physical range): a sensor fault."""

    name = "range"
    resume_from = 64

    def __init__(self, ctx: SensorContext, *, severity: str = "warning") -> None:
        super().__init__(ctx)
        if ctx.physical is None:
            raise ValueError(f"{ctx.sensor}: no physical range in the catalog")
        self.rule = f"health:range:{self.ctx.sensor}"
        self.low, self.high = ctx.physical
        self._level = level_of(severity)

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        bad = x < self.low or x > self.high
        return (1.0, self._level) if bad else (0.0, 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        bad = (x < self.low) | (x > self.high)
        return Verdicts(bad.astype(np.float64), np.where(bad, self._level, 0).astype(np.int8), {})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        return self._run(ts, x)  # no state

    def evidence(self) -> dict[str, float]:
        return {}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.high

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        return (f"{self.ctx.where} reads {fmt(x)}, outside what the instrument can report "
                f"({fmt(self.low)} to {fmt(self.high)}): sensor fault")


class CounterDecrease(Detector):
    """A monotonic counter (energy in kWh) that went down: a meter reset or a data fault."""

    name = "counter"
    resume_from = 32

    def __init__(self, ctx: SensorContext, *, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.rule = f"health:counter:{self.ctx.sensor}"
        self._level = level_of(severity)
        self.prev = math.nan
        self.drop = 0.0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self.drop = self.prev - x if x < self.prev else 0.0
        self.prev = x
        return (1.0, self._level) if self.drop > 0 else (0.0, 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        return self._verdicts(x, math.nan)

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        v = self._verdicts(x, self.prev)
        self.prev, self.drop = float(x[-1]), float(v.evidence["drop"][-1])
        return v

    def _verdicts(self, x: FloatArray, prev: float) -> Verdicts:
        before = np.concatenate([[prev], x[:-1]])  # NaN first: nothing to compare with
        drop = np.where(x < before, before - x, 0.0)
        bad = drop > 0
        return Verdicts(bad.astype(np.float64), np.where(bad, self._level, 0).astype(np.int8), {"drop": drop})

    def evidence(self) -> dict[str, float]:
        return {"drop": self.drop}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return 0.0

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        return (f"{self.ctx.where} went down by {fmt(ev['drop'])} to {fmt(x)}: a counter only rises, "
                "so the meter was reset or the data is wrong")
