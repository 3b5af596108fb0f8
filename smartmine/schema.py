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

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

from smartmine.wire import ID_RE, WireError

TAGS = ("site", "area", "equipment")
SEQ_FIELD = "seq"
QUALITY_SUFFIX = "_quality"
# Field keys InfluxDB or this schema already uses: a sensor by one of these names would overwrite them.
RESERVED_FIELDS = frozenset({SEQ_FIELD, "time"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _require_id(what: str, value: str) -> str:
    # Every name that reaches line protocol is an id of the safe alphabet, so nothing needs escaping and
    # nothing can be escaped wrongly: no crafted name can add a tag, a field or a line. Names come from
    # the catalog and the validated wire format; this is the last line of defence, not the first.
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise WireError(f"{what} {value!r} cannot be written to InfluxDB: ids are lowercase letters, digits and _")
    return value


@lru_cache(maxsize=65_536)
def series_prefix(measurement: str, site: str, area: str, equipment: str) -> str:
    """``measurement,area=..,equipment=..,site=..`` (tags in InfluxDB's sort order); refuses non-ids."""
    return (f"{_require_id('measurement', measurement)},area={_require_id('area', area)}"
            f",equipment={_require_id('equipment', equipment)},site={_require_id('site', site)}")


@lru_cache(maxsize=8192)
def _field_key(sensor: str) -> str:
    # Sensor ids repeat in every sample: checking each once keeps the encoder fast (replay, ingest).
    _require_id("sensor", sensor)
    if sensor in RESERVED_FIELDS or sensor.endswith(QUALITY_SUFFIX):
        raise WireError(f"sensor {sensor!r} cannot be written to InfluxDB: the field name is reserved "
                        f"({', '.join(sorted(RESERVED_FIELDS))}, *{QUALITY_SUFFIX})")
    return sensor


@lru_cache(maxsize=64)
def _quality_field(quality: str) -> str:
    return f'"{_require_id("quality", quality)}"'


def ts_ns(ts: datetime) -> int:
    """Nanoseconds since the epoch, exact for microsecond datetimes (no float rounding)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def telemetry_line(prefix: str, ts: datetime, seq: int, readings: Mapping[str, tuple[float, str]]) -> str:
    """One line of line protocol for one sample. ``readings`` maps sensor id -> (value, quality).

    ``prefix`` comes from :func:`series_prefix`. Raises :class:`WireError` for a sensor or quality that
    is not an id, a reserved field name, or a value that is not a finite number.
    """
    fields = []
    for sensor, (value, quality) in readings.items():
        key = _field_key(sensor)
        number = float(value)
        if not math.isfinite(number):
            raise WireError(f"readings.{sensor}: {value} is not a finite number")
        fields.append(f"{key}={number!r}")
        if quality != "good":
            fields.append(f"{key}{QUALITY_SUFFIX}={_quality_field(quality)}")
    fields.append(f"{SEQ_FIELD}={int(seq)}i")
    return f"{prefix} {','.join(fields)} {ts_ns(ts)}"

