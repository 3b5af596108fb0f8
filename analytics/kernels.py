"""Arithmetic shared by the streaming and the batch form of the detectors.

The slow-moving reference a detector scores against (a median and a robust spread, a fitted trend
line, a PCA model) is refitted on a *hopping window*: every ``hop`` samples, on the ``window``
samples before. The batch form fits all hops at once on a strided view of the series; the streaming
form fits the one hop that is due on its ring buffer; both call the same kernel on a ``(k, window)``
matrix, so the references are the same numbers. Between refits a sample is scored with plain
arithmetic that is written once for scalars and once for arrays with the same operations in the same
order, so the scores agree to the last bit in practice (a test checks it).

The streaming job's micro-batches use a third form, the streaming state advanced over an array
(``RingBuffer.extend_fits``, ``TrailingMin.extend``, ``NoveltyGate.judge_many``, ``LineSums.extend``,
``ewma_init(..., before=...)``): the same kernels on the buffered history plus the new samples, and the
state left where pushing the samples one by one would leave it.

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

    def dues(self, count: int, n: int) -> np.ndarray:
        """Positions among the next ``n`` samples, after ``count`` seen, before which a refit is due."""
        first = max(self.window - count, 0)
        first += (self.window - count - first) % self.hop  # the hop phase carried from earlier samples
        return np.arange(first, n, self.hop)

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
        return fit_windows(fit, series, ends - self.window, self.window)


def fit_windows(fit: FitFn, series: Sequence[np.ndarray], starts: np.ndarray, window: int) -> tuple[FloatArray, ...]:
    """``fit`` on the ``window`` samples from each of ``starts`` of every input series, in chunks of hops."""
    views = [sliding_window_view(s, window) for s in series]
    parts: list[tuple[FloatArray, ...]] = []
    for lo in range(0, len(starts), _CHUNK_HOPS):
        chunk = starts[lo:lo + _CHUNK_HOPS]
        parts.append(fit(*(v[chunk] for v in views)))
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

    def extend_fits(self, fit: FitFn, values: FloatArray, current: Sequence[float]) -> tuple[FloatArray, ...]:
        """The vectorised form of "refit when due, then push" over ``values``, continuing this buffer and
        its hop phase: per value, each fitted quantity it is scored with (``current``, the last fit, until
        the first refit due among ``values``). Afterwards the buffer is where pushing each would leave it."""
        n = len(values)
        window = self.hop.window
        dues = self.hop.dues(self.count, n)
        cols = tuple(np.full(n, c, dtype=np.float64) for c in current)
        if len(dues):
            history = np.fromiter(self.buf, dtype=np.float64, count=len(self.buf))
            fits = fit_windows(fit, [np.concatenate([history, values])], len(history) + dues - window, window)
            fit_idx = np.searchsorted(dues, np.arange(n), side="right") - 1  # -1: before the first refit
            ok = fit_idx >= 0
            for col, fitted in zip(cols, fits, strict=True):
                col[ok] = fitted[fit_idx[ok]]
        self.buf.extend(values[-window:].tolist())
        self.count += n
        return cols


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
        self.sums: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # u, y, uu, uy, yy
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

    def extend(self, ts: np.ndarray, x: FloatArray) -> tuple[FloatArray, np.ndarray, FloatArray]:
        """:meth:`push` of every sample, vectorised (``np.cumsum`` adds in the same order). Returns the
        prefix rows from the oldest one kept before: sums (rows, 5), ts and u of each row; the row after
        the first ``k`` new samples is ``len(prefix before) - 1 + k``."""
        if self.ts0 is None:
            self.ts0, self.x0 = int(ts[0]), float(x[0])
        u = (ts - self.ts0) / 1e9
        y = x - self.x0
        kept = len(self.prefix)
        sums = np.empty((kept + len(x), 5))
        sums[:kept] = [row for row, _, _ in self.prefix]
        sums[kept - 1:] = np.cumsum(np.vstack([sums[kept - 1], np.column_stack([u, y, u * u, u * y, y * y])]), axis=0)
        ts_rows = np.concatenate([np.array([t for _, t, _ in self.prefix], dtype=np.int64), ts])
        u_rows = np.concatenate([[r for _, _, r in self.prefix], u])
        last = self.prefix.maxlen or len(x)
        self.prefix.extend(zip(map(tuple, sums[kept:][-last:].tolist()), ts[-last:].tolist(), u[-last:].tolist(),
                               strict=True))
        self.sums = self.prefix[-1][0]
        return sums, ts_rows, u_rows

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


def ewma_init(x: FloatArray, alpha: float, before: float = math.nan) -> FloatArray:
    """EWMA ``z_i = alpha x_i + (1-alpha) z_(i-1)`` with scipy's IIR filter (no Python loop); ``z_0 = x_0``
    unless it continues from ``before`` (the EWMA of the samples before ``x``).

    The streaming form computes ``alpha * x + (1 - alpha) * z`` per sample: the same two products and
    one sum, so both forms agree.
    """
    from scipy.signal import lfilter

    if len(x) == 0:
        return np.zeros(0)
    if not math.isnan(before):
        y, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x, zi=np.array([(1.0 - alpha) * before]))
        return np.asarray(y)
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

    def extend(self, values: FloatArray) -> FloatArray:
        """:meth:`push` of every value, vectorised: the trailing minimum after each, and the deque left as
        the pushes would leave it. The deque holds exactly the values of the last ``length`` that no later
        value undercuts (with their positions), which is all the earlier samples contribute."""
        n = len(values)
        if n == 0:
            return np.zeros(0)
        i0, length = self.i, self.length
        mins = trailing_min(values, length) if n > length else np.minimum.accumulate(values)
        if self.q:
            at = np.fromiter((i for i, _ in self.q), dtype=np.int64, count=len(self.q))
            held = np.fromiter((v for _, v in self.q), dtype=np.float64, count=len(self.q))
            # for each new value: the oldest earlier candidate still inside its window
            pos = np.searchsorted(at, i0 + np.arange(n) - length + 1, side="left")
            mins = np.minimum(mins, np.append(held, math.inf)[pos])  # pos == len(at): none left inside
            keep = (at > i0 + n - 1 - length) & (held < values.min())
            old = [(int(i), float(v)) for i, v in zip(at[keep], held[keep], strict=True)]
        else:
            old = []
        # a new value stays a candidate while no later one is as low (push pops on >=), within the window
        later = np.append(np.minimum.accumulate(values[::-1])[::-1][1:], math.inf)
        cand = np.flatnonzero(values < later)
        cand = cand[cand > n - 1 - length]
        self.q = deque(old + list(zip((i0 + cand).tolist(), values[cand].tolist(), strict=True)))
        self.i = i0 + n
        return mins


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

    def judge_many(self, stat: FloatArray) -> tuple[FloatArray, np.ndarray]:
        """:meth:`judge` of every statistic in order, vectorised: (effective thresholds, flags), and the
        gate's memory and latch left where judging one at a time would leave them."""
        thr = self.threshold
        beyond = stat >= thr
        n = len(stat)
        if n == 0:
            return np.zeros(0), beyond
        if self.past is None:
            self.latched = bool(beyond[-1])
            return np.full(n, thr), beyond
        before = self.past.q[0][1] if self.past.q else math.inf
        mins = self.past.extend(-stat)  # trailing max of the statistic, negated
        past_min = np.concatenate([[before], mins[:-1]])  # what each sample is judged against
        onset_eff = np.maximum(thr, self.margin * -past_min)
        onset = stat >= onset_eff
        idx = np.arange(n)
        # a latch carried in from the previous sample counts as an onset just before the first one
        first_onset, first_below = (-1, -2) if self.latched else (-2, -1)
        last_onset = np.maximum.accumulate(np.where(onset, idx, first_onset))
        last_below = np.maximum.accumulate(np.where(~beyond, idx, first_below))
        flagged = beyond & (last_onset > last_below)
        latched = np.concatenate([[self.latched], flagged[:-1]])
        self.latched = bool(flagged[-1])
        return np.where(latched & beyond, thr, onset_eff), flagged


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
