"""The InfluxDB schema of telemetry: how one equipment sample becomes one line of line protocol.

- measurement: the equipment type (``gas_monitor``, ``belt_conveyor``...): one schema per type
- tags: ``site``, ``area``, ``equipment`` only (bounded by the catalog, never free text)
- fields: one float per reading, named by sensor id; ``<sensor>_quality`` (string) only where a
  reading is not ``good``; ``seq`` (integer), the publisher's sequence number
- timestamp: the sample's ``ts`` in nanoseconds

A redelivered message maps to the same series and timestamp, so at-least-once delivery overwrites
instead of duplicating. Ingest and replay both encode through :func:`telemetry_line`, so a replayed
recording stores exactly what a live ingest would have.

:func:`ensure_database` sets up the database around it: the ``raw`` retention policy (default) and the
``rollup_1m`` policy with 1-minute mean/min/max per sensor, kept by one continuous query per equipment
type (docs/ingest.md, "InfluxDB schema", also gives the 2.x and 3.x equivalents).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from smartmine.influx import quote_ident
from smartmine.wire import ID_RE, QUALITY_SUFFIX, RESERVED_FIELDS, SEQ_FIELD, WireError, is_reserved_sensor_id

if TYPE_CHECKING:
    from smartmine.catalog import Catalog
    from smartmine.influx import InfluxClient

TAGS = ("site", "area", "equipment")
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
    if is_reserved_sensor_id(sensor):
        raise WireError(f"sensor {sensor!r} cannot be written to InfluxDB: the field name is reserved "
                        f"({', '.join(sorted(RESERVED_FIELDS))}, *{QUALITY_SUFFIX})")
    return sensor


@lru_cache(maxsize=64)
def _quality_field(quality: str) -> str:
    return f'"{_require_id("quality", quality)}"'


@lru_cache(maxsize=8192)
def value_field_prefix(sensor: str) -> str:
    """``<sensor>=``: a reading's field is this followed by ``repr(float(value))``.

    Refuses what :func:`telemetry_line` refuses (a non-id or reserved sensor name), with the same error.
    """
    return f"{_field_key(sensor)}="


@lru_cache(maxsize=8192)
def quality_field(sensor: str, quality: str) -> str:
    """``<sensor>_quality="<quality>"``: written after a reading whose quality is not ``good``."""
    return f"{_field_key(sensor)}{QUALITY_SUFFIX}={_quality_field(quality)}"


def assemble_line(prefix: str, fields: str, seq: int, timestamp_ns: int) -> str:
    """The line of :func:`telemetry_line` from its readings' fields, encoded and joined by commas in order."""
    if not fields:
        return f"{prefix} {SEQ_FIELD}={int(seq)}i {timestamp_ns}"
    return f"{prefix} {fields},{SEQ_FIELD}={int(seq)}i {timestamp_ns}"


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
        key = value_field_prefix(sensor)
        number = float(value)
        if not math.isfinite(number):
            raise WireError(f"readings.{sensor}: {value} is not a finite number")
        fields.append(f"{key}{number!r}")
        if quality != "good":
            fields.append(quality_field(sensor, quality))
    return assemble_line(prefix, ",".join(fields), seq, ts_ns(ts))


# ---------------------------------------------------------------------------------------------- database
RAW_RP = "raw"
ROLLUP_RP = "rollup_1m"
ROLLUP_INTERVAL = "1m"
ROLLUP_FUNCTIONS = ("mean", "min", "max")
# The rollup recomputes the last few intervals each run, so samples that arrive late (a spool replayed
# after a short InfluxDB outage, a publisher with a queued backlog) still land in their minute.
ROLLUP_RESAMPLE_FOR = "10m"


def rollup_field(sensor: str, function: str) -> str:
    """Field name of a sensor's rollup, e.g. ``ch4_pct_max`` in ``rollup_1m.gas_monitor``."""
    return f"{sensor}_{function}"


def rollup_select(database: str, measurement: str, sensors: Iterable[str], *, source_rp: str = RAW_RP,
                  target_rp: str = ROLLUP_RP) -> str:
    """The ``SELECT ... INTO`` of one equipment type's 1-minute rollup, without a time range.

    Used inside the continuous query and, with a ``WHERE time`` range appended, to backfill rollups of
    data written long after its time (a replayed recording).
    """
    fields = ", ".join(f"{fn}({quote_ident(s)}) AS {quote_ident(rollup_field(s, fn))}"
                       for s in sorted(sensors) for fn in ROLLUP_FUNCTIONS)
    db = quote_ident(database)
    return (f"SELECT {fields} INTO {db}.{quote_ident(target_rp)}.{quote_ident(measurement)} "
            f"FROM {db}.{quote_ident(source_rp)}.{quote_ident(measurement)}")


def continuous_query_name(measurement: str) -> str:
    return f"rollup_1m_{measurement}"


def ensure_database(client: InfluxClient, catalog: Catalog, *, retention: str = "30d",
                    rollup_retention: str = "400d", shard_duration: str = "1d") -> list[str]:
    """Create (or bring up to date) the database, its retention policies and the 1-minute rollups.

    - database ``client.database``;
    - retention policy ``raw`` (the database's DEFAULT, ``retention`` long) holding the samples;
    - retention policy ``rollup_1m`` (``rollup_retention`` long) holding, per equipment type, a
      measurement of the same name with ``<sensor>_mean``, ``<sensor>_min``, ``<sensor>_max`` per minute;
    - one continuous query per equipment type of the catalog computing those rollups (1.x only).

    Safe to run again: existing policies are altered to the durations given, continuous queries are
    re-created when the catalog changed. Returns the statements it ran, for logs. Durations are
    InfluxQL duration literals (``30d``, ``12w``, ``INF``).
    """
    db = quote_ident(client.database)
    for name, value in (("retention", retention), ("rollup_retention", rollup_retention),
                        ("shard_duration", shard_duration)):
        if not _DURATION.match(value):
            raise ValueError(f"{name} {value!r} is not an InfluxQL duration (e.g. 30d, 12w, INF)")
    statements: list[str] = [f"CREATE DATABASE {db}"]
    client.execute(statements[0])
    existing = {row[0] for row in _rows(client, f"SHOW RETENTION POLICIES ON {db}")}
    for rp, duration, default in ((RAW_RP, retention, True), (ROLLUP_RP, rollup_retention, False)):
        verb = "ALTER" if rp in existing else "CREATE"
        stmt = (f"{verb} RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} REPLICATION 1 "
                f"SHARD DURATION {shard_duration}{' DEFAULT' if default else ''}")
        client.execute(stmt)
        statements.append(stmt)

    wanted: dict[str, str] = {}
    for type_id in sorted(catalog.types):
        sensors = catalog.types[type_id].sensors
        if not sensors:
            continue
        select = rollup_select(client.database, type_id, sensors)
        wanted[continuous_query_name(type_id)] = (
            f"CREATE CONTINUOUS QUERY {quote_ident(continuous_query_name(type_id))} ON {db} "
            f"RESAMPLE EVERY {ROLLUP_INTERVAL} FOR {ROLLUP_RESAMPLE_FOR} "
            f"BEGIN {select} GROUP BY time({ROLLUP_INTERVAL}), * END")
    current = {name: query for name, query in _continuous_queries(client)}
    for name, create in wanted.items():
        if name in current:
            if _same_query(current[name], create):
                continue
            drop = f"DROP CONTINUOUS QUERY {quote_ident(name)} ON {db}"
            client.execute(drop)
            statements.append(drop)
        client.execute(create)
        statements.append(create)
    return statements


def backfill_rollups(client: InfluxClient, catalog: Catalog, start: datetime, end: datetime) -> None:
    """Compute the 1-minute rollups of ``[start, end)`` now (for data written after the CQ window passed)."""
    for type_id in sorted(catalog.types):
        sensors = catalog.types[type_id].sensors
        if sensors:
            client.execute(f"{rollup_select(client.database, type_id, sensors)} "
                           f"WHERE time >= {ts_ns(start)} AND time < {ts_ns(end)} "
                           f"GROUP BY time({ROLLUP_INTERVAL}), *")


_DURATION = re.compile(r"^(INF|(\d+(ns|u|µ|ms|s|m|h|d|w))+)$")


def _rows(client: InfluxClient, q: str) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for result in client.query(q, epoch=None):
        for series in result.get("series", []):
            rows.extend(series.get("values", []))
    return rows


def _continuous_queries(client: InfluxClient) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for result in client.query("SHOW CONTINUOUS QUERIES", epoch=None):
        for series in result.get("series", []):
            if series.get("name") == client.database:
                out.extend((row[0], row[1]) for row in series.get("values", []))
    return out


def _same_query(shown: str, create: str) -> bool:
    # SHOW CONTINUOUS QUERIES prints the server's canonical form; compare without quoting and spacing.
    def norm(q: str) -> str:
        return re.sub(r'[\s"]+', "", q).lower()
    return norm(shown) == norm(create)
