"""Simulator throughput: messages/s and readings/s one process sustains at --speed max, to a file and to MQTT.

Replicates the catalog's sites until ``--devices`` is reached, runs ``--duration`` of simulated time as fast as
it goes into each target, and reports the rates and how many devices at 1 Hz that is. The MQTT target starts
its own Mosquitto (unless ``--mqtt-url`` is given) and counts what a subscriber actually receives.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=5000, help="devices to simulate (sites replicated; default 5000)")
    p.add_argument("--duration", default="60s", help="simulated time per target (default 60s)")
    p.add_argument("--targets", default="generate,file,mqtt",
                   help="comma-separated: generate (no output), file, mqtt (default: all three)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="MQTT QoS (default 0)")
    p.add_argument("--mqtt-url", help="an existing broker (default: start a private Mosquitto)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from simulators.scenario import parse_duration
    from smartmine.catalog import load_catalog
    from smartmine.errors import UsageError

    catalog = load_catalog()
    per_replica = sum(1 for _ in catalog.all_equipment())
    scale = max(1, math.ceil(args.devices / per_replica))
    duration = parse_duration(args.duration, "--duration")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"generate", "file", "mqtt"}
    if unknown:
        raise UsageError(f"--targets: unknown {sorted(unknown)} (known: generate, file, mqtt)")
    result: dict[str, Any] = {"devices": per_replica * scale, "site_replicas": scale * len(catalog.sites),
                              "simulated_s": duration}
    for target in targets:
        figures = _run_target(target, catalog, scale, duration, args)
        result.update({f"{target}_{k}": v for k, v in figures.items()})
    return result


def _simulation(catalog: Any, scale: int, duration: float, seed: int, prefix: str = "bench") -> Any:
    from datetime import UTC, datetime

    from simulators.engine import Simulation

    t0 = time.perf_counter()
    sim = Simulation(catalog, sites="all", seed=seed, start=datetime(2026, 11, 27, 0, tzinfo=UTC),
                     duration_s=duration, scale=scale, prefix=prefix)
    return sim, time.perf_counter() - t0


def _run_target(target: str, catalog: Any, scale: int, duration: float, args: argparse.Namespace) -> dict[str, Any]:
    from simulators.runner import run as run_sim
    from simulators.sinks import FileSink, Sink

    sim, build_s = _simulation(catalog, scale, duration, args.seed)
    figures: dict[str, Any] = {"build_s": round(build_s, 2)}
    if target == "generate":
        t0 = time.perf_counter()
        for _ in sim.batches():
            pass
        wall = time.perf_counter() - t0
        summary = {"messages": sim.stats.messages, "readings": sim.stats.readings, "wall_s": wall}
    elif target == "file":
        with tempfile.TemporaryDirectory() as tmp:
            sink: Sink = FileSink(Path(tmp) / "bench.jsonl")
            summary = run_sim(sim, sink, speed=None, progress=None)
            figures["bytes_per_message"] = round(summary["bytes_written"] / max(1, summary["messages"]), 1)
    else:
        summary = _run_mqtt(sim, args)
        figures["received_by_subscriber"] = summary["received"]
        figures["qos"] = args.qos
    wall = summary["wall_s"]
    figures["messages_per_s"] = round(summary["messages"] / wall)
    figures["readings_per_s"] = round(summary["readings"] / wall)
    # Simulated seconds per wall second with this many devices: >= 1 means they run in real time at the
    # catalog's sample periods (1 s for most sensors), and devices x factor is what one process sustains.
    figures["realtime_factor"] = round(duration / wall, 2)
    figures["devices_sustained_at_1x"] = round(len(sim.devices) * duration / wall)
    return figures


def _run_mqtt(sim: Any, args: argparse.Namespace) -> dict[str, Any]:
    import subprocess
    import sys

    from simulators.runner import run as run_sim
    from simulators.sinks import MqttSink
    from smartmine.config import load_settings
    from smartmine.services import Mosquitto
    from smartmine.wire import subscription

    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        url = args.mqtt_url
        if url is None:
            broker = Mosquitto(Path(tmp))
            broker.start()
            url = broker.url
        try:
            settings = load_settings().model_copy(update={"mqtt_url": url})
            # The subscriber counts in its own process, so it does not compete with the publisher for the GIL.
            counter = subprocess.Popen([sys.executable, "-m", "simulators.bench", url,
                                        subscription("telemetry", sim.prefix), str(args.qos)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert counter.stdout is not None and counter.stdin is not None
                if counter.stdout.readline().strip() != "ready":
                    raise RuntimeError("the counting subscriber did not start")
                inflight = broker.max_inflight_messages if broker is not None else settings.simulator.max_inflight
                sink = MqttSink(settings, qos=args.qos, max_inflight=inflight)
                summary = run_sim(sim, sink, speed=None, progress=None)
                counter.stdin.close()  # tells it to report once the messages stop coming
                out = counter.stdout.read()
                counter.wait(120)
                summary["received"] = int(out.strip() or 0)
            finally:
                if counter.poll() is None:
                    counter.kill()
                    counter.wait(10)
            return summary
        finally:
            if broker is not None:
                broker.stop()


def _count_messages(url: str, topic_filter: str, qos: int) -> None:
    """The counting subscriber: prints ``ready``, then, once stdin closes and 2 s pass quietly, the count."""
    import sys

    from smartmine.config import parse_mqtt_url
    from smartmine.mqtt import make_client

    u = parse_mqtt_url(url)
    count = [0]
    last = [time.monotonic()]
    subscribed = threading.Event()

    def on_message(*_a: Any) -> None:
        count[0] += 1
        last[0] = time.monotonic()

    client = make_client(u, f"bench-count-{time.monotonic_ns()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=qos)
    client.connect(u.host, u.port)
    client.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    sys.stdin.read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and time.monotonic() - last[0] < 2.0:
        time.sleep(0.1)
    client.loop_stop()
    print(count[0], flush=True)


if __name__ == "__main__":
    import sys

    _count_messages(sys.argv[1], sys.argv[2], int(sys.argv[3]))
