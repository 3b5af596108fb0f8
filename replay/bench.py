"""Replay: readings/s into InfluxDB against the raw /write ceiling, 1× timing error, record under load.

Runs on its own Mosquitto and influxd (fresh, on free loopback ports) so the figures do not depend on
what else is stored. Three measurements:

1. ``replay --to influx --speed max`` of a recording of catalog-shaped telemetry, and, in the same run, the
   raw InfluxDB ceiling: the very same lines, pre-encoded and pre-joined, written with the same batch size
   and the same number of concurrent writers. The ratio says how much the replay itself costs.
2. ``replay --to mqtt --speed 1`` of a recording with irregular gaps, received by a subscriber: the error of
   each inter-message gap against the recorded gap (p50/p99/max), and of each message against its schedule.
3. ``record`` (the command, in its own process) while publishers in other processes send as fast as the
   broker takes them at QoS 1: how many of the published messages are missing from the recording.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from replay.format import Chunk, RecordingReader, RecordingWriter
from replay.lines import LineEncoder, classify
from replay.player import InfluxSink, replay
from replay.sources import open_source
from replay.synthetic import DEFAULT_START, messages
from smartmine.catalog import builtin_catalog
from smartmine.config import parse_mqtt_url
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.services import Influxd, Mosquitto
from smartmine.wire import subscription


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=2500,
                        help="rounds of one message per catalog equipment (43) for the InfluxDB replay")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (ceiling, replay) into InfluxDB; best kept")
    parser.add_argument("--batch-lines", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--timing-seconds", type=float, default=20.0, help="length of the 1× timing replay")
    parser.add_argument("--timing-rate", type=float, default=200.0, help="mean messages/s of the 1× replay")
    parser.add_argument("--load", choices=("auto", "simulator", "synthetic"), default="auto",
                        help="load while recording: the simulators at max speed (auto: when installed) or "
                             "synthetic publishers")
    parser.add_argument("--sim-duration", default="30m", help="simulated time the simulators publish under load")
    parser.add_argument("--sim-scale", type=int, default=2, help="replicas of each site (simulate --scale)")
    parser.add_argument("--load-messages", type=int, default=60_000, help="messages per synthetic publisher")
    parser.add_argument("--publishers", type=int, default=2, help="synthetic publisher processes")
    parser.add_argument("--skip", action="append", default=[], choices=("influx", "timing", "record"))


def write_recording(path: Path, items: Iterator[tuple[int, str, bytes]]) -> int:
    """A recording of ``(time_ns, topic, payload)`` as ``record`` writes one; returns its message count."""
    encoder = LineEncoder(builtin_catalog())
    writer = RecordingWriter(path, "bench", "bench", meta={"catalog_sha256": encoder.fingerprint})
    chunk = Chunk.empty()
    for t, topic, payload in items:
        chunk.append(t, topic, payload, 1, False, classify(topic, payload, encoder))
        if len(chunk) >= 20_000:
            writer.write(chunk)
            chunk = Chunk.empty()
    writer.write(chunk)
    return writer.close().messages


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextmanager
def _services(work: Path) -> Iterator[tuple[Mosquitto, Influxd]]:
    broker, influxd = Mosquitto(work / "mosquitto"), Influxd(work / "influxd")
    broker.start()
    try:
        influxd.start()
        try:
            yield broker, influxd
        finally:
            influxd.stop()
    finally:
        broker.stop()


def _env(broker: Mosquitto, influxd: Influxd) -> dict[str, str]:
    """The environment of a command run against the benchmark's own services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update({"SMARTMINE_MQTT_URL": broker.url, "SMARTMINE_INFLUX_URL": influxd.url,
                "SMARTMINE_DATA_DIR": str(Path(tempfile.gettempdir()) / "smartmine-bench")})
    return env


# ------------------------------------------------------------------------------------------------ 1. InfluxDB
def bench_influx(work: Path, influxd: Influxd, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of (ceiling, replay), each into a fresh database; the best of each, since other work on the
    machine only ever slows a round down."""
    from concurrent.futures import ThreadPoolExecutor

    catalog = builtin_catalog()
    path = work / "influx.smrec"
    write_recording(path, ((0, t, p) for t, p in messages(catalog, DEFAULT_START, args.samples)))
    # The ceiling: the replay's own output, encoded beforehand, written the same way.
    lines: list[str] = []
    readings = sum(LineEncoder(catalog).encode(c, range(len(c)), 0, lines) for c in open_source(path).chunks())
    bodies = ["\n".join(lines[i:i + args.batch_lines]).encode() for i in range(0, len(lines), args.batch_lines)]
    ceilings, rates, points = [], [], 0
    for round_no in range(args.rounds):
        ceiling_db = InfluxClient(influxd.url, f"bench_ceiling_{round_no}", pool_size=args.writers + 1,
                                  timeout_s=300)
        ceiling_db.create_database()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.writers) as pool:
            list(pool.map(ceiling_db.write_lines, bodies))
        ceilings.append(readings / (time.perf_counter() - started))

        replay_db = InfluxClient(influxd.url, f"bench_replay_{round_no}", pool_size=args.writers + 1, timeout_s=300)
        replay_db.create_database()
        source = open_source(path)
        encoder = LineEncoder(catalog)
        encoder.trust_fields = encoder.trusts(source.meta)
        sink = InfluxSink(replay_db, encoder, batch_lines=args.batch_lines, writers=args.writers)
        stats = replay(source, sink)
        rates.append(sink.readings / stats.elapsed_s)
        stored = replay_db.query("SELECT count(seq) FROM /.*/")[0]["series"]
        points = sum(s["values"][0][1] for s in stored)
        for db in (ceiling_db, replay_db):
            db.drop_database()
    ceiling, rate = max(ceilings), max(rates)
    return {
        "replay_influx_messages": stats.messages,
        "replay_influx_readings_per_s": round(rate),
        "replay_influx_readings_per_s_ratio": round(rate / ceiling, 3),
        "influx_ceiling_readings_per_s": round(ceiling),
        "replay_influx_rounds": [[round(c), round(r)] for c, r in zip(ceilings, rates, strict=True)],
        "replay_influx_points_stored": points,
        "replay_influx_goal_500k_met": rate >= 500_000,
    }


# ------------------------------------------------------------------------------------------------ 2. timing
def bench_timing(work: Path, broker: Mosquitto, influxd: Influxd, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    n = int(args.timing_seconds * args.timing_rate)
    base = time.time_ns()
    items, t = [], base
    for (topic, payload), _ in zip(messages(builtin_catalog(), DEFAULT_START, n // 43 + 1, prefix="timing"),
                                   range(n), strict=False):
        items.append((t, topic, payload))
        t += int(rng.expovariate(args.timing_rate) * 1e9)  # Poisson arrivals: gaps from ~0 to tens of ms
    path = work / "timing.smrec"
    write_recording(path, iter(items))

    # A bare subscriber that only timestamps arrivals: the recorder's validation would add its own jitter.
    received: dict[tuple[str, bytes], int] = {}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        received[(msg.topic, bytes(msg.payload))] = time.time_ns()
        if len(received) >= n:
            done.set()

    url = parse_mqtt_url(broker.url)
    client = make_client(url, "bench-timing-subscriber")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(subscription("telemetry", "timing"), qos=1)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        subscribed.wait(15)
        subprocess.run([sys.executable, "-m", "smartmine.cli", "replay", str(path), "--to", "mqtt", "--speed", "1",
                        "-q"], env=_env(broker, influxd), check=True)
        done.wait(30)
    finally:
        client.loop_stop()
        client.disconnect()
    sent = [(t, received.get((topic, payload))) for t, topic, payload in items]
    pairs = [(t, r) for t, r in sent if r is not None]
    gap_err = [abs((r1 - r0) - (t1 - t0)) / 1e6 for (t0, r0), (t1, r1) in itertools.pairwise(pairs)]
    r_first, t_first = pairs[0][1], pairs[0][0]
    drift = [abs((r - r_first) - (t - t_first)) / 1e6 for t, r in pairs]
    return {
        "timing_messages": n,
        "timing_received": len(pairs),
        "timing_gap_error_p50_ms": round(_percentile(gap_err, 0.50), 3),
        "timing_gap_error_p99_ms": round(_percentile(gap_err, 0.99), 3),
        "timing_gap_error_max_ms": round(max(gap_err), 3),
        "timing_schedule_error_p99_ms": round(_percentile(drift, 0.99), 3),
        "timing_goal_p99_10ms_met": _percentile(gap_err, 0.99) <= 10.0,
    }


# ------------------------------------------------------------------------------------------------ 3. record
def bench_record(work: Path, broker: Mosquitto, influxd: Influxd, args: argparse.Namespace) -> dict[str, Any]:
    """``smartmine record`` in its own process under load; every published message must be in the recording."""
    env = _env(broker, influxd)
    use_simulator = args.load == "simulator" or (args.load == "auto" and _simulators_installed())
    if use_simulator:
        # The simulators at full speed, one process per site; the same commands with --out give the exact
        # messages to expect (same seed, start and duration: byte-identical output).
        env["SMARTMINE_TOPIC_PREFIX"] = "simload"
        publishers, expected = [], set()
        for site in builtin_catalog().site_ids():
            sim = [sys.executable, "-m", "smartmine.cli", "simulate", "--site", site, "--seed", "1", "--start",
                   "2026-11-27T00:00:00Z", "--duration", args.sim_duration, "--speed", "max", "--scale",
                   str(args.sim_scale), "--progress-every", "3600"]
            expected_file = work / f"expected-{site}.jsonl"
            subprocess.run([*sim, "--out", str(expected_file)], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            expected |= {(t, p) for c in open_source(expected_file).chunks()
                         for t, p in zip(c.topic, c.payload, strict=True) if t.endswith("/telemetry")}
            publishers.append([*sim, "--qos", "1"])
        topics = "simload/+/+/+/telemetry"
    else:
        load = work / "load.smrec"
        per = args.load_messages
        write_recording(load, ((0, t, p) for (t, p), _ in zip(
            messages(builtin_catalog(), DEFAULT_START, per // 43 + 1, prefix="load"), range(per), strict=False)))
        expected = {(f"bench/p{i}/{t.split('/', 1)[1]}", p) for i in range(args.publishers)
                    for c in open_source(load).chunks() for t, p in zip(c.topic, c.payload, strict=True)}
        topics = "bench/+/+/+/+/telemetry"
        publishers = [[sys.executable, "-m", "smartmine.cli", "replay", str(load), "--to", "mqtt", "--speed", "max",
                       "--qos", "1", "--prefix", f"bench/p{i}", "-q"] for i in range(args.publishers)]
    out = work / "under-load.smrec"
    recorder = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "record", "--out", str(out), "--count",
                                 str(len(expected)), "--topics", topics, "-q"], env=env)
    time.sleep(3.0)  # the recorder's start-up (imports, connect, subscribe) before the load begins
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in publishers]
    for p in procs:
        p.wait(900)
    publish_s = time.perf_counter() - started
    try:
        recorder.wait(max(60.0, publish_s))
    except subprocess.TimeoutExpired:
        recorder.terminate()  # it closes the recording with what it got: the count below says what is missing
        recorder.wait(60)
    got: dict[tuple[str, bytes], int] = {}
    for chunk in RecordingReader(out).read_chunks():
        for topic, payload in zip(chunk.topic, chunk.payload, strict=True):
            got[(topic, payload)] = got.get((topic, payload), 0) + 1
    return {
        "record_load": (f"simulators: one smartmine simulate --speed max --scale {args.sim_scale} per site"
                        if use_simulator else f"{args.publishers} synthetic publishers at max speed"),
        "record_published": len(expected),
        "record_publish_rate_msg_per_s": round(len(expected) / publish_s),
        "record_recorded": sum(got.values()),
        "record_missing": len(expected - got.keys()),
        "record_unexpected": len(got.keys() - expected),
        "record_duplicates": sum(v - 1 for v in got.values()),
    }


def _simulators_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("simulators.cli") is not None
    except ModuleNotFoundError:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"load_average_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="smartmine-bench-replay-") as tmp:
        work = Path(tmp)
        with _services(work) as (broker, influxd):
            if "influx" not in args.skip:
                print("replay → InfluxDB at max speed, and the raw /write ceiling ...", file=sys.stderr)
                figures.update(bench_influx(work, influxd, args))
            if "timing" not in args.skip:
                print("replay → MQTT at 1×, timing error ...", file=sys.stderr)
                figures.update(bench_timing(work, broker, influxd, args))
            if "record" not in args.skip:
                print("record under load ...", file=sys.stderr)
                figures.update(bench_record(work, broker, influxd, args))
    return figures
