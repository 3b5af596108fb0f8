"""The wire format every stage agrees on: MQTT topics and the versioned telemetry payload.

Topic scheme: ``<prefix>/<site>/<area>/<equipment>/<channel>``; the telemetry payload is one JSON
object per equipment sample (see docs/wire-format.md). :class:`TelemetryPayload` is the single
definition: the code validates against it and ``schemas/telemetry-v1.schema.json`` is generated from it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "smartmine"
CHANNELS = ("telemetry", "status", "event", "alert")
SCHEMA_FILE = Path(__file__).with_name("schemas") / "telemetry-v1.schema.json"
MAX_READINGS = 1024

# Matched with fullmatch: with re.match, "$" would also accept a trailing newline ("site\n").
ID_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Stored beside the readings (smartmine.schema): a sample's ``seq``, each reading's quality flag as
# ``<sensor>_quality``, and InfluxDB's own ``time``. A sensor by one of these names would overwrite them,
# so the catalog refuses such a sensor id and the encoder refuses such a reading.
SEQ_FIELD = "seq"
QUALITY_SUFFIX = "_quality"
RESERVED_FIELDS = frozenset({SEQ_FIELD, "time"})
_SEGMENT = ID_RE
_PREFIX = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*")



def is_reserved_sensor_id(sensor: str) -> bool:
    """True for a name the stored schema keeps for itself (``seq``, ``time``, ``*_quality``)."""
    return sensor in RESERVED_FIELDS or sensor.endswith(QUALITY_SUFFIX)


Quality = Literal["good", "uncertain", "bad"]
Severity = Literal["info", "warning", "critical", "emergency"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2, "emergency": 3}
SensorId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class WireError(ValueError):
    """A topic or payload does not follow the wire format; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Topic:
    prefix: str
    site: str
    area: str
    equipment: str
    channel: str

    def __str__(self) -> str:
        return f"{self.prefix}/{self.site}/{self.area}/{self.equipment}/{self.channel}"


def topic(site: str, area: str, equipment: str, channel: str = "telemetry", prefix: str = DEFAULT_PREFIX) -> str:
    """Build a topic, refusing segments that would break the scheme (``/``, ``+``, ``#``, empty...)."""
    check_prefix(prefix)
    for name, value in (("site", site), ("area", area), ("equipment", equipment)):
        if not _SEGMENT.fullmatch(value):
            raise WireError(f"{name} {value!r} is not a valid topic segment (lowercase letters, digits, _)")
    if channel not in CHANNELS:
        raise WireError(f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
    return f"{prefix}/{site}/{area}/{equipment}/{channel}"


def subscription(channel: str = "telemetry", prefix: str = DEFAULT_PREFIX, site: str = "+") -> str:
    """The MQTT filter for one channel of every equipment (of one site, or of all)."""
    check_prefix(prefix)
    return f"{prefix}/{site}/+/+/{channel}"


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise WireError(f"topic prefix {prefix!r} is invalid (letters, digits, _ and -, levels split by /)")
    return prefix


def parse_topic(name: str, prefix: str = DEFAULT_PREFIX) -> Topic:
    """Split a topic into its parts, or raise :class:`WireError` saying what is wrong with it."""
    if not name.startswith(prefix + "/"):
        raise WireError(f"topic {name!r} does not start with prefix {prefix!r}")
    parts = name[len(prefix) + 1:].split("/")
    if len(parts) != 4:
        raise WireError(f"topic {name!r} has {len(parts)} levels after the prefix, expected 4 "
                        "(site/area/equipment/channel)")
    site, area, equipment, channel = parts
    for what, value in (("site", site), ("area", area), ("equipment", equipment)):
        if not _SEGMENT.fullmatch(value):
            raise WireError(f"topic {name!r}: {what} {value!r} is not a valid id")
    if channel not in CHANNELS:
        raise WireError(f"topic {name!r}: unknown channel {channel!r}")
    return Topic(prefix, site, area, equipment, channel)


class Reading(BaseModel):
    """A reading with its quality flag (a bare number means quality ``good``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    value: float
    quality: Quality = "good"


class TelemetryPayload(BaseModel):
    """One equipment sample: schema version, timestamp, per-publisher sequence number, readings."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
        title="smartmine telemetry payload v1",
        json_schema_extra={"$id": "https://smartmine.example/schemas/telemetry-v1.schema.json"},
    )
    v: Literal[1] = Field(description="Schema version")
    ts: AwareDatetime = Field(description="Sample time, RFC 3339 with an explicit offset (UTC: 'Z')")
    seq: int = Field(ge=0, lt=2**63, description="Per-publisher sequence number, increasing by one")
    src: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="Publisher id (seq is counted per publisher)")
    readings: dict[SensorId, float | Reading] = Field(
        min_length=1, max_length=MAX_READINGS,
        description="Sensor id -> value, or {value, quality}",
        json_schema_extra={"propertyNames": {"pattern": f"^{_SEGMENT.pattern}$"}})

    def values(self) -> dict[str, tuple[float, str]]:
        """Readings as ``sensor -> (value, quality)``."""
        out: dict[str, tuple[float, str]] = {}
        for sensor, r in self.readings.items():
            out[sensor] = (r.value, r.quality) if isinstance(r, Reading) else (float(r), "good")
        return out


def parse_telemetry(raw: bytes | str) -> TelemetryPayload:
    """Decode and validate a telemetry payload; :class:`WireError` says which field is wrong and why."""
    try:
        payload = TelemetryPayload.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise WireError(f"{where}: {err['msg']}{more}") from None
    if payload.ts.utcoffset() != UTC.utcoffset(None):
        try:
            payload = payload.model_copy(update={"ts": payload.ts.astimezone(UTC)})
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
            raise WireError(f"ts: {payload.ts.isoformat()} is out of range in UTC") from None
    return payload


def format_ts(ts: datetime) -> str:
    """RFC 3339 UTC with millisecond precision, e.g. ``2026-11-27T08:00:00.250Z``."""
    if ts.tzinfo is None:
        raise WireError("timestamp has no timezone; use UTC")
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def encode_telemetry(ts: datetime, seq: int, readings: Mapping[str, float | tuple[float, str]],
                     src: str | None = None) -> bytes:
    """Encode one sample. A reading given as ``(value, quality)`` carries its quality flag."""
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "ts": format_ts(ts), "seq": seq}
    if src is not None:
        body["src"] = src
    out: dict[str, Any] = {}
    for sensor, r in readings.items():
        if isinstance(r, tuple):
            value, quality = r
            out[sensor] = {"value": value, "quality": quality} if quality != "good" else value
        else:
            out[sensor] = r
    for sensor, r in out.items():
        value = r["value"] if isinstance(r, dict) else r
        if not math.isfinite(value):
            raise WireError(f"readings.{sensor}: {value} is not a finite number")
    body["readings"] = out
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def encode_status(ts: datetime, state: Literal["online", "offline"], src: str) -> bytes:
    return json.dumps({"v": SCHEMA_VERSION, "ts": format_ts(ts), "state": state, "src": src},
                      separators=(",", ":")).encode()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the telemetry payload, generated from :class:`TelemetryPayload`."""
    schema = TelemetryPayload.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


class AnomalyEvent(BaseModel):
    """What analytics saw, with its evidence; published on the ``event`` channel for alerts to route.

    ``rule`` is the stable key alerts deduplicate on (one alert per equipment and rule while it fires),
    e.g. ``limit:methane`` or ``ewma:ch4_pct``. ``state`` is ``firing`` while the condition holds and
    ``cleared`` once it is over (for a limit: back past its restore level).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    v: Literal[1] = 1
    ts: AwareDatetime = Field(description="Time of the sample that produced this event")
    start: AwareDatetime = Field(description="Start of the anomalous span")
    end: AwareDatetime | None = Field(default=None, description="End of the span; None while it is ongoing")
    site: SensorId
    area: SensorId
    equipment: SensorId
    sensor: SensorId | None = None
    detector: str = Field(min_length=1, max_length=64)
    rule: str = Field(min_length=1, max_length=128)
    severity: Severity
    state: Literal["firing", "cleared"] = "firing"
    score: float = Field(description="Detector score; 0 to 1 where the detector normalises it")
    threshold: float | None = None
    values: dict[str, float] = Field(default_factory=dict, description="The values that triggered it")
    message: str = Field(min_length=1, max_length=500, description="One line a person can act on")

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_event(raw: bytes | str) -> AnomalyEvent:
    try:
        return AnomalyEvent.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise WireError(f"{where}: {err['msg']}") from None
