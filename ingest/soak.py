"""Soak: ingest at half its maximum rate for a long time; do memory and latency stay flat?

``smartmine bench soak --minutes 30`` starts its own Mosquitto and influxd, runs ``smartmine ingest`` as a
child process, measures the end-to-end maximum (a short burst as fast as the publisher can go), then
publishes at half that rate for the whole run. Every ``--sample-every-s`` it records ingest's resident
memory, the publish-to-queryable latency of a probe sample, ingest's lag and unacknowledged messages,
and at the end fits a line through each series (over the run after the warm-up) and reports the slope.
Flat means: memory grows by less than max(5 MB, 5 %) over the run (fitted slope times duration), and the
median latency of the last third of the samples is at most 1.5 times that of the first third plus 50 ms
(single probes are noisy: one slow write moves a fitted slope, not a median). Finally it checks that
every published sample was stored (``lost``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ingest.metrics import is_healthy
from smartmine.catalog import ResolvedEquipment, load_catalog
from smartmine.config import parse_mqtt_url
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.services import Influxd, Mosquitto, free_port, terminate, wait_for
from smartmine.wire import encode_telemetry, topic

PREFIX = "soak"
DB = "soak"
PROBE_EQUIPMENT = "gas_face_1203"
# Messages published but not yet acknowledged by the broker, at most (well inside paho's 65,535 message ids).
MAX_OUTSTANDING = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    parser.add_argument("--rate", type=float, default=None,
                        help="messages/s to publish (default: half the maximum measured at the start)")
    parser.add_argument("--calibrate-s", type=float, default=15.0, help="length of the maximum-rate burst")
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="sampling interval (default 10)")
    parser.add_argument("--equipment", type=int, default=40, help="publishers (pieces of equipment)")
    parser.add_argument("--out", type=Path, help="write every sample as JSON Lines to this file")


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    latency_s: float | None
    lag_s: float
    unacked: float
    published: int


@dataclass
class Load:
    """A publisher thread: samples of ``equipment`` round robin at ``rate`` messages/s (0: as fast as it can)."""

    url: Any
    equipment: list[ResolvedEquipment]
    rate: float
    start_ts: datetime
    published: int = 0
    acked: int = 0
    refused: int = 0
    seqs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = make_client(self.url, f"soak-load-{os.getpid()}")
        self.client.on_publish = self._on_publish
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(self.url.host, self.url.port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._topics = {eq.id: topic(eq.site, eq.area, eq.id, "telemetry", PREFIX) for eq in self.equipment}
        self._readings = {eq.id: {sid: round(sum(s.spec.normal) / 2, 3) for sid, s in eq.sensors.items()}
                          for eq in self.equipment}
        self.seqs = {eq.id: self.seqs.get(eq.id, 0) for eq in self.equipment}

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.acked += 1  # the network thread only

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        batch = 100
        interval = batch / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        last = None
        while not self._stop.is_set():
            # Back-pressure: paho numbers QoS 1 messages with 16-bit ids, so with 65,535 unacknowledged a new
            # message finds its id taken and is refused (MQTT_ERR_QUEUE_SIZE), never sent. When the broker (or
            # this process, starved of CPU) falls behind, publish slower instead: the achieved rate is reported
            # beside the target.
            while self.published - self.acked > MAX_OUTSTANDING and not self._stop.is_set():
                time.sleep(0.005)
                next_at = time.monotonic()
            for _ in range(batch):
                eq = self.equipment[(self.published + self.refused) % len(self.equipment)]
                seq = self.seqs[eq.id]
                # 10 ms apart per publisher: distinct points at any rate this machine reaches.
                ts = self.start_ts + timedelta(milliseconds=10 * seq)
                info = self.client.publish(self._topics[eq.id], encode_telemetry(ts, seq, self._readings[eq.id]),
                                           qos=1)
                if info.rc:  # refused by paho (no connection, no free message id): not sent, not counted
                    self.refused += 1
                    continue
                last = info
                self.seqs[eq.id] = seq + 1
                self.published += 1
            if interval:
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            elif last is not None:
                last.wait_for_publish(10)  # as fast as the broker acknowledges

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop publishing; wait until the broker has acknowledged everything published, then disconnect."""
        self._stop.set()
        self._thread.join(10)
        deadline = time.monotonic() + timeout_s
        while self.acked < self.published and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def _stored(influx: InfluxClient) -> int:
    total = 0
    for result in influx.query("SELECT count(seq) FROM /.*/"):
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


class Probe:
    """One sample on its own equipment; the time until InfluxDB returns it is the end-to-end latency."""

    def __init__(self, url: Any, eq: ResolvedEquipment, influx: InfluxClient) -> None:
        self.eq, self.influx = eq, influx
        self.client = make_client(url, f"soak-probe-{os.getpid()}")
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        self.seq = 0
        self.t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        self.topic = topic(eq.site, eq.area, eq.id, "telemetry", PREFIX)

    def measure(self, timeout_s: float = 30.0) -> float | None:
        self.seq += 1
        ts = self.t0 + timedelta(milliseconds=10 * self.seq)
        started = time.monotonic()
        self.client.publish(self.topic, encode_telemetry(ts, self.seq, {"ch4_pct": 0.3}), qos=1)
        q = f"SELECT seq FROM gas_monitor WHERE equipment = '{self.eq.id}' AND seq = {self.seq}"
        while time.monotonic() - started < timeout_s:
            if any(r.get("series") for r in self.influx.query(q)):
                return time.monotonic() - started
            time.sleep(0.01)
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _slope_per_run(ts: list[float], values: list[float]) -> float:
    """The fitted change of ``values`` over the span of ``ts`` (least squares)."""
    if len(ts) < 3:
        return float("nan")
    slope = float(np.polyfit(np.asarray(ts), np.asarray(values), 1)[0])
    return slope * (ts[-1] - ts[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog = load_catalog(None)
    workdir = Path(tempfile.mkdtemp(prefix="smartmine-soak-"))
    broker = Mosquitto(workdir / "mosquitto", persistence=False)
    server = Influxd(workdir / "influxd")
    broker.start()
    server.start()
    influx = InfluxClient(server.url, DB)
    influx.create_database()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update({"SMARTMINE_MQTT_URL": broker.url, "SMARTMINE_INFLUX_URL": server.url, "SMARTMINE_INFLUX_DB": DB,
                "SMARTMINE_TOPIC_PREFIX": PREFIX, "SMARTMINE_DATA_DIR": str(workdir / "data"),
                "SMARTMINE_INGEST__METRICS_PORT": str(port), "SMARTMINE_INGEST__CLIENT_ID": "soak-ingest"})
    log = (workdir / "ingest.log").open("ab")
    ingest = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "ingest"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = parse_mqtt_url(broker.url)
    probe_eq = next(eq for eq in catalog.all_equipment() if eq.id == PROBE_EQUIPMENT)
    equipment = [eq for eq in catalog.all_equipment() if eq.id != PROBE_EQUIPMENT][:args.equipment]
    start_ts = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    samples: list[Sample] = []
    out = args.out.open("w") if args.out else None
    try:
        wait_for(lambda: is_healthy(port), 30, "ingest")
        # 1. The maximum: publish as fast as the broker takes it, measure what ingest stores per second.
        rate = args.rate
        calibration: dict[str, float] = {}
        seqs: dict[str, int] = {}
        if rate is None:
            burst = Load(url, equipment, 0.0, start_ts)
            t0 = time.monotonic()
            burst.start()
            time.sleep(args.calibrate_s)
            burst.stop()
            seqs = burst.seqs
            wait_for(lambda: _stored(influx) >= burst.published, 120, "the calibration burst stored")
            elapsed = time.monotonic() - t0
            max_rate = burst.published / elapsed
            rate = max_rate / 2
            calibration = {"max_messages_per_s": round(max_rate), "calibration_messages": burst.published}
            print(f"maximum end to end: {max_rate:,.0f} messages/s; soaking at {rate:,.0f}/s", flush=True)
        already = _stored(influx)
        # 2. The soak.
        load = Load(url, equipment, rate, start_ts, seqs=seqs)
        probe = Probe(url, probe_eq, influx)
        began = time.monotonic()
        load.start()
        end = began + args.minutes * 60
        next_sample = began
        while time.monotonic() < end:
            next_sample += args.sample_every_s
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            s = Sample(round(time.monotonic() - began, 1), round(_rss_mb(ingest.pid), 1), probe.measure(),
                       _metric(port, "smartmine_ingest_lag_seconds"),
                       _metric(port, "smartmine_ingest_unacknowledged_messages"), load.published)
            samples.append(s)
            if out:
                out.write(json.dumps(s.__dict__) + "\n")
                out.flush()
            print(f"{s.t_s:7.0f} s  rss {s.rss_mb:6.1f} MB  latency "
                  f"{(s.latency_s or float('nan')) * 1000:7.1f} ms  unacked {s.unacked:6.0f}  "
                  f"published {s.published:,}  broker backlog {load.published - load.acked:,}", flush=True)
        load.stop()
        soak_s = time.monotonic() - began
        expected = already + load.published + probe.seq
        deadline = time.monotonic() + 120
        while _stored(influx) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        stored = _stored(influx)
        probe.close()
    finally:
        terminate(ingest, 60)
        log.close()
        if out:
            out.close()
        broker.stop()
        server.stop()

    steady = [s for s in samples if s.t_s >= min(60.0, soak_s / 5)] or samples  # skip the warm-up
    t = [s.t_s for s in steady]
    rss = [s.rss_mb for s in steady]
    lat = [s.latency_s for s in steady if s.latency_s is not None]
    lat_t = [s.t_s for s in steady if s.latency_s is not None]
    rss_growth = _slope_per_run(t, rss)
    lat_growth = _slope_per_run(lat_t, lat)
    third = max(1, len(lat) // 3)
    lat_first, lat_last = (float(np.median(lat[:third])), float(np.median(lat[-third:]))) if lat else (0.0, 0.0)
    mean_rss = float(np.mean(rss)) if rss else float("nan")
    return {
        "minutes": round(soak_s / 60, 2),
        **calibration,
        "rate_messages_per_s": round(rate),
        "achieved_messages_per_s": round(load.published / soak_s),
        "readings_per_message": round(sum(len(eq.sensors) for eq in equipment) / len(equipment), 1),
        "samples": len(samples),
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_growth_over_run_mb": round(rss_growth, 1),
        "memory_flat": bool(rss_growth < max(5.0, 0.05 * mean_rss)),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4) if lat else None,
        "latency_p99_s": round(float(np.percentile(lat, 99)), 4) if lat else None,
        "latency_max_s": round(max(lat), 4) if lat else None,
        "latency_growth_over_run_s": round(lat_growth, 4),
        "latency_p50_first_third_s": round(lat_first, 4),
        "latency_p50_last_third_s": round(lat_last, 4),
        "latency_flat": bool(lat_last <= 1.5 * lat_first + 0.05),
        "probe_timeouts": sum(1 for s in samples if s.latency_s is None),
        "published": load.published + probe.seq,
        "publisher_refused": load.refused,
        "lost": expected - stored,
    }
