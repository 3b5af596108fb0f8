"""One false-alarm budget: detectors' statistics as calibrated tail probabilities, combined into one score.

Every per-signal detector has its own statistic (a robust z, an EWMA distance, a CUSUM sum, a seasonal z)
on its own scale. Thresholds in those scales do not add up: an equipment with 20 sensors and 3 detectors
each, every one flagging at "8 sigma", pages as often as the sum of 60 small rates, and a plant with
thousands of sensors pages all night. This module makes the rates explicit:

1. **Calibrate.** :class:`TailCalibrator` turns a detector's statistic into a tail probability ``p``
   against the statistic's own recent reference (the last ``window`` values it took, refitted every
   ``hop``): an upper quantile ``u`` of the reference (``tail_share`` of the values above it) and an
   exponential tail beyond it (peaks over threshold with the mean excess ``beta``, the generalised Pareto
   with shape 0 of Siffer et al., "Anomaly detection in streams with extreme value theory", KDD 2017):
   ``p = tail_share * exp(-(s - u) / beta)``, at most 1. A reference of a few hundred values reaches
   probabilities far below ``1 / window`` by the fitted tail, which an empirical quantile cannot.
   Streaming keeps a ring of ``window`` floats and refits one quantile per hop (bounded memory, O(1)
   amortised per sample besides the refit); batch fits every hop at once on a strided view with the
   same kernel (:func:`tail_fit`), so both forms give the same numbers.
2. **Combine.** :func:`combine_pvalues` folds a row's p-values of every detector of an equipment (or of a
   file's columns) into one family p-value: the Cauchy combination (Liu and Xie, JASA 2020: valid under
   arbitrary dependence for small p), or Šidák / Bonferroni on the smallest.
3. **Budget.** The family p-value is compared with one per-row level derived from the budget:
   ``alpha_per_row(false alarms per day, rows per day)``. On the plant the budget is false pages per
   equipment per day; for a file it is a share of rows.
4. **Score.** :func:`score_from_pvalue` maps ``p`` to a score in [0, 1], monotone (smaller p, higher score),
   0.5 exactly at the budget's level ``alpha`` and 1 at ``alpha ** 2``: the convention of every detector's
   score (0.5 at the threshold), so "score >= 0.5" is the budget's decision and any other threshold is a
   stricter or looser budget on the same ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from analytics.kernels import HopWindow, RingBuffer, broadcast, fit_one

FloatArray = np.ndarray

#: Smallest p-value carried (below it float arithmetic of the combination loses meaning).
P_FLOOR = 1e-300
#: The Cauchy combination lets a p-value near 1 pull the sum to minus infinity (tan((0.5 - p) pi)); p-values
#: are truncated at this before combining (a detector that sees nothing unusual is "no evidence", not
#: "evidence of normality").
P_CEIL = 0.9
METHODS = ("cauchy", "sidak", "bonferroni")


# ---------------------------------------------------------------------------------------------- budget
def alpha_per_row(budget_per_day: float, rows_per_day: float) -> float:
    """The per-row false-alarm level that spends ``budget_per_day`` false alarms over ``rows_per_day``
    independent rows (in expectation): ``budget / rows``, at most 1."""
    if budget_per_day <= 0 or rows_per_day <= 0:
        raise ValueError(f"budget and rows per day must be > 0 (got {budget_per_day}, {rows_per_day})")
    return min(budget_per_day / rows_per_day, 1.0)


def sidak(alpha: float, tests: int) -> float:
    """The level of each of ``tests`` independent tests that keeps the family-wise rate at ``alpha``."""
    return 1.0 - (1.0 - alpha) ** (1.0 / max(tests, 1))


def rows_per_day(sample_period_s: float) -> float:
    return 86_400.0 / sample_period_s


# ---------------------------------------------------------------------------------------------- combination
def combine_pvalues(p: FloatArray, method: str = "cauchy", weights: Sequence[float] | None = None) -> FloatArray:
    """One family p-value per row from ``p`` (rows, detectors). NaN means "this detector did not score
    this row" and is left out (a row with no p-value at all gets 1).

    - ``cauchy``: T = sum_i w_i tan((0.5 - p_i) pi), p = 1/2 - arctan(T) / pi, with weights summing to 1
      over the detectors that scored; accurate for small p however the detectors are correlated.
    - ``sidak``: 1 - (1 - min p) ** m; ``bonferroni``: min(1, m min p), m the detectors that scored.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if method not in METHODS:
        raise ValueError(f"unknown combination {method!r} (one of {', '.join(METHODS)})")
    present = np.isfinite(p)
    m = present.sum(axis=1)
    out = np.ones(len(p))
    rows = m > 0
    if not rows.any():
        return out
    pc = np.clip(np.where(present, p, 1.0), P_FLOOR, 1.0)
    if method == "cauchy":
        w = np.ones(p.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
        wm = np.where(present, w[None, :], 0.0)
        wsum = wm.sum(axis=1)
        pt = np.minimum(pc, P_CEIL)
        # tan((0.5 - p) pi) = 1 / tan(p pi): exact for tiny p, where (0.5 - p) rounds to 0.5
        t = np.where(present, 1.0 / np.tan(pt * np.pi), 0.0)
        big = np.where(rows, (wm * t).sum(axis=1) / np.where(rows, wsum, 1.0), 0.0)
        # the upper tail of a standard Cauchy; for large T, 1/(pi T) avoids the cancellation in 0.5 - arctan
        out = np.where(big > 1e8, 1.0 / (np.pi * np.maximum(big, 1e8)), 0.5 - np.arctan(big) / np.pi)
        out = np.where(rows, out, 1.0)
    else:
        pmin = np.where(rows, pc.min(axis=1), 1.0)
        if method == "sidak":
            out = -np.expm1(m * np.log1p(-np.minimum(pmin, 1.0 - 1e-16)))
            out = np.where(pmin * m < 1e-8, pmin * m, out)  # the same to 1e-16, without 1 - tiny rounding
        else:
            out = np.minimum(pmin * m, 1.0)
        out = np.where(rows, out, 1.0)
    return np.clip(out, P_FLOOR, 1.0)


def score_from_pvalue(p: FloatArray | float, alpha: float) -> FloatArray:
    """A score in [0, 1] from a p-value: ``log p / (2 log alpha)``, clipped; 0.5 at ``alpha``, 1 at
    ``alpha**2``, 0 at p = 1; strictly decreasing in p between ``alpha**2`` and 1."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")
    lp = np.log(np.clip(np.asarray(p, dtype=np.float64), P_FLOOR, 1.0))
    return np.clip(lp / (2.0 * math.log(alpha)), 0.0, 1.0)


def pvalue_from_score(score: FloatArray | float, alpha: float) -> FloatArray:
    """The inverse of :func:`score_from_pvalue` (below a score of 1)."""
    return np.exp(2.0 * math.log(alpha) * np.asarray(score, dtype=np.float64))


# ---------------------------------------------------------------------------------------------- calibration
#: Share of the reference above the tail's start: 5 % of 480 is 24 exceedances to fit the tail's scale.
TAIL_SHARE = 0.05


def tail_fit(windows: FloatArray, tail_share: float = TAIL_SHARE) -> tuple[FloatArray, FloatArray]:
    """Per row of reference statistics: the tail's start ``u`` (the upper ``tail_share`` quantile, a value
    of the row) and ``beta``, the mean excess over ``u`` of the values above it (floored, so a reference of
    identical values still gives a finite, steep tail)."""
    k = windows.shape[1]
    at = min(max(math.floor((1.0 - tail_share) * k), 0), k - 1)
    u = np.partition(windows, at, axis=1)[:, at]
    excess = np.maximum(windows - u[:, None], 0.0)
    above = (windows > u[:, None]).sum(axis=1)
    beta = excess.sum(axis=1) / np.maximum(above, 1)
    floor = 1e-3 * np.maximum(np.abs(u), 1e-9) + 1e-12
    return u, np.maximum(beta, floor)


def tail_pvalue(stat: FloatArray, u: FloatArray, beta: FloatArray, tail_share: float = TAIL_SHARE) -> FloatArray:
    """``tail_share * exp(-(s - u) / beta)``, at most 1; NaN where there is no fit yet."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.minimum(tail_share * np.exp(-(stat - u) / beta), 1.0)


def tail_pvalue_one(stat: float, u: float, beta: float, tail_share: float = TAIL_SHARE) -> float:
    """:func:`tail_pvalue` on floats (the streaming form; the same operations)."""
    if math.isnan(u):
        return math.nan
    e = -(stat - u) / beta
    return 1.0 if e > 700 else min(tail_share * math.exp(e), 1.0)


class TailCalibrator:
    """A statistic's tail probability against its own last ``window`` values, refitted every ``hop``.

    Causal in both forms: a value is judged against the fit made before it, then enters the reference.
    ``pvalues`` (batch, from the initial state), ``extend`` (micro-batch, continuing) and ``push`` (one
    value) give the same numbers. NaN values (a detector that did not score) are skipped: NaN out, and
    the reference does not see them.
    """

    def __init__(self, window: int = 480, hop: int = 30, tail_share: float = TAIL_SHARE) -> None:
        self.hop = HopWindow(window, hop)
        self.tail_share = tail_share
        self.ring = RingBuffer(self.hop)
        self.u = math.nan
        self.beta = math.nan

    def _fit(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        return tail_fit(windows, self.tail_share)

    def push(self, stat: float) -> float:
        if math.isnan(stat):
            return math.nan
        if self.ring.due():
            self.u, self.beta = fit_one(self._fit, self.ring.matrix())
        self.ring.push(stat)
        return tail_pvalue_one(stat, self.u, self.beta, self.tail_share)

    def extend(self, stat: FloatArray) -> FloatArray:
        stat = np.asarray(stat, dtype=np.float64)
        out = np.full(len(stat), np.nan)
        ok = ~np.isnan(stat)
        if not ok.any():
            return out
        s = stat[ok]
        u, beta = self.ring.extend_fits(self._fit, s, (self.u, self.beta))
        self.u, self.beta = float(u[-1]), float(beta[-1])
        out[ok] = tail_pvalue(s, u, beta, self.tail_share)
        return out

    def pvalues(self, stat: FloatArray) -> FloatArray:
        """Batch: the p-value of each statistic from a fresh calibrator (the state is not touched)."""
        stat = np.asarray(stat, dtype=np.float64)
        out = np.full(len(stat), np.nan)
        ok = ~np.isnan(stat)
        s = stat[ok]
        fits = self.hop.fit_all(self._fit, s) if len(s) else ()
        if not fits:
            return out
        u, beta = broadcast(fits, self.hop.fit_index(len(s)))
        out[ok] = tail_pvalue(s, u, beta, self.tail_share)
        return out
