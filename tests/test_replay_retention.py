"""A replay into InfluxDB never says it stored what InfluxDB refused, against the real influxd.

A recording older than the target retention policy keeps is refused before anything is written, with the
hint to use ``--rebase-time``; points InfluxDB refuses anyway are counted as refused, with the reason, and
the replay exits non-zero.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ingest_helpers import stored_count

from replay.synthetic import DEFAULT_START, write_jsonl
from smartmine.catalog import builtin_catalog
from smartmine.cli import main
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.schema import ensure_database, ts_ns


def test_a_recording_older_than_the_retention_is_refused_up_front(
        settings: Settings, influx: InfluxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # InfluxDB's shortest policy (its shards must not be longer than it keeps), made by the operator
    ensure_database(influx, builtin_catalog(), retention="1h", shard_duration="1h")
    monkeypatch.setenv("SMARTMINE_INGEST__ENSURE_DATABASE", "false")
    jsonl = tmp_path / "night.jsonl"
    three_hours_ago = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    write_jsonl(jsonl, builtin_catalog(), three_hours_ago, 5, site="yanshan_mine")

    capsys.readouterr()
    assert main(["replay", str(jsonl), "--to", "influx"]) == 2
    err = capsys.readouterr().err
    assert "retention policy 'raw'" in err and "keeps only 1h0m0s" in err and "--rebase-time" in err
    assert stored_count(influx) == 0

    # Moved to now, the same recording is stored whole, and the summary says so.
    assert main(["replay", str(jsonl), "--to", "influx", "--rebase-time"]) == 0
    err = capsys.readouterr().err
    lines = sum(1 for line in jsonl.read_text().splitlines() if '/telemetry"' in line)
    assert stored_count(influx) == lines
    assert "refused" not in err


def test_points_influxdb_refuses_are_counted_as_refused_not_written(
        settings: Settings, influx: InfluxClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = builtin_catalog()
    jsonl = tmp_path / "sim.jsonl"
    write_jsonl(jsonl, catalog, DEFAULT_START, 3, site="yanshan_mine")
    lines = sum(1 for line in jsonl.read_text().splitlines() if '/telemetry"' in line)
    # A string where the replay writes a number: InfluxDB refuses every main_fan point of that shard.
    ensure_database(influx, catalog)
    influx.write_lines([f'main_fan air_volume_m3_min="broken" {ts_ns(DEFAULT_START)}'])
    before = stored_count(influx)

    capsys.readouterr()
    assert main(["replay", str(jsonl), "--to", "influx", "--no-rollups"]) == 1
    err = capsys.readouterr().err
    refused_points = lines - (stored_count(influx) - before)
    assert refused_points > 0
    assert "readings refused by" in err and "field type conflict" in err
    assert f"({refused_points:,} points)" in err.replace("\n", " ")
    assert f" in {lines - refused_points} points" in err  # the "readings written" row counts only what was stored
