"""Ingest benchmark: raw InfluxDB ceiling vs. publisher → Mosquitto → ingest → queryable, latency and loss.

Runs its own Mosquitto and influxd (``smartmine.services``) in a temporary folder, so the figures do not
depend on what else runs, and:

1. **raw ceiling**: the same points as line protocol, gzip'd (as ingest does) and posted straight to
   ``/write`` by two threads (bodies encoded before the clock starts): what InfluxDB itself takes here;
2. **end to end**: a publisher process sends every message (QoS 1, every PUBACK counted) as fast as the
   broker takes it, ``--workers`` ingest processes (``python -m smartmine.cli ingest``, one
   shared-subscription group) write them; the rate is readings / (last point queryable − first publish),
   polled every 50 ms on the newest points and confirmed by counting every point;
3. **latency**: the publisher paces at half that rate for ``--latency-seconds``; a poller counts each
   equipment's stored points every 50 ms, so a message's latency is the first poll that sees it minus its
   publish time (50 ms resolution);
4. **loss**: readings published minus readings stored, after both phases.

Beside the rates, the CPU time each process spent per reading (from /proc, so independent of what else
the machine ran): influxd in the ceiling and in the end-to-end phase, and ingest, Mosquitto, the publisher
and the bench's own poller end to end. On a shared machine those are the steady figures.

Message shape: by default each message is a whole sample of one stave-thermocouple array of a blast furnace
(``--readings-per-message`` sensors, 100 by default), from a catalog written for the bench; the built-in
catalog's equipment carries 4 to 10 readings per sample (``--readings-per-message 8`` approximates it).
"""

from __future__ import annotations

import argparse
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
PUBLISHER_WINDOW = 10_000  # QoS 1 messages in flight from the publisher: the broker's max_inflight_messages below


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=60_000, help="messages in the throughput phase")
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
def raw_ceiling(influx_url: str, shape: Shape, count: int, max_bytes: int, t0: datetime,
                meter: _CpuMeter | None = None) -> dict[str, float]:
    from smartmine.influx import InfluxClient, gzip_body
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
            bodies.append(gzip_body("\n".join(chunk).encode()))
            chunk, size = [], 0
    if chunk:
        bodies.append(gzip_body("\n".join(chunk).encode()))
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

    if meter:
        meter.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if meter:
        meter.stop()
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
    """Child process: encode every message, wait for "go", publish (paced when ``rate`` > 0), report times.

    A load generator on the same cores as the system it measures: every message is published at QoS 1 through
    the broker and every PUBACK counted, through :class:`LeanPublisher` (paho's connection, ~20 µs of CPU per
    message instead of paho's ~70 µs; docs/benchmarks.md, *ingest*).
    """
    from ingest.mqtt_client import LeanPublisher
    from smartmine.config import parse_mqtt_url
    from smartmine.mqtt import make_client
    from smartmine.wire import encode_telemetry, topic

    t0 = datetime.fromisoformat(t0_iso)
    topics = [topic(BENCH_SITE, BENCH_AREA, e, "telemetry", PREFIX).encode() for e in shape.equipment_ids()]
    msgs = [(topics[e], encode_telemetry(ts, k, _sample_values(shape, k), src="bench"))
            for e, k, ts in _messages(shape, count, t0)]
    url = parse_mqtt_url(mqtt_url)
    client = make_client(url, f"bench-publisher-{os.getpid()}", client_class=LeanPublisher)
    assert isinstance(client, LeanPublisher)
    client.connect(url.host, url.port)
    # One thread: publish_qos1() writes to the socket itself and loop() reads the PUBACKs in between; a network
    # thread beside it would cost a wake-up per message.
    conn.send("ready")
    conn.recv()
    sent_at = [0.0] * count
    cpu0 = time.process_time()
    start = time.time()
    for i, (t, payload) in enumerate(msgs):
        if rate > 0:
            pause = start + i / rate - time.time()
            if pause > 0:
                client.loop(min(pause, 0.01))
                pause = start + i / rate - time.time()
                if pause > 0:
                    time.sleep(pause)
        while client.in_flight >= PUBLISHER_WINDOW:
            client.loop(0.01)
        sent_at[i] = time.time()
        client.publish_qos1(t, payload)
        if i % 64 == 63:
            client.loop(0)
    end = time.time()
    deadline = time.monotonic() + 300
    while client.acked < count and time.monotonic() < deadline:
        client.loop(0.05)
    acked_at = time.time()
    conn.send({"start": start, "end": end, "acked": acked_at, "pubacks": client.acked,
               "sent_at": sent_at if rate > 0 else [], "bytes": sum(len(p) for _, p in msgs),
               "cpu_s": time.process_time() - cpu0})
    client.disconnect()


class _Publisher:
    def __init__(self, mqtt_url: str, shape: Shape, count: int, t0: datetime, rate: float = 0.0) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.count = count
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
        if out["pubacks"] != self.count:
            raise RuntimeError(f"the broker acknowledged {out['pubacks']} of {self.count} messages published")
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


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc; NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class _CpuMeter:
    """CPU seconds each named process spends between ``start()`` and ``stop()``: what the phase cost, wherever
    it ran, independent of how long the process waited for a core (other load on the machine)."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {name: sum(_cpu_s(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.used = {name: end[name] - self._start[name] for name in end}
        return self.used


def _wait_stored(client: Any, expected: int, newest: tuple[int, int], stall_s: float = 60.0) -> float:
    """Poll until ``expected`` points are stored; returns the time.time() it was seen. Gives up on a stall.

    Counting every point every 50 ms would cost influxd 5-30 ms of CPU a query, growing with the data: CPU that
    the ceiling phase does not pay. So the poll asks only for the newest messages (``newest``: their earliest
    timestamp in ns and how many there are; one small time range), and once those are all queryable, counts
    everything to confirm; while that count falls short (an earlier batch still being written), it keeps
    counting everything. The time returned is that of the count that saw all ``expected`` points.
    """
    since_ns, newest_count = newest
    progress, last_change = -1, time.monotonic()
    newest_stored = False
    while True:
        if not newest_stored:
            n = _count(client, since_ns)
            newest_stored = n >= newest_count
        if newest_stored:
            total = _count(client, None)
            if total >= expected:
                return time.time()
            n = newest_count + total
        if n != progress:
            progress, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            log.error("stored points stalled short of %d", expected)
            return float("nan")
        time.sleep(POLL_S)


def _pid(service: Any) -> int:
    assert service.process is not None, f"{service.name} is not running"
    return int(service.process.pid)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from smartmine.config import IngestSettings
    from smartmine.influx import InfluxClient
    from smartmine.schema import ts_ns
    from smartmine.services import Influxd, Mosquitto, free_port, wait_for

    shape = Shape(args.readings_per_message, args.equipment)
    tmp = Path(tempfile.mkdtemp(prefix="smartmine-bench-ingest-"))
    # Broker persistence off: Mosquitto snapshots its whole store every autosave_interval, which measures
    # the broker's disk, not ingest. In-flight window as shipped (deploy/mosquitto/mosquitto.conf).
    broker = Mosquitto(tmp / "mosquitto", persistence=False, max_inflight_messages=PUBLISHER_WINDOW,
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
        raw_count = args.raw_messages or args.messages
        raw_meter = _CpuMeter({"influxd": [_pid(influxd)]})
        out.update(raw_ceiling(influxd.url, shape, raw_count, max_bytes, now - timedelta(hours=2), raw_meter))
        out["raw_influxd_cpu_us_per_reading"] = raw_meter.used["influxd"] * 1e6 / (raw_count * shape.readings)

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
        t_e2e = now - timedelta(hours=1)
        pub = _Publisher(broker.url, shape, args.messages, t_e2e)
        last_k = (args.messages - 1) // shape.equipment  # the newest messages: the last round over the equipment
        newest = (ts_ns(t_e2e + timedelta(milliseconds=10 * last_k)), args.messages - last_k * shape.equipment)
        meter = _CpuMeter({"influxd": [_pid(influxd)], "mosquitto": [_pid(broker)],
                           "ingest": [w.pid for w in workers], "bench_poller": [os.getpid()]})
        meter.start()
        pub.go()
        done_at = _wait_stored(influx, args.messages, newest)
        meter.stop()
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
        # CPU per reading of each process in the end-to-end phase (the publisher's own, first publish to last
        # PUBACK): what the rate costs the machine, whatever else was running.
        e2e_readings = args.messages * shape.readings
        for name, used in {**meter.used, "publisher": res["cpu_s"]}.items():
            out[f"{name}_cpu_us_per_reading"] = used * 1e6 / e2e_readings

        lat_count = max(shape.equipment, int(rate / 2 / shape.readings * args.latency_seconds))
        print(f"latency at half rate: {lat_count} messages over {args.latency_seconds:g} s ...", file=sys.stderr)
        t_lat = now - timedelta(minutes=30)
        pub = _Publisher(broker.url, shape, lat_count, t_lat, rate=rate / 2 / shape.readings)
        seen: dict[tuple[int, int], float] = {}
        equipment = shape.equipment_ids()
        stored = [0] * shape.equipment  # per equipment: how many of its messages are queryable
        pub.go()
        deadline = time.monotonic() + args.latency_seconds + 60
        while len(seen) < lat_count and time.monotonic() < deadline:
            # Only the messages newer than those every equipment has stored: a small query however long it runs.
            floor = min(stored)
            counts = _count(influx, ts_ns(t_lat + timedelta(milliseconds=10 * floor)), by_equipment=True)
            t = time.time()
            for e, eid in enumerate(equipment):
                n = floor + counts.get(eid, 0)
                for k in range(stored[e], n):
                    seen[(e, k)] = t
                stored[e] = max(stored[e], n)
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
