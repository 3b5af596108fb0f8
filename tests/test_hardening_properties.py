"""Property-based tests (hypothesis) of everything that touches untrusted bytes on the way to InfluxDB.

A gateway may send anything: broken JSON, deep nesting, NaN, 400-digit numbers, commas, quotes,
backslashes, newlines and control characters in names. The promises checked here:

- the topic and payload parsers either return a valid value or raise :class:`WireError`, never anything else;
- whatever they accept is an id of the safe alphabet, a finite number and a UTC timestamp;
- the line-protocol encoder turns one accepted sample into exactly one line, and the real influxd stores
  exactly one point with exactly those values (no injected line, field, tag or point), for hostile
  measurement and tag names too: the encoder either refuses them or escapes them losslessly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from smartmine.influx import InfluxClient
from smartmine.schema import series_prefix, telemetry_line
from smartmine.services import Influxd
from smartmine.wire import (
    CHANNELS,
    MAX_READINGS,
    TelemetryPayload,
    Topic,
    WireError,
    encode_telemetry,
    parse_telemetry,
    parse_topic,
    topic,
)

# Modest example counts keep the suite fast; deadlines are off because the machine is shared and slow.
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_INFLUXD = settings(max_examples=50, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ID = re.compile(r"[a-z][a-z0-9_]{0,62}")
# The characters that have a meaning somewhere between MQTT, JSON and line protocol.
NASTY = ",= \"'\\\n\r\t\x00\x1b#+/${}[]:;µ甲烷\u2028\ufeff"
hostile_text = st.one_of(
    st.text(alphabet=st.sampled_from(NASTY + "abc_019"), max_size=20),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\\", "a\\", "a\\,b", "a\\ b", "a\n", "\na", "a=b", 'a"b', "time", "_field",
                     "#comment", "ch4_pct\nfake,site=x v=1", "ch4_pct=1 0\nevil v=1"]),
)
valid_id = st.from_regex(ID, fullmatch=True)
hostile_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -0.0, 5e-324, 1.7976931348623157e308, 2**63, -(2**63) - 1, 10**400]),
)
json_scalar = st.one_of(st.none(), st.booleans(), hostile_number, hostile_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)), max_leaves=20)


def _dump(value: Any) -> str:
    # json.dumps writes NaN/Infinity as bare words (not JSON): exactly what a careless gateway sends.
    return json.dumps(value, ensure_ascii=False)


timestamps = st.one_of(
    st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31),
                 timezones=st.just(UTC)).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
    st.datetimes().map(lambda t: t.isoformat()),  # no offset: must be refused
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-13-01T00:00:00Z",
                     "2026-11-27T08:00:00", "", "now", "2026-11-27T08:00:00.123456789Z"]),
    hostile_text, hostile_number,
)
reading = st.one_of(hostile_number, st.fixed_dictionaries(
    {"value": hostile_number}, optional={"quality": st.sampled_from(["good", "uncertain", "bad", "", "GOOD", 1])}),
    json_value)
readings = st.dictionaries(st.one_of(valid_id, hostile_text), reading, max_size=6)
payload_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", 1.0, True]), "ts": timestamps,
     "seq": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), hostile_number, hostile_text),
     "readings": readings},
    optional={"src": st.one_of(hostile_text, st.integers()), "extra": json_value})


def _check_accepted(p: TelemetryPayload) -> None:
    """What a parser accepted is safe to encode: ids of the safe alphabet, finite numbers, UTC."""
    assert p.v == 1 and 0 <= p.seq < 2**63
    assert p.ts.utcoffset() == timedelta(0)
    assert 1 <= len(p.readings) <= MAX_READINGS
    for sensor, (value, quality) in p.values().items():
        assert ID.fullmatch(sensor), sensor
        assert math.isfinite(value) and quality in ("good", "uncertain", "bad")


@FAST
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300), json_value.map(_dump)))
def test_any_bytes_parse_or_raise_wire_error(raw: bytes | str) -> None:
    with contextlib.suppress(WireError):
        _check_accepted(parse_telemetry(raw))


@FAST
@given(body=payload_like)
def test_hostile_payloads_parse_or_raise_wire_error(body: dict[str, Any]) -> None:
    try:
        p = parse_telemetry(_dump(body))
    except WireError as exc:
        assert str(exc)  # the reason names the field
        return
    _check_accepted(p)
    assert p.seq == body["seq"]


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deep_nesting_is_refused_not_a_crash(depth: int) -> None:
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        body = f'{{"v":1,"ts":"2026-11-27T08:00:00Z","seq":1,"readings":{{"ch4_pct":{raw}}}}}'
        with pytest.raises(WireError):
            parse_telemetry(body)


def test_timestamps_at_the_edge_of_the_calendar_are_wire_errors() -> None:
    for ts in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        with pytest.raises(WireError, match="ts"):
            parse_telemetry(f'{{"v":1,"ts":"{ts}","seq":1,"readings":{{"ch4_pct":1}}}}')


@FAST
@given(name=st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(valid_id, hostile_text, st.sampled_from(CHANNELS)), min_size=0, max_size=7).map(
        lambda parts: "/".join(["smartmine", *parts])),
))
def test_topics_parse_or_raise_wire_error(name: str) -> None:
    try:
        t = parse_topic(name, "smartmine")
    except WireError:
        return
    assert str(t) == name
    for segment in (t.site, t.area, t.equipment):
        assert ID.fullmatch(segment), segment
    assert t.channel in CHANNELS


@FAST
@given(site=st.one_of(valid_id, hostile_text), area=st.one_of(valid_id, hostile_text),
       equipment=st.one_of(valid_id, hostile_text), channel=st.one_of(st.sampled_from(CHANNELS), hostile_text))
def test_topic_builder_round_trips_or_refuses(site: str, area: str, equipment: str, channel: str) -> None:
    try:
        name = topic(site, area, equipment, channel, "smartmine")
    except WireError:
        assert not all(ID.fullmatch(x) for x in (site, area, equipment)) or channel not in CHANNELS
        return
    assert parse_topic(name, "smartmine") == Topic("smartmine", site, area, equipment, channel)


# --------------------------------------------------------------------------------- line protocol, real influxd
_batch = itertools.count()


@pytest.fixture
def fresh_db(influxd: Influxd) -> Iterator[Any]:
    """A factory of empty databases on the session's influxd (one per hypothesis example), dropped after."""
    made: list[InfluxClient] = []

    def make() -> InfluxClient:
        client = InfluxClient(influxd.url, f"hardening_lp_{next(_batch)}")
        client.create_database()
        made.append(client)
        return client

    yield make
    for client in made:
        client.drop_database()
        client.close()


def _all_points(client: InfluxClient) -> list[dict[str, Any]]:
    """Every point in the database, whatever its measurement, as {measurement, tags..., fields..., time}."""
    rows = []
    for result in client.query("SELECT * FROM /.*/ GROUP BY *"):
        for series in result.get("series", []):
            for values in series["values"]:
                # InfluxDB's JSON prints an integral float without a fraction (4.1e16 -> 41236835881581190),
                # which Python reads as an int: compare fields as floats, except the integer seq and time.
                row = {k: (float(v) if isinstance(v, int) and k not in ("seq", "time") else v)
                       for k, v in zip(series["columns"], values, strict=True) if v is not None}
                row.update(series.get("tags") or {})
                row["measurement"] = series["name"]
                rows.append(row)
    return rows


def _expected_time(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


sensor_values_strategy = st.dictionaries(
    valid_id.filter(lambda s: s not in ("seq", "time") and not s.endswith("_quality")),
    st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["good", "uncertain", "bad"])),
    min_size=1, max_size=5)
name = st.one_of(valid_id, hostile_text)
quality = st.sampled_from(["good", "good", "uncertain", "bad", "out_of_range", "", "bad\n", 'x"', "a b"])
times = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31), timezones=st.just(UTC))
seqs = st.integers(min_value=0, max_value=2**63 - 1)
hostile_sample = st.tuples(
    name, name, name,
    st.dictionaries(name, st.tuples(st.one_of(st.floats(), hostile_number), quality), min_size=1, max_size=4),
    seqs, times)
clean_sample = st.tuples(valid_id, valid_id, valid_id, sensor_values_strategy, seqs, times)
sample = st.one_of(clean_sample, hostile_sample)


def _encodable(measurement: str, site: str, area: str, values: dict[str, tuple[Any, str]]) -> bool:
    """What the encoder must accept: ids everywhere, no reserved field, finite numbers."""
    def number_ok(v: Any) -> bool:
        try:
            return math.isfinite(float(v))
        except OverflowError:
            return False
    return (all(ID.fullmatch(x) for x in (measurement, site, area))
            and all(ID.fullmatch(s) and s not in ("seq", "time") and not s.endswith("_quality") for s in values)
            and all(number_ok(v) and (q == "good" or ID.fullmatch(q)) for v, q in values.values()))


@WITH_INFLUXD
@given(samples=st.lists(sample, min_size=1, max_size=30))
def test_the_encoder_writes_exactly_the_accepted_points(fresh_db: Any, samples: list[Any]) -> None:
    """Hostile names, qualities and numbers straight into the encoder, then into the real influxd.

    The encoder refuses exactly what is not encodable; every accepted sample becomes one line and one
    point holding exactly its values; the database holds no other point (no injection).
    """
    lines, expected = [], []
    for i, (measurement, site, area, values, seq, ts) in enumerate(samples):
        equipment = f"eq_{i}"  # one series per sample, so two samples never merge into one point
        try:
            line = telemetry_line(series_prefix(measurement, site, area, equipment), ts, seq, values)
        except WireError as exc:
            assert not _encodable(measurement, site, area, values), exc
            continue
        assert _encodable(measurement, site, area, values), line
        assert "\n" not in line and "\r" not in line
        lines.append(line)
        point: dict[str, Any] = {"measurement": measurement, "site": site, "area": area, "equipment": equipment,
                                 "seq": seq, "time": _expected_time(ts)}
        for sensor, (value, q) in values.items():
            point[sensor] = float(value)
            if q != "good":
                point[f"{sensor}_quality"] = q
        expected.append(point)
    event("some samples accepted" if lines else "every sample refused")
    if not lines:
        return
    client = fresh_db()
    client.write_lines(lines)
    stored = sorted(_all_points(client), key=lambda r: r["equipment"])
    assert stored == sorted(expected, key=lambda r: r["equipment"])


@FAST
@given(values=sensor_values_strategy, seq=st.integers(min_value=0, max_value=2**63 - 1),
       ts=st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31), timezones=st.just(UTC)))
def test_the_wire_round_trip_feeds_the_encoder_one_line(values: dict[str, tuple[float, str]], seq: int,
                                                        ts: datetime) -> None:
    """encode -> parse -> encode to line protocol: one line with every reading, the seq and the time."""
    ts = ts.replace(microsecond=ts.microsecond // 1000 * 1000)  # the wire carries milliseconds
    p = parse_telemetry(encode_telemetry(ts, seq, values))
    assert p.values() == {k: (float(v), q) for k, (v, q) in values.items()} and p.seq == seq and p.ts == ts
    line = telemetry_line(series_prefix("gas_monitor", "yanshan_mine", "face_1203", "gas_face_1203"), p.ts, p.seq,
                          p.values())
    assert line.count("\n") == 0 and line.endswith(f",seq={seq}i {_expected_time(ts)}")


def test_the_classic_injection_payloads() -> None:
    """Known line-protocol injection attempts, through the wire parser and the encoder: all refused."""
    attacks = [
        {"ch4_pct\nevil,site=x v": 1},
        {"ch4_pct=1 0\nevil v": 1},
        {"ch4_pct,site=evil": 1},
        {"ch4_pct": {"value": 1, "quality": 'bad"\nevil v=1'}},
        {"ch4_pct": "1\nevil v=1"},
    ]
    for body in attacks:
        raw = json.dumps({"v": 1, "ts": "2026-11-27T08:00:00Z", "seq": 1, "readings": body})
        with pytest.raises(WireError):
            parse_telemetry(raw)
    for name in ("smartmine/yanshan_mine\n/face/eq/telemetry", "smartmine/yanshan_mine/face,site=x/eq/telemetry",
                 "smartmine/yanshan_mine/face eq/eq/telemetry", "smartmine/../face/eq/telemetry"):
        with pytest.raises(WireError):
            parse_topic(name, "smartmine")
    ts = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    for args in (("gas_monitor\nevil", "s", "a", "e"), ("gas_monitor", "s,evil=1", "a", "e"),
                 ("gas_monitor", "s", "a b", "e"), ("gas_monitor", "s", "a", "e\\")):
        with pytest.raises(WireError):
            series_prefix(*args)
    for readings in ({"x=1,y": (1.0, "good")}, {"seq": (1.0, "good")}, {"x": (1.0, 'bad"\nevil v=1')},
                     {"x": (math.nan, "good")}):
        with pytest.raises(WireError):
            telemetry_line("m,area=a,equipment=e,site=s", ts, 1, readings)


def test_offsets_are_normalised_to_utc() -> None:
    p = parse_telemetry('{"v":1,"ts":"2026-11-27T16:00:00.250+08:00","seq":1,"readings":{"ch4_pct":0.4}}')
    assert p.ts == datetime(2026, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)
    assert p.ts.tzinfo is not None and p.ts.utcoffset() == UTC.utcoffset(None)
