"""Validation once, when a message enters a recording, and line protocol exactly as ingest stores it.

:func:`classify` validates a message against the wire format when it is recorded (or read from JSON Lines)
and, given a :class:`LineEncoder`, also keeps the line-protocol field set the shared encoder
(:func:`smartmine.schema.telemetry_line`) makes of it under the catalog of the day. The recording keeps the
verdict under a checksum, with the catalog's fingerprint in its manifest.

A replay into InfluxDB then does the least work that still stores exactly what a live ingest would:

- recorded under the same catalog: the stored field set, between the series key (resolved once per topic)
  and the (shifted) timestamp — no JSON decoding, no validation;
- otherwise (another catalog, JSON Lines, a message the catalog refused in part): the payload decoded with
  the C JSON decoder and encoded with ``telemetry_line``, applying what the catalog says *today*.

Both apply ingest's rules: measurement and area from the catalog, a value outside the sensor's physical range
stored with quality ``out_of_range``, readings of unknown sensors left out and counted, invalid telemetry not
written. Nothing here runs pydantic per message on replay.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

from replay.format import NOT_TELEMETRY, Chunk, Verdict
from replay.topics import split_topic
from smartmine.catalog import Catalog
from smartmine.schema import series_prefix, telemetry_line, ts_ns
from smartmine.wire import TelemetryPayload, WireError, parse_telemetry

# Ingest's quality for a value outside the sensor's physical range (kept as evidence of a sensor fault).
OUT_OF_RANGE = "out_of_range"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Series:
    prefix: str                             # escaped "measurement,area=..,equipment=..,site=.."
    ranges: dict[str, tuple[float, float]]  # sensor -> physical range
    where: str


@dataclass(slots=True)
class Rejected:
    """Messages (or readings) the catalog refused, by reason, with one example each for the summary."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, example: str, n: int = 1) -> None:
        self.counts[reason] += n
        self.examples.setdefault(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class LineEncoder:
    """Recorded telemetry to line protocol under one catalog. Not thread-safe.

    ``trust_fields``: use the field sets stored in the recording (only when it was recorded under this very
    catalog: see :meth:`trusts`).
    """

    def __init__(self, catalog: Catalog, *, trust_fields: bool = False) -> None:
        self.catalog = catalog
        self.trust_fields = trust_fields
        self._series: dict[str, _Series | tuple[str, str]] = {}
        self.rejected = Rejected()
        self.first_ns: int | None = None  # earliest and latest timestamp of the lines made
        self.last_ns: int | None = None

    def _saw(self, lo: int, hi: int) -> None:
        self.first_ns = lo if self.first_ns is None else min(self.first_ns, lo)
        self.last_ns = hi if self.last_ns is None else max(self.last_ns, hi)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the catalog's content: a recording's stored field sets are valid under this one only."""
        text = json.dumps(self.catalog.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def trusts(self, meta: Mapping[str, object] | None) -> bool:
        return bool(meta) and meta.get("catalog_sha256") == self.fingerprint  # type: ignore[union-attr]

    def series(self, topic: str) -> _Series | tuple[str, str]:
        hit = self._series.get(topic)
        if hit is None:
            hit = self._series[topic] = self._resolve(topic)
        return hit

    def _resolve(self, topic: str) -> _Series | tuple[str, str]:
        parts = split_topic(topic)
        if parts is None or parts.channel != "telemetry":
            return ("not_telemetry", f"{topic}: not a telemetry topic")
        eq = self.catalog.equipment(parts.site, parts.equipment)
        if eq is None:
            reason = "unknown_site" if parts.site not in self.catalog.sites else "unknown_equipment"
            return (reason, f"{parts.site}/{parts.equipment} is not in the catalog")
        if eq.area != parts.area:
            return ("area_mismatch", f"{parts.site}/{parts.equipment} is in area {eq.area!r}, "
                                     f"the topic says {parts.area!r}")
        ranges = {sid: (float(s.spec.physical[0]), float(s.spec.physical[1])) for sid, s in eq.sensors.items()}
        return _Series(series_prefix(eq.type, parts.site, eq.area, parts.equipment), ranges,
                       f"{parts.site}/{parts.equipment}")

    def _readings(self, target: _Series, items: Iterable[tuple[str, float, str]],
                  rejected: Rejected | None) -> dict[str, tuple[float, str]] | None:
        """``(sensor, value, quality)`` as ingest stores them; None if a sensor is unknown and ``rejected`` is
        None (the caller then keeps nothing precomputed)."""
        ranges = target.ranges
        readings: dict[str, tuple[float, str]] = {}
        for sensor, value, quality in items:
            bounds = ranges.get(sensor)
            if bounds is None:
                if rejected is None:
                    return None
                rejected.add("unknown_sensor", f"{target.where} has no sensor {sensor!r} in the catalog")
                continue
            readings[sensor] = (value, quality if bounds[0] <= value <= bounds[1] else OUT_OF_RANGE)
        return readings

    def fields(self, topic: str, sample: TelemetryPayload) -> str | None:
        """The field set ``telemetry_line`` makes of a valid sample today, or None when the catalog refuses any
        part of it (then a replay encodes it again, and counts what it leaves out)."""
        target = self.series(topic)
        if type(target) is tuple:
            return None
        assert isinstance(target, _Series)
        readings = self._readings(target, ((s, v, q) for s, (v, q) in sample.values().items()), None)
        if not readings:
            return None
        try:
            line = telemetry_line(target.prefix, sample.ts, sample.seq, readings)
        except WireError:
            return None  # the replay meets the same refusal and counts it
        return line[len(target.prefix) + 1:line.rindex(" ")]

    def encode_chunk(self, chunk: Chunk, index: Sequence[int], shift_ns: int) -> tuple[bytes, int, int]:
        """``(body, lines, readings)``: the selected messages of a chunk as newline-separated line protocol.

        A decoded chunk recorded under this catalog is encoded column-wise by Arrow (series key + stored field
        set + shifted time, joined in C); any message that needs more (invalid, refused by the catalog, no
        stored field set) sends the whole chunk through :meth:`encode`, which keeps the order and the counts.
        """
        # Column-wise pays off for many messages; a paced replay sends them one by one.
        if self.trust_fields and chunk.batch is not None and len(index) >= 64:
            done = self._encode_columns(chunk.batch, index, shift_ns)
            if done is not None:
                return done
        out: list[str] = []
        readings = self.encode(chunk, index, shift_ns, out)
        return "\n".join(out).encode(), len(out), readings

    def _encode_columns(self, batch: pa.RecordBatch, index: Sequence[int],
                        shift_ns: int) -> tuple[bytes, int, int] | None:
        topic = batch.column("topic")
        if not pa.types.is_dictionary(topic.type):
            return None
        if not (isinstance(index, range) and index == range(batch.num_rows)):
            batch = batch.take(pa.array(index, pa.int64()))
            topic = batch.column("topic")
        prefixes = []
        for name in topic.dictionary.to_pylist():
            target = self.series(name)
            prefixes.append(target.prefix if isinstance(target, _Series) else None)
        prefix = pa.array(prefixes, pa.string()).take(topic.indices)
        stamps, fields = batch.column("ts_ns"), batch.column("fields")
        ready = pc.and_kleene(pc.is_valid(fields), pc.is_valid(prefix))
        needs_more = pc.or_kleene(pc.is_valid(batch.column("error")), pc.and_kleene(pc.is_valid(stamps),
                                                                                   pc.invert(ready)))
        if pc.any(needs_more).as_py():
            return None
        # The wire format carries microseconds: a shifted time is truncated to them, as a payload's would be.
        written = pc.multiply(pc.divide(pc.add(stamps, shift_ns), 1000), 1000)
        lines = pc.binary_join_element_wise(prefix, fields, pc.cast(written, pa.string()), " ").filter(ready)
        if not len(lines):
            return b"", 0, 0
        lo_hi = pc.min_max(written.filter(ready))
        self._saw(lo_hi["min"].as_py(), lo_hi["max"].as_py())
        body = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
        readings = pc.sum(batch.column("readings").filter(ready)).as_py() or 0
        return body[0].as_buffer().to_pybytes(), len(lines), int(readings)

    def encode(self, chunk: Chunk, index: Sequence[int], shift_ns: int, out: list[str]) -> int:
        """Append one line per valid telemetry message at ``index`` to ``out``, its time shifted by
        ``shift_ns``; returns the number of readings. Other channels are left out; invalid telemetry and
        what the catalog refuses is counted in :attr:`rejected`."""
        readings_total = 0
        topics, payloads, stamps, errors = chunk.topic, chunk.payload, chunk.ts_ns, chunk.error
        stored = chunk.fields if self.trust_fields else [None] * len(chunk)
        counts = chunk.readings
        loads = json.loads
        for i in index:
            stamp = stamps[i]
            if stamp is None:
                if errors[i] is not None:
                    self.rejected.add("invalid_payload", f"{topics[i]}: {errors[i]}")
                continue
            target = self.series(topics[i])
            if type(target) is tuple:
                if target[0] != "not_telemetry":
                    self.rejected.add(target[0], target[1])
                continue
            assert isinstance(target, _Series)
            # The wire format carries microseconds: a shifted time is truncated to them, as a payload's would be.
            t_us = (stamp + shift_ns) // 1000
            fields_i = stored[i]
            if fields_i is not None:
                out.append(f"{target.prefix} {fields_i} {t_us * 1000}")
                readings_total += counts[i] or 0
                self._saw(t_us * 1000, t_us * 1000)
                continue
            sample = loads(payloads[i])
            readings = self._readings(target, map(_from_json, sample["readings"].items()), self.rejected)
            if not readings:
                continue
            ts = _EPOCH + timedelta(microseconds=t_us)
            try:
                out.append(telemetry_line(target.prefix, ts, sample["seq"], readings))
            except WireError as exc:  # a name the schema reserves, a value InfluxDB cannot store
                self.rejected.add("unwritable", f"{target.where}: {exc}")
                continue
            readings_total += len(readings)
            self._saw(t_us * 1000, t_us * 1000)
        return readings_total


def _from_json(item: tuple[str, object]) -> tuple[str, float, str]:
    """A validated payload's reading as (sensor, value, quality): a bare number, or {value, quality}."""
    sensor, r = item
    if type(r) is dict:
        return sensor, float(r["value"]), r.get("quality", "good")
    return sensor, float(r), "good"  # type: ignore[arg-type]


def classify(topic: str, payload: bytes, encoder: LineEncoder | None = None) -> Verdict:
    """Validate one message once against the wire format. Valid telemetry gets its sample time and reading
    count (and, with an ``encoder``, its field set); invalid telemetry gets the reason; other channels (status,
    events) get nothing and are replayed as they are."""
    parts = split_topic(topic)
    if parts is None:
        if topic.endswith("/telemetry"):
            return Verdict(error=f"topic {topic!r} does not follow <prefix>/<site>/<area>/<equipment>/telemetry")
        return NOT_TELEMETRY
    if parts.channel != "telemetry":
        return NOT_TELEMETRY
    try:
        sample = parse_telemetry(payload)
    except WireError as exc:
        return Verdict(error=str(exc))
    fields = encoder.fields(topic, sample) if encoder is not None else None
    return Verdict(ts_ns(sample.ts), None, len(sample.readings), fields)
