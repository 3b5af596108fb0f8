"""Ingest's writer under the faults of a night shift, against a real Mosquitto and a real influxd (issue 14).

A full spool drains again once InfluxDB is back (also across an ingest restart); a damaged spool segment
is quarantined and the rest drains; a dead writer fails /healthz and ends the process with a non-zero
status; settings InfluxDB refuses are reported as configuration errors, not spooled; a lost MQTT session
is reported. Each test asserts what an operator would see: points stored, health, metrics, exit status.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import Publisher, assert_stored_exactly, samples, stored_count, wait_until

from ingest.service import IngestService, spool_dir
from ingest.spool import Spool
from smartmine.catalog import Catalog, load_catalog
from smartmine.config import ConfigError, Settings
from smartmine.influx import InfluxClient, quote_ident
from smartmine.monitor import IngestMetrics as ScrapedIngest
from smartmine.services import Influxd, Mosquitto, free_port
from smartmine.supervisor import StageChild


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog_dir)


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    pub = Publisher(settings)
    yield pub
    pub.close()


def _with(settings: Settings, **ingest: Any) -> Settings:
    top = {k: ingest.pop(k) for k in list(ingest) if k in ("influx_url", "influx_rp", "mqtt_url", "influx_user",
                                                           "influx_password")}
    return settings.model_copy(update={**top, "ingest": settings.ingest.model_copy(update=ingest)})


def _counter(svc: IngestService, name: str) -> float:
    return sum(s.value for m in svc.metrics.registry.collect() for s in m.samples if s.name == name)


def _ingest(settings: Settings) -> IngestService:
    return IngestService(settings, client_id=f"ingest-{settings.topic_prefix}", metrics_port=0)


def test_a_full_spool_drains_once_influxdb_is_back_even_after_an_ingest_restart(
        settings: Settings, influxd_factory: Callable[..., Influxd], publisher: Publisher, catalog: Catalog) -> None:
    server = influxd_factory()
    cfg = _with(settings, influx_url=server.url, spool_max_mb=0.02, batch_size=100, receive_maximum=300,
                spool_after_s=0.0, retry_initial_s=0.05, retry_max_s=0.5)
    influx = InfluxClient(server.url, settings.influx_db)
    influx.create_database()
    svc = _ingest(cfg)
    svc.start()
    wait_until(lambda: svc.health()[0], 15, "ingest connected")
    server.stop()
    sent = samples(catalog, 3000, equipment=12)
    publisher.publish_samples(sent)
    wait_until(lambda: any("is full" in p for p in svc.health()[1].get("problems", [])), 60, "the spool full")
    svc.stop()
    # Restarted on the full spool while InfluxDB is still down: the backlog waits at the broker.
    svc = _ingest(cfg)
    svc.start()
    try:
        wait_until(lambda: any("is full" in p for p in svc.health()[1].get("problems", [])), 60,
                   "the restarted ingest to find the spool full")
        assert svc.health()[1]["unacknowledged"] <= cfg.ingest.receive_maximum, "back-pressure, not a backlog here"
        server.start()
        wait_until(lambda: stored_count(influx) >= len(sent), 90, "every sample stored after InfluxDB is back")
        wait_until(lambda: svc.health()[0] and svc.health()[1]["spool_batches"] == 0, 30, "the spool empty")
    finally:
        svc.stop()
    assert_stored_exactly(influx, sent)
    folder = spool_dir(cfg, svc.client_id)
    assert not list(folder.glob("*.tmp")), "no half-written segments left behind"
    assert svc.totals.spooled > 0
    influx.close()


_T0_NS = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: inside the retention


def _segment_lines(first_seq: int, count: int) -> bytes:
    return "\n".join(f"spooled_test,equipment=eq{i % 4} seq={i}i,value={i * 0.5} {_T0_NS + i}"
                      for i in range(first_seq, first_seq + count)).encode()


def test_a_damaged_spool_segment_is_quarantined_and_the_rest_drains(settings: Settings, influx: InfluxClient) -> None:
    client_id = f"ingest-{settings.topic_prefix}"
    folder = spool_dir(settings, client_id)
    spool = Spool(folder, 10_000_000)
    first = spool.append(_segment_lines(0, 100))
    bad = spool.append(_segment_lines(100, 100))
    spool.append(_segment_lines(200, 100))
    damaged = folder / f"{bad:012d}.lp.gz"
    damaged.write_bytes(damaged.read_bytes()[:40])  # a power cut: the gzip stream cut short
    assert first == 1

    for _restart in range(2):  # and the next start must not trip over it again
        svc = _ingest(settings)
        svc.start()
        try:
            wait_until(lambda: stored_count(influx) >= 200, 20, "the readable segments replayed")
            wait_until(lambda s=svc: s.health()[1]["spool_batches"] == 0, 10, "the spool drained")
            wait_until(lambda s=svc: s.health()[0], 10, "healthy again")
        finally:
            svc.stop()
    assert stored_count(influx) == 200
    kept = folder / "quarantine" / damaged.name
    assert kept.is_file(), "the damaged segment is kept aside for a person to look at"
    with pytest.raises(EOFError):
        gzip.decompress(kept.read_bytes())


def test_a_dead_writer_fails_healthz_and_ends_ingest_with_a_non_zero_status(
        settings: Settings, influx: InfluxClient, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _ingest(settings)
    # A fault no handler foresaw, inside the writer thread (the spool's read stands in for any of them).
    monkeypatch.setattr(svc._spool, "oldest", lambda: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    svc._spool.append(_segment_lines(0, 10))
    stop = threading.Event()
    guard = threading.Timer(60, stop.set)  # bounded: the run ends on its own long before
    guard.start()
    try:
        status = svc.run(stop)
    finally:
        guard.cancel()
    ok, details = svc.health()
    assert status == 1, "a supervisor restarts what exits 1"
    assert not ok and any("writer thread died" in p and "disk on fire" in p for p in details["problems"])
    assert not stop.is_set(), "run ended because the writer died, not on the guard"


def _count_in(influx: InfluxClient, rp: str) -> int:
    return sum(int(s["values"][0][1]) for r in influx.query(f'SELECT count(seq) FROM "{rp}"./.*/')
               for s in r.get("series", []))


def test_a_retention_policy_that_does_not_exist_is_a_configuration_error(
        settings: Settings, influx: InfluxClient, publisher: Publisher, catalog: Catalog) -> None:
    db = quote_ident(settings.influx_db)
    cfg = _with(settings, influx_rp="shift_rp", retry_initial_s=0.05, retry_max_s=0.2, spool_after_s=0.0)
    with pytest.raises(ConfigError, match="SMARTMINE_INFLUX_RP"):
        _ingest(cfg).check_influx_settings()  # at start: fail fast (the command exits 2)

    influx.execute(f"CREATE RETENTION POLICY shift_rp ON {db} DURATION 30d REPLICATION 1")
    svc = IngestService(cfg, client_id=f"ingest-{settings.topic_prefix}", metrics_port=free_port())
    svc.check_influx_settings()
    svc.start()
    try:
        wait_until(lambda: svc.health()[0], 15, "ingest connected")
        influx.execute(f"DROP RETENTION POLICY shift_rp ON {db}")  # someone drops it while ingest runs
        sent = samples(catalog, 200, equipment=4)
        publisher.publish_samples(sent)
        wait_until(lambda: "configuration error" in svc.health()[1]["influxdb"], 30, "the configuration error")
        ok, details = svc.health()
        assert not ok and "SMARTMINE_INFLUX_RP" in details["influxdb"]
        assert details["spool_batches"] == 0, "a settings error is not spooled"
        assert details["unacknowledged"] == len(sent), "the messages stay unacknowledged on the broker"
        assert _counter(svc, "smartmine_ingest_influxdb_config_error") == 1
        # What smartmine up's monitor shows: /healthz, not just a /metrics that answers.
        scraped = ScrapedIngest(f"http://127.0.0.1:{svc.metrics_port}/metrics")
        scraped.scrape(time.time())
        assert "configuration error" in scraped.unhealthy and "SMARTMINE_INFLUX_RP" in scraped.unhealthy
        influx.execute(f"CREATE RETENTION POLICY shift_rp ON {db} DURATION 30d REPLICATION 1")
        wait_until(lambda: _count_in(influx, "shift_rp") >= len(sent), 60, "the samples written")
        wait_until(lambda: svc.health()[0], 10, "healthy again")
    finally:
        svc.stop()
    assert _count_in(influx, "shift_rp") == len(sent)


def test_a_wrong_influxdb_password_stops_ingest_with_exit_2_and_up_does_not_restart_it(
        settings: Settings, influxd_factory: Callable[..., Influxd], tmp_path: Path) -> None:
    server = influxd_factory(admin=("boss", "right-password"))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SMARTMINE_")}
    env.update({"SMARTMINE_MQTT_URL": settings.mqtt_url, "SMARTMINE_INFLUX_URL": server.url,
                "SMARTMINE_INFLUX_DB": settings.influx_db, "SMARTMINE_INFLUX_USER": "boss",
                "SMARTMINE_INFLUX_PASSWORD": "wrong-password", "SMARTMINE_DATA_DIR": str(tmp_path / "data"),
                "SMARTMINE_TOPIC_PREFIX": settings.topic_prefix, "SMARTMINE_INGEST__METRICS_PORT": "0"})
    child = StageChild("ingest", argv=[sys.executable, "-m", "smartmine.cli", "ingest"], env=env,
                       log_file=tmp_path / "ingest.log")
    child.start()
    proc = child._process()
    assert proc is not None
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        child.stop(5)
        raise
    event = child.check()
    assert proc.returncode == 2
    assert child.state == "failed" and event and "not restarted" in event
    log = (tmp_path / "ingest.log").read_text()
    assert "SMARTMINE_INFLUX_PASSWORD" in log and "wrong-password" not in log


def test_an_unreachable_influxdb_is_retried_by_the_supervisor_not_given_up(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SMARTMINE_")}
    env["SMARTMINE_INFLUX_URL"] = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    child = StageChild("export", argv=[sys.executable, "-m", "smartmine.cli", "export", "--from", "now-1h",
                                       "--out", str(tmp_path / "x.rec")], env=env, log_file=tmp_path / "r.log")
    child.start()
    proc = child._process()
    assert proc is not None
    proc.wait(120)
    event = child.check()
    assert proc.returncode == 1, (tmp_path / "r.log").read_text()[-500:]
    assert child.state == "restarting" and event and "restarting" in event


def test_a_lost_mqtt_session_is_reported(settings: Settings, mosquitto_factory: Callable[..., Mosquitto],
                                         influx: InfluxClient, caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_factory(persistence=False)
    svc = _ingest(_with(settings, mqtt_url=broker.url))
    svc.start()
    try:
        wait_until(lambda: svc.health()[0], 15, "ingest connected")
        assert _counter(svc, "smartmine_ingest_mqtt_sessions_lost_total") == 0
        broker.stop()
        broker.start()  # without persistence: ingest's session, and what was queued for it, are gone
        wait_until(lambda: _counter(svc, "smartmine_ingest_mqtt_sessions_lost_total") == 1, 60, "the lost session")
        wait_until(lambda: svc.health()[0], 15, "ingest subscribed again")
    finally:
        svc.stop()
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "lost ingest's session" in r.getMessage()]
    assert warnings and "may be lost" in warnings[0].getMessage()


def test_a_field_type_conflict_costs_a_few_requests_not_one_per_line(influx: InfluxClient) -> None:
    from ingest.writer import BatchWriter

    requests: list[str] = []
    writer = BatchWriter(influx, retry_initial_s=0.05, retry_max_s=0.2,
                         observe=lambda seconds, points, outcome: requests.append(outcome))
    influx.write_lines([f"belt,equipment=b0 speed=1i {_T0_NS - 10**9}"])  # speed is an integer field
    lines = [f"belt,equipment=b{i % 50} speed={'1.5' if i % 8 == 0 else f'{i}i'} {_T0_NS + i}" for i in range(4000)]
    rejected = writer.write(lines, time.monotonic() + 30)
    assert [i for i, _ in rejected] == list(range(0, 4000, 8)), "exactly the conflicting lines are refused"
    assert all("field type conflict" in reason for _, reason in rejected), "with InfluxDB's reason"
    stored = influx.query("SELECT count(speed) FROM belt")[0]["series"][0]["values"][0][1]
    assert stored == 3500 + 1, "every good line stored"
    assert len(requests) <= 24, f"{len(requests)} requests for one conflict in a 4,000-line batch"
