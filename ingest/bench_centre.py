"""Centre benchmark: N simulated sites (catalog replicas) at their real rates into one centre broker and its ingest.

For each worker count (``--workers 1,2``): a Mosquitto (persistence on, as the centre runs it) and an influxd in a
temporary folder, that many ingest processes on one shared subscription (``--group centre``), and the simulator
publishing every replica site at 1x speed, QoS 1, real message shapes, for ``--seconds``. Reported: messages/s and
readings/s per worker (from each worker's own counters) and through the broker, and the CPU per message of every
process from /proc (ingest/bench.py's meter), so the figures hold whatever else the machine runs. The sizing model
for larger groups is in docs/multisite.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from ingest.bench import _CpuMeter, _pid
from ingest.metrics import is_healthy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sites", type=int, default=20, help="simulated sites (replicas of the catalog's sites)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the sites publish")
    p.add_argument("--workers", default="1,2", help="ingest worker counts to run, comma-separated")


def replica_catalog(folder: Path, sites: int) -> list[str]:
    """The built-in catalog with ``sites`` sites: copies of the shipped ones under new ids."""
    from smartmine.catalog import BUILTIN_DIR

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("units.yaml", "equipment_types.yaml"):
        shutil.copy(BUILTIN_DIR / name, folder / name)
    (folder / "sites").mkdir(exist_ok=True)
    shipped = sorted((BUILTIN_DIR / "sites").glob("*.yaml"))
    ids = []
    for k in range(sites):
        data = yaml.safe_load(shipped[k % len(shipped)].read_text(encoding="utf-8"))
        data["site"]["id"] = f"{data['site']['id']}_r{k:03d}"
        ids.append(data["site"]["id"])
        (folder / "sites" / f"{data['site']['id']}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True),
                                                                     encoding="utf-8")
    return ids


def _counter(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _run_once(tmp: Path, catalog_dir: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    from smartmine.services import Influxd, Mosquitto, free_port, wait_for

    broker = Mosquitto(tmp / "mosquitto", max_inflight_messages=10_000)
    influxd = Influxd(tmp / "influxd")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker.start()
        influxd.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
        env.update({"SMARTMINE_MQTT_URL": broker.url, "SMARTMINE_INFLUX_URL": influxd.url,
                    "SMARTMINE_CATALOG_DIR": str(catalog_dir), "SMARTMINE_DATA_DIR": str(tmp / "data")})
        ports = [free_port() for _ in range(workers)]
        for i, port in enumerate(ports):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "smartmine.cli", "ingest", "--group", "centre", "--client-id",
                 f"bench-centre-{i}", "--metrics-port", str(port)], env=env,
                stdout=(tmp / f"ingest-{i}.log").open("wb"), stderr=subprocess.STDOUT))
        for port in ports:
            wait_for(lambda p=port: is_healthy(p), 90, f"ingest worker on :{port}")
        sim = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "simulate", "--site", "all", "--speed", "1",
                                "--qos", "1", "--duration", f"{args.seconds:g}s"], env=env,
                               stdout=(tmp / "simulate.log").open("wb"), stderr=subprocess.STDOUT)
        # The simulator is left out: it has exited (and /proc forgotten it) by the time the meter stops.
        meter = _CpuMeter({"mosquitto": [_pid(broker)], "influxd": [_pid(influxd)],
                           **{f"ingest_{i + 1}": [p.pid] for i, p in enumerate(procs)}})
        meter.start()
        started = time.monotonic()
        sim.wait(args.seconds + 300)
        # The last messages still in flight: wait until every worker's count stands still.
        last, still = -1.0, 0
        while still < 4 and time.monotonic() - started < args.seconds + 300:
            now = sum(_counter(p, "smartmine_ingest_points_written_total") for p in ports)
            still = still + 1 if now == last else 0
            last = now
            time.sleep(0.25)
        used = meter.stop()
        elapsed = time.monotonic() - started
        per_worker = [(_counter(p, "smartmine_ingest_messages_total"), _counter(p, "smartmine_ingest_readings_total"))
                      for p in ports]
        messages = sum(m for m, _ in per_worker)
        readings = sum(r for _, r in per_worker)
        out: dict[str, Any] = {
            f"w{workers}_messages": int(messages),
            f"w{workers}_broker_messages_per_s": messages / args.seconds,
            f"w{workers}_broker_readings_per_s": readings / args.seconds,
            f"w{workers}_seconds_to_last_write": elapsed,
        }
        for i, (m, r) in enumerate(per_worker):
            out[f"w{workers}_ingest_{i + 1}_messages_per_s"] = m / args.seconds
            out[f"w{workers}_ingest_{i + 1}_readings_per_s"] = r / args.seconds
        for name, seconds in used.items():
            out[f"w{workers}_{name}_cpu_us_per_message"] = seconds * 1e6 / max(1.0, messages)
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        influxd.stop()
        broker.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="smartmine-bench-centre-"))
    try:
        catalog_dir = tmp / "catalog"
        replica_catalog(catalog_dir, args.sites)
        out: dict[str, Any] = {"sites": args.sites, "seconds": args.seconds, "load_average": os.getloadavg()}
        for workers in (int(w) for w in args.workers.split(",")):
            print(f"{args.sites} sites into the centre, {workers} ingest worker(s), {args.seconds:g} s ...",
                  file=sys.stderr)
            out.update(_run_once(tmp / f"w{workers}", catalog_dir, args, workers))
        out["load_average_after"] = os.getloadavg()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
