"""Record and replay against the real broker and influxd: what comes out is what went in.

``simulate`` → ``record`` (while ``ingest`` stores the same messages) → replay into a fresh InfluxDB gives the
points the live ingest stored; ``export`` then replay gives the same points again; filters, ``--prefix``,
``--rebase-time``, ``--loop`` and ``import-csv`` do what they say.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import stored_count, wait_until

from ingest.service import IngestService
from replay.format import Chunk, RecordingReader, RecordingWriter
from replay.lines import LineEncoder, classify
from replay.recorder import Recorder, RecordResult
from replay.synthetic import DEFAULT_START, messages, write_jsonl
from smartmine.catalog import builtin_catalog
from smartmine.cli import main
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.services import Influxd
from smartmine.wire import parse_telemetry, subscription

SIMULATED = "20s"  # of both sites, every equipment at its sample period


def _iso(start: datetime, seconds: float) -> str:
    return (start + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def other_db(influxd: Influxd) -> Iterator[InfluxClient]:
    """A second fresh database on the session's influxd (the reference a replay is compared with)."""
    client = InfluxClient(influxd.url, f"ref_{uuid.uuid4().hex[:10]}")
    client.create_database()
    yield client
    client.drop_database()
    client.close()


def dump(client: InfluxClient) -> list[tuple[Any, ...]]:
    """Every point of every measurement as (measurement, tags, time, fields), sorted: two databases compare."""
    points = []
    for result in client.query("SHOW MEASUREMENTS"):
        for series in result.get("series", []):
            for (name,) in series["values"]:
                for r in client.query(f'SELECT * FROM "{name}" GROUP BY *'):
                    for s in r.get("series", []):
                        tags = tuple(sorted((s.get("tags") or {}).items()))
                        for row in s["values"]:
                            fields = tuple(sorted((c, v) for c, v in zip(s["columns"][1:], row[1:], strict=True)
                                                  if v is not None))
                            points.append((name, tags, row[0], fields))
    return sorted(points)


def record_in_background(settings: Settings, out: Path, count: int) -> tuple[threading.Thread, list[RecordResult]]:
    recorder = Recorder(settings, out, [subscription("telemetry", settings.topic_prefix)])
    results: list[RecordResult] = []
    thread = threading.Thread(target=lambda: results.append(recorder.run(count=count, duration_s=60)), daemon=True)
    thread.start()
    assert recorder.subscribed.wait(15), "recorder did not subscribe"
    return thread, results


def test_simulate_record_replay_gives_the_same_points_as_the_live_ingest(
        settings: Settings, influx: InfluxClient, other_db: InfluxClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The simulators publish; the ingest service stores it (in the settings' database) while we record it.
    simulate = ["simulate", "--site", "all", "--seed", "3", "--start", _iso(DEFAULT_START, 0), "--duration",
                SIMULATED, "--speed", "max"]
    jsonl = tmp_path / "sim.jsonl"
    assert main([*simulate, "--out", str(jsonl)]) == 0  # same seed, start, duration: the same messages
    n = sum(1 for line in jsonl.read_text().splitlines() if '/telemetry"' in line)
    service = IngestService(settings, client_id=f"ingest-{settings.topic_prefix}", metrics_port=0)
    service.start()
    try:
        wait_until(lambda: service.health()[0], 15, "ingest connected")
        recording = tmp_path / "plant.smrec"
        thread, results = record_in_background(settings, recording, n)
        assert main([*simulate, "--qos", "1"]) == 0
        thread.join(30)
        wait_until(lambda: stored_count(influx) >= n, 30, "ingest stored every sample")
    finally:
        service.stop()
    assert results, "recorder did not finish"
    manifest = results[0].manifest
    assert (manifest.messages, manifest.telemetry, manifest.invalid) == (n, n, 0)
    assert results[0].stop_reason == f"count {n} reached"
    ingested = dump(influx)
    assert len(ingested) == n

    # Replay the recording into a fresh database: what the live ingest stored, point for point.
    monkeypatch.setenv("SMARTMINE_INFLUX_DB", other_db.database)
    capsys.readouterr()
    assert main(["replay", str(recording), "--to", "influx"]) == 0
    assert dump(other_db) == ingested
    out = capsys.readouterr().err
    assert f"{manifest.readings} in {n} points" in out and "1-minute rollups" in out
    # ... with the rollups the dashboards read for long ranges, which ingest's continuous queries only make
    # for the last minutes
    rollups = other_db.query('SELECT count("air_volume_m3_min_mean") FROM "rollup_1m"."main_fan"')
    assert rollups[0]["series"][0]["values"][0][1] >= 1

    # Export what ingest stored and replay the export into a third database: the same points again.
    export = tmp_path / "export.smrec"
    monkeypatch.setenv("SMARTMINE_INFLUX_DB", influx.database)
    assert main(["export", "--from", _iso(DEFAULT_START, -3600), "--to", _iso(DEFAULT_START, 3600),
                 "--out", str(export), "--window", "90s"]) == 0
    exported = RecordingReader(export).manifest
    assert exported is not None and exported.messages == n and exported.readings == manifest.readings
    third = InfluxClient(influx.url, f"{other_db.database}_x")
    monkeypatch.setenv("SMARTMINE_INFLUX_DB", third.database)
    try:
        assert main(["replay", str(export), "--to", "influx", "--batch-lines", "50"]) == 0  # small batches too
        assert dump(third) == ingested
    finally:
        third.drop_database()


def test_replay_to_mqtt_with_filters_prefix_and_rebased_time(settings: Settings, tmp_path: Path) -> None:
    jsonl = tmp_path / "sim.jsonl"
    write_jsonl(jsonl, builtin_catalog(), DEFAULT_START, 3)
    recording = tmp_path / "belt.smrec"
    thread, results = record_in_background(settings, recording, 2)  # belt_main_1, second and third sample
    before = DEFAULT_START.timestamp()
    assert main(["replay", str(jsonl), "--to", "mqtt", "--speed", "50", "--prefix", settings.topic_prefix,
                 "--site", "yanshan_mine", "--equipment", "belt_main_1", "--from", _iso(DEFAULT_START, 1),
                 "--to", _iso(DEFAULT_START, 3), "--rebase-time"]) == 0
    thread.join(30)
    assert results and results[0].manifest.messages == 2
    chunk = next(RecordingReader(recording).read_chunks())
    assert set(chunk.topic) == {f"{settings.topic_prefix}/yanshan_mine/main_transport/belt_main_1/telemetry"}
    samples = [parse_telemetry(p) for p in chunk.payload]
    assert [s.seq for s in samples] == [1, 2]
    # shifted to now: the first selected sample (08:00:01) lands at the replay's start, spacing kept
    assert samples[0].ts.timestamp() > before + 3600
    assert (samples[1].ts - samples[0].ts).total_seconds() == pytest.approx(1.0)


def test_loop_with_rebased_time_continues_the_timeline(settings: Settings, influx: InfluxClient,
                                                       tmp_path: Path) -> None:
    jsonl = tmp_path / "sim.jsonl"
    write_jsonl(jsonl, builtin_catalog(), DEFAULT_START, 3, site="yanshan_mine")
    assert main(["replay", str(jsonl), "--to", "influx", "--equipment", "main_fan_1", "--loop", "3",
                 "--rebase-time"]) == 0
    rows = influx.query('SELECT "seq", "air_volume_m3_min" FROM "main_fan"')[0]["series"][0]["values"]
    times = [r[0] for r in rows]
    assert [r[1] for r in rows] == [0, 1, 2] * 3
    # three passes, one after the other, one second apart like the recorded samples
    assert [b - a for a, b in itertools.pairwise(times)] == [1_000_000_000] * 8


def test_import_csv_replays_a_nab_series_as_a_sensor(settings: Settings, influx: InfluxClient,
                                                     tmp_path: Path) -> None:
    csv = tmp_path / "machine_temperature.csv"
    csv.write_text("timestamp,value\n2013-12-02 21:15:00,73.96732207\n2013-12-02 21:20:00,\n"
                   "2013-12-02 21:25:00,76.12416182\n2013-12-02 21:10:00,71.5\n")
    out = tmp_path / "nab.smrec"
    assert main(["import-csv", str(csv), "--time-col", "timestamp", "--site", "yanshan_mine", "--equipment",
                 "main_fan_1", "--sensor-map", "value=bearing_temp_c", "--out", str(out)]) == 0
    # 2013 is far older than the raw retention policy: replayed as the most recent history instead
    assert main(["replay", str(out), "--to", "influx", "--rebase-time"]) == 0
    rows = influx.query('SELECT "bearing_temp_c", "seq" FROM "main_fan"', epoch="s")[0]["series"][0]["values"]
    # sorted by time, the empty cell left out, values exact, spacing kept, the last one now
    assert [r[1:] for r in rows] == [[71.5, 0], [73.96732207, 1], [76.12416182, 2]]
    assert [rows[1][0] - rows[0][0], rows[2][0] - rows[1][0]] == [300, 600]
    assert abs(rows[2][0] - time.time()) < 60


@pytest.mark.parametrize(("args", "message"), [
    (["--equipment", "main_fan_9", "--sensor-map", "value=bearing_temp_c"],
     "--equipment 'main_fan_9' is not in site 'yanshan_mine'"),
    (["--equipment", "main_fan_1", "--sensor-map", "value=ch4_pct"],
     "main_fan_1 (main_fan) has no sensor 'ch4_pct'"),
    (["--equipment", "main_fan_1", "--sensor-map", "temp=bearing_temp_c"], "no column 'temp'"),
])
def test_import_csv_refuses_what_the_catalog_does_not_know(settings: Settings, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           args: list[str], message: str) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,value\n2013-12-02 21:15:00,73.9\n")
    assert main(["import-csv", str(csv), "--time-col", "timestamp", "--site", "yanshan_mine", *args]) == 2
    assert message in capsys.readouterr().err


def test_import_csv_names_the_bad_cell(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,value\n2013-12-02 21:15:00,73.9\n2013-12-02 21:20:00,hot\n")
    base = ["import-csv", str(csv), "--time-col", "timestamp", "--site", "yanshan_mine", "--equipment",
            "main_fan_1", "--sensor-map", "value=bearing_temp_c"]
    assert main(base) == 2
    assert f"{csv}: line 3, column 'value': 'hot' is not a finite number" in capsys.readouterr().err
    assert main([*base, "--skip-bad"]) == 0


def test_corrupt_recording_fails_the_replay_with_file_and_offset(settings: Settings, influx: InfluxClient,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = tmp_path / "sim.jsonl"
    write_jsonl(jsonl, builtin_catalog(), DEFAULT_START, 2)
    csv = tmp_path / "x.csv"
    csv.write_text("timestamp,value\n" + "".join(f"2013-12-02 21:{m:02d}:00,{m}\n" for m in range(50)))
    out = tmp_path / "x.smrec"
    assert main(["import-csv", str(csv), "--time-col", "timestamp", "--site", "yanshan_mine", "--equipment",
                 "main_fan_1", "--sensor-map", "value=bearing_temp_c", "--out", str(out)]) == 0
    size = out.stat().st_size
    out.write_bytes(out.read_bytes()[: size - 30])
    assert main(["replay", str(out), "--to", "influx"]) == 2
    err = capsys.readouterr().err
    assert f"smartmine: error: {out}: at offset " in err
    assert "truncated" in err and "Traceback" not in err
    assert influx.query('SELECT count(*) FROM "main_fan"')[0].get("series") is None  # nothing half-written

    assert main(["replay", str(out), "--to", "influx", "--skip-bad", "--rebase-time"]) == 0
    assert "skipped (--skip-bad)" in capsys.readouterr().err
    rows = influx.query('SELECT count("bearing_temp_c") FROM "main_fan"')[0]["series"][0]["values"]
    assert rows[0][1] == 50  # the one chunk is intact: only the manifest was cut off


def test_replay_is_deterministic(settings: Settings, tmp_path: Path) -> None:
    jsonl = tmp_path / "sim.jsonl"
    n = write_jsonl(jsonl, builtin_catalog(), DEFAULT_START, 2, site="jinggang_steel")
    received = []
    for attempt in range(2):
        out = tmp_path / f"take{attempt}.smrec"
        thread, results = record_in_background(settings, out, n)
        assert main(["replay", str(jsonl), "--to", "mqtt", "--speed", "max", "--prefix", settings.topic_prefix,
                     "-q"]) == 0
        thread.join(30)
        assert results and results[0].manifest.messages == n
        chunk = next(RecordingReader(out).read_chunks())
        received.append(list(zip(chunk.topic, chunk.payload, chunk.qos, strict=True)))
    assert received[0] == received[1]  # same messages, same order, same bytes
    assert [json.loads(p) for _, p, _ in received[0]] == [json.loads(line)["payload"]
                                                         for line in jsonl.read_text().splitlines()]


def test_rebase_time_places_the_samples_own_times(settings: Settings, influx: InfluxClient, tmp_path: Path) -> None:
    # Recorded at 17:00 from a simulator backfilling 08:00: receive times and sample times differ by hours.
    catalog = builtin_catalog()
    encoder = LineEncoder(catalog)
    path = tmp_path / "backfill.smrec"
    writer = RecordingWriter(path, "mqtt", "now", meta={"catalog_sha256": encoder.fingerprint})
    chunk = Chunk.empty()
    received = time.time_ns() - 3600 * 10**9
    for n, (topic, payload) in enumerate(messages(catalog, DEFAULT_START, 3, site="yanshan_mine")):
        chunk.append(received + n * 1_000_000, topic, payload, 1, False, classify(topic, payload, encoder))
    writer.write(chunk)
    writer.close()
    assert main(["replay", str(path), "--to", "influx", "--rebase-time", "--equipment", "main_fan_1"]) == 0
    rows = influx.query('SELECT "seq" FROM "main_fan"', epoch="s")[0]["series"][0]["values"]
    assert [r[1] for r in rows] == [0, 1, 2] and rows[1][0] - rows[0][0] == 1  # the samples' own spacing
    assert abs(rows[-1][0] - time.time()) < 60  # the last sample is now, not an hour ago
