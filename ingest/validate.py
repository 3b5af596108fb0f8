"""Validation of one telemetry message against the wire format and the catalog, and its encoding.

A message becomes either one line of line protocol (``telemetry_line``), or a :class:`Rejection`
saying why not, or both: a sample that carries a sensor the catalog does not know is stored with its
known readings, and the unknown ones go to the dead letter. A value outside the sensor's physical
range is stored with quality ``out_of_range``: it is evidence of a sensor fault, not noise to drop.

This runs once per message on the MQTT network thread, so the per-topic work (catalog lookups, the
series prefix, the sensors' ranges and encoded field names) is done once per topic and cached, and a
well-formed message takes a fast path: the C JSON decoder, then one loop over the readings that checks
each and appends its field. Anything unusual on that path (a type, a missing or extra key, a timestamp not
in the canonical form or out of bounds, an unknown sensor, a non-finite number...) falls back to the full
pydantic validation, which names the bad field in the dead letter. Both paths make the same bytes
(tests/test_ingest_validate.py proves it on hostile payloads).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smartmine.catalog import Catalog
from smartmine.schema import (
    assemble_line,
    quality_field,
    series_prefix,
    telemetry_line,
    ts_ns,
    value_field_prefix,
)
from smartmine.wire import MAX_READINGS, SCHEMA_VERSION, WireError, parse_telemetry, parse_topic

OUT_OF_RANGE = "out_of_range"

# Dead-letter reasons: stable names, used as the metrics label and in the dead-letter record.
INVALID_TOPIC = "invalid_topic"
INVALID_PAYLOAD = "invalid_payload"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNKNOWN_SITE = "unknown_site"
UNKNOWN_EQUIPMENT = "unknown_equipment"
AREA_MISMATCH = "area_mismatch"
UNKNOWN_SENSOR = "unknown_sensor"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
REJECTED_BY_INFLUXDB = "rejected_by_influxdb"
REASONS = (INVALID_TOPIC, INVALID_PAYLOAD, PAYLOAD_TOO_LARGE, UNKNOWN_SITE, UNKNOWN_EQUIPMENT, AREA_MISMATCH,
           UNKNOWN_SENSOR, TIMESTAMP_TOO_OLD, TIMESTAMP_IN_FUTURE, REJECTED_BY_INFLUXDB)

# A dead letter of an oversized payload keeps only its head: a flood of them must not fill the disk.
TOO_LARGE_KEPT_BYTES = 4096

# Distinct topics remembered; a flood of bogus topics must not grow memory without bound.
_TOPIC_CACHE_MAX = 100_000

# The fast path takes the timestamp form publishers send (``wire.format_ts``: UTC, "Z", up to microseconds);
# any other RFC 3339 form is left to pydantic. ASCII digits only: ``\d`` would also match other scripts'.
_CANONICAL_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_QUALITIES = ("uncertain", "bad")          # wire qualities besides "good" (smartmine.wire.Quality)
_SRC_MAX_CHARS = 128                       # smartmine.wire.TelemetryPayload.src
_SEQ_END = 2**63


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why (a part of) a message was not stored: a stable ``reason`` and a human ``detail``."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Field:
    """One sensor of a topic, ready for the fast path: its encoded field names and its physical range."""

    value: str                                   # "<sensor>=", followed by repr(value)
    low: float
    high: float
    quality: dict[str, str]                      # quality -> ',<sensor>_quality="<quality>"' (not "good")


@dataclass(frozen=True, slots=True)
class _Target:
    """What the catalog says about one telemetry topic, resolved once."""

    prefix: str                                  # line-protocol series key
    ranges: dict[str, tuple[float, float]]       # sensor -> physical range
    where: str                                   # "site/equipment", for messages
    fields: dict[str, _Field]                    # sensor -> fast-path table (sensors the encoder accepts)


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome for one message: a line to write (or None) and a rejection (or None)."""

    line: str | None
    readings: int = 0
    out_of_range: int = 0
    sample_ts: float = 0.0                       # seconds since the epoch, for lag
    rejection: Rejection | None = None


class Validator:
    """Turns (topic, payload) into a line of line protocol or a rejection. Not thread-safe (one per consumer)."""

    def __init__(self, catalog: Catalog, prefix: str, *, max_sample_age_s: float, max_clock_skew_s: float,
                 max_payload_bytes: int = 262_144, fast_path: bool = True) -> None:
        self.catalog = catalog
        self.fast_path = fast_path  # False: every message through pydantic (the reference the tests compare to)
        self.max_payload_bytes = max_payload_bytes
        self.prefix = prefix
        self.max_sample_age_s = max_sample_age_s
        self.max_clock_skew_s = max_clock_skew_s
        self._targets: dict[str, _Target | Rejection] = {}

    def target(self, topic: str) -> _Target | Rejection:
        hit = self._targets.get(topic)
        if hit is None:
            if len(self._targets) >= _TOPIC_CACHE_MAX:
                self._targets.clear()
            hit = self._targets[topic] = self._resolve(topic)
        return hit

    def _resolve(self, topic: str) -> _Target | Rejection:
        try:
            t = parse_topic(topic, self.prefix)
        except WireError as exc:
            return Rejection(INVALID_TOPIC, str(exc))
        if t.channel != "telemetry":
            return Rejection(INVALID_TOPIC, f"topic {topic!r}: channel {t.channel!r} is not telemetry")
        if t.site not in self.catalog.sites:
            return Rejection(UNKNOWN_SITE, f"site {t.site!r} is not in the catalog")
        eq = self.catalog.equipment(t.site, t.equipment)
        if eq is None:
            return Rejection(UNKNOWN_EQUIPMENT, f"equipment {t.equipment!r} is not in site {t.site!r} of the catalog")
        if eq.area != t.area:
            return Rejection(AREA_MISMATCH, f"equipment {t.site}/{t.equipment} is in area {eq.area!r}, "
                                            f"the topic says {t.area!r}")
        ranges = {sid: (float(s.spec.physical[0]), float(s.spec.physical[1])) for sid, s in eq.sensors.items()}
        fields = {}
        for sid, (low, high) in ranges.items():
            try:
                value = value_field_prefix(sid)
            except WireError:
                continue  # a name the encoder refuses: its messages take the slow path and get its reason
            fields[sid] = _Field(value, max(low, -sys.float_info.max), min(high, sys.float_info.max),
                                 {q: "," + quality_field(sid, q) for q in (*_QUALITIES, OUT_OF_RANGE)})
        return _Target(series_prefix(eq.type, t.site, t.area, t.equipment), ranges, f"{t.site}/{t.equipment}",
                       fields)

    def check(self, topic: str, payload: bytes, now: float) -> Checked:
        """Validate one message received at ``now`` (seconds since the epoch)."""
        target = self.target(topic)
        if isinstance(target, Rejection):
            return Checked(None, rejection=target)
        if len(payload) > self.max_payload_bytes:
            # Refused before parsing: a huge payload must not cost the parser's time and memory.
            return Checked(None, rejection=Rejection(
                PAYLOAD_TOO_LARGE, f"payload of {len(payload)} bytes is over the limit of {self.max_payload_bytes} "
                                   "bytes (SMARTMINE_INGEST__MAX_PAYLOAD_BYTES)"))
        if self.fast_path:
            fast = self._fast(target, payload, now)
            if fast is not None:
                return fast
        try:
            sample = parse_telemetry(payload)
        except WireError as exc:
            return Checked(None, rejection=Rejection(INVALID_PAYLOAD, str(exc)))
        ts = sample.ts
        sample_ts = ts.timestamp()
        if sample_ts < now - self.max_sample_age_s:
            return Checked(None, rejection=Rejection(
                TIMESTAMP_TOO_OLD, f"ts {_iso(ts)} is more than {self.max_sample_age_s:g} s before "
                                   f"the ingest clock ({_iso_epoch(now)})"))
        if sample_ts > now + self.max_clock_skew_s:
            return Checked(None, rejection=Rejection(
                TIMESTAMP_IN_FUTURE, f"ts {_iso(ts)} is more than {self.max_clock_skew_s:g} s after "
                                     f"the ingest clock ({_iso_epoch(now)})"))

        ranges = target.ranges
        readings = sample.values()
        unknown = [s for s in readings if s not in ranges]
        rejection = None
        if unknown:
            for s in unknown:
                del readings[s]
            kept = "the other readings were stored" if readings else "no reading was stored"
            rejection = Rejection(UNKNOWN_SENSOR, f"{target.where} has no sensor {', '.join(sorted(unknown))} "
                                                  f"in the catalog; {kept}")
            if not readings:
                return Checked(None, rejection=rejection)
        out_of_range = 0
        for sensor, (value, _quality) in readings.items():
            lo, hi = ranges[sensor]
            if not lo <= value <= hi:
                readings[sensor] = (value, OUT_OF_RANGE)
                out_of_range += 1
        try:
            line = telemetry_line(target.prefix, ts, sample.seq, readings)
        except WireError as exc:  # the encoder's last line of defence (a reserved or non-id sensor name)
            return Checked(None, rejection=Rejection(INVALID_PAYLOAD, str(exc)))
        return Checked(line, len(readings), out_of_range, sample_ts, rejection)

    def _fast(self, target: _Target, payload: bytes, now: float) -> Checked | None:
        """The common well-formed message in one pass, or None: then :meth:`check` validates it fully.

        Accepts only what ``parse_telemetry`` accepts and encodes it as ``telemetry_line`` does, byte for
        byte; every doubt returns None. Types are checked with ``type(x) is``, so a bool is not an int.
        """
        try:
            # Decoded here: json.loads(bytes) would also take UTF-16 and UTF-32, which the wire format is not.
            # Objects as their (key, value) pairs: a repeated key, which pydantic validates in every
            # occurrence and the dict would hide, must go to the slow path.
            pairs = json.loads(payload.decode(), object_pairs_hook=_Pairs)
        except (ValueError, RecursionError):  # not UTF-8 or not JSON: the slow path says where
            return None
        if type(pairs) is not _Pairs:
            return None
        body = dict(pairs)
        version = body.get("v")
        ts = body.get("ts")
        seq = body.get("seq")
        readings = body.get("readings")
        if len(body) != 4 or len(pairs) != 4:
            src = body.get("src")
            if len(body) != 5 or len(pairs) != 5 or "src" not in body or (
                    src is not None and not (type(src) is str and 0 < len(src) <= _SRC_MAX_CHARS and src.isascii())):
                return None
        if (type(version) is not int or version != SCHEMA_VERSION or type(seq) is not int
                or not 0 <= seq < _SEQ_END or type(ts) is not str or not _CANONICAL_TS.fullmatch(ts)
                or type(readings) is not _Pairs or not 0 < len(readings) <= MAX_READINGS
                or len(dict(readings)) != len(readings)):
            return None
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:  # a day or hour out of range
            return None
        sample_ts = when.timestamp()
        if not now - self.max_sample_age_s <= sample_ts <= now + self.max_clock_skew_s:
            return None
        table = target.fields
        parts: list[str] = []
        append = parts.append
        out_of_range = 0
        value: Any
        for sensor, reading in readings:
            f = table.get(sensor)
            if f is None:
                return None
            if type(reading) is float:
                value = reading
                quality = None
            elif type(reading) is _Pairs and 0 < len(reading) <= 2:
                r = dict(reading)
                value = r.get("value")
                q = r.get("quality", "good")
                if type(value) is not float or len(r) != len(reading) or len(r) != 1 + ("quality" in r):
                    return None
                if q == "good":
                    quality = None
                elif q in _QUALITIES:
                    quality = f.quality[q]
                else:
                    return None
            else:
                return None  # an int (pydantic converts it), a bool, a string...: the slow path decides
            if f.low <= value <= f.high:  # the bounds are finite, so NaN and infinities fail here
                append(f.value + repr(value) if quality is None else f.value + repr(value) + quality)
            elif value - value == 0.0:    # finite, out of the physical range: stored, flagged
                append(f.value + repr(value) + f.quality[OUT_OF_RANGE])
                out_of_range += 1
            else:
                return None
        return Checked(assemble_line(target.prefix, parts, seq, ts_ns(when)), len(readings), out_of_range,
                       sample_ts)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as the fast path decodes it: its (key, value) pairs in order, repeats kept.

    Its own type, so that a JSON array (a plain list) is never mistaken for an object.
    """


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso_epoch(t: float) -> str:
    return _iso(datetime.fromtimestamp(t, UTC)) if math.isfinite(t) else str(t)
