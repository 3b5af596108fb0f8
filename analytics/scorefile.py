"""``smartmine analyze score-file``: score any CSV of time series, no catalog needed.

Every numeric column except the time column and ``--exclude`` is a signal: one column is scored as a
univariate series, several as one multivariate stream (each column's own detectors plus PCA T²/Q over
all of them). Unsupervised and causal: a row's score uses only the rows before it (after a warm-up
of ``window`` rows nothing is flagged), never labels. The output has one row per input row:
``timestamp, anomaly_score (0..1), is_anomaly (0/1), detector`` (the detector with the strongest
evidence on an anomalous row, e.g. ``mad:pressure``).

``anomaly_score`` is the file's ONE false-alarm budget (:mod:`analytics.evidence`): each detector's own
statistic becomes a tail probability against that statistic's recent values, a row's p-values of every
detector of every column are combined (Cauchy), and the family p-value is mapped to [0, 1] with 0.5 at
the budget ``file_false_share`` (``is_anomaly``). What a row's evidence counts is *news*: a detector's
statistic that does not beat its own last ``evidence_novelty`` rows by ``novelty_margin`` is no evidence,
and of the evidence that is left only the part above the detector's strongest of the last
``evidence_edge`` rows counts: a score is high where an anomaly begins, not through a whole episode
(NAB's scorer takes every row above its threshold as a detection).

The detector settings are fixed once for every file (they are not tuned per file): see
:data:`FILE_DEFAULTS` and docs/analytics.md for how they were chosen.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts
from analytics.evidence import P_CEIL, TailCalibrator, combine_pvalues, score_from_pvalue
from analytics.seasonal import SeasonalBaseline
from analytics.statistical import Cusum, EwmaChart, RobustZ
from smartmine.config import AnalyticsSettings
from smartmine.errors import UsageError

_PLANT = AnalyticsSettings.model_fields


@dataclass(frozen=True, slots=True)
class FileScoring:
    """Detector settings for files without a catalog, in rows (chosen once, see docs/analytics.md)."""

    window: int = 480
    hop: int = 30
    mad_threshold: float = 8.0
    ewma_threshold: float = 6.0
    ewma_smoothing: float = 0.1
    cusum_threshold: float = 20.0
    cusum_memory: int = 120
    novelty: int = 1000
    novelty_margin: float = 1.1
    cusum_allowance: float = 0.5
    hold: int = 30
    pca: bool = True
    # The plant's time-of-day baseline with the plant's settings (a day in hourly slots, three days'
    # memory, 5 sigma): plants run shifts and follow the day. Used when the time column holds times.
    seasonal: bool = True
    seasonal_slot_s: int = _PLANT["seasonal_slot_s"].default
    seasonal_days: float = _PLANT["seasonal_days"].default
    seasonal_threshold: float = _PLANT["seasonal_threshold"].default
    # The budget (analytics/evidence.py): the share of rows the combined evidence flags on normal data;
    # each detector's statistic is calibrated against its last `calibration_window` values
    false_share: float = _PLANT["file_false_share"].default
    combine_method: str = _PLANT["combine_method"].default
    calibration_window: int = 240
    calibration_hop: int = 30
    evidence_novelty: int = 2000
    evidence_edge: int = 30


FILE_DEFAULTS = FileScoring()
_DECIMAL_COMMA = re.compile(r"^\s*-?\d+(,\d+)?([eE][-+]?\d+)?\s*$")


def detect_separator(path: Path) -> str:
    """``,`` or ``;``, from the header line (the one that splits it into more fields wins)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        header = fh.readline()
    if not header.strip():
        raise UsageError(f"{path}: empty file (expected a CSV header line)")
    try:
        return csv.Sniffer().sniff(header, delimiters=",;").delimiter
    except csv.Error:
        return ";" if header.count(";") > header.count(",") else ","


def read_signals(path: Path, time_col: str, exclude: Sequence[str] = ()) -> tuple[pd.Series, pd.DataFrame]:
    """The time column as written in the file and the signals (float columns)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    sep = detect_separator(path)
    try:
        raw = pd.read_csv(path, sep=sep, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable CSV: {exc}") from None
    if time_col not in raw.columns:
        raise UsageError(f"{path}: no time column {time_col!r} (columns: {', '.join(map(str, raw.columns))})")
    missing = [c for c in exclude if c not in raw.columns]
    if missing:
        raise UsageError(f"{path}: --exclude names columns that are not there: {', '.join(missing)}")
    signals = {}
    for col in raw.columns:
        if col == time_col or col in exclude:
            continue
        series = raw[col]
        if series.dtype == object and sep == ";" and series.dropna().astype(str).str.match(_DECIMAL_COMMA).all():
            series = series.astype(str).str.replace(",", ".", regex=False)  # European decimal comma
        values = pd.to_numeric(series, errors="coerce")
        if values.notna().sum() == 0 or (series.dtype == object and values.notna().mean() < 0.5):
            continue  # a text column: not a signal
        signals[str(col)] = values.astype(np.float64)
    if not signals:
        raise UsageError(f"{path}: no numeric signal columns besides {time_col!r}")
    return raw[time_col], pd.DataFrame(signals)


def time_ns(times: pd.Series) -> np.ndarray:
    """Row times in ns; a column that is not times (a row number...) counts as one row per second,
    since only the order matters to the detectors."""
    parsed = _parse_times(times)
    if parsed is not None:
        return pd.DatetimeIndex(parsed).as_unit("ns").asi8
    return np.arange(len(times), dtype=np.int64) * 1_000_000_000


def _parse_times(times: pd.Series) -> pd.Series | None:
    if pd.api.types.is_numeric_dtype(times):
        return None  # row numbers or counters, not times
    parsed = pd.to_datetime(times, errors="coerce", utc=True, format="mixed")
    return parsed if len(parsed) and parsed.notna().all() else None


def sample_period_s(times: pd.Series) -> float | None:
    """The typical spacing of the rows in seconds, when the time column holds times (else None)."""
    parsed = _parse_times(times)
    if parsed is None or len(parsed) < 2:
        return None
    step = float(np.median(np.diff(pd.DatetimeIndex(parsed).as_unit("ns").asi8))) / 1e9
    return step if step > 0 else None


def file_detectors(columns: Sequence[str], cfg: FileScoring = FILE_DEFAULTS,
                   period_s: float | None = None) -> dict[str, list[Detector]]:
    """Each column's detectors; with ``period_s`` (the rows are times that far apart) also the
    time-of-day baseline, which needs real times and at least a slot per row."""
    daily = cfg.seasonal and period_s is not None and period_s <= cfg.seasonal_slot_s
    out: dict[str, list[Detector]] = {}
    for col in columns:
        ctx = SensorContext(sensor=_sensor_id(col), sensor_name=col, sample_period_s=period_s or 1.0)
        out[col] = [
            RobustZ(ctx, window=cfg.window, hop=cfg.hop, threshold=cfg.mad_threshold, novelty=cfg.novelty,
                    novelty_margin=cfg.novelty_margin),
            EwmaChart(ctx, window=cfg.window, hop=cfg.hop, threshold=cfg.ewma_threshold,
                      smoothing=cfg.ewma_smoothing, novelty=cfg.novelty, novelty_margin=cfg.novelty_margin),
            Cusum(ctx, window=cfg.window, hop=cfg.hop, threshold=cfg.cusum_threshold, memory=cfg.cusum_memory,
                  allowance=cfg.cusum_allowance, novelty=cfg.novelty, novelty_margin=cfg.novelty_margin),
        ]
        if daily:
            # Local time as written in the file: no offset.
            out[col].append(SeasonalBaseline(ctx, slot_s=cfg.seasonal_slot_s, utc_offset_s=0, days=cfg.seasonal_days,
                                             threshold=cfg.seasonal_threshold, novelty=cfg.novelty,
                                             novelty_margin=cfg.novelty_margin))
    return out


def _sensor_id(col: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", col.lower()) or "value"


#: Each detector's own statistic, the one its tail probability is calibrated on.
STATISTIC = {"mad": "z", "ewma": "e", "cusum": "cusum", "seasonal": "z", "pca": "stat"}


def statistic_of(d: Detector, v: Verdicts) -> FloatArray:
    """A detector's statistic per row, NaN where it did not score (warm-up, a missing value)."""
    stat = v.evidence[STATISTIC[d.name]].copy()
    if d.name == "seasonal":
        stat[stat <= 0] = np.nan  # a slot that has not seen a day yet scores 0
    elif d.name == "pca":
        stat[np.isnan(v.evidence["t2"])] = np.nan
    else:
        stat[np.isnan(v.evidence["median"])] = np.nan
    return stat


def news_pvalues(stat: FloatArray, cfg: FileScoring = FILE_DEFAULTS) -> FloatArray:
    """The tail probability of each row's statistic (:class:`TailCalibrator`), counting only news: a
    statistic short of ``novelty_margin`` times its maximum over the last ``evidence_novelty`` rows is no
    evidence (``P_CEIL``); of the rest, only the evidence (-log p) above the strongest of the last
    ``evidence_edge`` rows. Causal: trailing windows only."""
    p = TailCalibrator(cfg.calibration_window, cfg.calibration_hop).pvalues(stat)
    past = pd.Series(stat).rolling(cfg.evidence_novelty, min_periods=1).max().shift(1).to_numpy()
    stale = stat < cfg.novelty_margin * np.where(np.isnan(past), -np.inf, past)
    p = np.where(stale & ~np.isnan(p), P_CEIL, p)
    evidence = -np.log(np.where(np.isnan(p), 1.0, np.maximum(p, 1e-300)))
    before = pd.Series(evidence).rolling(cfg.evidence_edge, min_periods=1).max().shift(1).fillna(0.0).to_numpy()
    return np.where(np.isnan(p), np.nan, np.exp(-np.maximum(evidence - before, 0.0)))


def score_frame(times: pd.Series, signals: pd.DataFrame, cfg: FileScoring = FILE_DEFAULTS) -> pd.DataFrame:
    """Per row the combined evidence of every detector of every column (the file's one budget); several
    columns: the process monitor (dynamic PCA, calibrated on the file's first rows), see
    :func:`score_process`."""
    if signals.shape[1] >= 2 and cfg.pca:
        return score_process(times, signals)
    ts = time_ns(times)
    n = len(signals)
    pvalues: list[FloatArray] = []
    rules: list[str] = []
    for col, dets in file_detectors(list(signals.columns), cfg, sample_period_s(times)).items():
        x = signals[col].to_numpy(dtype=np.float64)
        for d in dets:
            pvalues.append(news_pvalues(statistic_of(d, d.run(ts, x)), cfg))
            rules.append(d.rule)
    p = np.column_stack(pvalues) if pvalues else np.ones((n, 1))
    best = score_from_pvalue(combine_pvalues(p, cfg.combine_method), cfg.false_share)
    strongest = np.argmin(np.where(np.isnan(p), np.inf, p), axis=1)
    best_name = np.asarray(rules or [""], dtype=object)[strongest]
    flagged = best >= 0.5
    if cfg.hold > 0:
        # An episode holds for `hold` rows after its last flag, as the streaming job's episodes do:
        # a flickering score is one problem, not ten. Looks only backwards, so it stays causal.
        last = np.maximum.accumulate(np.where(flagged, np.arange(n), -cfg.hold - 1))
        held = ~flagged & (np.arange(n) - last <= cfg.hold)
        best_name[held] = best_name[np.maximum(last[held], 0)]
        flagged = flagged | held
    is_anomaly = flagged.astype(np.int8)
    return pd.DataFrame({
        "timestamp": times.to_numpy(),  # as written in the input, so the rows join back
        "anomaly_score": best,
        "is_anomaly": is_anomaly,
        "detector": np.where(is_anomaly == 1, best_name, ""),
    })


def score_process(times: pd.Series, signals: pd.DataFrame) -> pd.DataFrame:
    """Several signals: :class:`~analytics.multivariate.ProcessMonitor` learned on the file's first
    ``reference_rows`` rows (at most half the file; a missing value carries the column's last reading
    forward), which are its warm-up (score 0); every later row scored causally against it. Its
    per-signal shift statistic is the per-signal detector inside the same budget."""
    from analytics.multivariate import PROCESS_DEFAULTS, ProcessMonitor

    n = len(signals)
    x = signals.ffill().bfill().to_numpy(dtype=np.float64)
    ref_rows = min(PROCESS_DEFAULTS.reference_rows, n // 2)
    score = np.zeros(n)
    flagged = np.zeros(n, dtype=bool)
    names = np.full(n, "", dtype=object)
    if np.isfinite(x).all() and ref_rows >= 4 * (PROCESS_DEFAULTS.lags + 2):
        monitor = ProcessMonitor(list(signals.columns))
        monitor.fit(x[:ref_rows])
        _, s, f, drivers = monitor.judge(x[ref_rows:], before=x[:ref_rows])
        score[ref_rows:], flagged[ref_rows:] = s, f
        names[ref_rows:] = ["dpca:" + d for d in drivers]
    return pd.DataFrame({
        "timestamp": times.to_numpy(),
        "anomaly_score": score,
        "is_anomaly": flagged.astype(np.int8),
        "detector": np.where(flagged, names, ""),
    })


def score_file(path: Path, out: Path, time_col: str, exclude: Sequence[str] = (),
               cfg: FileScoring = FILE_DEFAULTS) -> pd.DataFrame:
    times, signals = read_signals(path, time_col, exclude)
    result = score_frame(times, signals, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out, index=False)
    return result
