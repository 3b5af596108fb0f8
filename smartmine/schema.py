"""The InfluxDB schema of telemetry: how one equipment sample becomes one line of line protocol.

- measurement: the equipment type (``gas_monitor``, ``belt_conveyor``...): one schema per type
- tags: ``site``, ``area``, ``equipment`` only (bounded by the catalog, never free text)
- fields: one float per reading, named by sensor id; ``<sensor>_quality`` (string) only where a
  reading is not ``good``; ``seq`` (integer), the publisher's sequence number
- timestamp: the sample's ``ts`` in nanoseconds

A redelivered message maps to the same series and timestamp, so at-least-once delivery overwrites
instead of duplicating. Ingest and replay both encode through :func:`telemetry_line`, so a replayed
recording stores exactly what a live ingest would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

from influxdb_client.client.write.point import _ESCAPE_MEASUREMENT, _escape_key, _escape_string, _escape_tag_value

TAGS = ("site", "area", "equipment")
SEQ_FIELD = "seq"
QUALITY_SUFFIX = "_quality"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def series_prefix(measurement: str, site: str, area: str, equipment: str) -> str:
    """``measurement,site=..,area=..,equipment=..`` escaped by influxdb-client's line-protocol rules."""
    return (f"{_escape_key(measurement, _ESCAPE_MEASUREMENT)}"
            f",area={_escape_tag_value(area)},equipment={_escape_tag_value(equipment)},site={_escape_tag_value(site)}")


def ts_ns(ts: datetime) -> int:
    """Nanoseconds since the epoch, exact for microsecond datetimes (no float rounding)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@lru_cache(maxsize=4096)
def _field_key(sensor: str) -> str:
    # Sensor ids repeat in every sample: escaping each once halves the encoder's cost (replay, ingest).
    return _escape_key(sensor)


def telemetry_line(prefix: str, ts: datetime, seq: int, readings: Mapping[str, tuple[float, str]]) -> str:
    """One line of line protocol for one sample. ``readings`` maps sensor id -> (value, quality)."""
    fields = []
    for sensor, (value, quality) in readings.items():
        key = _field_key(sensor)
        fields.append(f"{key}={float(value)!r}")
        if quality != "good":
            fields.append(f'{key}{QUALITY_SUFFIX}="{_escape_string(quality)}"')
    fields.append(f"{SEQ_FIELD}={seq}i")
    return f"{prefix} {','.join(fields)} {ts_ns(ts)}"
