"""Which detectors watch which sensor, built from the catalog and the settings; the loop driving them.

This is the only place that decides the detector set (Telegraf's agent: the loop is written once, the
detectors are plugins). Per sensor, from its catalog entry:

- every catalog limit -> a :class:`LimitRule`, and an :class:`EarlyWarning` (gauges) unless the limit says
  ``early_warning: false`` (a load someone sets is not a trend to extrapolate)
- gauges -> robust median/MAD, EWMA chart, the shift/daily seasonal baseline, stuck and spike detection, and the
  CUSUM when ``cusum_enabled`` (off by default: see the setting); a set point (catalog ``set_by``: the
  oxygen flow of a blow, a mill's speed) and a level that integrates flows (``integrates``: a sump) get
  no level statistics
- counters -> counter-decrease; every sensor -> dropout, thinning data (missing readings), and
  out-of-physical-range when it has one
- state sensors (on/off) -> only their limits
- per equipment: PCA T²/Q over its gauges, and drift against each ``redundant_with`` neighbour
  (the neighbour's readings are fed in by :class:`PlantScorer`)

Level statistics see only the readings that tell about the process: not those of a start/stop machine that
is stopped or settling (:class:`RunningGate`), nor those of an instrument the stuck check finds frozen
(:class:`StuckGate`, which also makes their windowed references start afresh).

Windows are set in seconds (settings) and turned into samples with the catalog's sample period.

The streaming job scores in micro-batches (:meth:`EquipmentScorer.ingest` / :meth:`EquipmentScorer.flush`):
the limit rules judge each sample the moment it arrives; the other detectors score the samples of the
last fraction of a second together with their vectorised streaming form (``Detector.resume``), which
continues their state, so the anomalies are exactly those of scoring one sample at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analytics.detector import Detector, FloatArray, SensorContext, level_of, severity_of
from analytics.early import EarlyWarning
from analytics.episodes import EpisodeTracker, Transition, batch_transitions
from analytics.health import CounterDecrease, Dropout, Flatline, MissingReadings, PhysicalRange, Spike
from analytics.limits import LimitRule
from analytics.multivariate import PcaMonitor, RedundantDrift
from analytics.seasonal import SeasonalBaseline
from analytics.statistical import Cusum, EwmaChart, RobustZ
from smartmine.catalog import Catalog, ResolvedEquipment
from smartmine.catalog.model import RunningState
from smartmine.config import AnalyticsSettings


def samples(seconds: float, period_s: float, minimum: int = 2) -> int:
    return max(round(seconds / period_s), minimum)


def sensor_detectors(ctx: SensorContext, cfg: AnalyticsSettings, utc_offset_s: int = 8 * 3600,
                     reference_s: float | None = None) -> list[Detector]:
    """The detectors of one sensor, configured from its catalog entry and the settings; ``utc_offset_s``
    is the site's local time offset (its shifts are in local time); ``reference_s`` the span of the level
    statistics' reference when the equipment's ``running`` state says (several heats of a converter)."""
    period = ctx.sample_period_s
    dets: list[Detector] = [LimitRule(ctx, lim, alarm_severity=cfg.limit_alarm_severity,
                                      power_off_severity=cfg.limit_power_off_severity) for lim in ctx.limits]
    stat_sev = cfg.statistical_severity
    if ctx.kind == "gauge":
        window = samples(reference_s or cfg.window_s, period, 8)
        hop = samples(cfg.hop_s, period, 1)
        early_window = samples(cfg.early_window_s, period, 8)
        early_hop = samples(cfg.early_hop_s, period, 1)
        long_window = samples(cfg.early_long_window_s, period, 8) if cfg.early_long_window_s > 0 else None
        dets += [EarlyWarning(ctx, lim, window=early_window, hop=early_hop, horizon_s=cfg.early_horizon_s,
                              min_t=cfg.early_min_t, severity=stat_sev, second_window=long_window)
                 for lim in ctx.limits if lim.early_warning]
        novelty = samples(cfg.novelty_s, period, 0)
        if ctx.level_statistics:  # not for a set point, nor for a sump filling and emptying
            dets += [
                RobustZ(ctx, window=window, hop=hop, threshold=cfg.mad_threshold, severity=stat_sev,
                        novelty=novelty),
                EwmaChart(ctx, window=window, hop=hop, threshold=cfg.ewma_threshold, smoothing=cfg.ewma_smoothing,
                          severity=stat_sev, novelty=novelty),
                SeasonalBaseline(ctx, slot_s=cfg.seasonal_slot_s, utc_offset_s=utc_offset_s,
                                 days=cfg.seasonal_days, threshold=cfg.seasonal_threshold, severity=stat_sev,
                                 novelty=novelty),
            ]
            if cfg.cusum_enabled:
                dets.append(Cusum(ctx, window=window, hop=hop, threshold=cfg.cusum_threshold,
                                  memory=samples(cfg.cusum_memory_s, period, 2), severity=stat_sev,
                                  novelty=novelty))
        dets.append(Flatline(ctx, samples=samples(cfg.stuck_after_s, period, 3), severity=stat_sev))
        if ctx.span() > 0:
            dets.append(Spike(ctx, jump=cfg.spike_jump, severity=stat_sev))
    elif ctx.kind == "counter":
        dets.append(CounterDecrease(ctx, severity=stat_sev))
    dets.append(Dropout(ctx, factor=cfg.dropout_factor, severity=stat_sev))
    dets.append(MissingReadings(ctx, window_s=cfg.missing_window_s, share=cfg.missing_share,
                                max_gap_s=cfg.dropout_factor * period, severity=stat_sev))
    if ctx.physical is not None:
        dets.append(PhysicalRange(ctx, severity=stat_sev))
    for d in dets:
        if not isinstance(d, LimitRule):  # a limit's hysteresis is its hold
            d.hold_s = cfg.clear_after_s
        if d.name in STATE_DRIVEN or d.name == "spike":  # a lone spike is shown; a spiking sensor pages
            d.confirm_s = cfg.confirm_s
    return dets


#: Level statistics: they compare a reading with the recent level, which a start or stop moves by design.
#: A flag of theirs pages only once confirmed (``confirm_s``), as do a spike and a drift; limits, early warnings
#: and the other health checks page at once.
STATE_DRIVEN = frozenset({"mad", "ewma", "cusum", "seasonal"})

#: The level statistics whose reference is a recent window: they start afresh when their instrument is found
#: stuck (:class:`StuckGate`). The seasonal baseline keeps its days of learning (a frozen hour touches one slot).
WINDOWED = frozenset({"mad", "ewma", "cusum"})

#: A micro-batch with fewer samples of a sensor than its detector's ``resume_from`` is stepped sample by
#: sample: numpy's cost per call would exceed the work (same answers either way). Tests set a number
#: here to make every detector take the vectorised path.
VECTORISE_FROM: int | None = None

#: How a frame's detectors are scored: (detector, ts, values) -> transitions.
ScoreFn = Callable[[Detector, np.ndarray, FloatArray], list[Transition]]


class RunningGate:
    """Whether a start/stop machine has been running for its settle time (catalog ``running``), in both
    forms. While it is stopped or settling, its level statistics (:data:`STATE_DRIVEN`) see no samples —
    as if missing: they neither score nor learn — so their reference holds only running readings and a
    start is not a step. Limits, early warnings and sensor health keep watching every sample."""

    def __init__(self, spec: RunningState) -> None:
        self.sensor = spec.sensor
        self.above = spec.above
        self.settle_ns = round(spec.settle_s * 1e9)
        self.since: int | None = None  # ts of the first reading of the current run; None: stopped

    def step(self, ts: int, readings: Mapping[str, float]) -> bool:
        """Streaming: update from the driver's reading in this sample (if any); settled?"""
        x = readings.get(self.sensor, math.nan)
        if math.isfinite(x):
            if x < self.above:
                self.since = None
            elif self.since is None:
                self.since = ts
        return self.since is not None and ts - self.since >= self.settle_ns

    def settled(self, ts: np.ndarray, driver: FloatArray) -> np.ndarray:
        """Batch: per row, the same answer as :meth:`step`; continues from (and updates) the state."""
        n = len(ts)
        if n == 0:
            return np.zeros(0, dtype=bool)
        was_running = self.since is not None
        finite = np.isfinite(driver)
        last = np.maximum.accumulate(np.where(finite, np.arange(n), -1))  # the latest driver reading
        with np.errstate(invalid="ignore"):
            above = driver >= self.above
        running = np.where(last >= 0, above[np.maximum(last, 0)], was_running)
        start = running & ~np.concatenate([[was_running], running[:-1]])
        none = np.iinfo(np.int64).min
        since = np.maximum.accumulate(np.where(start, ts, none))
        since = np.where(since == none, self.since if self.since is not None else 0, since)
        out = running & (np.where(running, ts - since, -1) >= self.settle_ns)
        self.since = int(since[-1]) if running[-1] else None
        return out


class StuckGate:
    """Whether a sensor reads frozen, by the stuck check's own rule (a private :class:`Flatline`), in both
    forms. A frozen transmitter says nothing about the process: while the stuck check flags it, the
    sensor's level statistics neither score nor learn its readings, and when it is first flagged their
    windowed references (:data:`WINDOWED`), which by then hold up to ``stuck_after_s`` of the frozen value,
    are thrown away. Once the instrument reads again they learn the live process for a window before they
    judge it; against a reference of the frozen value, the process's ordinary wander looked like a fault."""

    def __init__(self, ctx: SensorContext, samples: int) -> None:
        self.flatline = Flatline(ctx, samples=samples)
        self.stuck = False  # whether the latest finite sample was flagged

    def step(self, x: float) -> tuple[bool, bool]:
        """Streaming, one finite sample: (frozen, first frozen sample of a run)."""
        frozen = self.flatline.step(0, x)[1] > 0
        started = frozen and not self.stuck
        self.stuck = frozen
        return frozen, started

    def flags(self, x: FloatArray) -> tuple[np.ndarray, np.ndarray]:
        """Over finite samples, continuing the state: (frozen, first frozen sample of a run) per sample."""
        if len(x) == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
        frozen = self.flatline.resume(np.zeros(len(x), dtype=np.int64), x).level > 0
        started = frozen & ~np.concatenate([[self.stuck], frozen[:-1]])
        self.stuck = bool(frozen[-1])
        return frozen, started


def _ns(times: pd.Series | pd.Index) -> np.ndarray:
    idx = pd.DatetimeIndex(times)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns").asi8


class EquipmentScorer:
    """All detectors of one equipment and their episodes, in streaming (``step``) or batch (``run``) form."""

    def __init__(self, eq: ResolvedEquipment, cfg: AnalyticsSettings, language: str = "en",
                 utc_offset_s: int = 8 * 3600) -> None:
        self.eq = eq
        self.cfg = cfg
        self.contexts = {sid: SensorContext.from_catalog(eq, sid, language) for sid in eq.sensors}
        running = eq.type_spec.running
        self.running = RunningGate(running) if running is not None and running.sensor in eq.sensors else None
        reference_s = running.reference_s if self.running is not None and running is not None else None
        self._built = (utc_offset_s, reference_s)
        self.detectors: dict[str, list[Detector]] = {
            sid: sensor_detectors(ctx, cfg, utc_offset_s, reference_s) for sid, ctx in self.contexts.items()}
        # sensor -> whether it reads frozen, for the sensors with a stuck check and windowed level statistics
        self.stuck_gates = {sid: StuckGate(self.contexts[sid], stuck[0].samples) for sid, dets in self.detectors.items()
                            if (stuck := [d for d in dets if isinstance(d, Flatline)])
                            and any(d.name in WINDOWED for d in dets)}
        self.tracker = EpisodeTracker()
        self.samples = 0
        self.unknown_sensors: set[str] = set()
        # The streaming job runs the limit rules on every sample as it arrives, never in a micro-batch: a
        # regulatory limit's alarm comes with the violating sample.
        self.limits = {sid: rules for sid, dets in self.detectors.items()
                       if (rules := [d for d in dets if isinstance(d, LimitRule)])}
        self.batched = {sid: [d for d in dets if not isinstance(d, LimitRule)] for sid, dets in self.detectors.items()}
        self.vectorise_from = min((d.resume_from for dets in self.batched.values() for d in dets), default=1)
        # Micro-batch of the streaming job: (ts, readings, running gate settled) per sample not yet scored
        # by the batched detectors.
        self.buffered: list[tuple[int, Mapping[str, float], bool]] = []
        self.pca = self._pca(language)
        # sensor -> drift detector against the first redundant neighbour that has the same sensor
        self.drift: dict[str, RedundantDrift] = {}
        if eq.redundant_with:
            neighbour = eq.redundant_with[0]
            for sid, ctx in self.contexts.items():
                if ctx.kind == "gauge" and eq.sensors[sid].spec.local is None:  # a twin reads the same
                    d = RedundantDrift(ctx, neighbour, window=samples(cfg.window_s * 2.5, ctx.sample_period_s, 8),
                                       hop=samples(cfg.hop_s, ctx.sample_period_s, 1), share=cfg.drift_threshold,
                                       severity=cfg.statistical_severity)
                    d.hold_s = cfg.clear_after_s
                    d.confirm_s = cfg.confirm_s  # an instrument's drift lasts; a difference at the line flickers
                    self.drift[sid] = d

    def _pca(self, language: str) -> PcaMonitor | None:
        """PCA over the equipment's gauges, when it has at least two (rows at the fastest sensor's rate)."""
        gauges = [sid for sid, ctx in self.contexts.items() if ctx.kind == "gauge"]
        if len(gauges) < 2 or not self.cfg.pca_enabled:
            return None
        period = min(self.contexts[sid].sample_period_s for sid in gauges)
        ctx = SensorContext(site=self.eq.site, area=self.eq.area, equipment=self.eq.id,
                            equipment_name=self.eq.name.get(language), sensor="", sensor_name="")
        pca = PcaMonitor(gauges, ctx, window=samples(self.cfg.pca_window_s, period, 4 * len(gauges)),
                         hop=samples(self.cfg.pca_refit_s, period, 1), severity=self.cfg.statistical_severity,
                         novelty=samples(self.cfg.novelty_s, period, 0))
        pca.hold_s = self.cfg.clear_after_s
        pca.confirm_s = self.cfg.confirm_s
        return pca

    def all_detectors(self) -> Iterator[Detector]:
        for dets in self.detectors.values():
            yield from dets
        if self.pca is not None:
            yield self.pca
        yield from self.drift.values()

    def step_vector(self, det: Detector, ts: int, row: np.ndarray) -> Transition | None:
        """Streaming for a detector that takes several values per sample (PCA)."""
        a = det.update(ts, row)  # type: ignore[arg-type]
        if a is not None:
            return self.tracker.flagged(a, det.confirm_s)
        if det.rule in self.tracker.open:
            return self.tracker.quiet(det, ts, math.nan)
        return None

    def _step_pca(self, ts: int, readings: Mapping[str, float], out: list[Transition]) -> None:
        assert self.pca is not None
        row = np.array([readings.get(c, math.nan) for c in self.pca.columns], dtype=np.float64)
        t = self.step_vector(self.pca, ts, row)
        if t is not None:
            out.append(t)

    def step_drift(self, ts: int, sensor: str, difference: float) -> Transition | None:
        """Streaming: this sensor minus its redundant neighbour's latest reading."""
        det = self.drift.get(sensor)
        return None if det is None else self.tracker.observe(det, ts, difference)

    def step(self, ts: int, readings: Mapping[str, float]) -> list[Transition]:
        """Streaming: one equipment sample (sensor -> value) at ``ts`` ns."""
        settled = self.running.step(ts, readings) if self.running is not None else True
        self._note_unknown(readings)
        out = self._observe(ts, readings, settled, self.detectors)
        if self.pca is not None:
            self._step_pca(ts, readings, out)
        self.samples += 1
        return out

    def _note_unknown(self, readings: Mapping[str, float]) -> None:
        if not readings.keys() <= self.detectors.keys():
            self.unknown_sensors.update(readings.keys() - self.detectors.keys())

    def _restart(self, sensor: str, rule: str) -> Detector:
        """A fresh level statistic in place of ``rule`` of ``sensor`` (in every list that holds it)."""
        utc_offset_s, reference_s = self._built
        fresh = next(d for d in sensor_detectors(self.contexts[sensor], self.cfg, utc_offset_s, reference_s)
                     if d.rule == rule)
        for dets in (self.detectors[sensor], self.batched[sensor]):
            for j, d in enumerate(dets):
                if d.rule == rule:
                    dets[j] = fresh
        return fresh

    def _observe(self, ts: int, readings: Mapping[str, float], settled: bool,
                 detectors: Mapping[str, list[Detector]]) -> list[Transition]:
        """One sample through ``detectors`` (sensor -> detectors) and the episodes."""
        out: list[Transition] = []
        observe = self.tracker.observe
        for sensor, x in readings.items():
            dets = detectors.get(sensor)
            if dets is None:
                continue
            frozen = False
            gate = self.stuck_gates.get(sensor)
            if gate is not None and math.isfinite(x):
                frozen, started = gate.step(x)
                if started:  # its windowed level statistics start afresh (:class:`StuckGate`)
                    for d in [d for d in dets if d.name in WINDOWED]:
                        self._restart(sensor, d.rule)
            for d in dets:
                if (frozen or not settled) and d.name in STATE_DRIVEN:
                    continue  # a machine starting or stopped, a frozen instrument: not news of the process
                t = observe(d, ts, x)
                if t is not None:
                    out.append(t)
        return out

    def _judge_limits(self, ts: int, readings: Mapping[str, float]) -> list[Transition]:
        """The limit rules on one sample; a rule with nothing to do (normal, no episode open, the value
        short of its levels) is not stepped: the same answers, for a fraction of the cost."""
        out: list[Transition] = []
        observe = self.tracker.observe
        open_rules = self.tracker.open
        for sensor, rules in self.limits.items():
            x = readings.get(sensor)
            if x is None:
                continue
            for d in rules:
                if d.idle_at(x) and d.rule not in open_rules:
                    continue
                t = observe(d, ts, x)
                if t is not None:
                    out.append(t)
        return out

    def ingest(self, ts: int, readings: Mapping[str, float]) -> list[Transition]:
        """Streaming in micro-batches: the limit rules (and PCA) score this sample now; the other detectors
        at the next :meth:`flush`, with the same answers :meth:`step` gives. ``readings`` is kept until
        then and must not change."""
        settled = self.running.step(ts, readings) if self.running is not None else True
        self._note_unknown(readings)
        out = self._judge_limits(ts, readings)
        if self.pca is not None:
            self._step_pca(ts, readings, out)
        self.buffered.append((ts, readings, settled))
        self.samples += 1
        return out

    def flush(self) -> list[Transition]:
        """Score the samples :meth:`ingest` kept with every detector but the limit rules, each sensor's
        samples as one array through ``Detector.resume`` (continuing its state), and track the episodes."""
        rows, self.buffered = self.buffered, []
        n = len(rows)
        if n < (VECTORISE_FROM if VECTORISE_FROM is not None else self.vectorise_from):
            # too few for numpy to pay for any detector: one sample at a time, as in `step`
            return [t for ts, readings, settled in rows for t in self._observe(ts, readings, settled, self.batched)]
        ts_all = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        settled = (np.fromiter((r[2] for r in rows), dtype=bool, count=n) if self.running is not None else None)

        def column(sensor: str) -> FloatArray:
            nan = math.nan
            return np.array([r[1].get(sensor, nan) for r in rows], dtype=np.float64)

        out = self._score(self.batched, ts_all, column, settled, self._resumed)
        out.sort(key=lambda t: t.ts)
        return out

    def _resumed(self, det: Detector, ts: np.ndarray, x: FloatArray) -> list[Transition]:
        # Episodes from arrays (batch_transitions) need time order; a publisher replaying its buffer can
        # deliver a sample after a later one, and then the samples are stepped in arrival order instead.
        if (len(x) < (VECTORISE_FROM if VECTORISE_FROM is not None else det.resume_from)
                or (ts[1:] < ts[:-1]).any()):
            observe = self.tracker.observe
            return [t for t in (observe(det, a, b) for a, b in zip(ts.tolist(), x.tolist(), strict=True))
                    if t is not None]
        return batch_transitions(self.tracker, det, ts, x, det.resume(ts, x))

    def _score(self, detectors: Mapping[str, list[Detector]], ts_all: np.ndarray,
               column: Callable[[str], FloatArray | None], settled: np.ndarray | None,
               score: ScoreFn) -> list[Transition]:
        """Score each sensor's column with its detectors; the level statistics of a start/stop machine see
        only its settled samples (:class:`RunningGate`). Shared by the batch job and the micro-batches."""
        out: list[Transition] = []
        for sensor, dets in detectors.items():
            x_all = column(sensor)
            if x_all is None:
                continue
            mask = np.isfinite(x_all)
            if not mask.any():
                continue
            ts, x = ts_all[mask], x_all[mask]
            gate = self.stuck_gates.get(sensor)
            gating = settled is not None or gate is not None
            cuts: list[int] = []  # where the windowed statistics start afresh, among the gated samples
            if gating:
                gated = mask & settled if settled is not None else mask.copy()
                if gate is not None:
                    frozen, started = gate.flags(x)
                    rows = np.flatnonzero(mask)
                    gated[rows[frozen]] = False
                    cuts = np.searchsorted(np.flatnonzero(gated), rows[started]).tolist()
                ts_gated, x_gated = ts_all[gated], x_all[gated]
            for d in list(dets):
                if not gating or d.name not in STATE_DRIVEN:
                    out.extend(score(d, ts, x))
                elif not cuts or d.name not in WINDOWED:
                    out.extend(score(d, ts_gated, x_gated))
                else:  # a fresh detector from each time the instrument was found frozen, as in `_observe`
                    bounds = [0, *cuts, len(x_gated)]
                    for k in range(len(bounds) - 1):
                        if k > 0:
                            d = self._restart(sensor, d.rule)
                        lo, hi = bounds[k], bounds[k + 1]
                        if hi > lo:
                            out.extend(score(d, ts_gated[lo:hi], x_gated[lo:hi]))
        return out

    def run(self, frame: pd.DataFrame) -> list[Transition]:
        """Batch: a frame with a ``time`` column (or a DatetimeIndex) and one column per sensor,
        sorted by time. Continues the episodes of an earlier ``run`` (backfill in chunks)."""
        times = frame["time"] if "time" in frame.columns else frame.index
        ts_all = _ns(times)
        settled = None
        if self.running is not None:
            driver = (pd.to_numeric(frame[self.running.sensor], errors="coerce").to_numpy(dtype=np.float64)
                      if self.running.sensor in frame.columns else np.full(len(frame), np.nan))
            settled = self.running.settled(ts_all, driver)

        def column(sensor: str) -> FloatArray | None:
            if sensor not in frame.columns:
                return None
            return pd.to_numeric(frame[sensor], errors="coerce").to_numpy(dtype=np.float64)

        def batch(d: Detector, ts: np.ndarray, x: FloatArray) -> list[Transition]:
            return batch_transitions(self.tracker, d, ts, x, d.run(ts, x))

        out = self._score(self.detectors, ts_all, column, settled, batch)
        if self.pca is not None and all(c in frame.columns for c in self.pca.columns):
            rows = frame[self.pca.columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            v = self.pca.run(ts_all, rows)
            out.extend(batch_transitions(self.tracker, self.pca, ts_all, np.full(len(ts_all), np.nan), v))
        self.samples += len(frame)
        out.sort(key=lambda t: t.ts)
        return out

    def run_drift(self, frame: pd.DataFrame, neighbour: pd.DataFrame) -> list[Transition]:
        """Batch drift against the redundant neighbour: each sample minus the neighbour's latest reading
        at or before it (no older than two sample periods), where the two are comparable, as the streaming
        job sees it."""
        out: list[Transition] = []
        left = pd.DataFrame({"time": pd.to_datetime(frame["time"], utc=True)})
        right_time = pd.to_datetime(neighbour["time"], utc=True)
        for sensor, det in self.drift.items():
            if sensor not in frame.columns or sensor not in neighbour.columns:
                continue
            tol = pd.Timedelta(seconds=2 * det.ctx.sample_period_s)
            a = left.assign(a=pd.to_numeric(frame[sensor], errors="coerce").to_numpy()).dropna()
            b = pd.DataFrame({"time": right_time, "b": pd.to_numeric(neighbour[sensor], errors="coerce")}).dropna()
            merged = pd.merge_asof(a.sort_values("time"), b.sort_values("time"), on="time", direction="backward",
                                   tolerance=tol).dropna()
            merged = merged[det.comparable_all(merged["a"].to_numpy(dtype=np.float64),
                                               merged["b"].to_numpy(dtype=np.float64))]
            ts = _ns(merged["time"])
            diff = (merged["a"] - merged["b"]).to_numpy(dtype=np.float64)
            out.extend(batch_transitions(self.tracker, det, ts, diff, det.run(ts, diff)))
        return out


class PlantScorer:
    """Every equipment of the catalog, built on first sight (the streaming job's state)."""

    def __init__(self, catalog: Catalog, cfg: AnalyticsSettings, language: str = "en", *,
                 micro_batch: bool = False) -> None:
        self.catalog = catalog
        self.cfg = cfg
        self.language = language
        # micro_batch: ``step`` runs the limit rules at once and keeps the samples for ``flush``
        self.micro_batch = micro_batch
        self.equipment: dict[tuple[str, str], EquipmentScorer | None] = {}
        # (site, equipment) -> sensor -> (ts, value): the latest reading, for redundant neighbours
        self.latest: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        self._watched: set[tuple[str, str]] = set()
        for eq in catalog.all_equipment():
            self._watched.update((eq.site, n) for n in eq.redundant_with)

    def step(self, site: str, equipment: str, ts: int, readings: Mapping[str, float]) -> list[Transition] | None:
        """Score one equipment sample; ``None`` when the equipment is not in the catalog."""
        scorer = self.scorer(site, equipment)
        if scorer is None:
            return None
        out = scorer.ingest(ts, readings) if self.micro_batch else scorer.step(ts, readings)
        if (site, equipment) in self._watched:
            latest = self.latest.setdefault((site, equipment), {})
            for sensor, x in readings.items():
                if math.isfinite(x):
                    latest[sensor] = (ts, x)
        if scorer.drift:
            neighbour = self.latest.get((site, scorer.eq.redundant_with[0]), {})
            for sensor, det in scorer.drift.items():
                x = readings.get(sensor, math.nan)
                seen = neighbour.get(sensor)
                if (seen is None or not math.isfinite(x) or ts - seen[0] > 2e9 * det.ctx.sample_period_s
                        or not det.comparable(x, seen[1])):
                    continue
                t = scorer.step_drift(ts, sensor, x - seen[1])
                if t is not None:
                    out.append(t)
        return out

    def flush(self, site: str, equipment: str) -> list[Transition]:
        """Score an equipment's micro-batch (nothing to do when it has none)."""
        scorer = self.equipment.get((site, equipment))
        return scorer.flush() if scorer is not None else []

    def buffered(self, site: str, equipment: str) -> int:
        """How many samples of an equipment wait for :meth:`flush`."""
        scorer = self.equipment.get((site, equipment))
        return len(scorer.buffered) if scorer is not None else 0

    def scorer(self, site: str, equipment: str) -> EquipmentScorer | None:
        key = (site, equipment)
        if key not in self.equipment:
            eq = self.catalog.equipment(site, equipment)
            self.equipment[key] = (EquipmentScorer(eq, self.cfg, self.language, utc_offset(self.catalog, site))
                                   if eq is not None else None)
        return self.equipment[key]


def utc_offset(catalog: Catalog, site: str) -> int:
    """The site's offset from UTC in seconds now (the mines and plants in the catalog keep no DST)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = catalog.sites[site].timezone if site in catalog.sites else "UTC"
    offset = datetime.now(ZoneInfo(tz)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@dataclass(frozen=True, slots=True)
class Combined:
    """One equipment's state from all its detectors: the highest score and one severity."""

    score: float
    severity: str | None
    detectors: tuple[str, ...]


def combine(scores: Mapping[str, float], levels: Mapping[str, int]) -> Combined:
    """Fuse detectors' scores into one. The score is the highest (scores share a scale: 0.5 at each
    detector's threshold); the severity is the highest level flagged, raised from ``warning`` to
    ``critical`` when two or more different detectors agree (independent evidence)."""
    flagged = tuple(sorted(name for name, lv in levels.items() if lv > 0))
    score = max(scores.values(), default=0.0)
    if not flagged:
        return Combined(score, None, ())
    level = max(levels[name] for name in flagged)
    if len(flagged) >= 2 and level == level_of("warning"):
        level = level_of("critical")
    return Combined(score, severity_of(level), flagged)
