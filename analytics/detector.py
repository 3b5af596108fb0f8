"""The one detector interface: a streaming form and a batch form that give the same answers.

Every detector, whatever it looks at, speaks the same verbs (after river's ``learn_one``/``score_one``):

- streaming: ``step(ts_ns, value) -> (score, level)`` learns from and scores one sample;
  ``update(ts_ns, value) -> Anomaly | None`` does the same and, when the sample is anomalous,
  returns the evidence (detector, score, threshold, the values, a one-line explanation);
- batch: ``run(ts_ns, values) -> Verdicts`` scores a whole array at once (vectorised with numpy, no
  Python loop per sample); ``detect(series) -> list[Anomaly]`` is its DataFrame-in, anomalies-out form;
- micro-batch: ``resume(ts_ns, values) -> Verdicts`` is the streaming form over an array: it continues
  from the detector's state and leaves the state where ``step`` on each sample would have, with the
  same verdicts. The streaming job scores what arrived in the last fraction of a second this way
  (vectorised in the detectors it spends its time in; a loop of ``step`` in the others).

``score`` is normalised to 0..1 with 0.5 at the detector's threshold, so scores of different
detectors can be fused; ``level`` is 0 for a normal sample, otherwise the severity rank + 1.
Both forms are causal: a sample is scored against what came before it, then learned.
They share their arithmetic (see :mod:`analytics.kernels`), and tests/test_analytics_detectors.py proves
that ``run`` equals a loop of ``step`` for every detector.

Missing values (NaN) are skipped by both forms: they neither score nor change the detector's state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from smartmine.catalog import Limit, ResolvedEquipment
from smartmine.wire import SEVERITY_RANK

FloatArray = np.ndarray
SEVERITIES = tuple(sorted(SEVERITY_RANK, key=SEVERITY_RANK.__getitem__))


def level_of(severity: str) -> int:
    """The ``level`` a detector reports for an anomaly of this severity (0 means normal)."""
    return SEVERITY_RANK[severity] + 1


def severity_of(level: int) -> str:
    return SEVERITIES[level - 1]


def about(seconds: float) -> str:
    """``about 12 min``: a duration rounded the way people say it."""
    if seconds < 90:
        return f"about {max(round(seconds), 1)} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def ratio_score(stat: float, threshold: float) -> float:
    """Map a non-negative statistic to 0..1 with 0.5 exactly at ``threshold`` (plain arithmetic, no exp)."""
    return stat / (stat + threshold) if stat > 0 else 0.0


def ratio_scores(stat: FloatArray, threshold: float | FloatArray) -> FloatArray:
    """The vectorised :func:`ratio_score` (``threshold`` one number or one per sample); identical
    arithmetic, so identical results."""
    out = np.zeros(len(stat))
    pos = stat > 0
    out[pos] = stat[pos] / (stat[pos] + (threshold[pos] if isinstance(threshold, np.ndarray) else threshold))
    return out


@dataclass(frozen=True, slots=True)
class SensorContext:
    """Where a series comes from and what the catalog says about it: names, unit, ranges, limits."""

    site: str = ""
    area: str = ""
    equipment: str = ""
    equipment_name: str = ""
    sensor: str = "value"
    sensor_name: str = "value"
    unit: str = ""
    kind: str = "gauge"
    sample_period_s: float = 1.0
    normal: tuple[float, float] | None = None
    physical: tuple[float, float] | None = None
    limits: tuple[Limit, ...] = ()
    # False for a set point (catalog ``set_by``) or a level that integrates flows (``integrates``): its level
    # is someone's choice or the phase of a fill-and-empty cycle, not news
    level_statistics: bool = True
    # ± the instrument may read off the truth and be in calibration (catalog ``permitted_error``); None: unknown
    permitted_error: float | None = None

    @classmethod
    def from_catalog(cls, eq: ResolvedEquipment, sensor: str, language: str = "en") -> SensorContext:
        s = eq.sensors[sensor]
        return cls(site=eq.site, area=eq.area, equipment=eq.id, equipment_name=eq.name.get(language),
                   sensor=sensor, sensor_name=s.spec.name.get(language), unit=s.unit, kind=s.spec.kind,
                   sample_period_s=s.spec.sample_period_s, normal=s.spec.normal, physical=s.spec.physical,
                   limits=s.limits, level_statistics=s.spec.set_by is None and s.spec.integrates is None,
                   permitted_error=s.spec.permitted_error.value if s.spec.permitted_error is not None else None)

    @property
    def where(self) -> str:
        """``Methane at Upper corner 1203`` (or just the sensor name when there is no equipment)."""
        return f"{self.sensor_name} at {self.equipment_name}" if self.equipment_name else self.sensor_name

    def fmt(self, value: float) -> str:
        """A value with its unit and a sensible number of digits: ``1.62 %vol``, ``2350 Pa``."""
        if not math.isfinite(value):
            return str(value)
        mag = abs(value)
        digits = 0 if mag >= 100 else 1 if mag >= 10 else 2 if mag >= 0.1 else 4
        text = f"{value:.{digits}f}"
        if self.unit in ("", "1", "bool"):
            return text
        # People on shift say "methane 1.2 %"; the catalog's "%vol" only disambiguates the quantity.
        return f"{text} {'%' if self.unit == '%vol' else self.unit}"

    def span(self) -> float:
        """Width of the normal range (a natural scale for the sensor), or 0 if unknown."""
        return (self.normal[1] - self.normal[0]) if self.normal else 0.0


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomalous sample with its evidence. ``rule`` is the stable key alerts deduplicate on."""

    ts: int  # ns since the epoch, the sample that triggered it
    detector: str
    rule: str
    severity: str
    score: float  # 0..1, 0.5 at the threshold
    threshold: float  # in the detector's own statistic (a level in the sensor's unit for limits)
    values: dict[str, float]
    message: str
    ctx: SensorContext = field(repr=False, compare=False, default_factory=SensorContext)


@dataclass(slots=True)
class Verdicts:
    """The batch form's answer: per sample a score (0..1), a level (0 = normal) and evidence columns."""

    score: FloatArray
    level: np.ndarray
    evidence: dict[str, FloatArray] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> Verdicts:
        return cls(np.zeros(n), np.zeros(n, dtype=np.int8), {})

    def expand(self, mask: np.ndarray) -> Verdicts:
        """Put verdicts computed on the finite samples back at their places (NaN rows: normal)."""
        n = len(mask)
        score = np.zeros(n)
        score[mask] = self.score
        level = np.zeros(n, dtype=np.int8)
        level[mask] = self.level
        ev = {}
        for key, col in self.evidence.items():
            full = np.full(n, np.nan)
            full[mask] = col
            ev[key] = full
        return Verdicts(score, level, ev)


class Detector(ABC):
    """A univariate detector. Subclasses implement ``_step``, ``_run``, ``evidence`` and ``explain``."""

    name: ClassVar[str]
    #: stable dedup key; defaults to ``<name>:<sensor>``
    rule: str
    severity: str = "warning"
    #: an episode on this rule clears after this long without a flag (see analytics.episodes)
    hold_s: float = 0.0
    #: an episode on this rule raises the detector's severity only once it has lasted this long; until
    #: then it is ``info`` (shown, not paged). 0: the first flag raises it (limits, health, early warnings)
    confirm_s: float = 0.0
    #: From how many samples the streaming job scores a micro-batch with ``resume`` rather than step by
    #: step (numpy's cost per call against Python's per sample; measured, see docs/benchmarks.md). The
    #: default ``resume`` is a loop of steps: never worth it.
    resume_from: ClassVar[int] = 2**31

    def __init__(self, ctx: SensorContext | None = None) -> None:
        self.ctx = ctx or SensorContext()
        self.rule = f"{self.name}:{self.ctx.sensor}"

    # ---------------------------------------------------------------- what a subclass provides
    @abstractmethod
    def _step(self, ts: int, x: float) -> tuple[float, int]:
        """Score one finite sample against the state, then learn it. Returns (score, level)."""

    @abstractmethod
    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        """Score finite samples in order, from the detector's initial state (vectorised)."""

    @abstractmethod
    def evidence(self) -> dict[str, float]:
        """Evidence behind the last ``_step`` (same keys as the batch form's evidence columns)."""

    @abstractmethod
    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        """One line a person on shift can act on."""

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return float(ev.get("threshold", math.nan))

    def cleared_message(self, x: float, duration_s: float) -> str:
        return f"{self.ctx.where} back to normal ({self.ctx.fmt(x)}) after {about(duration_s)}: {self.rule} cleared"

    # ---------------------------------------------------------------- the public verbs
    def step(self, ts: int, x: float) -> tuple[float, int]:
        if not math.isfinite(x):
            return 0.0, 0
        return self._step(ts, x)

    def update(self, ts: int, x: float) -> Anomaly | None:
        score, level = self.step(ts, x)
        if level == 0:
            return None
        return self.anomaly(ts, x, score, level, self.evidence())

    def run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        ts = np.asarray(ts, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        mask = np.isfinite(x)
        if mask.all():
            return self._run(ts, x)
        return self._run(ts[mask], x[mask]).expand(mask)

    def resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        """Streaming over arrays: the verdicts of ``step`` on each sample in order, from the current state,
        which is then where those steps would leave it. Evidence columns are filled at least on the
        flagged samples (what :func:`analytics.episodes.batch_transitions` reads)."""
        ts = np.asarray(ts, dtype=np.int64)
        x = np.asarray(x, dtype=np.float64)
        mask = np.isfinite(x)
        if mask.all():
            return self._resume(ts, x) if len(x) else Verdicts.empty(0)
        if not mask.any():
            return Verdicts.empty(len(x))
        return self._resume(ts[mask], x[mask]).expand(mask)

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        """:meth:`resume` on finite samples. This default steps through them one by one (exact by
        definition); detectors that are worth it override it with numpy."""
        n = len(x)
        score = np.zeros(n)
        level = np.zeros(n, dtype=np.int8)
        ev: dict[str, FloatArray] = {}
        for i, (t, v) in enumerate(zip(ts.tolist(), x.tolist(), strict=True)):
            score[i], lv = self._step(t, v)
            if lv:
                level[i] = lv
                for key, value in self.evidence().items():
                    if key not in ev:
                        ev[key] = np.full(n, np.nan)
                    ev[key][i] = value
        return Verdicts(score, level, ev)

    def detect(self, series: pd.Series) -> list[Anomaly]:
        """Batch form on a Series indexed by time: the anomalous samples with their evidence."""
        ts = _ns_index(series.index)
        x = series.to_numpy(dtype=np.float64)
        v = self.run(ts, x)
        out = []
        for i in np.flatnonzero(v.level):
            ev = {k: float(col[i]) for k, col in v.evidence.items()}
            out.append(self.anomaly(int(ts[i]), float(x[i]), float(v.score[i]), int(v.level[i]), ev))
        return out

    def anomaly(self, ts: int, x: float, score: float, level: int, ev: Mapping[str, float]) -> Anomaly:
        """The evidence record of one flagged sample (both forms build it here)."""
        values = {self.ctx.sensor: x}
        values.update({k: v for k, v in ev.items() if math.isfinite(v)})
        return Anomaly(ts, self.name, self.rule, severity_of(level), score, self.threshold_of(ev, level),
                       values, self.explain(x, ev, level), self.ctx)


def _ns_index(index: pd.Index) -> np.ndarray:
    if isinstance(index, pd.DatetimeIndex):
        idx = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
        return idx.as_unit("ns").asi8
    return np.asarray(index, dtype=np.int64)
