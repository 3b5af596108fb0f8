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
