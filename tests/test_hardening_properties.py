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
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ingest.validate import Rejection
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


# --------------------------------------------------------------------------------- ingest: fast path = full path
# Ingest validates a well-formed message in one pass (ingest.validate.Validator._fast) and leaves anything
# unusual to the full pydantic validation. The promise: the outcome (line bytes, counts, dead-letter reason
# and detail) is the same whichever path a message takes. The payloads are built as JSON text from
# (key, value) pairs, so they can repeat a key, and are mostly close to valid, so both paths get exercised.
_NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _ingest_validators() -> tuple[Any, Any, list[tuple[str, dict[str, tuple[float, float]]]]]:
    from ingest.validate import Validator
    from smartmine.catalog import load_catalog

    catalog = load_catalog()
    fast, full = (Validator(catalog, "smartmine", max_sample_age_s=7 * 86_400, max_clock_skew_s=300,
                            fast_path=flag) for flag in (True, False))
    targets = []
    for eq in catalog.all_equipment():
        ranges = {s: (float(r.spec.physical[0]), float(r.spec.physical[1])) for s, r in eq.sensors.items()}
        targets.append((topic(eq.site, eq.area, eq.id, "telemetry", "smartmine"), ranges))
    return fast, full, targets


_FAST_VALIDATOR, _FULL_VALIDATOR, _TARGETS = _ingest_validators()


def _json_object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


def _maybe(draw: st.DrawFn, hostile: bool, clean: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """In a hostile message, a third of the parts are odd; in a clean one, none."""
    return draw(odd if hostile and draw(st.integers(0, 2)) == 0 else clean)


@st.composite
def near_valid_message(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message to a real equipment's topic: clean (the fast path's business) or with odd parts."""
    t, ranges = draw(st.sampled_from(_TARGETS))
    sensors = sorted(ranges)
    hostile = draw(st.booleans())

    def number(sensor: str) -> st.SearchStrategy[str]:
        low, high = ranges[sensor]
        span = max(1.0, high - low)  # a quarter of the range either side: some readings out of range
        # and the numbers whose shortest form is written differently by different encoders (exponents)
        tricky = st.sampled_from([1e-05, -1.5e-07, 9.999999999999999e-05, 5e-324, 0.0001, 1e15, 1e16, 1.5e300])
        return st.one_of(st.floats(min_value=low - span / 4, max_value=high + span / 4), tricky).map(_dump)

    def reading(sensor: str) -> st.SearchStrategy[str]:
        quality = st.sampled_from([None, "good", "uncertain", "bad"])
        with_quality = st.builds(
            lambda v, q: _json_object([("value", v)] + ([("quality", _dump(q))] if q is not None else [])),
            number(sensor), quality)
        odd = st.one_of(
            hostile_number.map(_dump), json_value.map(_dump),
            st.sampled_from(["true", "null", '"1.5"', "1.5e400", "-0.0", "1E2", "2", "1.50", "-1e-400"]),
            # decimals a float parser can round wrongly: both paths must read the same double
            st.from_regex(r"-?[0-9]{1,3}\.[0-9]{15,40}([eE][-+]?[0-9]{1,3})?", fullmatch=True),
            st.sampled_from(["0.1000000000000000055511151231257827021181583404541015625", "2.2250738585072011e-308",
                             "9007199254740993.0", "1.7976931348623157e308", "4.9406564584124654e-324"]),
            st.builds(lambda v, q: _json_object([("value", v), ("quality", _dump(q))]), number(sensor),
                      st.sampled_from(["out_of_range", "GOOD", "", 1, None])),
            st.builds(lambda v: _json_object([("value", v), ("quality", '"bad"'), ("extra", "1")]), number(sensor)),
            st.builds(lambda v: _json_object([("quality", '"bad"'), ("value", v)]), number(sensor)))
        return st.one_of(number(sensor), number(sensor), with_quality) if not hostile else st.one_of(
            number(sensor), with_quality, odd)

    known = draw(st.lists(st.sampled_from(sensors), min_size=1, max_size=len(sensors) + 1, unique=not hostile))
    if hostile and draw(st.integers(0, 2)) == 0:
        known = known[:-1]  # none at all
    reading_pairs = [(s, draw(reading(s))) for s in known]
    if hostile and draw(st.integers(0, 3)) == 0:  # a sensor this equipment does not have, or a hostile name
        reading_pairs.insert(draw(st.integers(0, len(reading_pairs))),
                             (draw(st.one_of(valid_id, hostile_text)), draw(number(sensors[0]))))
    moment = _NOW + _maybe(draw, hostile, st.timedeltas(timedelta(seconds=-600), timedelta(seconds=30)),
                           st.timedeltas(timedelta(days=-8), timedelta(days=1)))
    canonical = st.sampled_from(["milliseconds", "seconds", "microseconds", "milliseconds"]).map(
        lambda spec: moment.isoformat(timespec=spec).replace("+00:00", "Z"))
    ts = _maybe(draw, hostile, canonical, st.one_of(
        st.just(moment.astimezone(timezone(timedelta(hours=8))).isoformat()),
        st.just(moment.isoformat().replace("+00:00", "z").replace("T", " ")),
        st.just(moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "1Z"),   # nanoseconds: pydantic truncates
        st.sampled_from(["2026-11-27T24:00:00Z", "2026-02-29T08:00:00Z", "2026-11-27T08:00:60Z",
                         "\uff12026-11-27T08:00:00Z", "2026-11-27T08:00:00.Z", "2026-11-27T08:00Z"]),
        timestamps))
    top = [("v", _maybe(draw, hostile, st.just("1"), st.sampled_from(["1.0", "true", '"1"', "2", "null"]))),
           ("ts", ts if isinstance(ts, str) and ts.startswith('"') else _dump(ts)),
           ("seq", _maybe(draw, hostile, seqs.map(str),
                          st.sampled_from(["-1", str(2**63), "1.0", "true", '"7"', "null"]))),
           ("readings", _json_object(reading_pairs))]
    src = _maybe(draw, hostile, st.sampled_from([None, '"sim-1"', '"sim-yanshan_mine-main_fan_1"', "null"]),
                 st.one_of(hostile_text.map(_dump), st.sampled_from(['""', _dump("x" * 129), _dump("x" * 128),
                                                                     '"\ud800"', '"甲烷站"', "1"])))
    if src is not None:
        top.insert(draw(st.integers(0, len(top))), ("src", src))
    if hostile and draw(st.integers(0, 3)) == 0:
        top.insert(draw(st.integers(0, len(top))), (draw(st.sampled_from(["v", "seq", "extra", "readings", "ts"])),
                                                    draw(json_value.map(_dump))))
    if hostile and draw(st.integers(0, 5)) == 0:
        top.pop(draw(st.integers(0, len(top) - 1)))
    text = _json_object(top)
    encoding = "utf-8" if not hostile else draw(st.sampled_from(["utf-8"] * 8 + ["utf-16", "utf-8-sig"]))
    data = text.encode(encoding, "surrogatepass")
    if hostile and draw(st.integers(0, 9)) == 0:
        data = draw(st.sampled_from([b" ", b"\n", b"x", b"}", b"\xff", b"[", b"\x00"])) + data
    return t, data


# Repeated keys: JSON allows them, pydantic validates every occurrence, a dict keeps the last one only.
_BF1 = "smartmine/jinggang_steel/ironmaking/blast_furnace_1/telemetry"
_HEAD = '{"v":1,"ts":"2026-11-27T08:00:00.000Z","seq":0,'
_REPEATED_KEYS = [
    _HEAD + '"readings":{"cooling_water_delta_t_k":true,"cooling_water_delta_t_k":1.5}}',
    '{"v":"1","v":1,"ts":"2026-11-27T08:00:00.000Z","seq":0,"readings":{"cooling_water_delta_t_k":1.5}}',
    _HEAD + '"readings":{"cooling_water_delta_t_k":{"value":true,"value":1.5}}}',
    _HEAD + '"readings":{"cooling_water_delta_t_k":{"value":1.5,"quality":"bad","quality":"good"}}}',
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=near_valid_message())
@example(message=(_BF1, _REPEATED_KEYS[0].encode()))
@example(message=(_BF1, _REPEATED_KEYS[1].encode()))
@example(message=(_BF1, _REPEATED_KEYS[2].encode()))
@example(message=(_BF1, _REPEATED_KEYS[3].encode()))
def test_the_ingest_fast_path_gives_exactly_what_the_full_validation_gives(message: tuple[str, bytes]) -> None:
    t, data = message
    now = _NOW.timestamp()
    target = _FAST_VALIDATOR.target(t)
    assert not isinstance(target, Rejection)
    took_fast = _FAST_VALIDATOR._fast(target, data, now) is not None
    got, expected = _FAST_VALIDATOR.check(t, data, now), _FULL_VALIDATOR.check(t, data, now)
    event("fast path" if took_fast else
          f"full validation: {expected.rejection.reason if expected.rejection else 'stored'}")
    assert got == expected
    if took_fast:
        assert expected.line is not None and expected.rejection is None
