"""Ingest benchmark: raw InfluxDB ceiling vs. publisher → Mosquitto → ingest → queryable, latency and loss.

Runs its own Mosquitto and influxd (``smartmine.services``) in a temporary folder, so the figures do not
depend on what else runs, and:

1. **raw ceiling**: the same points as line protocol, gzip'd and posted straight to ``/write`` by two
   threads (bodies encoded before the clock starts): what InfluxDB itself takes on this machine;
2. **end to end**: a publisher process sends every message (QoS 1) as fast as the broker takes it,
   ``--workers`` ingest processes (``python -m smartmine.cli ingest``, one shared-subscription group)
   write them; the rate is readings / (last point queryable − first publish);
3. **latency**: the publisher paces at half that rate for ``--latency-seconds``; a poller counts each
   equipment's stored points every 50 ms, so a message's latency is the first poll that sees it minus its
   publish time (50 ms resolution);
4. **loss**: readings published minus readings stored, after both phases.

Message shape: by default each message is a whole sample of one stave-thermocouple array of a blast furnace
(``--readings-per-message`` sensors, 100 by default), from a catalog written for the bench; the built-in
catalog's equipment carries 4 to 10 readings per sample (``--readings-per-message 8`` approximates it).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

from ingest.metrics import is_healthy

log = logging.getLogger(__name__)

BENCH_SITE = "bench_works"
BENCH_AREA = "ironmaking"
BENCH_TYPE = "stave_thermocouple_array"
PREFIX = "bench"
POLL_S = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=30_000, help="messages in the throughput phase")
    p.add_argument("--readings-per-message", type=int, default=100, help="sensors per equipment sample")
    p.add_argument("--equipment", type=int, default=50, help="pieces of equipment publishing")
    p.add_argument("--workers", type=int, default=1, help="ingest processes on one shared subscription")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the half-rate phase")
    p.add_argument("--raw-messages", type=int, default=0, help="points in the raw ceiling (default: --messages)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data) and print it")


@dataclass(frozen=True)
class Shape:
    readings: int
    equipment: int

    def sensors(self) -> list[str]:
        return [f"stave_temp_{i:03d}_c" for i in range(1, self.readings + 1)]

    def equipment_ids(self) -> list[str]:
        return [f"stave_array_{i:03d}" for i in range(1, self.equipment + 1)]


def write_catalog(folder: Path, shape: Shape) -> Path:
    """The built-in units and types plus one equipment type as wide as the shape, on one bench site."""
    from smartmine.catalog import BUILTIN_DIR

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUILTIN_DIR / "units.yaml", folder / "units.yaml")
    types = yaml.safe_load((BUILTIN_DIR / "equipment_types.yaml").read_text(encoding="utf-8"))
    types["equipment_types"][BENCH_TYPE] = {
        "name": {"en": "Stave thermocouple array", "zh": "冷却壁热电偶阵列"},
        "site_kinds": ["steel_plant"],
        "sensors": {s: {"name": {"en": f"Stave thermocouple {s[11:14]}", "zh": f"冷却壁温度{s[11:14]}"},
                        "unit": "°C", "sample_period_s": 1, "normal": [30.0, 70.0], "physical": [0.0, 1000.0]}
                    for s in shape.sensors()},
    }
    (folder / "equipment_types.yaml").write_text(yaml.safe_dump(types, allow_unicode=True), encoding="utf-8")
    site = {"site": {"id": BENCH_SITE, "kind": "steel_plant", "name": {"en": "Bench works", "zh": "基准钢厂"},
                     "areas": [{"id": BENCH_AREA, "name": {"en": "Ironmaking", "zh": "炼铁"},
                                "lines": [{"id": "bf_1", "name": {"en": "Blast furnace 1", "zh": "1号高炉"},
                                           "equipment": [{"id": e, "type": BENCH_TYPE,
                                                          "name": {"en": e, "zh": e}}
                                                         for e in shape.equipment_ids()]}]}]}}
    (folder / "sites").mkdir(exist_ok=True)
    (folder / "sites" / f"{BENCH_SITE}.yaml").write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    return folder


def _sample_values(shape: Shape, k: int) -> dict[str, float]:
    return {s: 30.0 + ((k * 7 + i * 13) % 400) / 10 for i, s in enumerate(shape.sensors())}


def _messages(shape: Shape, count: int, t0: datetime) -> Iterator[tuple[int, int, datetime]]:
    """(equipment index, per-equipment index, ts) round-robin over the equipment, 10 ms apart per equipment."""
    for n in range(count):
        e, k = n % shape.equipment, n // shape.equipment
        yield e, k, t0 + timedelta(milliseconds=10 * k)


# ---------------------------------------------------------------------------------------------- raw ceiling
def raw_ceiling(influx_url: str, shape: Shape, count: int, max_bytes: int, t0: datetime) -> dict[str, float]:
    from smartmine.influx import InfluxClient
    from smartmine.schema import series_prefix, telemetry_line

    prefixes = [series_prefix(BENCH_TYPE, BENCH_SITE, BENCH_AREA, e) for e in shape.equipment_ids()]
    bodies: list[bytes] = []
    chunk: list[str] = []
    size = 0
    for e, k, ts in _messages(shape, count, t0):
        values = {s: (v, "good") for s, v in _sample_values(shape, k).items()}
        line = telemetry_line(prefixes[e], ts, k, values)
        chunk.append(line)
        size += len(line) + 1
        if size >= max_bytes:
            bodies.append(gzip.compress("\n".join(chunk).encode(), compresslevel=1))
            chunk, size = [], 0
    if chunk:
        bodies.append(gzip.compress("\n".join(chunk).encode(), compresslevel=1))
    setup = InfluxClient(influx_url, "bench_raw")
    setup.create_database()
    queue = list(reversed(bodies))
    lock = threading.Lock()

    def post() -> None:
        client = InfluxClient(influx_url, "bench_raw", timeout_s=60, gzip_writes=False)
        client._headers["Content-Encoding"] = "gzip"  # the bodies are gzip'd already, outside the clock
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            client.write_lines(body)
        client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stored = _count(setup, None)
    setup.close()
    return {"raw_ceiling_readings_per_s": count * shape.readings / elapsed, "raw_points": float(stored),
            "raw_seconds": elapsed}


def _count(client: Any, since_ns: int | None, by_equipment: bool = False) -> Any:
    where = f" WHERE time >= {since_ns}" if since_ns is not None else ""
    group = " GROUP BY equipment" if by_equipment else ""
    out: dict[str, int] = {}
    total = 0
    for result in client.query(f"SELECT count(seq) FROM {BENCH_TYPE}{where}{group}"):
        for series in result.get("series", []):
            n = int(series["values"][0][1])
            total += n
            if by_equipment:
                out[series["tags"]["equipment"]] = n
    return out if by_equipment else total


# ---------------------------------------------------------------------------------------------- publisher
def _publisher(conn: Connection, mqtt_url: str, shape: Shape, count: int, t0_iso: str, rate: float) -> None:
    """Child process: encode every message, wait for "go", publish (paced when ``rate`` > 0), report times."""
    from smartmine.config import parse_mqtt_url
    from smartmine.mqtt import make_client
    from smartmine.wire import encode_telemetry, topic

    t0 = datetime.fromisoformat(t0_iso)
    topics = [topic(BENCH_SITE, BENCH_AREA, e, "telemetry", PREFIX) for e in shape.equipment_ids()]
    msgs = [(topics[e], encode_telemetry(ts, k, _sample_values(shape, k), src="bench"))
            for e, k, ts in _messages(shape, count, t0)]
    url = parse_mqtt_url(mqtt_url)
    client = make_client(url, f"bench-publisher-{os.getpid()}")
    client.max_inflight_messages_set(10_000)
    client.max_queued_messages_set(0)
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
    client.on_publish = on_publish
    client.connect(url.host, url.port)
    # One thread: publish() writes to the socket itself and loop() reads the PUBACKs in between; a network
    # thread beside it would cost a wake-up per message (paho's socket pair) and slow the publisher down.
    conn.send("ready")
    conn.recv()
    sent_at = [0.0] * count
    start = time.time()
    for i, (t, payload) in enumerate(msgs):
        if rate > 0:
            pause = start + i / rate - time.time()
            if pause > 0:
                client.loop(min(pause, 0.01))
                pause = start + i / rate - time.time()
                if pause > 0:
                    time.sleep(pause)
        sent_at[i] = time.time()
        client.publish(t, payload, qos=1)
        if i % 64 == 63:
            client.loop(0)
    end = time.time()
    deadline = time.monotonic() + 300
    while acked[0] < count and time.monotonic() < deadline:
        client.loop(0.05)
    conn.send({"start": start, "end": end, "acked": time.time(), "sent_at": sent_at if rate > 0 else [],
               "bytes": sum(len(p) for _, p in msgs)})
    client.disconnect()


class _Publisher:
    def __init__(self, mqtt_url: str, shape: Shape, count: int, t0: datetime, rate: float = 0.0) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_publisher, args=(child, mqtt_url, shape, count, t0.isoformat(), rate),
                                daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("bench publisher did not start")

    def go(self) -> None:
        self.conn.send("go")

    def result(self, timeout_s: float) -> dict[str, Any]:
        if not self.conn.poll(timeout_s):
            raise RuntimeError("bench publisher did not finish")
        out: dict[str, Any] = self.conn.recv()
        self.proc.join(10)
        return out


# ---------------------------------------------------------------------------------------------- workers
def _rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _wait_stored(client: Any, expected: int, since_ns: int | None, stall_s: float = 60.0) -> float:
    """Poll until ``expected`` points are stored; returns the time.time() it was seen. Gives up on a stall."""
    last, last_change = -1, time.monotonic()
    while True:
        n = _count(client, since_ns)
        if n >= expected:
            return time.time()
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            log.error("stored points stalled at %d of %d", n, expected)
            return float("nan")
        time.sleep(POLL_S)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from smartmine.config import IngestSettings
    from smartmine.influx import InfluxClient
    from smartmine.services import Influxd, Mosquitto, free_port, wait_for

    shape = Shape(args.readings_per_message, args.equipment)
    tmp = Path(tempfile.mkdtemp(prefix="smartmine-bench-ingest-"))
    # Broker persistence off: Mosquitto snapshots its whole store every autosave_interval, which measures
    # the broker's disk, not ingest. In-flight window as shipped (deploy/mosquitto/mosquitto.conf).
    broker = Mosquitto(tmp / "mosquitto", persistence=False, max_inflight_messages=10_000,
                       max_queued_messages=10_000_000)
    influxd = Influxd(tmp / "influxd")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        influxd.start()
        now = datetime.now(UTC).replace(microsecond=0)
        catalog_dir = write_catalog(tmp / "catalog", shape)
        max_bytes = IngestSettings().batch_max_bytes
        print(f"raw ceiling: {args.raw_messages or args.messages} points of {shape.readings} readings ...",
              file=sys.stderr)
        out: dict[str, Any] = {"message_shape": f"{shape.readings} readings per message (one equipment sample), "
                                                f"{shape.equipment} equipment", "workers": args.workers}
        out.update(raw_ceiling(influxd.url, shape, args.raw_messages or args.messages, max_bytes,
                               now - timedelta(hours=2)))

        env = {**os.environ, "SMARTMINE_MQTT_URL": broker.url, "SMARTMINE_INFLUX_URL": influxd.url,
               "SMARTMINE_INFLUX_DB": "bench", "SMARTMINE_TOPIC_PREFIX": PREFIX,
               "SMARTMINE_CATALOG_DIR": str(catalog_dir), "SMARTMINE_DATA_DIR": str(tmp / "data")}
        env.pop("SMARTMINE_CONFIG", None)
        ports = [free_port() for _ in range(args.workers)]
        for i, port in enumerate(ports):
            logf = (tmp / f"ingest-{i}.log").open("wb")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "smartmine.cli", "ingest", "--client-id", f"bench-ingest-{i}",
                 "--metrics-port", str(port)], env=env, stdout=logf, stderr=subprocess.STDOUT))
        for port in ports:
            wait_for(lambda p=port: is_healthy(p), 60, f"ingest worker on :{port}")
        influx = InfluxClient(influxd.url, "bench")

        print(f"end to end: {args.messages} messages, {args.workers} ingest worker(s) ...", file=sys.stderr)
        pub = _Publisher(broker.url, shape, args.messages, now - timedelta(hours=1))
        pub.go()
        done_at = _wait_stored(influx, args.messages, None)
        res = pub.result(120)
        elapsed = done_at - res["start"]
        rate = args.messages * shape.readings / elapsed
        out.update({
            "readings_per_s": rate,
            "messages_per_s": args.messages / elapsed,
            "publisher_readings_per_s": args.messages * shape.readings / max(1e-9, res["acked"] - res["start"]),
            "end_to_end_seconds": elapsed,
            "mean_message_bytes": res["bytes"] / args.messages,
        })
        out["ratio"] = rate / out["raw_ceiling_readings_per_s"]

        lat_count = max(shape.equipment, int(rate / 2 / shape.readings * args.latency_seconds))
        print(f"latency at half rate: {lat_count} messages over {args.latency_seconds:g} s ...", file=sys.stderr)
        t_lat = now - timedelta(minutes=30)
        since_ns = int(t_lat.timestamp()) * 1_000_000_000
        pub = _Publisher(broker.url, shape, lat_count, t_lat, rate=rate / 2 / shape.readings)
        seen: dict[tuple[int, int], float] = {}
        equipment = shape.equipment_ids()
        pub.go()
        deadline = time.monotonic() + args.latency_seconds + 60
        while len(seen) < lat_count and time.monotonic() < deadline:
            counts = _count(influx, since_ns, by_equipment=True)
            t = time.time()
            for e, eid in enumerate(equipment):
                for k in range(counts.get(eid, 0)):
                    seen.setdefault((e, k), t)
            time.sleep(POLL_S)
        res = pub.result(60)
        lat = sorted(seen[(e, k)] - res["sent_at"][n]
                     for n, (e, k, _) in enumerate(_messages(shape, lat_count, t_lat)) if (e, k) in seen)
        out["latency_rate_readings_per_s"] = rate / 2
        out["latency_p50_s"] = lat[len(lat) // 2] if lat else float("nan")
        out["latency_p99_s"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        out["latency_max_s"] = lat[-1] if lat else float("nan")

        time.sleep(1.0)
        stored = _count(influx, None)
        out["lost"] = (args.messages + lat_count - stored) * shape.readings
        out["ingest_rss_mb"] = max(_rss_peak_mb(w.pid) for w in workers)
        out["ingest_rss_mb_total"] = sum(_rss_peak_mb(w.pid) for w in workers)
        dead = tmp / "data" / "deadletter.jsonl"
        out["dead_letters"] = len(dead.read_text().splitlines()) if dead.exists() else 0
        influx.close()
        return out
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        influxd.stop()
        broker.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
