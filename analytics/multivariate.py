"""Multivariate detectors: PCA T² and Q (SPE) over an equipment's sensors, and drift between
redundant sensors.

PCA: fitted on a warm-up window of rows (standardised), refitted every ``hop`` rows on the last
``window`` rows it judged normal, so the model follows the plant's operating point without learning
a fault as the new normal. T² (Hotelling) measures how far a
row is inside the model's plane from normal, Q (squared prediction error) how far it is off the plane:
a broken correlation (belt speed no longer following drive speed) shows in Q even when every sensor
is within its own range. Limits are the training rows' 99.5th percentile times a margin, because
plant signals are autocorrelated and the textbook F / chi² limits assume independent rows.

The vector form of :class:`~analytics.detector.Detector`: ``step(ts, row)`` and ``run(ts, matrix)``.
A missing value is carried forward from the column's last reading (causal); a row before every column
has been seen is skipped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, about, level_of, ratio_score, ratio_scores
from analytics.kernels import HopWindow, NoveltyGate, broadcast, novelty_gate

VARIANCE_KEPT = 0.9
LIMIT_QUANTILE = 99.5
LIMIT_MARGIN = 3.0


def pca_fit(rows: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float, float]:
    """Mean, scale, loadings (p x k), eigenvalues (k), T² limit and Q limit of one training window."""
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale = np.where(scale > 1e-12 * np.maximum(np.abs(mean), 1.0), scale, 1.0)
    z = (rows - mean) / scale
    cov = (z.T @ z) / max(len(rows) - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 1e-12), eigvec[:, order]
    share = np.cumsum(eigval) / eigval.sum()
    k = int(np.searchsorted(share, VARIANCE_KEPT) + 1)
    k = max(1, min(k, rows.shape[1] - 1)) if rows.shape[1] > 1 else 1
    loadings, lam = eigvec[:, :k], eigval[:k]
    t2, q = pca_stats(z, loadings, lam)
    t2_lim = float(np.percentile(t2, LIMIT_QUANTILE)) * LIMIT_MARGIN
    q_lim = float(np.percentile(q, LIMIT_QUANTILE)) * LIMIT_MARGIN
    return mean, scale, loadings, lam, max(t2_lim, 1e-9), max(q_lim, 1e-9)


def pca_stats(z: FloatArray, loadings: FloatArray, lam: FloatArray) -> tuple[FloatArray, FloatArray]:
    """T² and Q of standardised rows. Sums by broadcasting rather than BLAS so a row scores the same
    alone (streaming) as inside a block (batch)."""
    t = (z[:, :, None] * loadings[None, :, :]).sum(axis=1)
    t2 = (t * t / lam).sum(axis=1)
    resid = z - (t[:, None, :] * loadings[None, :, :]).sum(axis=2)
    q = (resid * resid).sum(axis=1)
    return t2, q


class PcaMonitor(Detector):
    """PCA T² and Q over several columns (an equipment's gauges, or the signals of a file)."""

    name = "pca"

    def __init__(self, columns: Sequence[str], ctx: SensorContext | None = None, *, window: int = 600,
                 hop: int = 300, severity: str = "warning", novelty: int = 0) -> None:
        super().__init__(ctx or SensorContext(sensor=""))
        self.columns = list(columns)
        self.rule = "pca:" + (self.ctx.equipment or "signals")
        self.hop = HopWindow(window, hop)
        self._level = level_of(severity)
        self.rows: deque[FloatArray] = deque(maxlen=window)
        self.count = 0
        self.last = np.full(len(self.columns), np.nan)
        self.model: tuple[FloatArray, FloatArray, FloatArray, FloatArray, float, float] | None = None
        self.ev: dict[str, float] = {}
        self.novelty = novelty
        self.gate = NoveltyGate(1.0, novelty)

    # The vector form: NaN means "no new reading for this column", not "skip the row".
    def step(self, ts: int, x: FloatArray) -> tuple[float, int]:  # type: ignore[override]
        x = np.asarray(x, dtype=np.float64)
        self.last = np.where(np.isfinite(x), x, self.last)
        if not np.isfinite(self.last).all():
            return 0.0, 0
        return self._step_row(self.last.copy())

    def run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        import pandas as pd

        filled = pd.DataFrame(np.asarray(x, dtype=np.float64)).ffill().to_numpy()
        ok = np.isfinite(filled).all(axis=1)
        if ok.all():
            return self._run(np.asarray(ts, dtype=np.int64), filled)
        return self._run(np.asarray(ts, dtype=np.int64)[ok], filled[ok]).expand(ok)

    def _score_row(self, row: FloatArray) -> tuple[float, float, float]:
        assert self.model is not None
        mean, scale, loadings, lam, t2_lim, q_lim = self.model
        t2, q = pca_stats(((row - mean) / scale)[None, :], loadings, lam)
        t2n, qn = float(t2[0]) / t2_lim, float(q[0]) / q_lim
        return max(t2n, qn), float(t2[0]), float(q[0])

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        return self._step_row(np.atleast_1d(np.asarray(x, dtype=np.float64)))

    def _step_row(self, row: FloatArray) -> tuple[float, int]:
        if self.hop.due(self.count):
            self.model = pca_fit(np.array(self.rows))
        self.count += 1
        if self.model is None:
            self.ev = {}
            self.rows.append(row)
            return 0.0, 0
        stat, t2, q = self._score_row(row)
        self.ev = {"t2": t2, "q": q, "t2_limit": self.model[4], "q_limit": self.model[5], "stat": stat}
        if stat < 1.0:
            self.rows.append(row)
        eff, flagged = self.gate.judge(stat)
        return stat / (stat + eff), (self._level if flagged else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        n = len(x)
        fit_idx = self.hop.fit_index(n)
        stat = np.zeros(n)
        t2 = np.full(n, np.nan)
        q = np.full(n, np.nan)
        t2_lim = np.full(n, np.nan)
        q_lim = np.full(n, np.nan)
        window = self.hop.window
        normal: deque[np.ndarray] = deque([np.arange(min(window, n))])  # indices of rows judged normal
        for f in range(int(fit_idx.max()) + 1 if n else 0):
            train = np.concatenate(list(normal))[-window:]
            normal = deque([train])
            mean, scale, loadings, lam, tl, ql = pca_fit(x[train])
            sel = np.flatnonzero(fit_idx == f)
            a, b = pca_stats((x[sel] - mean) / scale, loadings, lam)
            t2[sel], q[sel], t2_lim[sel], q_lim[sel] = a, b, tl, ql
            stat[sel] = np.maximum(a / tl, b / ql)
            normal.append(sel[stat[sel] < 1.0])
        eff, flagged = novelty_gate(stat, 1.0, self.novelty)
        score = np.zeros(n)
        pos = stat > 0
        score[pos] = stat[pos] / (stat[pos] + eff[pos])
        level = np.where(flagged, self._level, 0).astype(np.int8)
        return Verdicts(score, level,
                        {"t2": t2, "q": q, "t2_limit": t2_lim, "q_limit": q_lim, "stat": stat})

    def evidence(self) -> dict[str, float]:
        return dict(self.ev)

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return 1.0

    def cleared_message(self, x: float, duration_s: float) -> str:
        where = self.ctx.equipment_name or "the signals"
        return f"{where}: sensors move together as usual again after {about(duration_s)}"

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        where = self.ctx.equipment_name or "the signals"
        if ev["q"] / ev["q_limit"] >= ev["t2"] / ev["t2_limit"]:
            return (f"{where}: sensors no longer move together as they usually do "
                    f"(PCA Q {ev['q']:.1f} > limit {ev['q_limit']:.1f})")
        return (f"{where}: an unusual combination of readings (PCA T² {ev['t2']:.1f} > limit "
                f"{ev['t2_limit']:.1f})")

    def anomaly(self, ts: int, x: float, score: float, level: int, ev: Mapping[str, float]):  # type: ignore[no-untyped-def]
        a = super().anomaly(ts, math.nan, score, level, ev)
        a.values.pop(self.ctx.sensor, None)
        return a


class RedundantDrift(Detector):
    """Drift against a redundant neighbour: the median difference between two sensors that measure the
    same air has moved, since the first window, by more than the instrument's permitted error (catalog
    ``permitted_error``: one of the two is then out of calibration), or, where the catalog does not know
    it, by more than ``share`` of the sensor's normal range.

    Two instruments at the same place never read exactly alike (mounting, calibration); that standing
    offset is what the first window learns. Drift is the offset changing. Within the permitted error it is
    calibration tolerance, not a fault: a methane sensor may read 0.10 % off (AQ 6203) and pass.

    The pair is compared only while the air is as usual (:meth:`comparable`): when both read beyond the
    same end of the normal range (methane at 1.3 % in a ventilation failure) the process is upset, and two
    sound instruments differ there by their span errors, which grow with the gas (the standard permits ±10 %
    of the reading above 1 %). Such an upset is the limits' business; learnt as the pair's standing offset,
    it made every later hour look like drift. One instrument drifting away alone stays comparable."""

    name = "drift"

    def __init__(self, ctx: SensorContext, neighbour: str, *, window: int = 600, hop: int = 60,
                 share: float = 0.1, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.neighbour = neighbour
        self.rule = f"health:drift:{ctx.sensor}"
        self.hop = HopWindow(window, hop)
        span = ctx.span()
        self.limit = (ctx.permitted_error if ctx.permitted_error is not None
                      else share * span if span > 0 else math.inf)
        self._level = level_of(severity)
        self.diffs: deque[float] = deque(maxlen=window)
        self.count = 0
        self.drift = math.nan
        self.reference = math.nan

    def comparable(self, reading: float, neighbour: float) -> bool:
        """Whether the two readings are compared: not both beyond the same end of the normal range."""
        if self.ctx.normal is None:
            return True
        lo, hi = self.ctx.normal
        return not ((reading > hi and neighbour > hi) or (reading < lo and neighbour < lo))

    def comparable_all(self, reading: FloatArray, neighbour: FloatArray) -> np.ndarray:
        """:meth:`comparable` of each pair (the batch form)."""
        if self.ctx.normal is None:
            return np.ones(len(reading), dtype=bool)
        lo, hi = self.ctx.normal
        return ~(((reading > hi) & (neighbour > hi)) | ((reading < lo) & (neighbour < lo)))

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        """``x`` is this sensor minus the neighbour at the same time."""
        if self.hop.due(self.count):
            median = float(np.median(np.fromiter(self.diffs, dtype=np.float64)[None, :], axis=1)[0])
            if math.isnan(self.reference):
                self.reference = median
            self.drift = median - self.reference
        self.diffs.append(x)
        self.count += 1
        if math.isnan(self.drift):
            return 0.0, 0
        stat = abs(self.drift)
        return ratio_score(stat, self.limit), (self._level if stat >= self.limit else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        fit_idx = self.hop.fit_index(len(x))
        fits = self.hop.fit_all(lambda w: (np.median(w, axis=1),), x)
        if not fits:
            return Verdicts.empty(len(x))
        (median,) = fits
        (drift,) = broadcast((median - median[0],), fit_idx)
        stat = np.where(np.isfinite(drift), np.abs(drift), 0.0)
        level = np.where(stat >= self.limit, self._level, 0).astype(np.int8)
        return Verdicts(ratio_scores(stat, self.limit), level, {"drift": drift})

    def evidence(self) -> dict[str, float]:
        return {"drift": self.drift}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.limit

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        side = "above" if ev["drift"] > 0 else "below"
        return (f"{self.ctx.where} has drifted {fmt(abs(ev['drift']))} {side} its redundant neighbour "
                f"{self.neighbour} (allowed {fmt(self.limit)}): one of them drifts, calibrate")


# ------------------------------------------------------------------------------ the process monitor
# Dynamic PCA with calibrated limits, for files of many process signals (score-file, the TEP protocol).
# Learned once on a reference of normal rows; every statistic is turned into a tail p-value against
# the same statistic on reference rows the model did not see, and the p-values are combined so that the
# share of false alarms on normal rows stays at the budget however many statistics there are.


@dataclass(frozen=True, slots=True)
class ProcessMonitoring:
    """Settings of :class:`ProcessMonitor` (one set for every file; chosen in docs/benchmarks.md)."""

    lags: int = 2  # each row is modelled with the 2 rows before it: the process's own dynamics
    variance_kept: float = 0.5  # principal components kept (share of the reference's variance)
    smoothing: float = 0.1  # EWMA weight of the persistent statistics (about 10 rows' memory)
    folds: int = 5  # reference split into contiguous blocks: each is scored by a model fitted without it
    budget: float = 0.001  # nominal share of normal rows flagged (the combined p-value threshold)
    reference_rows: int = 500  # score-file: the first rows of a file are its normal reference


PROCESS_DEFAULTS = ProcessMonitoring()
#: The statistics a row is judged by, in the order of the p-value columns.
STATISTICS = ("t2", "q", "t2_trend", "q_trend", "shift")


def lagged(z: FloatArray, lags: int) -> FloatArray:
    """Rows ``[z_t, z_t-1, ..., z_t-lags]`` for t = lags .. n-1."""
    n = len(z)
    return np.hstack([z[lags - k:n - k] for k in range(lags + 1)])


def ewma(x: FloatArray, weight: float, start: float | FloatArray) -> FloatArray:
    """Exponentially weighted mean along axis 0 from ``start`` (vectorised; causal)."""
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    start_row = np.broadcast_to(np.asarray(start, dtype=np.float64), x.shape[1:])
    zi = ((1.0 - weight) * start_row)[None, ...]
    y, _ = lfilter([weight], [1.0, -(1.0 - weight)], x, axis=0, zi=zi)
    return np.asarray(y)


def tail_pvalues(stat: FloatArray, reference: FloatArray) -> FloatArray:
    """Calibrated upper-tail p-values ``(1 + #{reference >= s}) / (n + 1)``; beyond the largest reference
    value the tail goes on falling exponentially (fitted on the top tenth of the reference), so that
    scores keep ranking rows the reference has nothing as extreme as."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    n = len(ref)
    s = np.asarray(stat, dtype=np.float64)
    p = (1.0 + n - np.searchsorted(ref, s, side="left")) / (n + 1.0)
    top = ref[int(0.9 * n):]
    scale = max(float(np.mean(top - top[0])), 1e-9)
    beyond = s > ref[-1]
    p[beyond] = np.exp(-(s[beyond] - ref[-1]) / scale) / (n + 1.0)
    return np.where(np.isfinite(s), p, 1.0)


@dataclass
class ProcessModel:
    """What :class:`ProcessMonitor` learned from the reference."""

    centre: FloatArray
    scale: FloatArray
    mean: FloatArray
    loadings: FloatArray
    eigenvalues: FloatArray
    start: FloatArray  # starting value of the smoothed statistics (the reference's typical value)
    shift_scale: FloatArray  # per signal: spread of its smoothed z on held-out reference rows
    calibration: FloatArray  # held-out reference statistics (rows x STATISTICS)


class ProcessMonitor:
    """Dynamic PCA T² and Q over many process signals, with calibrated limits and contributions.

    - Robust scaling (median, MAD) learned on the reference; each row is extended by ``lags`` earlier
      rows, so the model knows the process's dynamics and not only its correlations.
    - T² (inside the model) and Q (off the model, a broken correlation), each also smoothed by an EWMA
      of its logarithm (a small fault that persists, or a variance that grows, as in a random variation),
      and a per-signal shift statistic (the largest smoothed z of any one signal, for a step that control
      compensates everywhere but in the one manipulated variable that does the compensating).
    - Calibration: the reference is cut into ``folds`` contiguous blocks; each block is scored by a model
      fitted on the others, and those held-out statistics are the reference the p-values are taken
      against (a model scores the rows it was fitted on too well, and the F / chi² limits assume rows
      that are independent, which process rows are not).
    - A row's p-value is the smallest of its statistics', Šidák-corrected for their number; the row is
      flagged when it is at most the ``budget`` share of normal rows.
    """

    def __init__(self, columns: Sequence[str], cfg: ProcessMonitoring = PROCESS_DEFAULTS) -> None:
        self.columns = list(columns)
        self.cfg = cfg
        self.model: ProcessModel | None = None

    # ------------------------------------------------------------------ learning
    def _pca(self, z: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        mean = z.mean(axis=0)
        cov = np.cov(z - mean, rowvar=False)
        eigval, eigvec = np.linalg.eigh(np.atleast_2d(cov))
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.maximum(eigval[order], 1e-9), eigvec[:, order]
        k = int(np.searchsorted(np.cumsum(eigval) / eigval.sum(), self.cfg.variance_kept) + 1)
        k = max(1, min(k, z.shape[1] - 1)) if z.shape[1] > 1 else 1
        return mean, eigvec[:, :k], eigval[:k]

    def fit(self, reference: FloatArray) -> ProcessModel:
        """Learn from normal rows (rows x signals, no missing values)."""
        ref = np.asarray(reference, dtype=np.float64)
        lags = self.cfg.lags
        if len(ref) < max(4 * (lags + 1), self.cfg.folds * (lags + 2)):
            raise ValueError(f"a reference of {len(ref)} rows is too short for the process monitor")
        centre = np.median(ref, axis=0)
        spread = np.median(np.abs(ref - centre), axis=0) * 1.4826
        sd = ref.std(axis=0)
        tiny = 1e-9 * np.maximum(np.abs(centre), 1.0)
        scale = np.where(spread > tiny, spread, np.where(sd > tiny, sd, 1.0))
        z = (ref - centre) / scale
        zl = lagged(z, lags)
        blocks = np.array_split(np.arange(len(zl)), self.cfg.folds)
        held: list[tuple[FloatArray, FloatArray, FloatArray]] = []
        for block in blocks:
            train = np.setdiff1d(np.arange(len(zl)), block)
            m, p, lam = self._pca(zl[train])
            t2, q, _ = _t2_q(zl[block], m, p, lam)
            held.append((np.log(t2), np.log(q), z[block + lags]))
        mean, loadings, lam = self._pca(zl)
        log_t2 = np.concatenate([h[0] for h in held])
        log_q = np.concatenate([h[1] for h in held])
        start = np.array([np.median(log_t2), np.median(log_q)])
        w = self.cfg.smoothing
        smoothed = [ewma(np.column_stack([h[0], h[1]]), w, start) for h in held]
        z_smooth = np.vstack([ewma(h[2], w, 0.0) for h in held])
        shift_scale = np.maximum(z_smooth.std(axis=0), 1e-9)
        calibration = np.column_stack([log_t2, log_q, np.vstack(smoothed),
                                       np.abs(z_smooth / shift_scale).max(axis=1)])
        self.model = ProcessModel(centre, scale, mean, loadings, lam, start, shift_scale, calibration)
        return self.model

    # ------------------------------------------------------------------ scoring
    def statistics(self, rows: FloatArray, before: FloatArray | None = None) -> dict[str, FloatArray]:
        """The monitor's statistics on ``rows`` (in order), with ``before`` the rows that preceded them
        (at least ``lags`` of them: the reference for the first rows after it). Causal: a row's figures
        depend only on it and the rows before it."""
        assert self.model is not None, "fit the monitor first"
        m, lags = self.model, self.cfg.lags
        x = np.asarray(rows, dtype=np.float64)
        head = np.asarray(before, dtype=np.float64)[-lags:] if before is not None and lags else x[:0]
        z_all = (np.vstack([head, x]) - m.centre) / m.scale
        pad = lags - len(head)
        if pad > 0:  # no rows before: the first rows repeat (their lags are themselves)
            z_all = np.vstack([np.repeat(z_all[:1], pad, axis=0), z_all])
        zl = lagged(z_all, lags)
        t2, q, resid = _t2_q(zl, m.mean, m.loadings, m.eigenvalues)
        w = self.cfg.smoothing
        trend = ewma(np.column_stack([np.log(t2), np.log(q)]), w, m.start)
        z = z_all[lags:]
        z_smooth = ewma(z, w, 0.0) / m.shift_scale
        # Contributions: Q's share per signal (its residual at the current row) and its smoothed shift.
        q_contrib = resid[:, :len(self.columns)] ** 2
        return {"t2": np.log(t2), "q": np.log(q), "t2_trend": trend[:, 0], "q_trend": trend[:, 1],
                "shift": np.abs(z_smooth).max(axis=1), "q_contrib": q_contrib, "shift_contrib": np.abs(z_smooth)}

    def pvalues(self, stats: Mapping[str, FloatArray]) -> FloatArray:
        """Calibrated tail p-values, rows x :data:`STATISTICS`."""
        assert self.model is not None
        cal = self.model.calibration
        return np.column_stack([tail_pvalues(stats[name], cal[:, j]) for j, name in enumerate(STATISTICS)])

    def judge(self, rows: FloatArray, before: FloatArray | None = None
              ) -> tuple[FloatArray, FloatArray, np.ndarray, list[str]]:
        """Per row: combined p-value, score (0..1, 0.5 at the budget), flag, and what drives it
        (``q:xmeas_9`` or ``shift:xmv_11``: the statistic with the smallest p-value and the signal
        contributing most to it)."""
        stats = self.statistics(rows, before)
        p = self.pvalues(stats)
        from analytics.evidence import combine_pvalues, score_from_pvalue

        combined = combine_pvalues(p, "sidak")
        score = score_from_pvalue(combined, self.cfg.budget)
        flagged = combined <= self.cfg.budget
        which = p.argmin(axis=1)
        names = np.asarray(self.columns, dtype=object)
        q_top = names[stats["q_contrib"].argmax(axis=1)]
        shift_top = names[stats["shift_contrib"].argmax(axis=1)]
        stat_names = np.asarray(STATISTICS, dtype=object)[which]
        # Q's largest residual names the signal for every statistic but the shift (its own signal).
        signal = np.where(which == STATISTICS.index("shift"), shift_top, q_top)
        return combined, score, flagged, [f"{s}:{c}" for s, c in zip(stat_names, signal, strict=True)]


def _t2_q(zl: FloatArray, mean: FloatArray, loadings: FloatArray, lam: FloatArray
          ) -> tuple[FloatArray, FloatArray, FloatArray]:
    d = zl - mean
    t = d @ loadings
    resid = d - t @ loadings.T
    t2 = np.maximum((t * t / lam).sum(axis=1), 1e-12)
    q = np.maximum((resid * resid).sum(axis=1), 1e-12)
    return t2, q, resid
