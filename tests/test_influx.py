"""The storage module against a real influxd: values and hostile tag strings survive a round trip."""

from __future__ import annotations

import gzip
import random

import pytest

from smartmine.influx import (
    InfluxClient,
    InfluxError,
    PartialWriteError,
    Point,
    gzip_body,
    quote_ident,
    quote_string,
)
from smartmine.services import Influxd

HOSTILE_TAGS = [
    "plain",
    "with,comma",
    "with space",
    "with=equals",
    'double"quote',
    "single'quote",
    "back\\slash",
    "燕山煤矿 1203 上隅角",
    "all of=them, \"here\" 'and' \\ 中文",
]


def test_points_round_trip_with_hostile_tag_values(influx: InfluxClient) -> None:
    points = [
        Point("gas_monitor").tag("site", tag).tag("equipment", "gas_face_1203")
        .field("ch4_pct", 0.5 + i / 100).field("note", f'he said "{tag}"').time(1_700_000_000_000_000_000 + i)
        for i, tag in enumerate(HOSTILE_TAGS)
    ]
    influx.write_points(points)

    frame = influx.query_df('SELECT "ch4_pct", "note", "site" FROM "gas_monitor" ORDER BY time')
    assert list(frame["site"]) == HOSTILE_TAGS
    assert list(frame["ch4_pct"]) == pytest.approx([0.5 + i / 100 for i in range(len(HOSTILE_TAGS))])
    assert list(frame["note"]) == [f'he said "{t}"' for t in HOSTILE_TAGS]
    assert frame["time"].iloc[0].value == 1_700_000_000_000_000_000

    for tag in HOSTILE_TAGS:
        one = influx.query_df(f'SELECT count("ch4_pct") FROM "gas_monitor" WHERE "site" = {quote_string(tag)}')
        assert one["count"].iloc[0] == 1, tag


def test_tag_value_with_newline_cannot_inject_a_second_point(influx: InfluxClient) -> None:
    evil = 'x\ngas_monitor,site=evil ch4_pct=99 1'
    influx.write_points([Point("gas_monitor").tag("site", evil).field("ch4_pct", 0.1).time(1_700_000_000_000_000_000)])
    frame = influx.query_df('SELECT * FROM "gas_monitor"')
    assert len(frame) == 1
    assert frame["ch4_pct"].iloc[0] == 0.1


def test_partial_write_names_the_rejected_line(influx: InfluxClient) -> None:
    good = "belt_conveyor,site=s,equipment=e motor_current_a=120.5 1700000000000000000"
    bad = "belt_conveyor,site=s,equipment=e motor_current_a= 1700000000000000001"
    with pytest.raises(PartialWriteError) as info:
        influx.write_lines([good, bad])
    assert info.value.status == 400
    assert bad in info.value.rejected, info.value.body
    assert not info.value.retryable
    # The good line of the batch was written: InfluxDB 1.x writes what it could parse.
    assert len(influx.query_df('SELECT * FROM "belt_conveyor"')) == 1


def test_type_conflict_surfaces_the_server_message(influx: InfluxClient) -> None:
    influx.write_lines(["m,site=s v=1.5 1"])
    with pytest.raises(InfluxError) as info:
        influx.write_lines(['m,site=s v="text" 2'])
    assert "conflict" in str(info.value)


def test_query_error_carries_the_server_message(influx: InfluxClient) -> None:
    with pytest.raises(InfluxError) as info:
        influx.query("SELEKT * FROM nowhere")
    assert "error parsing query" in str(info.value)


def test_quote_ident_handles_quotes(influx: InfluxClient) -> None:
    influx.write_lines(['odd\\ "name,site=s v=1 1'])
    name = quote_ident('odd "name')
    frame = influx.query_df(f"SELECT v FROM {name}")
    assert frame["v"].tolist() == [1.0]


def test_chunked_query_streams_every_point(influx: InfluxClient) -> None:
    influx.write_lines([f"m,site=s v={i} {1_700_000_000_000_000_000 + i}" for i in range(2500)])
    values = []
    for series in influx.query_chunks('SELECT v FROM "m"', chunk_size=1000):
        values += [row[1] for row in series["values"]]
    assert values == [float(i) for i in range(2500)]


def test_a_large_isal_gzip_batch_is_stored_whole(influx: InfluxClient) -> None:
    # Every write is compressed by ISA-L (gzip_body), not zlib: InfluxDB 1.6 must inflate it to the same lines.
    rng = random.Random(7)
    values = [rng.uniform(-1e6, 1e6) for _ in range(20_000)]
    lines = [f"m,site=s{i % 17} v={v!r},seq={i}i {1_700_000_000_000_000_000 + i}" for i, v in enumerate(values)]
    body = "\n".join(lines).encode()
    assert gzip.decompress(gzip_body(body)) == body  # standard gzip, readable by any inflater
    assert len(gzip_body(body)) < len(body) / 2
    influx.write_lines(lines)
    result = influx.query('SELECT count(v), sum(v), max(seq) FROM "m"')[0]["series"][0]["values"][0]
    assert result[1] == len(values)
    assert result[2] == pytest.approx(sum(values))
    assert result[3] == len(values) - 1


def test_unreachable_server_is_a_retryable_error(influxd_factory: object) -> None:
    from smartmine.services import free_port

    client = InfluxClient(f"http://127.0.0.1:{free_port()}", "nowhere", timeout_s=1)
    with pytest.raises(InfluxError) as info:
        client.ping()
    assert info.value.retryable
    assert "unreachable" in str(info.value)


def test_ping_reports_the_version(influxd: Influxd) -> None:
    assert InfluxClient(influxd.url, "x").ping().startswith("1.")


def test_telemetry_line_stores_readings_quality_and_seq(influx: InfluxClient) -> None:
    from datetime import UTC, datetime

    from smartmine.schema import series_prefix, telemetry_line

    prefix = series_prefix("gas_monitor", "yanshan_mine", "face_1203", "gas_upper_corner_1203")
    ts = datetime(2026, 11, 27, 8, 0, 0, 123456, tzinfo=UTC)
    line = telemetry_line(prefix, ts, 41, {"ch4_pct": (0.42, "good"), "o2_pct": (26.0, "out_of_range")})
    influx.write_lines([line, line])  # a redelivery overwrites: still one point
    frame = influx.query_df('SELECT * FROM "gas_monitor"')
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row["ch4_pct"], row["o2_pct"], row["o2_pct_quality"], row["seq"]) == (0.42, 26.0, "out_of_range", 41)
    assert (row["site"], row["area"], row["equipment"]) == ("yanshan_mine", "face_1203", "gas_upper_corner_1203")
    assert row["time"].value == 1_795_766_400_123_456_000
