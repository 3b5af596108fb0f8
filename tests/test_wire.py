"""The wire format: topics, the payload model and its JSON Schema agree and reject bad input clearly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import pytest

from smartmine.wire import (
    SCHEMA_FILE,
    WireError,
    encode_telemetry,
    format_ts,
    json_schema,
    parse_telemetry,
    parse_topic,
    subscription,
    topic,
)

TS = datetime(2026, 11, 27, 8, 0, 0, 125000, tzinfo=UTC)


def test_committed_schema_file_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "run: smartmine wire schema > " + str(SCHEMA_FILE)


def test_topic_round_trip() -> None:
    name = topic("yanshan_mine", "face_1203", "shearer_1")
    assert name == "smartmine/yanshan_mine/face_1203/shearer_1/telemetry"
    parsed = parse_topic(name)
    assert (parsed.site, parsed.area, parsed.equipment, parsed.channel) == (
        "yanshan_mine", "face_1203", "shearer_1", "telemetry")
    assert str(parsed) == name
    assert subscription("status", "plant/a") == "plant/a/+/+/+/status"


@pytest.mark.parametrize(("name", "problem"), [
    ("other/yanshan_mine/a/b/telemetry", "does not start with prefix"),
    ("smartmine/yanshan_mine/a/telemetry", "expected 4"),
    ("smartmine/Yanshan/a/b/telemetry", "site 'Yanshan' is not a valid id"),
    ("smartmine/s/a/b/gossip", "unknown channel 'gossip'"),
])
def test_bad_topics_are_named(name: str, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        parse_topic(name)


def test_topic_refuses_wildcards_in_segments() -> None:
    with pytest.raises(WireError, match="equipment '#'"):
        topic("s", "a", "#")


def test_encode_parse_round_trip_and_quality() -> None:
    raw = encode_telemetry(TS, 42, {"ch4_pct": 0.61, "o2_pct": (20.5, "bad")}, src="sim-1")
    payload = parse_telemetry(raw)
    assert payload.ts == TS and payload.seq == 42 and payload.src == "sim-1"
    assert payload.values() == {"ch4_pct": (0.61, "good"), "o2_pct": (20.5, "bad")}
    assert json.loads(raw)["ts"] == "2026-11-27T08:00:00.125Z"


def test_offsets_are_normalised_to_utc() -> None:
    raw = json.dumps({"v": 1, "ts": "2026-11-27T16:00:00.5+08:00", "seq": 1, "readings": {"x": 1}})
    assert parse_telemetry(raw).ts == datetime(2026, 11, 27, 8, 0, 0, 500000, tzinfo=UTC)


GOOD = {"v": 1, "ts": "2026-11-27T08:00:00.000Z", "seq": 0, "readings": {"ch4_pct": 0.3}}


@pytest.mark.parametrize(("change", "where"), [
    ({"v": 2}, "v"),
    ({"ts": "2026-11-27T08:00:00"}, "ts"),
    ({"ts": "yesterday"}, "ts"),
    ({"seq": -1}, "seq"),
    ({"seq": "1"}, "seq"),
    ({"readings": {}}, "readings"),
    ({"readings": {"ch4_pct": "0.3"}}, "readings.ch4_pct"),
    ({"readings": {"ch4_pct": True}}, "readings.ch4_pct"),
    ({"readings": {"ch4_pct": {"value": 1, "quality": "great"}}}, "readings.ch4_pct"),
    ({"readings": {"CH4 pct": 1}}, "readings.CH4 pct"),
    ({"readings": {"ch4_pct": [1]}}, "readings.ch4_pct"),
    ({"extra": 1}, "extra"),
])
def test_invalid_payloads_are_rejected_by_code_and_schema(change: dict, where: str) -> None:
    doc = {**GOOD, **change}
    raw = json.dumps(doc)
    with pytest.raises(WireError) as info:
        parse_telemetry(raw)
    assert str(info.value).startswith(where), str(info.value)
    if where != "ts":  # JSON Schema's date-time format is an annotation unless a format checker is enabled
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, json_schema())


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(token: str) -> None:
    raw = '{"v":1,"ts":"2026-11-27T08:00:00Z","seq":0,"readings":{"ch4_pct":' + token + "}}"
    with pytest.raises(WireError, match=r"readings\.ch4_pct"):
        parse_telemetry(raw)


def test_not_json_is_rejected() -> None:
    with pytest.raises(WireError, match="Invalid JSON"):
        parse_telemetry(b"\xff\xfe garbage")


def test_valid_payloads_pass_both_code_and_schema() -> None:
    for raw in (encode_telemetry(TS, 1, {"a": 1.0}), encode_telemetry(TS, 2, {"a": (1.0, "uncertain")}, src="x")):
        jsonschema.validate(json.loads(raw), json_schema())
        parse_telemetry(raw)


def test_encode_refuses_non_finite_and_naive_time() -> None:
    with pytest.raises(WireError, match="finite"):
        encode_telemetry(TS, 1, {"a": float("nan")})
    with pytest.raises(WireError, match="timezone"):
        format_ts(datetime(2026, 1, 1))
    assert format_ts(datetime(2026, 1, 1, 8, tzinfo=timezone(timedelta(hours=8)))) == "2026-01-01T00:00:00.000Z"
