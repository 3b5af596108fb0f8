"""``smartmine analyze score-file``: score any CSV of time series, no catalog needed.

Every numeric column except the time column and ``--exclude`` is a signal: one column is scored as a
univariate series, several as one multivariate stream (each column's own detectors plus PCA T²/Q over
all of them). Unsupervised and causal: a row's score uses only the rows before it (after a warm-up
of ``window`` rows nothing is flagged), never labels. The output has one row per input row:
``timestamp, anomaly_score (0..1), is_anomaly (0/1), detector`` (the detector with the highest score
on an anomalous row, e.g. ``mad:pressure``).

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

from analytics.detector import Detector, SensorContext
from analytics.seasonal import SeasonalBaseline
from analytics.statistical import Cusum, EwmaChart, RobustZ
from smartmine.config import AnalyticsSettings
from smartmine.errors import UsageError

_PLANT = AnalyticsSettings.model_fields


@dataclass(frozen=True, slots=True)
class FileScoring:
    """Detector settings for files without a catalog, in rows (chosen once, see docs/analytics.md)."""

    window: int = 240
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


def score_frame(times: pd.Series, signals: pd.DataFrame, cfg: FileScoring = FILE_DEFAULTS) -> pd.DataFrame:
    """Fused per-row scores: the highest of every detector's 0..1 score (0.5 = its threshold)."""
    ts = time_ns(times)
    n = len(signals)
    best = np.zeros(n)
    best_name = np.full(n, "", dtype=object)
    for col, dets in file_detectors(list(signals.columns), cfg, sample_period_s(times)).items():
        x = signals[col].to_numpy(dtype=np.float64)
        for d in dets:
            v = d.run(ts, x)
            better = v.score > best
            best[better] = v.score[better]
            best_name[better] = d.rule
    if cfg.pca and signals.shape[1] >= 2:
        from analytics.multivariate import PcaMonitor

        pca = PcaMonitor(list(signals.columns), window=max(cfg.window, 4 * signals.shape[1]), hop=cfg.window)
        v = pca.run(ts, signals.to_numpy(dtype=np.float64))
        better = v.score > best
        best[better] = v.score[better]
        best_name[better] = pca.rule
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
        "anomaly_score": np.round(best, 6),
        "is_anomaly": is_anomaly,
        "detector": np.where(is_anomaly == 1, best_name, ""),
    })


def score_file(path: Path, out: Path, time_col: str, exclude: Sequence[str] = (),
               cfg: FileScoring = FILE_DEFAULTS) -> pd.DataFrame:
    times, signals = read_signals(path, time_col, exclude)
    result = score_frame(times, signals, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out, index=False)
    return result
