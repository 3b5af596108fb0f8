"""``smartmine import-csv``: a CSV export (a time column, a column per sensor) as a recording of one equipment.

So a series from elsewhere (a historian export, a public benchmark such as NAB) can be replayed as if that
equipment had sent it. Everything is checked against the catalog before a byte is written: the site, the
equipment, each mapped sensor, each mapped column; a bad cell is named by its line and column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from replay.format import Chunk, Manifest, RecordingError, RecordingWriter
from replay.lines import LineEncoder, classify
from smartmine.catalog import Catalog
from smartmine.errors import UsageError
from smartmine.schema import ts_ns
from smartmine.wire import encode_telemetry, topic


@dataclass(slots=True)
class ImportResult:
    manifest: Manifest
    rows: int = 0
    empty_cells: int = 0
    skipped_rows: int = 0
    out_of_range: dict[str, int] = field(default_factory=dict)


def parse_sensor_map(text: str) -> dict[str, str]:
    """``col=sensor,col2=sensor2`` -> {column: sensor}."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        column, sep, sensor = part.partition("=")
        if not sep or not column.strip() or not sensor.strip():
            raise UsageError(f"--sensor-map entry {part!r} is not COLUMN=SENSOR")
        if column.strip() in mapping:
            raise UsageError(f"--sensor-map maps column {column.strip()!r} twice")
        mapping[column.strip()] = sensor.strip()
    if not mapping:
        raise UsageError("--sensor-map is empty; give COLUMN=SENSOR[,COLUMN=SENSOR...]")
    return mapping


def import_csv(path: Path, out: Path, catalog: Catalog, *, time_col: str, site: str, equipment: str,
               sensor_map: dict[str, str], prefix: str = "smartmine", timezone: str = "UTC",
               skip_bad: bool = False, chunk_messages: int = 20_000,
               on_progress: Callable[[int], None] | None = None,
               on_total: Callable[[int], None] | None = None) -> ImportResult:
    """Convert ``path`` into the recording ``out``; raises :class:`UsageError` / :class:`RecordingError`."""
    eq = catalog.equipment(site, equipment)
    if site not in catalog.sites:
        raise UsageError(f"--site {site!r} is not in the catalog (known: {', '.join(catalog.sites)})")
    if eq is None:
        known = ", ".join(e.id for e in catalog.all_equipment(site))
        raise UsageError(f"--equipment {equipment!r} is not in site {site!r} (known: {known})")
    for column, sensor in sensor_map.items():
        if sensor not in eq.sensors:
            raise UsageError(f"--sensor-map {column}={sensor}: {site}/{equipment} ({eq.type}) has no sensor "
                             f"{sensor!r} (its sensors: {', '.join(eq.sensors)})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise RecordingError(path, None, f"cannot read CSV: {exc}") from None
    missing = [c for c in [time_col, *sensor_map] if c not in frame.columns]
    if missing:
        raise UsageError(f"{path}: no column {', '.join(map(repr, missing))} "
                         f"(columns: {', '.join(map(str, frame.columns))})")
    if on_total:
        on_total(len(frame))

    result = ImportResult(Manifest("csv", ""))
    times = _parse_times(path, frame[time_col], timezone, skip_bad, result)
    values: dict[str, pd.Series] = {}
    for column in sensor_map:
        values[column] = _parse_numbers(path, frame[column], column, skip_bad)
    # Rows in time order (stable: equal times keep file order), rows without a usable time left out.
    order = times.dropna().sort_values(kind="stable").index

    name = topic(site, eq.area, equipment, prefix=prefix)
    src = f"csv:{path.name}"[:128]
    ranges = {s: eq.sensors[s].spec.physical for s in sensor_map.values()}
    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    encoder = LineEncoder(catalog)
    writer = RecordingWriter(out, "csv", created, meta={
        "csv": str(path), "site": site, "equipment": equipment, "sensor_map": sensor_map, "timezone": timezone,
        "catalog_sha256": encoder.fingerprint,
    })
    result.manifest = writer.manifest
    try:
        chunk = Chunk.empty()
        seq = 0
        for row in order:
            stamp: pd.Timestamp = times[row]
            readings: dict[str, float | tuple[float, str]] = {}
            for column, sensor in sensor_map.items():
                value = values[column][row]
                if value is None or math.isnan(value):
                    result.empty_cells += 1
                    continue
                lo, hi = ranges[sensor]
                if not lo <= value <= hi:
                    result.out_of_range[sensor] = result.out_of_range.get(sensor, 0) + 1
                readings[sensor] = float(value)
            if not readings:
                result.skipped_rows += 1
                continue
            ts = stamp.to_pydatetime()
            payload = encode_telemetry(ts, seq, readings, src=src)
            verdict = classify(name, payload, encoder)
            if verdict.error is not None:  # pragma: no cover - every input was checked above
                raise RecordingError(path, None, f"line {row + 2}: {verdict.error}")
            chunk.append(ts_ns(ts), name, payload, 1, False, verdict)
            seq += 1
            result.rows += 1
            if len(chunk) >= chunk_messages:
                writer.write(chunk)
                if on_progress:
                    on_progress(len(chunk))
                chunk = Chunk.empty()
        writer.write(chunk)
        if on_progress:
            on_progress(len(chunk))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return result


def _parse_times(path: Path, column: pd.Series, timezone: str, skip_bad: bool, result: ImportResult) -> pd.Series:
    parsed = pd.to_datetime(column, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        first = int(bad.to_numpy().argmax())
        if not skip_bad:
            raise RecordingError(path, None, f"line {first + 2}: time {column.iloc[first]!r} is not a date/time "
                                             "(--skip-bad leaves such rows out)")
        result.skipped_rows += int(bad.sum())
    if not pd.api.types.is_datetime64_any_dtype(parsed):
        # Several UTC offsets in one column: pandas keeps objects; bring them all to UTC.
        return pd.to_datetime(column, errors="coerce", format="mixed", utc=True)
    try:
        if parsed.dt.tz is None:
            parsed = parsed.dt.tz_localize(timezone)
        return parsed.dt.tz_convert(UTC)
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"--tz {timezone!r}: {exc}") from None


def _parse_numbers(path: Path, column: pd.Series, name: str, skip_bad: bool) -> pd.Series:
    text = column.str.strip()
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
    # A cell that holds text (not a number, not empty) or an infinity is bad input, not a gap.
    bad = (numbers.isna() & (text != "")) | numbers.isin([math.inf, -math.inf])
    if bad.any():
        first = int(bad.to_numpy().argmax())
        if not skip_bad:
            raise RecordingError(path, None, f"line {first + 2}, column {name!r}: {column.iloc[first]!r} is not a "
                                             "finite number (--skip-bad treats such cells as empty)")
        numbers = numbers.mask(bad)
    return numbers
