"""Scoring detections against labelled intervals: event and point metrics, detection delay, NAB score.

Inputs are per-row detections (``is_anomaly``, e.g. the output of ``score-file``) and labelled
windows (NAB's ``combined_windows.json``, or the simulators' ground-truth JSON list of intervals).

- Event level: a labelled window is found when any row inside it is flagged (recall); a detected
  episode (a run of flagged rows) is right when it overlaps a window (precision); F1 of the two.
- Point level: FAR = flagged rows outside windows / rows outside windows; MAR = unflagged rows inside
  windows / rows inside windows.
- Detection delay: from a window's start to its first flagged row.
- NAB's own score (:mod:`analytics.nab`) on the rows' ``anomaly_score``: every row at or above one
  corpus-wide threshold per profile (optimised over the corpus) is a detection. Reported as ``nab_*``.
- The project's episode-onset variant of it (``onset_nab_*``, not NAB's number, not comparable with the
  published table): an alert is raised once per episode of ``is_anomaly``, at its first row, and the
  alerts are weighted as NAB weighs detections; normalised so no alerts = 0 and an alert on every
  window's first row = 100.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analytics.nab import PROFILES, LabelledSeries, probation_rows, scaled_sigmoid, score_corpus
from smartmine.errors import UsageError


def onsets(flags: np.ndarray) -> np.ndarray:
    """Row indices where a run of flagged rows begins (one alert per episode)."""
    f = np.asarray(flags, dtype=bool)
    prev = np.concatenate([[False], f[:-1]])
    return np.flatnonzero(f & ~prev)


def windows_to_rows(times: np.ndarray, windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Time windows (ns) as inclusive row ranges of ``times`` (sorted ns); windows without rows are dropped."""
    out = []
    for start, end in windows:
        lo = int(np.searchsorted(times, start, side="left"))
        hi = int(np.searchsorted(times, end, side="right")) - 1
        if hi >= lo:
            out.append((lo, hi))
    return out


@dataclass
class SeriesScore:
    """Everything measured on one series."""

    name: str
    rows: int
    windows: int
    events_found: int = 0
    episodes: int = 0
    episodes_true: int = 0
    fp_rows: int = 0
    negative_rows: int = 0
    fn_rows: int = 0
    positive_rows: int = 0
    delays_s: list[float] = field(default_factory=list)
    nab_raw: dict[str, float] = field(default_factory=dict)
    nab_null: dict[str, float] = field(default_factory=dict)
    nab_perfect: dict[str, float] = field(default_factory=dict)


def nab_raw_score(alerts: np.ndarray, windows: Sequence[tuple[int, int]], n: int, weights: dict[str, float]) -> float:
    """One series' raw NAB score under one profile (``alerts``: row indices of alerts)."""
    probation = probation_rows(n)
    score = 0.0
    found = [False] * len(windows)
    starts = np.array([w[0] for w in windows], dtype=np.int64)
    for i in alerts:
        if i < probation:
            continue
        k = int(np.searchsorted(starts, i, side="right")) - 1  # the last window starting at or before i
        if k >= 0 and i <= windows[k][1]:
            if not found[k]:
                lo, hi = windows[k]
                found[k] = True
                score += weights["tp"] * scaled_sigmoid(-(hi - i + 1) / (hi - lo + 1))
            continue
        if k < 0:
            score -= weights["fp"]
        else:
            lo, hi = windows[k]
            width = max(hi - lo + 1, 2)
            score += weights["fp"] * scaled_sigmoid(abs(hi - i) / (width - 1))
    score -= weights["fn"] * found.count(False)
    return score


def score_series(name: str, times_ns: np.ndarray, flags: np.ndarray,
                 windows_ns: Sequence[tuple[int, int]]) -> SeriesScore:
    """Event, point, delay and NAB measures of one series' per-row flags against its windows."""
    flags = np.asarray(flags, dtype=bool)
    n = len(flags)
    windows = windows_to_rows(times_ns, windows_ns)
    s = SeriesScore(name, n, len(windows))
    inside = np.zeros(n, dtype=bool)
    for lo, hi in windows:
        inside[lo:hi + 1] = True
        hits = np.flatnonzero(flags[lo:hi + 1])
        if len(hits):
            s.events_found += 1
            s.delays_s.append((times_ns[lo + hits[0]] - times_ns[lo]) / 1e9)
    starts = onsets(flags)
    s.episodes = len(starts)
    if len(starts):
        run_id = np.cumsum(np.isin(np.arange(n), starts)) - 1
        true_runs = np.unique(run_id[flags & inside])
        s.episodes_true = len(true_runs)
    s.fp_rows = int((flags & ~inside).sum())
    s.negative_rows = int((~inside).sum())
    s.fn_rows = int((~flags & inside).sum())
    s.positive_rows = int(inside.sum())
    perfect_alerts = np.array([lo for lo, _ in windows], dtype=np.int64)
    for profile, weights in PROFILES.items():
        s.nab_raw[profile] = nab_raw_score(starts, windows, n, weights)
        s.nab_null[profile] = -weights["fn"] * len(windows)
        s.nab_perfect[profile] = nab_raw_score(perfect_alerts, windows, n, weights)
    return s


def summarise(scores: Iterable[SeriesScore]) -> dict[str, Any]:
    """Corpus totals: event precision / recall / F1, FAR, MAR, delays and the normalised NAB scores."""
    scores = list(scores)
    windows = sum(s.windows for s in scores)
    found = sum(s.events_found for s in scores)
    episodes = sum(s.episodes for s in scores)
    true_eps = sum(s.episodes_true for s in scores)
    recall = found / windows if windows else math.nan
    precision = true_eps / episodes if episodes else math.nan
    f1 = (2 * precision * recall / (precision + recall)
          if episodes and windows and (precision + recall) > 0 else math.nan)
    neg = sum(s.negative_rows for s in scores)
    pos = sum(s.positive_rows for s in scores)
    delays = [d for s in scores for d in s.delays_s]
    out: dict[str, Any] = {
        "series": len(scores), "windows": windows, "windows_found": found, "episodes": episodes,
        "event_precision": _r(precision), "event_recall": _r(recall), "event_f1": _r(f1),
        "far": _r(sum(s.fp_rows for s in scores) / neg if neg else math.nan),
        "mar": _r(sum(s.fn_rows for s in scores) / pos if pos else math.nan),
        "delay_median_s": _r(float(np.median(delays)) if delays else math.nan),
        "delay_mean_s": _r(float(np.mean(delays)) if delays else math.nan),
    }
    for profile in PROFILES:
        raw = sum(s.nab_raw[profile] for s in scores)
        null = sum(s.nab_null[profile] for s in scores)
        perfect = sum(s.nab_perfect[profile] for s in scores)
        out[f"onset_nab_{profile}"] = _r(100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan, 1)
    return out


def _r(x: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(x) else round(x, digits)


# ------------------------------------------------------------------------------------------------ labels
def _ns(value: Any) -> int:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def load_windows(path: Path, key: str | None = None) -> list[tuple[int, int]]:
    """Labelled windows as (start_ns, end_ns): NAB windows JSON (``{file: [[start, end], ...]}``, pick
    ``key``) or a ground-truth JSON list of ``{"start": ..., "end": ...}`` intervals."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read labels: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: labels are not JSON: {exc}") from None
    if isinstance(data, dict):
        if key is None:
            if len(data) != 1:
                raise UsageError(f"{path}: NAB windows for {len(data)} files; say which with --series")
            key = next(iter(data))
        if key not in data:
            matches = [k for k in data if k.endswith("/" + key) or k == key]
            if len(matches) != 1:
                raise UsageError(f"{path}: no windows for series {key!r}")
            key = matches[0]
        return [(_ns(a), _ns(b)) for a, b in data[key]]
    if isinstance(data, list):
        try:
            return [(_ns(item["start"]), _ns(item["end"])) for item in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: every interval needs 'start' and 'end' times ({exc})") from None
    raise UsageError(f"{path}: expected NAB windows (an object) or a list of intervals")


def nab_figures(series: Sequence[LabelledSeries]) -> dict[str, Any]:
    """NAB's own corpus score per profile (``nab_<profile>``) and the threshold its optimiser chose."""
    out: dict[str, Any] = {}
    for profile, r in score_corpus(series).items():
        out[f"nab_{profile}"] = _r(r.score, 1)
        out[f"nab_{profile}_threshold"] = _r(r.threshold, 6)
    return out


def evaluate_scores(scores_csv: Path, labels: Path, series: str | None = None) -> dict[str, Any]:
    """Score a ``score-file`` output (``timestamp``, ``is_anomaly``, ``anomaly_score``) against labels.
    NAB's figures here have their threshold optimised on this one file."""
    from analytics.scorefile import time_ns

    try:
        frame = pd.read_csv(scores_csv)
    except OSError as exc:
        raise UsageError(f"{scores_csv}: {exc.strerror or exc}") from None
    for col in ("timestamp", "is_anomaly", "anomaly_score"):
        if col not in frame.columns:
            raise UsageError(f"{scores_csv}: no {col!r} column (is it a score-file output?)")
    ts = time_ns(frame["timestamp"])
    name = series or scores_csv.name
    windows_ns = load_windows(labels, series)
    result = score_series(name, ts, frame["is_anomaly"].to_numpy() > 0, windows_ns)
    labelled = LabelledSeries(name, frame["anomaly_score"].to_numpy(dtype=np.float64),
                              windows_to_rows(ts, windows_ns))
    return {**nab_figures([labelled]), **summarise([result])}


def evaluate_nab(root: Path, progress: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the file scorer on every series of a NAB folder and score it against its windows: NAB's own
    scorer on ``anomaly_score`` (one threshold per profile for the corpus) and the onset variant."""
    from analytics.scorefile import read_signals, score_frame, time_ns

    windows_file = root / "combined_windows.json"
    if not windows_file.is_file():
        raise UsageError(f"{root}: not a NAB folder (no combined_windows.json)")
    windows = json.loads(windows_file.read_text(encoding="utf-8"))
    results = []
    labelled = []
    per_file = []
    for i, (key, wins) in enumerate(sorted(windows.items())):
        path = root / "data" / key
        if not path.is_file():
            continue
        times, signals = read_signals(path, "timestamp")
        scored = score_frame(times, signals)
        ts = time_ns(times)
        windows_ns = [(_ns(a), _ns(b)) for a, b in wins]
        r = score_series(key, ts, scored["is_anomaly"].to_numpy() > 0, windows_ns)
        results.append(r)
        labelled.append(LabelledSeries(key, scored["anomaly_score"].to_numpy(dtype=np.float64),
                                       windows_to_rows(ts, windows_ns)))
        per_file.append({**summarise([r]), "series": key})
        if progress is not None:
            progress(i + 1, len(windows), key)
    nab = score_corpus(labelled)
    for row in per_file:
        std = nab["standard"].per_file[row["series"]]
        row.update({"nab_tp": std["tp"], "nab_fp": std["fp"], "nab_fn": std["fn"]})
    return {**nab_figures(labelled), **summarise(results)}, per_file
