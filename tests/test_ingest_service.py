"""The ingest service against a real Mosquitto and a real influxd: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ingest_helpers import Publisher, assert_stored_exactly, samples, stored_count, wait_until

from ingest.deadletter import read_dead_letters
from ingest.metrics import is_healthy
from ingest.service import IngestService, deadletter_file
from smartmine.catalog import Catalog, load_catalog
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.services import Influxd


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog_dir)


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    pub = Publisher(settings)
    yield pub
    pub.close()


@pytest.fixture
def service(settings: Settings, influx: InfluxClient) -> Iterator[IngestService]:
    svc = IngestService(settings, client_id=f"ingest-{settings.topic_prefix}", metrics_port=0)
    svc.start()
    wait_until(lambda: svc.health()[0], 10, "ingest connected")
    yield svc
    svc.stop()


def test_every_reading_stored_exactly_once(service: IngestService, publisher: Publisher, catalog: Catalog,
                                           influx: InfluxClient) -> None:
    sent = samples(catalog, 3000, equipment=12)
    publisher.publish_samples(sent)
    # Publish a second time: at-least-once redelivery must overwrite, never add points.
    publisher.publish_samples(sent[:500])
    wait_until(lambda: stored_count(influx) >= len(sent) and service.totals.messages >= 3500, 30,
               "every sample stored")
    assert_stored_exactly(influx, sent)
    assert service.totals.dead_letters == 0


def test_a_backlog_waits_in_the_broker_not_in_ingest(settings: Settings, influx: InfluxClient,
                                                    publisher: Publisher, catalog: Catalog) -> None:
    """Mosquitto 2.0 sends a resumed session its queued QoS 1 messages far beyond the receive maximum the
    client asked for; ingest still never holds more unacknowledged messages than its window, and the whole
    backlog is stored exactly once."""
    window = 20
    cfg = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"receive_maximum": window})})
    client_id = f"ingest-window-{settings.topic_prefix}"
    first = IngestService(cfg, client_id=client_id, metrics_port=0)
    first.start()
    wait_until(lambda: first.health()[0], 10, "ingest connected")
    first.stop()  # the persistent session stays on the broker and queues what follows
    sent = samples(catalog, 2000, equipment=10, seed=7)
    publisher.publish_samples(sent)

    svc = IngestService(cfg, client_id=client_id, metrics_port=0)
    peak = 0
    svc.start()
    try:
        deadline = time.monotonic() + 60
        while svc.totals.messages < len(sent) and time.monotonic() < deadline:
            peak = max(peak, svc.health()[1]["unacknowledged"])
            time.sleep(0.001)
    finally:
        svc.stop()
    assert 0 < peak <= window, f"ingest held {peak} unacknowledged messages with a window of {window}"
    assert_stored_exactly(influx, sent)


def _dead_letter_subscriber(settings: Settings) -> tuple[object, list[dict]]:
    from smartmine.mqtt import make_client

    got: list[dict] = []
    client = make_client(settings.mqtt, f"dl-watch-{settings.topic_prefix}")
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    url = settings.mqtt
    client.connect(url.host, url.port)
    client.subscribe(f"{settings.topic_prefix}/deadletter/ingest", qos=1)
    client.loop_start()
    return client, got


def test_each_kind_of_bad_message_is_dead_lettered_and_good_data_around_it_stored(
        settings: Settings, service: IngestService, publisher: Publisher, catalog: Catalog,
        influx: InfluxClient) -> None:
    import base64
    from datetime import UTC, datetime, timedelta

    from smartmine.wire import encode_telemetry

    watcher, live = _dead_letter_subscriber(settings)
    p = settings.topic_prefix
    good = samples(catalog, 40, equipment=4)
    gas = next(e for e in catalog.all_equipment() if e.type == "gas_monitor")
    gas_topic = f"{p}/{gas.site}/{gas.area}/{gas.id}/telemetry"
    now = datetime.now(UTC).replace(microsecond=0)
    ok = {"ch4_pct": 0.3}
    bad: list[tuple[str, bytes, str]] = [
        (gas_topic, b"{not json", "invalid_payload"),
        (gas_topic, b"\xff\xfe\x00binary", "invalid_payload"),
        (gas_topic, b'{"v":1,"ts":"2026-11-27T08:00:00Z","seq":1,"readings":{"ch4_pct":NaN}}', "invalid_payload"),
        (gas_topic, b'{"v":1,"seq":1,"readings":{"ch4_pct":0.3}}', "invalid_payload"),
        (f"{p}/Bad_Site/{gas.area}/{gas.id}/telemetry", encode_telemetry(now, 1, ok), "invalid_topic"),
        (f"{p}/atlantis_mine/{gas.area}/{gas.id}/telemetry", encode_telemetry(now, 1, ok), "unknown_site"),
        (f"{p}/{gas.site}/{gas.area}/gas_nowhere_9/telemetry", encode_telemetry(now, 1, ok), "unknown_equipment"),
        (f"{p}/{gas.site}/wrong_area/{gas.id}/telemetry", encode_telemetry(now, 1, ok), "area_mismatch"),
        (gas_topic, encode_telemetry(now - timedelta(days=8), 1, ok), "timestamp_too_old"),
        (gas_topic, encode_telemetry(now + timedelta(hours=1), 1, ok), "timestamp_in_future"),
        (gas_topic, encode_telemetry(now - timedelta(seconds=1), 7, {"ch4_pct": 0.4, "unicorn_pct": 1.0}),
         "unknown_sensor"),
    ]
    # A value outside the physical range is a sensor fault to keep, not to drop.
    out_of_range = encode_telemetry(now - timedelta(seconds=2), 8, {"ch4_pct": 140.0, "co_ppm": 2.0})
    publisher.publish_samples(good[:20])
    publisher.publish([(t, b) for t, b, _ in bad] + [(gas_topic, out_of_range)])
    publisher.publish_samples(good[20:])

    dl_file = deadletter_file(settings)
    wait_until(lambda: len(read_dead_letters(dl_file)) >= len(bad) and stored_count(influx) >= len(good) + 2, 20,
               "dead letters and good data")
    records = read_dead_letters(dl_file)
    assert [r["reason"] for r in records] == [reason for _, _, reason in bad]
    for (topic, body, reason), rec in zip(bad, records, strict=True):
        assert rec["topic"] == topic
        assert base64.b64decode(rec["payload_b64"]) == body, "the dead letter keeps the original bytes"
        assert rec["detail"], f"{reason} has no detail"
    assert "unicorn_pct" in records[-1]["detail"]
    assert "ts" in records[3]["detail"], "a missing field is named"

    stored = influx.query_df(f'SELECT * FROM gas_monitor WHERE equipment = \'{gas.id}\' AND seq >= 7')
    by_seq = {int(r.seq): r for r in stored.itertuples()}  # type: ignore[arg-type]
    assert by_seq[7].ch4_pct == 0.4, "the known readings of a sample with an unknown sensor are stored"
    assert by_seq[8].ch4_pct == 140.0 and by_seq[8].ch4_pct_quality == "out_of_range"
    assert by_seq[8].co_ppm == 2.0 and "co_ppm_quality" not in stored.columns, "good readings carry no flag"
    assert stored_count(influx) == len(good) + 2
    wait_until(lambda: len(live) >= len(bad), 5, "dead letters on the MQTT topic")
    assert sorted(r["reason"] for r in live) == sorted(reason for _, _, reason in bad)
    counted = {s.labels["reason"]: s.value for m in service.metrics.dead_letters.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert counted["invalid_payload"] == 4 and counted["unknown_site"] == 1
    watcher.loop_stop()  # type: ignore[attr-defined]


def test_lines_influxdb_refuses_are_dead_lettered_with_its_reason_and_the_rest_written(
        settings: Settings, service: IngestService, publisher: Publisher, catalog: Catalog,
        influx: InfluxClient) -> None:
    sent = samples(catalog, 280, equipment=14)
    gas_type = "gas_monitor"
    assert any(s.equipment.type == gas_type for s in sent)
    # A string ch4_pct in the same shard makes every float ch4_pct a field type conflict; the server
    # does not say which lines it dropped, so ingest has to find them.
    first = next(s for s in sent if s.equipment.type == gas_type)
    influx.write_lines([f'{gas_type},area=x,equipment=x,site=x ch4_pct="text",seq=0i {first.key[1]}'])
    publisher.publish_samples(sent)
    refused = [s for s in sent if s.equipment.type == gas_type]
    dl_file = deadletter_file(settings)
    wait_until(lambda: len(read_dead_letters(dl_file)) >= len(refused), 20, "refused lines dead-lettered")
    records = read_dead_letters(dl_file)
    assert len(records) == len(refused)
    assert {r["reason"] for r in records} == {"rejected_by_influxdb"}
    assert all("field type conflict" in r["detail"] for r in records), records[0]["detail"]
    assert all(r["line"].startswith(gas_type + ",") for r in records)
    assert {json.loads(r["payload"])["seq"] for r in records} == {s.seq for s in refused}
    wait_until(lambda: stored_count(influx) >= len(sent) - len(refused) + 1, 10, "the rest written")
    assert stored_count(influx) == len(sent) - len(refused) + 1


def test_metrics_and_health_endpoints(settings: Settings, influx: InfluxClient, publisher: Publisher,
                                      catalog: Catalog) -> None:
    from smartmine.services import free_port

    svc = IngestService(settings, client_id=f"ingest-m-{settings.topic_prefix}", metrics_port=free_port())
    svc.start()
    try:
        base = f"http://127.0.0.1:{svc.metrics_port}"
        wait_until(lambda: svc.health()[0], 10, "connected")
        with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["mqtt_connected"] is True
        publisher.publish_samples(samples(catalog, 100))
        wait_until(lambda: svc.totals.points >= 100, 10, "points written")
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                  if line and not line.startswith("#")}
        assert values["smartmine_ingest_points_written_total"] == 100
        assert values['smartmine_ingest_messages_total{result="accepted"}'] == 100
        assert values["smartmine_ingest_spool_batches"] == 0
        assert "smartmine_ingest_write_seconds_bucket" in text and "smartmine_ingest_lag_seconds" in text
    finally:
        svc.stop()


# ---------------------------------------------------------------------------------------- as a process
def _start_ingest(client_id: str, *extra: str, env: dict[str, str] | None = None,
                  log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "smartmine.cli", "ingest", "--client-id", client_id, *extra],
                            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)


def test_sigterm_writes_everything_received_before_exit(settings: Settings, influx: InfluxClient,
                                                        publisher: Publisher, catalog: Catalog) -> None:
    from smartmine.services import free_port

    port = free_port()
    # A flush interval far beyond the test: only the SIGTERM flush can write these.
    proc = _start_ingest(f"ingest-term-{settings.topic_prefix}", "--metrics-port", str(port),
                         env={"SMARTMINE_INGEST__FLUSH_INTERVAL_S": "3600"})
    try:
        wait_until(lambda: is_healthy(port), 15, "ingest healthy")
        sent = samples(catalog, 300)
        publisher.publish_samples(sent)
        time.sleep(1.0)
        assert stored_count(influx) == 0, "nothing should be written before the flush"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"300 points written" in out, out.decode()
        assert_stored_exactly(influx, sent)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_9_mid_stream_and_restart_loses_nothing_duplicates_nothing(
        settings: Settings, influx: InfluxClient, publisher: Publisher, catalog: Catalog, tmp_path: Path) -> None:
    import threading

    from smartmine.services import free_port

    client_id = f"ingest-kill-{settings.topic_prefix}"
    sent = samples(catalog, 12000, equipment=20)
    done = threading.Event()

    def publish_paced() -> None:
        for i in range(0, len(sent), 400):
            publisher.publish_samples(sent[i:i + 400])
            time.sleep(0.1)
        done.set()

    log = tmp_path / "ingest.log"
    port = free_port()
    first = _start_ingest(client_id, "--metrics-port", str(port), log=log)
    try:
        wait_until(lambda: is_healthy(port), 15, "ingest subscribed")
        feeder = threading.Thread(target=publish_paced, daemon=True)
        feeder.start()
        wait_until(lambda: stored_count(influx) >= 2000, 30, "ingest writing")
        first.kill()  # SIGKILL: no flush, no acknowledgements for what was in memory
        first.wait(5)
        killed_at = stored_count(influx)
        assert killed_at < len(sent), "the kill should come mid-stream"
        second = _start_ingest(client_id, "--metrics-port", str(port), log=log)
        try:
            feeder.join(60)
            assert done.is_set()
            try:
                wait_until(lambda: stored_count(influx) >= len(sent), 60, "every sample stored after the restart")
            except AssertionError:
                print(log.read_text())
                assert_stored_exactly(influx, sent)  # says what was lost
                raise
            time.sleep(0.5)  # anything redelivered twice would show up now
            assert_stored_exactly(influx, sent)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()


def test_influxdb_down_for_30_s_mid_stream_loses_nothing(settings: Settings, influxd_factory: Callable[..., Influxd],
                                                          publisher: Publisher, catalog: Catalog) -> None:
    server = influxd_factory()
    own = settings.model_copy(update={
        "influx_url": server.url,
        "ingest": settings.ingest.model_copy(update={"spool_after_s": 1.0, "retry_max_s": 2.0}),
    })
    influx = InfluxClient(server.url, own.influx_db)
    svc = IngestService(own, client_id=f"ingest-outage-{settings.topic_prefix}", metrics_port=0)
    svc.start()
    try:
        wait_until(lambda: svc.health()[0], 10, "ingest subscribed")
        sent = samples(catalog, 6400, equipment=16)
        chunks = [sent[i:i + 100] for i in range(0, len(sent), 100)]
        for chunk in chunks[:8]:
            publisher.publish_samples(chunk)
            time.sleep(0.2)
        wait_until(lambda: stored_count(influx) > 0, 10, "writes before the outage")
        server.stop()
        outage_end = time.monotonic() + 30
        rest = iter(chunks[8:])
        while time.monotonic() < outage_end:  # telemetry keeps coming while InfluxDB is down
            chunk = next(rest, [])
            if chunk:
                publisher.publish_samples(chunk)
            time.sleep(0.5)
        assert svc.totals.spooled > 0, "batches should have gone to the spool"
        assert svc.health()[1]["influxdb"].startswith("unreachable")
        server.start()
        for chunk in rest:
            publisher.publish_samples(chunk)
        wait_until(lambda: stored_count(influx) >= len(sent), 30, "spool replayed and every sample stored")
        assert_stored_exactly(influx, sent)
        assert svc.health()[1]["spool_batches"] == 0
    finally:
        svc.stop()
        influx.close()
