"""Arithmetic shared by the streaming and the batch form of the detectors.

The slow-moving reference a detector scores against (a median and a robust spread, a fitted trend
line, a PCA model) is refitted on a *hopping window*: every ``hop`` samples, on the ``window``
samples before. The batch form fits all hops at once on a strided view of the series; the streaming
form fits the one hop that is due on its ring buffer; both call the same kernel on a ``(k, window)``
matrix, so the references are the same numbers. Between refits a sample is scored with plain
arithmetic that is written once for scalars and once for arrays with the same operations in the same
order, so the scores agree to the last bit in practice (a test checks it).

Why hopping rather than sliding: an exact rolling MAD costs a sort per sample; a hop of a quarter
window costs four medians per window, vectorises, and a reference that lags by a few samples more
changes nothing for a detector that looks for departures from the last minutes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = np.ndarray
FitFn = Callable[..., tuple[FloatArray, ...]]

#: MAD of a normal distribution is 0.6745 sigma; 1/0.6745 turns a MAD into a sigma estimate.
MAD_TO_SIGMA = 1.4826
#: How many hops are fitted at once in batch form (bounds memory: chunk * window floats per input).
_CHUNK_HOPS = 4096


@dataclass(frozen=True, slots=True)
class HopWindow:
    """Refit every ``hop`` samples on the last ``window`` samples; the first fit after ``window`` samples."""

    window: int
    hop: int

    def __post_init__(self) -> None:
        if self.window < 2 or self.hop < 1:
            raise ValueError(f"window must be >= 2 and hop >= 1 (got {self.window}, {self.hop})")

    def due(self, count: int) -> bool:
        """Whether a refit is due before scoring the sample that has ``count`` samples before it."""
        return count >= self.window and (count - self.window) % self.hop == 0

    def fit_index(self, n: int) -> np.ndarray:
        """For each of ``n`` samples, the index of the fit it is scored with (-1 during warm-up)."""
        idx = np.arange(n) - self.window
        out = np.full(n, -1, dtype=np.int64)
        ok = idx >= 0
        out[ok] = idx[ok] // self.hop
        return out

    def fit_all(self, fit: FitFn, *series: np.ndarray) -> tuple[FloatArray, ...]:
        """Run ``fit`` on every hop's window of every input series; one array per fitted quantity."""
        n = len(series[0])
        ends = np.arange(self.window, n, self.hop)  # a fit before scoring sample `end`
        if len(ends) == 0:
            return ()
        views = [sliding_window_view(s, self.window) for s in series]
        parts: list[tuple[FloatArray, ...]] = []
        for lo in range(0, len(ends), _CHUNK_HOPS):
            starts = ends[lo:lo + _CHUNK_HOPS] - self.window
            parts.append(fit(*(v[starts] for v in views)))
        return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))


class RingBuffer:
    """The streaming form's memory of the last ``window`` samples, plus how many it has seen."""

    __slots__ = ("buf", "count", "hop")

    def __init__(self, hop: HopWindow) -> None:
        self.hop = hop
        self.buf: deque[float] = deque(maxlen=hop.window)
        self.count = 0

    def due(self) -> bool:
        # HopWindow.due inlined: asked before every streamed sample.
        count, window = self.count, self.hop.window
        return count >= window and (count - window) % self.hop.hop == 0

    def matrix(self, dtype: type = np.float64) -> np.ndarray:
        return np.fromiter(self.buf, dtype=dtype, count=len(self.buf))[None, :]

    def push(self, x: float) -> None:
        self.buf.append(x)
        self.count += 1


def fit_one(fit: FitFn, *rows: np.ndarray) -> tuple[float, ...]:
    """Run a batch kernel on single windows and return plain floats (the streaming form's refit)."""
    return tuple(float(col[0]) for col in fit(*rows))


# ---------------------------------------------------------------------------------------------- kernels
def upper_median(windows: FloatArray) -> FloatArray:
    """The median of each row, the upper of the two middle values for an even row length: one
    partition instead of two, and a value that was actually measured."""
    k = windows.shape[1] // 2
    return np.partition(windows, k, axis=1)[:, k]


def robust_fit(windows: FloatArray, min_sigma: float) -> tuple[FloatArray, FloatArray]:
    """Median and a robust sigma of each window (rows).

    sigma = 1.4826 * MAD, floored: a quantised or flat signal has MAD 0, and a single step would then
    score infinite. The floor is a tenth of the window's standard deviation (a window that moved at all)
    and ``min_sigma`` (the sensor's resolution, from the catalog's normal range).
    """
    med = upper_median(windows)
    mad = upper_median(np.abs(windows - med[:, None]))
    sigma = np.maximum(MAD_TO_SIGMA * mad, 0.1 * windows.std(axis=1))
    return med, np.maximum(sigma, min_sigma)


class LineSums:
    """Running sums for least-squares lines over hopping windows, O(1) per sample in both forms.

    Time ``u`` is in seconds since the first sample and values ``y`` are taken relative to the first
    value, which keeps the sums small. The batch form takes prefix sums with ``np.cumsum`` (sequential
    addition); the streaming form adds the same products in the same order, so both see the same sums.
    """

    __slots__ = ("prefix", "sums", "ts0", "x0")

    def __init__(self, window: int) -> None:
        self.ts0: int | None = None
        self.x0 = 0.0
        self.sums = (0.0, 0.0, 0.0, 0.0, 0.0)  # u, y, uu, uy, yy
        self.prefix: deque[tuple[tuple[float, ...], int, float]] = deque(maxlen=window + 1)
        self.prefix.append((self.sums, 0, 0.0))

    def push(self, ts: int, x: float) -> None:
        if self.ts0 is None:
            self.ts0, self.x0 = ts, x
        u = (ts - self.ts0) / 1e9
        y = x - self.x0
        su, sy, suu, suy, syy = self.sums
        self.sums = (su + u, sy + y, suu + u * u, suy + u * y, syy + y * y)
        self.prefix.append((self.sums, ts, u))

    def fit(self, window: int) -> tuple[float, float, float, float]:
        """(level at the last sample, slope per second, its standard error, last sample's ts) of the
        last ``window`` samples."""
        (now, ts_end, u_end), (then, _, _) = self.prefix[-1], self.prefix[-(window + 1)]
        su, sy, suu, suy, syy = (a - b for a, b in zip(now, then, strict=True))
        level, slope, se = line_from_sum(su, sy, suu, suy, syy, window, u_end, self.x0)
        return level, slope, se, float(ts_end)


def line_prefix(ts: np.ndarray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Batch form of :class:`LineSums`: prefix sums (n + 1, 5) and each sample's ``u``."""
    u = (ts - ts[0]) / 1e9
    y = x - x[0]
    cols = np.column_stack([u, y, u * u, u * y, y * y])
    prefix = np.zeros((len(x) + 1, 5))
    np.cumsum(cols, axis=0, out=prefix[1:])
    return prefix, u


def line_from_sums(sums: FloatArray, n: int, u_end: FloatArray, x0: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Level at ``u_end``, slope and its standard error from window sums (rows: u, y, uu, uy, yy)."""
    su, sy, suu, suy, syy = sums.T
    u_mean = su / n
    y_mean = sy / n
    stt = suu - su * u_mean
    sty = suy - su * y_mean
    syy_c = syy - sy * y_mean
    ok = stt > 0
    safe = np.where(ok, stt, 1.0)
    slope = np.where(ok, sty / safe, 0.0)
    level = y_mean + slope * (u_end - u_mean) + x0
    ssr = np.maximum(syy_c - slope * sty, 0.0)
    se = np.sqrt(ssr / max(n - 2, 1) / safe)
    return level, slope, se


def line_from_sum(su: float, sy: float, suu: float, suy: float, syy: float, n: int, u_end: float,
                  x0: float) -> tuple[float, float, float]:
    """:func:`line_from_sums` for one window, on plain floats: the streaming form refits every few
    samples, and numpy's per-call overhead on a one-row array cost more than the whole sample's scoring.
    The same operations in the same order (IEEE arithmetic and sqrt are exact-rounded in both), so the
    same numbers."""
    u_mean = su / n
    y_mean = sy / n
    stt = suu - su * u_mean
    sty = suy - su * y_mean
    syy_c = syy - sy * y_mean
    ok = stt > 0
    safe = stt if ok else 1.0
    slope = sty / safe if ok else 0.0
    level = y_mean + slope * (u_end - u_mean) + x0
    ssr = max(syy_c - slope * sty, 0.0)
    se = math.sqrt(ssr / max(n - 2, 1) / safe)
    return level, slope, se


def ewma_init(x: FloatArray, alpha: float) -> FloatArray:
    """EWMA ``z_i = alpha x_i + (1-alpha) z_(i-1)``, ``z_0 = x_0``, with scipy's IIR filter (no Python loop).

    The streaming form computes ``alpha * x + (1 - alpha) * z`` per sample: the same two products and
    one sum, so both forms agree.
    """
    from scipy.signal import lfilter

    if len(x) == 0:
        return np.zeros(0)
    out = np.empty(len(x))
    out[0] = x[0]
    if len(x) > 1:
        zi = np.array([(1.0 - alpha) * x[0]])
        y, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x[1:], zi=zi)
        out[1:] = y
    return out


def trailing_min(values: FloatArray, length: int) -> FloatArray:
    """Minimum of each value and the ``length - 1`` before it (a trailing window)."""
    import pandas as pd

    return pd.Series(values).rolling(length, min_periods=1).min().to_numpy()


class TrailingMin:
    """The streaming form of :func:`trailing_min`: a monotonic deque, O(1) amortised per sample."""

    __slots__ = ("i", "length", "q")

    def __init__(self, length: int) -> None:
        self.length = length
        self.q: deque[tuple[int, float]] = deque()
        self.i = 0

    def push(self, v: float) -> float:
        q = self.q
        while q and q[-1][1] >= v:
            q.pop()
        q.append((self.i, v))
        if q[0][0] <= self.i - self.length:
            q.popleft()
        self.i += 1
        return q[0][1]


def broadcast(fits: Sequence[FloatArray], fit_idx: np.ndarray, fill: float = np.nan) -> list[FloatArray]:
    """Each sample's copy of the fitted quantities (``fill`` during warm-up)."""
    ok = fit_idx >= 0
    out = []
    for col in fits:
        full = np.full(len(fit_idx), fill)
        full[ok] = col[fit_idx[ok]]
        out.append(full)
    return out


#: A new flag must beat the recent maximum of its statistic by this factor.
NOVELTY_MARGIN = 1.1


class NoveltyGate:
    """Flag a statistic only when it is beyond the threshold *and* beyond anything seen in the last
    ``memory`` samples (by ``NOVELTY_MARGIN``, so the noise on a repeating peak does not count as new);
    once flagged, stay flagged while it is beyond the threshold (a latch).

    Why: plant signals follow shifts, duty cycles and days; a statistic that peaks at every cycle
    is the plant's normal rhythm, not news. Ops trust an alarm that says "this has not happened in
    the last hour". ``memory`` 0 turns the gate off (threshold only).
    """

    __slots__ = ("latched", "margin", "memory", "past", "threshold")

    def __init__(self, threshold: float, memory: int, margin: float = NOVELTY_MARGIN) -> None:
        self.threshold = threshold
        self.memory = memory
        self.margin = margin
        self.past = TrailingMin(memory) if memory > 0 else None  # on negated values: a trailing max
        self.latched = False

    def judge(self, stat: float) -> tuple[float, bool]:
        """(effective threshold, flagged) for one sample's statistic, then remember it."""
        thr = self.threshold
        if self.latched and stat >= thr:
            eff = thr
        else:
            eff = thr
            if self.past is not None and self.past.q:
                eff = max(thr, self.margin * -self.past.q[0][1])
        flagged = stat >= eff
        self.latched = flagged
        if self.past is not None:
            self.past.push(-stat)
        return eff, flagged


def novelty_gate(stat: FloatArray, threshold: float, memory: int,
                 margin: float = NOVELTY_MARGIN) -> tuple[FloatArray, np.ndarray]:
    """The batch form of :class:`NoveltyGate`: per sample the effective threshold and the flag."""
    import pandas as pd

    n = len(stat)
    beyond = stat >= threshold
    if memory <= 0:
        return np.full(n, threshold), beyond
    past = pd.Series(stat).rolling(memory, min_periods=1).max().shift(1).to_numpy()
    onset_eff = np.maximum(threshold, margin * np.where(np.isnan(past), -np.inf, past))
    onset = stat >= onset_eff
    idx = np.arange(n)
    last_onset = np.maximum.accumulate(np.where(onset, idx, -1))
    last_below = np.maximum.accumulate(np.where(~beyond, idx, -1))
    flagged = beyond & (last_onset > last_below)
    latched = np.concatenate([[False], flagged[:-1]])
    eff = np.where(latched & beyond, threshold, onset_eff)
    return eff, flagged
