"""NAB's own scorer (Numenta Anomaly Benchmark, Lavin and Ahmad 2015) on per-row anomaly scores.

Follows the scorer in the NAB repository (``nab/sweeper.py``: ``calcSweepScore``,
``calcScoreByThreshold``; ``nab/optimizer.py``; ``nab/runner.py``: ``normalize``), as remembered from its
source and checked against ../shared/datasets/README.md:

- Every row whose ``anomaly_score`` is at or above the threshold is a detection.
- A row inside a window ``[lo, hi]`` (row indices, inclusive) is worth ``tp * scaledSigmoid(-(hi - i + 1)
  / (hi - lo + 1))`` (nearly +1 at the window's start, near 0 at its end); only the best (= the earliest)
  detection of a window counts; a window without one costs ``-fn``.
- A row outside every window costs ``fp * scaledSigmoid(|prev_hi - i| / (prev_width - 1))`` after a window
  (about 0 just after it, -fp from three widths on), the full ``-fp`` before the first window; every such
  row counts, so a score held high for 200 rows outside a window is 200 false positives.
- Rows of the probationary period (the first ``min(floor(0.15 n), 0.15 * 5000)`` rows) are not scored.
- The threshold is ONE per profile for the whole corpus: like NAB's optimiser (its sweeper variant), the
  corpus score is computed at every distinct score value (all rows of all files sorted by score) and the
  best one is taken (ties: the highest threshold, which NAB's stable sort also keeps first).
- Normalisation per profile over the corpus: ``100 * (raw - null) / (perfect - null)`` with ``perfect =
  tp * number of windows`` (as ``runner.normalize``) and ``null`` the corpus score of no detections at all
  (``-fn`` per scorable window), which is what NAB's null detector (a constant score) gets from the
  optimiser.

Pure: numbers in, numbers out; no files. :mod:`analytics.evaluate` reads the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_fp_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_fn_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}
PROBATION_SHARE = 0.15
OUTSIDE = -1  # a row outside every window
PROBATION = -2  # a row of the probationary period (not scored)


def scaled_sigmoid(position: float) -> float:
    """NAB's ``scaledSigmoid``: the weight of a detection at relative ``position`` (-1 = window start,
    0 = window end, > 0 after it; -1 from three widths after a window on)."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_rows(n: int) -> int:
    """NAB's probationary length of a file of ``n`` rows: 15 %, at most 750 rows."""
    return int(min(math.floor(PROBATION_SHARE * n), PROBATION_SHARE * 5000))


@dataclass(frozen=True)
class LabelledSeries:
    """One file: its rows' anomaly scores and its windows as inclusive row ranges (sorted)."""

    name: str
    scores: np.ndarray
    windows: Sequence[tuple[int, int]]


def sweep_rows(n: int, windows: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: NAB's unweighted sweep score (what a detection there would be worth before the profile's
    weight) and which window it is in (index, or :data:`OUTSIDE` / :data:`PROBATION`)."""
    unweighted = np.full(n, -1.0)
    where = np.full(n, OUTSIDE, dtype=np.int64)
    prev_hi, prev_width = None, None
    cursor = 0
    for k, (lo, hi) in enumerate(windows):
        if prev_hi is not None:
            rows = np.arange(cursor, lo)
            unweighted[cursor:lo] = _after_window(rows, prev_hi, prev_width)
        width = hi - lo + 1
        rows = np.arange(lo, hi + 1)
        unweighted[lo:hi + 1] = [scaled_sigmoid(-(hi - i + 1) / width) for i in rows]
        where[lo:hi + 1] = k
        prev_hi, prev_width, cursor = hi, width, hi + 1
    if prev_hi is not None and cursor < n:
        unweighted[cursor:] = _after_window(np.arange(cursor, n), prev_hi, prev_width)
    where[:probation_rows(n)] = PROBATION
    return unweighted, where


def _after_window(rows: np.ndarray, prev_hi: int, prev_width: int | None) -> np.ndarray:
    denominator = float(max((prev_width or 2) - 1, 1))  # NAB divides by width - 1; a 1-row window by 1
    return np.array([scaled_sigmoid(abs(prev_hi - int(i)) / denominator) for i in rows])


@dataclass(frozen=True)
class ProfileResult:
    """One profile's corpus result at its optimised threshold."""

    threshold: float
    raw: float
    null: float
    perfect: float
    score: float  # normalised: null 0, perfect 100
    per_file: dict[str, dict[str, float]]


def _weighted(unweighted: np.ndarray, where: np.ndarray, weights: Mapping[str, float]) -> np.ndarray:
    return np.where(where >= 0, unweighted * weights["tp"], unweighted * weights["fp"])


def sweep_thresholds(series: Sequence[LabelledSeries], weights: Mapping[str, float]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The corpus raw score at every candidate threshold: ``(thresholds, totals)``, thresholds from
    above the highest score (no detection) down to the lowest score (every row a detection)."""
    scores, gains, window_ids = [], [], []
    base = 0.0
    offset = 0
    for s in series:
        sc = np.nan_to_num(np.asarray(s.scores, dtype=np.float64), nan=0.0)
        unweighted, where = sweep_rows(len(sc), s.windows)
        scorable = np.unique(where[where >= 0])
        base -= weights["fn"] * len(scorable)
        keep = where != PROBATION
        scores.append(sc[keep])
        gains.append(_weighted(unweighted, where, weights)[keep])
        window_ids.append(np.where(where[keep] >= 0, where[keep] + offset, OUTSIDE))
        offset += len(s.windows)
    sc = np.concatenate(scores) if scores else np.zeros(0)
    gain = np.concatenate(gains) if gains else np.zeros(0)
    wid = np.concatenate(window_ids) if window_ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(-sc, kind="stable")
    sc, gain, wid = sc[order], gain[order], wid[order]
    delta = np.where(wid == OUTSIDE, gain, 0.0)
    inside = np.flatnonzero(wid >= 0)
    if len(inside):
        # A window's part of the total is the best detection in it so far (or -fn): its running maximum
        # in descending-score order; a row adds what it raises that maximum by.
        best = np.full(offset, -weights["fn"])
        for i in inside:  # rows inside windows: a small share of a corpus
            k = wid[i]
            if gain[i] > best[k]:
                delta[i] = gain[i] - best[k]
                best[k] = gain[i]
    totals = base + np.cumsum(delta)
    last_of_value = np.flatnonzero(np.r_[sc[1:] != sc[:-1], True]) if len(sc) else np.zeros(0, dtype=np.int64)
    top = float(sc[0]) if len(sc) else 0.0
    thresholds = np.r_[np.nextafter(max(top, 1.0), math.inf), sc[last_of_value]]
    return thresholds, np.r_[base, totals[last_of_value]]


def file_result(s: LabelledSeries, threshold: float, weights: Mapping[str, float]) -> dict[str, float]:
    """One file's raw score and counts with detections at ``score >= threshold``."""
    sc = np.nan_to_num(np.asarray(s.scores, dtype=np.float64), nan=0.0)
    unweighted, where = sweep_rows(len(sc), s.windows)
    gain = _weighted(unweighted, where, weights)
    hit = sc >= threshold
    outside = hit & (where == OUTSIDE)
    raw = float(gain[outside].sum())
    tp = fn = 0
    for k in np.unique(where[where >= 0]):
        rows = np.flatnonzero((where == k) & hit)
        if len(rows):
            tp += 1
            raw += float(gain[rows].max())
        else:
            fn += 1
            raw -= weights["fn"]
    return {"raw": raw, "tp": tp, "fp": int(outside.sum()), "fn": fn}


def score_corpus(series: Sequence[LabelledSeries],
                 profiles: Mapping[str, Mapping[str, float]] = PROFILES) -> dict[str, ProfileResult]:
    """NAB's corpus score per profile: the optimised threshold, raw, null, perfect and normalised score."""
    out = {}
    windows = sum(len(s.windows) for s in series)
    for profile, weights in profiles.items():
        thresholds, totals = sweep_thresholds(series, weights)
        best = int(np.argmax(totals))
        threshold = float(thresholds[best])
        per_file = {s.name: file_result(s, threshold, weights) for s in series}
        raw = sum(r["raw"] for r in per_file.values())
        null = float(totals[0])
        perfect = weights["tp"] * windows
        score = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
        out[profile] = ProfileResult(threshold, raw, null, perfect, score, per_file)
    return out
