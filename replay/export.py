"""``smartmine export``: a recording made from what InfluxDB stored, read in chunks, window by window.

Each stored point (measurement = equipment type, tags site/area/equipment, a float field per sensor,
``<sensor>_quality``, ``seq``) becomes the telemetry payload and topic it came from, so an export replays
like a recording of the plant. Windows of ``window_s`` are read with chunked queries and sorted by time,
which keeps memory bounded and the recording in time order.

What does not come back: the publisher id (``src``) is not stored; ``out_of_range`` is ingest's mark for a
value outside the physical range, not a wire quality, so it is exported as a plain value (ingest and replay
mark it again); timestamps keep microseconds (the wire format's precision).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from replay.format import Chunk, Manifest, RecordingWriter
from replay.lines import LineEncoder, classify
from smartmine.catalog import Catalog
from smartmine.influx import InfluxClient, quote_ident, quote_string
from smartmine.schema import QUALITY_SUFFIX, SEQ_FIELD, TAGS
from smartmine.wire import encode_telemetry, format_ts, topic

WIRE_QUALITIES = frozenset({"good", "uncertain", "bad"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class ExportResult:
    manifest: Manifest
    points: int = 0
    skipped_fields: int = 0       # quality values the wire format cannot carry (reported, value kept)
    invalid: int = 0              # points that would not make a valid payload (reported, not exported)
    examples: list[str] = field(default_factory=list)


def payload_from_point(ts_ns: int, seq: int, readings: dict[str, tuple[float, str]]) -> bytes:
    """The telemetry payload of one stored point (``encode_telemetry``, microseconds kept when present)."""
    ts = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    payload = encode_telemetry(ts, seq, readings)
    if ts.microsecond % 1000:
        # format_ts writes milliseconds; this sample has more, and the payload's ts may carry them.
        exact = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        payload = payload.replace(f'"ts":"{format_ts(ts)}"'.encode(), f'"ts":"{exact}"'.encode(), 1)
    return payload


def point_rows(series: dict[str, Any]) -> Iterable[tuple[int, str, str, str, int, dict[str, tuple[float, str]]]]:
    """``(ts_ns, site, area, equipment, seq, readings)`` for each row of one InfluxQL series."""
    tags = series.get("tags") or {}
    columns: list[str] = series["columns"]
    sensors = [(i, c) for i, c in enumerate(columns)
               if c != "time" and c != SEQ_FIELD and c not in TAGS and not c.endswith(QUALITY_SUFFIX)]
    quality_col = {c: columns.index(c + QUALITY_SUFFIX) for _, c in sensors if c + QUALITY_SUFFIX in columns}
    seq_col = columns.index(SEQ_FIELD) if SEQ_FIELD in columns else None
    t_col = columns.index("time")
    for row in series.get("values", []):
        readings: dict[str, tuple[float, str]] = {}
        for i, sensor in sensors:
            value = row[i]
            if value is None or isinstance(value, (str, bool)):
                continue
            q = row[quality_col[sensor]] if sensor in quality_col else None
            readings[sensor] = (float(value), q if q is not None else "good")
        if readings:
            seq = row[seq_col] if seq_col is not None and row[seq_col] is not None else 0
            yield row[t_col], tags.get("site", ""), tags.get("area", ""), tags.get("equipment", ""), int(seq), readings


def export(client: InfluxClient, catalog: Catalog, out: Path, start_ns: int, end_ns: int, *,
           sites: Sequence[str] = (), prefix: str = "smartmine", window_s: float = 600.0,
           chunk_size: int = 10_000, retention_policy: str | None = None,
           on_progress: Callable[[int], None] | None = None) -> ExportResult:
    """Export ``[start_ns, end_ns)`` of every catalog equipment type (of ``sites``) into a recording."""
    measurements = sorted({eq.type for eq in catalog.all_equipment() if not sites or eq.site in sites})
    rp = f"{quote_ident(retention_policy)}." if retention_policy else ""
    source = ", ".join(rp + quote_ident(m) for m in measurements)
    site_filter = (" AND (" + " OR ".join(f'"site" = {quote_string(s)}' for s in sites) + ")") if sites else ""
    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    encoder = LineEncoder(catalog)
    writer = RecordingWriter(out, "influxdb", created, meta={
        "influx_url": client.url, "database": client.database, "retention_policy": retention_policy,
        "from_ns": start_ns, "to_ns": end_ns, "sites": list(sites), "catalog_sha256": encoder.fingerprint,
    })
    result = ExportResult(writer.manifest)
    step = max(int(window_s * 1e9), 1)
    try:
        lo = start_ns
        while lo < end_ns and measurements:
            hi = min(lo + step, end_ns)
            q = (f"SELECT * FROM {source} WHERE time >= {lo} AND time < {hi}{site_filter} "
                 f'GROUP BY "site", "area", "equipment"')
            rows: list[tuple[int, str, bytes, int]] = []
            for series in client.query_chunks(q, chunk_size=chunk_size):
                for ts_ns, site, area, equipment, seq, readings in point_rows(series):
                    for sensor, (value, quality) in list(readings.items()):
                        if quality not in WIRE_QUALITIES:
                            readings[sensor] = (value, "good")
                            result.skipped_fields += 1
                    try:
                        name = topic(site, area, equipment, prefix=prefix)
                        payload = payload_from_point(ts_ns, seq, readings)
                    except ValueError as exc:
                        _note(result, f"{site}/{equipment} at {ts_ns}: {exc}")
                        continue
                    rows.append((ts_ns, name, payload, len(readings)))
            rows.sort(key=lambda r: (r[0], r[1]))
            _write_rows(writer, encoder, rows, result)
            if on_progress:
                on_progress(hi - lo)
            lo = hi
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return result


def _note(result: ExportResult, text: str) -> None:
    result.invalid += 1
    if len(result.examples) < 5:
        result.examples.append(text)


def _write_rows(writer: RecordingWriter, encoder: LineEncoder, rows: list[tuple[int, str, bytes, int]],
                result: ExportResult, chunk_messages: int = 20_000) -> None:
    for start in range(0, len(rows), chunk_messages):
        chunk = Chunk.empty()
        for ts_ns, name, payload, _n in rows[start:start + chunk_messages]:
            verdict = classify(name, payload, encoder)
            if verdict.error is not None or verdict.ts_ns is None:
                # Never put a payload in a recording that the wire format refuses.
                _note(result, f"{name} at {ts_ns}: {verdict.error}")
                continue
            chunk.append(ts_ns, name, payload, 1, False, verdict)
            result.points += 1
        writer.write(chunk)
