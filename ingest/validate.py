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

import math
import re
import sys
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import le
from typing import Any

import orjson

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
SAME_TIMESTAMP = "same_timestamp_different_sample"
REASONS = (INVALID_TOPIC, INVALID_PAYLOAD, PAYLOAD_TOO_LARGE, UNKNOWN_SITE, UNKNOWN_EQUIPMENT, AREA_MISMATCH,
           UNKNOWN_SENSOR, TIMESTAMP_TOO_OLD, TIMESTAMP_IN_FUTURE, REJECTED_BY_INFLUXDB, SAME_TIMESTAMP)

# A dead letter of an oversized payload keeps only its head: a flood of them must not fill the disk.
TOO_LARGE_KEPT_BYTES = 4096

# Distinct topics remembered (least recently used forgotten first); a flood of bogus topics must not grow
# memory without bound. A topic longer than any the catalog can make (the gateway ACL lets 32 kB topics
# through) is refused without being remembered, and its detail quotes only its head.
_TOPIC_CACHE_MAX = 20_000
MAX_TOPIC_CHARS = 512
# Timestamps remembered per series to tell a second, different sample at the same time (a stuck clock)
# from a redelivery of the same one: the most recent ones only, a publisher's clock moves forward.
RECENT_TIMESTAMPS = 64

# The fast path takes the timestamp form publishers send (``wire.format_ts``: UTC, "Z", up to microseconds);
# any other RFC 3339 form is left to pydantic. ASCII digits only: ``\d`` would also match other scripts'.
_CANONICAL_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_QUALITIES = ("uncertain", "bad")          # wire qualities besides "good" (smartmine.wire.Quality)
_SRC_MAX_CHARS = 128                       # smartmine.wire.TelemetryPayload.src
_SEQ_END = 2**63
_FLOATS = {float}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why (a part of) a message was not stored: a stable ``reason`` and a human ``detail``."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Field:
    """One sensor of a topic, ready for the fast path: its encoded field names and its physical range."""

    value: str                                   # "<sensor>=", followed by repr(value)
    low: float                                   # the physical range, clamped to finite numbers
    high: float
    quality: dict[str, str]                      # quality -> ',<sensor>_quality="<quality>"' (not "good")


@dataclass(slots=True)
class _Order:
    """A topic's sensors in the order a publisher sends them: the fast path's tables as lists in that order."""

    low: list[float]
    high: list[float]
    fields: list[str]        # "<sensor>=" at even positions (with a leading comma after the first), numbers between

    def join(self, numbers: list[str]) -> str:
        # One buffer per order, reused: the validator runs on one thread (the MQTT network thread).
        self.fields[1::2] = numbers
        return "".join(self.fields)


# Orders remembered per topic: a publisher sends one; a flood of shuffled samples must not grow memory.
_ORDERS_PER_TOPIC = 8


@dataclass(frozen=True, slots=True)
class _Target:
    """What the catalog says about one telemetry topic, resolved once."""

    prefix: str                                  # line-protocol series key
    ranges: dict[str, tuple[float, float]]       # sensor -> physical range
    where: str                                   # "site/equipment", for messages
    # The fast path's tables, for the sensors the encoder accepts (a reserved name is left to the slow path):
    fields: dict[str, _Field]                    # sensor -> everything about it, for the per-reading loop
    orders: dict[tuple[str, ...], _Order]        # the sensor orders seen on this topic
    recent: dict[str, int]                       # timestamp (ns, as written) -> hash of the line stored for it
    recent_order: deque[str]                     # those timestamps, oldest first

    def order(self, sensors: tuple[str, ...]) -> _Order | None:
        """The tables for this order of sensors, or None when one is not a sensor of the topic."""
        known = self.orders.get(sensors)
        if known is None and all(s in self.fields for s in sensors):
            if len(self.orders) >= _ORDERS_PER_TOPIC:
                self.orders.clear()
            fields: list[str] = [""] * (2 * len(sensors))
            fields[0::2] = [("," if i else "") + self.fields[s].value for i, s in enumerate(sensors)]
            known = self.orders[sensors] = _Order([self.fields[s].low for s in sensors],
                                                  [self.fields[s].high for s in sensors], fields)
        return known


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome for one message: a line to write (or None) and a rejection (or None)."""

    line: str | None
    readings: int = 0
    out_of_range: int = 0
    sample_ts: float = 0.0                       # seconds since the epoch, for lag
    rejection: Rejection | None = None
    seq: int = -1                                # the sample's sequence number (-1: not a valid sample)
    src: str | None = None                       # its publisher, when it says


class Validator:
    """Turns (topic, payload) into a line of line protocol or a rejection. Not thread-safe (one per consumer)."""

    def __init__(self, catalog: Catalog, prefix: str, *, max_sample_age_s: float, max_clock_skew_s: float,
                 max_payload_bytes: int = 262_144, fast_path: bool = True, same_timestamp_guard: bool = False) -> None:
        self.catalog = catalog
        # True (the service): a second, different sample of a series at a timestamp already stored is refused.
        # Off, check() is a pure function of the message, which is how the tests compare the two paths.
        self.same_timestamp_guard = same_timestamp_guard
        self.fast_path = fast_path  # False: every message through pydantic (the reference the tests compare to)
        self.max_payload_bytes = max_payload_bytes
        self.prefix = prefix
        self.max_sample_age_s = max_sample_age_s
        self.max_clock_skew_s = max_clock_skew_s
        self._targets: dict[str, _Target | Rejection] = {}

    def target(self, topic: str) -> _Target | Rejection:
        targets = self._targets
        hit = targets.pop(topic, None)  # and put back last: the dict's order is least recently used first
        if hit is None:
            if len(topic) > MAX_TOPIC_CHARS:
                return Rejection(INVALID_TOPIC, f"topic of {len(topic)} characters (over {MAX_TOPIC_CHARS}): "
                                                f"{topic[:80]!r}...")
            if len(targets) >= _TOPIC_CACHE_MAX:
                del targets[next(iter(targets))]
            hit = self._resolve(topic)
        targets[topic] = hit
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
            # Finite bounds: then "low <= value <= high" is also the finiteness check.
            fields[sid] = _Field(value, max(low, -sys.float_info.max), min(high, sys.float_info.max),
                                 {q: "," + quality_field(sid, q) for q in (*_QUALITIES, OUT_OF_RANGE)})
        return _Target(series_prefix(eq.type, t.site, t.area, t.equipment), ranges, f"{t.site}/{t.equipment}",
                       fields, {}, {}, deque(maxlen=RECENT_TIMESTAMPS))

    def check(self, topic: str, payload: bytes, now: float) -> Checked:
        """Validate one message received at ``now`` (seconds since the epoch)."""
        target = self.target(topic)
        if isinstance(target, Rejection):
            return Checked(None, rejection=target)
        checked = self._check(target, payload, now)
        line = checked.line
        if line is None or not self.same_timestamp_guard:
            return checked
        # Same series, same timestamp: InfluxDB would overwrite the first sample with the second (a stuck
        # clock's ten samples became one point). The same line again is a redelivery and harmless.
        ts = line[line.rindex(" ") + 1:]
        digest = hash(line)
        recent = target.recent
        known = recent.get(ts)
        if known is None:
            order = target.recent_order  # a ring of the timestamps remembered, oldest first
            if len(order) == RECENT_TIMESTAMPS:
                del recent[order[0]]
            recent[ts] = digest
            order.append(ts)
        elif known != digest:
            return Checked(None, rejection=Rejection(
                SAME_TIMESTAMP, f"{target.where} already has a different sample at ts {_iso_ns(int(ts))} "
                                f"(this one: seq {checked.seq}); not written over it (a stuck clock?)"),
                seq=checked.seq, src=checked.src)
        return checked

    def _check(self, target: _Target, payload: bytes, now: float) -> Checked:
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
                                   f"the ingest clock ({_iso_epoch(now)})"), seq=sample.seq, src=sample.src)
        if sample_ts > now + self.max_clock_skew_s:
            return Checked(None, rejection=Rejection(
                TIMESTAMP_IN_FUTURE, f"ts {_iso(ts)} is more than {self.max_clock_skew_s:g} s after "
                                     f"the ingest clock ({_iso_epoch(now)})"), seq=sample.seq, src=sample.src)

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
                return Checked(None, rejection=rejection, seq=sample.seq, src=sample.src)
        out_of_range = 0
        for sensor, (value, _quality) in readings.items():
            lo, hi = ranges[sensor]
            if not lo <= value <= hi:
                readings[sensor] = (value, OUT_OF_RANGE)
                out_of_range += 1
        try:
            line = telemetry_line(target.prefix, ts, sample.seq, readings)
        except WireError as exc:  # the encoder's last line of defence (a reserved or non-id sensor name)
            return Checked(None, rejection=Rejection(INVALID_PAYLOAD, str(exc)), seq=sample.seq, src=sample.src)
        return Checked(line, len(readings), out_of_range, sample_ts, rejection, sample.seq, sample.src)

    def _fast(self, target: _Target, payload: bytes, now: float) -> Checked | None:
        """The common well-formed message in one pass, or None: then :meth:`check` validates it fully.

        Accepts only what ``parse_telemetry`` accepts and encodes it as ``telemetry_line`` does, byte for
        byte; every doubt returns None. Types are checked with ``type(x) is``, so a bool is not an int.
        """
        try:
            # orjson, like pydantic's parser and unlike json.loads, refuses NaN, Infinity, lone surrogates,
            # a BOM and UTF-16; it parses an integer beyond 64 bits to a float, as pydantic's float does.
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if type(body) is not dict:
            return None
        version = body.get("v")
        ts = body.get("ts")
        seq = body.get("seq")
        readings = body.get("readings")
        strings = len(body) + 1                  # the JSON strings of the message: its keys and ts so far
        src = None
        if len(body) != 4:
            src = body.get("src")
            if len(body) != 5 or "src" not in body:
                return None
            if src is not None:
                if not (type(src) is str and 0 < len(src) <= _SRC_MAX_CHARS and src.isascii() and '"' not in src):
                    return None
                strings += 1
        if (type(version) is not int or version != SCHEMA_VERSION or type(seq) is not int
                or not 0 <= seq < _SEQ_END or type(ts) is not str or not _CANONICAL_TS.fullmatch(ts)
                or type(readings) is not dict or not 0 < len(readings) <= MAX_READINGS):
            return None
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:  # a day or hour out of range
            return None
        sample_ts = when.timestamp()
        if not now - self.max_sample_age_s <= sample_ts <= now + self.max_clock_skew_s:
            return None
        values = list(readings.values())
        order = target.order(tuple(readings))
        if (order is not None and set(map(type, values)) == _FLOATS and all(map(le, order.low, values))
                and all(map(le, values, order.high))):
            # Every reading a plain number of a known sensor, in range (so finite): checked and encoded by
            # loops in C. orjson writes the shortest round-trip digits like repr(), in the same notation
            # except for exponents (1e-5 vs 1e-05) and below 1e-4 (0.00001 vs 1e-05): then repr() it is.
            numbers = orjson.dumps(values)
            fields = order.join(list(map(repr, values)) if b"e" in numbers or b"0.0000" in numbers
                                else numbers[1:-1].decode().split(","))
            out_of_range = 0
        else:
            fast = self._fast_readings(target, readings)
            if fast is None:
                return None
            fields, out_of_range, more_strings = fast
            strings += more_strings
        # A repeated key, which pydantic validates in every occurrence and a dict hides, shows in the quotes:
        # no string accepted above holds a quote, so the payload has two per JSON string, repeats included.
        if payload.count(b'"') != 2 * (strings + len(readings)):
            return None
        return Checked(assemble_line(target.prefix, fields, seq, ts_ns(when)), len(readings), out_of_range,
                       sample_ts, None, seq, src)

    @staticmethod
    def _fast_readings(target: _Target, readings: dict[str, Any]) -> tuple[str, int, int] | None:
        """The fast path's readings with qualities or out of range: (fields, out of range, JSON strings)."""
        table = target.fields
        parts: list[str] = []
        append = parts.append
        out_of_range = strings = 0
        value: Any
        for sensor, reading in readings.items():
            f = table.get(sensor)
            if f is None:
                return None
            if type(reading) is float:
                value = reading
                quality = None
            elif type(reading) is dict:
                value = reading.get("value")
                q = reading.get("quality", "good")
                if type(value) is not float or len(reading) != 1 + ("quality" in reading):
                    return None
                if q == "good":
                    quality = None
                elif q in _QUALITIES:
                    quality = f.quality[q]
                else:
                    return None
                strings += 2 * len(reading) - 1  # its keys, and the quality's value
            else:
                return None  # an int (pydantic converts it), a bool, a string...: the slow path decides
            if f.low <= value <= f.high:  # the bounds are finite, so NaN and infinities fail here
                append(f.value + repr(value) if quality is None else f.value + repr(value) + quality)
            elif value - value == 0.0:    # finite, out of the physical range: stored, flagged
                append(f.value + repr(value) + f.quality[OUT_OF_RANGE])
                out_of_range += 1
            else:
                return None
        return ",".join(parts), out_of_range, strings


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso_ns(ns: int) -> str:
    return _iso(datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=ns % 1_000_000_000 // 1000))


def _iso_epoch(t: float) -> str:
    return _iso(datetime.fromtimestamp(t, UTC)) if math.isfinite(t) else str(t)
