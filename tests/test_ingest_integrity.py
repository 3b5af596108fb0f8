"""Ingest's integrity against a real Mosquitto and influxd: what never arrived is reported, a second sample at
one timestamp does not overwrite the first, the dead letter stays bounded and a full disk stops nothing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from ingest_helpers import Publisher, samples, stored_count, stored_points, wait_until

from ingest.deadletter import read_dead_letters
from ingest.service import IngestService, deadletter_file, gap_file
from ingest.validate import SAME_TIMESTAMP
from smartmine.catalog import Catalog, ResolvedEquipment, load_catalog
from smartmine.config import Settings, load_settings
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.services import Mosquitto
from smartmine.wire import encode_telemetry, topic


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog_dir)


@pytest.fixture
def gas(catalog: Catalog) -> ResolvedEquipment:
    return next(e for e in catalog.all_equipment() if e.type == "gas_monitor")


def _with(settings: Settings, **ingest: Any) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=ingest)})


@pytest.fixture
def start_ingest(settings: Settings, influx: InfluxClient) -> Iterator[Callable[..., IngestService]]:
    started: list[IngestService] = []

    def start(cfg: Settings | None = None, client_id: str | None = None) -> IngestService:
        svc = IngestService(cfg or settings, client_id=client_id or f"ingest-{settings.topic_prefix}",
                            metrics_port=0)
        svc.start()
        started.append(svc)
        wait_until(lambda: svc.health()[0], 10, "ingest connected")
        return svc

    yield start
    for svc in started:
        if not svc._stopping:
            svc.stop()


def _count(counter: Any, **labels: str) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


def _watch(settings: Settings, sub: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    client = make_client(settings.mqtt, f"watch-{sub.replace('/', '-')}-{os.getpid()}")
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.subscribe(sub, qos=1)
    client.loop_start()
    return got


def _gas_payload(ts: datetime, seq: int, ch4: float | tuple[float, str], src: str = "gas-1") -> bytes:
    return encode_telemetry(ts, seq, {"ch4_pct": ch4}, src=src)


# ------------------------------------------------------------------------------------------ sequence gaps
def test_what_a_full_broker_queue_dropped_is_reported_as_a_gap(
        mosquitto_factory: Callable[..., Mosquitto], settings: Settings, influx: InfluxClient, catalog: Catalog,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Stock Mosquitto keeps 1,000 messages for an absent client and drops the rest: 3,000 published while ingest
    was down, 1,000 stored; ingest used to say nothing. Now every missing message is in a gap record."""
    broker = mosquitto_factory(max_queued_messages=1000, extra_config=["sys_interval 1"])
    monkeypatch.setenv("SMARTMINE_MQTT_URL", broker.url)
    cfg = _with(load_settings(), sequence_reorder_s=1.0)
    client_id = f"ingest-drops-{settings.topic_prefix}"
    first = IngestService(cfg, client_id=client_id, metrics_port=0)
    first.start()
    wait_until(lambda: first.health()[0], 10, "ingest connected")
    first.stop()  # its session stays on the broker and queues what follows, up to 1,000 messages

    sent = samples(catalog, 3001, equipment=1)  # one publisher ("test"), seq 0..3000
    publisher = Publisher(cfg, f"pub-drops-{settings.topic_prefix}")
    watched = _watch(cfg, f"{cfg.topic_prefix}/deadletter/ingest/gaps")
    try:
        publisher.publish_samples(sent[:3000])
        caplog.set_level(logging.WARNING, logger="ingest.integrity")
        svc = IngestService(cfg, client_id=client_id, metrics_port=0)
        svc.start()
        try:
            wait_until(lambda: stored_count(influx) >= 1000 and svc.health()[1]["unacknowledged"] == 0, 30,
                       "the queued messages stored")
            publisher.publish_samples(sent[3000:])  # the publisher goes on: the hole shows
            wait_until(lambda: svc.integrity.gaps_reported >= 1 and stored_count(influx) >= 1001, 20, "a gap")
            # The broker counts the same loss ($SYS, every second here): what its queue of 1,000 could not hold.
            lost = svc.integrity.missing_reported
            wait_until(lambda: svc.integrity.broker_dropped >= lost, 20, "the broker's dropped count ($SYS)")
        finally:
            svc.stop()
    finally:
        publisher.close()
    stored = sorted(cast(int, p["seq"]) for p in stored_points(influx).values())
    assert len(stored) < 3001, "the broker was expected to drop messages"
    gaps = read_dead_letters(gap_file(cfg))
    missing = {s for g in gaps for s in range(g["first_seq"], g["last_seq"] + 1)}
    assert missing == set(range(3001)) - set(stored), "every lost message is in a gap record, nothing else"
    assert all(g["source"] == "test" and g["reason"] == "sequence_gap" for g in gaps)
    assert sum(g["missing"] for g in gaps) == 3001 - len(stored)
    assert _count(svc.metrics.gap_messages, source="test") == 3001 - len(stored)
    assert any("sequence gap" in r.message and "test" in r.message and f"{3001 - len(stored)} messages" in r.message
               for r in caplog.records if r.levelno == logging.WARNING)
    wait_until(lambda: len(watched) >= len(gaps), 5, "the gap records on MQTT")
    assert watched[0]["missing"] == gaps[0]["missing"]
    assert _count(svc.metrics.broker_dropped) == svc.integrity.broker_dropped >= 3001 - len(stored)


def test_restarts_redeliveries_and_reordering_are_not_gaps(
        settings: Settings, start_ingest: Callable[..., IngestService], influx: InfluxClient,
        gas: ResolvedEquipment) -> None:
    svc = start_ingest()
    t = topic(gas.site, gas.area, gas.id, "telemetry", settings.topic_prefix)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def msg(i: int, seq: int) -> tuple[str, bytes]:
        return t, _gas_payload(t0 + timedelta(milliseconds=100 * i), seq, 0.3 + (i % 7) / 100)

    order = [*range(0, 50)]                      # 0..49
    redelivered = [*range(40, 50)]               # a redelivery: same seq, same sample
    reordered = [50, 52, 51, 54, 53, 55]         # overtaken within the window: not a gap
    holed = [*range(60, 300)]                     # 56..59 never came: one gap of 4
    msgs = [msg(i, s) for i, s in enumerate(order)] + [msg(40 + j, s) for j, s in enumerate(redelivered)]
    msgs += [msg(100 + s, s) for s in reordered + holed]
    msgs += [msg(1000 + s, s) for s in range(0, 20)]  # the publisher restarted: seq from 0, new timestamps
    pub = Publisher(settings, f"pub-seq-{settings.topic_prefix}")
    try:
        pub.publish(msgs)
    finally:
        pub.close()
    wait_until(lambda: svc.totals.messages >= len(msgs) and svc.health()[1]["unacknowledged"] == 0, 20, "all in")
    svc.stop()
    gaps = read_dead_letters(gap_file(settings))
    assert [(g["source"], g["first_seq"], g["last_seq"], g["missing"]) for g in gaps] == [("gas-1", 56, 59, 4)]
    m = svc.metrics
    assert _count(m.seq_duplicates) == len(redelivered) and _count(m.seq_restarts) == 1
    assert _count(m.gap_messages) == 4
    assert svc.totals.dead_letters == 0, "a redelivery of the same sample is not a conflict"


# ---------------------------------------------------------------------------------- same timestamp
def test_a_second_sample_at_the_same_timestamp_is_dead_lettered_not_written_over_the_first(
        settings: Settings, start_ingest: Callable[..., IngestService], influx: InfluxClient,
        gas: ResolvedEquipment) -> None:
    svc = start_ingest()
    t = topic(gas.site, gas.area, gas.id, "telemetry", settings.topic_prefix)
    stuck = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    later = stuck + timedelta(seconds=30)
    clock_stuck = [(t, _gas_payload(stuck, i, 0.30 + i / 100)) for i in range(10)]   # a stuck device clock
    redelivery = [clock_stuck[0]]                                                     # same src, seq, content
    mixed = [(t, _gas_payload(later, 10, (0.9, "bad"))), (t, _gas_payload(later, 11, 0.6))]
    pub = Publisher(settings, f"pub-ts-{settings.topic_prefix}")
    try:
        pub.publish(clock_stuck + redelivery + mixed)
    finally:
        pub.close()
    total = len(clock_stuck) + len(redelivery) + len(mixed)
    wait_until(lambda: svc.totals.messages >= total and svc.health()[1]["unacknowledged"] == 0, 20, "all in")
    points = stored_points(influx)
    assert len(points) == 2
    assert svc.totals.points == 2 + 1, "only what was written is counted (the redelivery rewrote its own point)"
    at_stuck = points[(gas.id, int(stuck.timestamp()) * 10**9)]
    assert at_stuck["ch4_pct"] == 0.30 and at_stuck["seq"] == 0, "the first sample kept"
    at_later = points[(gas.id, int(later.timestamp()) * 10**9)]
    assert at_later["ch4_pct"] == 0.9 and at_later["ch4_pct_quality"] == "bad", "never a mix of two samples"
    letters = read_dead_letters(deadletter_file(settings))
    assert [r["reason"] for r in letters] == [SAME_TIMESTAMP] * 10
    assert "seq 11" in letters[-1]["detail"] and gas.id in letters[-1]["detail"]
    assert _count(svc.metrics.dead_letters, reason=SAME_TIMESTAMP) == 10


# ---------------------------------------------------------------------------------------------- growth
def test_dead_letters_of_huge_topics_and_payloads_stay_small_and_the_file_rotates(
        settings: Settings, start_ingest: Callable[..., IngestService], gas: ResolvedEquipment) -> None:
    """32 kB topics pass the gateway ACL: each used to cost 96 kB of dead letter and a topic-cache entry."""
    svc = start_ingest(_with(settings, deadletter_max_mb=1, max_payload_bytes=1024))
    p = settings.topic_prefix
    huge_topic = f"{p}/{gas.site}/{gas.area}/{'x' * 32_000}/telemetry"
    now = datetime.now(UTC).replace(microsecond=0)
    msgs = [(huge_topic.replace("xx", f"{i:04d}", 1), _gas_payload(now, i, 0.3)) for i in range(100)]
    big = encode_telemetry(now, 1, {"ch4_pct": 0.3}).replace(b"}}", b"}" + b" " * 60_000 + b"}")
    msgs += [(topic(gas.site, gas.area, gas.id, "telemetry", p), big)] * 250  # ~10 kB of record each
    pub = Publisher(settings, f"pub-big-{settings.topic_prefix}")
    try:
        pub.publish(msgs, timeout_s=60)
    finally:
        pub.close()
    wait_until(lambda: svc.totals.dead_letters >= len(msgs) and svc.health()[1]["unacknowledged"] == 0, 30, "in")
    dl = deadletter_file(settings)
    files = [dl, *dl.parent.glob(dl.name + ".*")]
    assert len(files) >= 2 and all(f.stat().st_size <= 1_000_000 for f in files), "rotated at 1 MB"
    records = read_dead_letters(dl, rotated=True)
    assert len(records) == len(msgs)
    assert max(len(json.dumps(r)) for r in records) < 16_000, "a record is bounded however large the message"
    cut = [r for r in records if r["reason"] == "payload_too_large"]
    assert cut and all(r["payload_truncated"] and r["payload_bytes"] == len(big) for r in cut)
    assert len(svc._validator._targets) <= 2, "oversized topics are not kept in the topic cache"


def test_dead_letters_over_the_rate_are_counted_not_written(
        settings: Settings, start_ingest: Callable[..., IngestService], gas: ResolvedEquipment) -> None:
    svc = start_ingest(_with(settings, deadletter_rate_per_s=0.01))  # a burst of 10, then one per 100 s
    t = topic(gas.site, gas.area, gas.id, "telemetry", settings.topic_prefix)
    pub = Publisher(settings, f"pub-rate-{settings.topic_prefix}")
    try:
        pub.publish([(t, b"{not json")] * 120)
    finally:
        pub.close()
    wait_until(lambda: svc.totals.messages >= 120 and svc.health()[1]["unacknowledged"] == 0, 20, "all in")
    written = len(read_dead_letters(deadletter_file(settings)))
    suppressed = _count(svc.metrics.dead_letters_suppressed, reason="invalid_payload")
    assert 10 <= written < 120 and written + suppressed == 120


# ------------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_for_dead_letters_holds_the_messages_and_ends_nothing(
        settings: Settings, start_ingest: Callable[..., IngestService], influx: InfluxClient, catalog: Catalog,
        gas: ResolvedEquipment, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    dl = small_disk / "deadletter.jsonl"
    svc = start_ingest(_with(settings, deadletter_file=dl))
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        try:
            while fh.write(b"\0" * 4096):
                pass
        except OSError:
            pass  # the disk is full
    caplog.set_level(logging.ERROR, logger="ingest.service")
    t = topic(gas.site, gas.area, gas.id, "telemetry", settings.topic_prefix)
    good = samples(catalog, 20, equipment=2)
    pub = Publisher(settings, f"pub-full-{settings.topic_prefix}")
    try:
        pub.publish([(t, b"{not json")])
        pub.publish_samples(good)
        wait_until(lambda: _count(svc.metrics.dead_letter_failures) >= 1, 20, "the failed dead letter")
        ok, details = svc.health()
        assert not ok and any("cannot write dead letters" in p for p in details["problems"])
        assert details["unacknowledged"] > 0, "a message neither stored nor dead-lettered is not acknowledged"
        assert any("cannot write dead letters" in r.message for r in caplog.records)
        filler.unlink()  # room again: everything held goes through
        wait_until(lambda: svc.health()[0] and stored_count(influx) >= len(good), 20, "recovered")
    finally:
        pub.close()
    assert [r["reason"] for r in read_dead_letters(dl)] == ["invalid_payload"]
    assert svc._writer_thread.is_alive()
