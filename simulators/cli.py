"""``smartmine simulate``: run the coal-mine and steel-plant simulators into MQTT or a JSON Lines file."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulate sites publishing telemetry (MQTT, or --out FILE), with labelled faults",
        description="Simulate coal-mine and steel-plant equipment. Same --seed, --scenario, --start and "
                    "--duration give byte-identical telemetry.")
    p.add_argument("--site", default="all", metavar="NAME|all", help="catalog site id, or all (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scenario", metavar="FILE|NAME", help="faults to inject: a YAML file or a shipped name "
                                                           "(--list-scenarios)")
    p.add_argument("--start", metavar="T", help="simulated start time: ISO 8601, now-1d, 2h (ago) (default: now, "
                                                "to the second); in the past for a historical backfill")
    p.add_argument("--duration", metavar="D", help="simulated time to run, e.g. 90s, 2h, 1d "
                                                   "(default: until stopped; required with --speed max)")
    p.add_argument("--speed", default="1", metavar="X|max", help="X times real time, or max (default 1)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="MQTT QoS (default 0)")
    p.add_argument("--scale", type=int, default=1, metavar="N",
                   help="N replicas of each site (replica k publishes as <site>_r00k) for load tests")
    p.add_argument("--out", metavar="FILE", help="write JSON Lines {topic, payload} here instead of publishing "
                                                 "(- for stdout)")
    p.add_argument("--truth", metavar="FILE", help="write the ground truth (JSON list of fault intervals)")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                   help="seconds between progress lines on stderr (default 5)")
    p.add_argument("--list-scenarios", action="store_true", help="list the shipped scenarios and exit")
    p.add_argument("--list-faults", action="store_true", help="list the fault kinds and exit")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from smartmine.errors import UsageError

    if args.list_scenarios:
        return _list_scenarios()
    if args.list_faults:
        return _list_faults()

    from datetime import UTC, datetime

    from simulators.engine import Simulation
    from simulators.runner import run
    from simulators.scenario import load_scenario, parse_duration, parse_time
    from simulators.sinks import FileSink, MqttSink, Sink
    from smartmine.catalog import load_catalog
    from smartmine.cli import settings_from

    settings = settings_from(args)
    try:
        speed = None if args.speed == "max" else float(args.speed)
        if speed is not None and not speed > 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--speed {args.speed!r}: give a positive number (times real time) or max") from None
    try:
        duration = parse_duration(args.duration, "--duration") if args.duration else None
        start = parse_time(args.start, "--start") if args.start else datetime.now(UTC).replace(microsecond=0)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    scenario = load_scenario(args.scenario) if args.scenario else None
    if duration is None and speed is None:
        raise UsageError("--speed max needs --duration (otherwise it would never end)")
    catalog = load_catalog(settings.catalog_dir)
    sim = Simulation(catalog, sites=args.site, seed=args.seed, scenario=scenario, start=start,
                     duration_s=duration, scale=args.scale, prefix=settings.topic_prefix)
    if args.truth:
        _write_truth(args.truth, sim.truth())
    sink: Sink = FileSink(args.out) if args.out else MqttSink(
        settings, qos=args.qos, buffer_messages=settings.simulator.buffer_messages,
        reconnect_max_s=settings.simulator.reconnect_max_s, max_inflight=settings.simulator.max_inflight)
    where = args.out or settings.mqtt.masked()
    print(f"simulating {len(sim.devices)} devices of {args.site} (seed {args.seed}, scenario "
          f"{scenario.name if scenario else 'none'}, {len(sim.faults)} faults) from {start:%Y-%m-%dT%H:%M:%SZ} "
          f"at {'max' if speed is None else f'{speed:g}x'} speed into {where}", file=sys.stderr)
    # SIGTERM (smartmine up stopping its stages) ends the run like the end of --duration: the sink closes,
    # the devices go offline with a retained status, and the summary is printed.
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summary = run(sim, sink, speed=speed, progress_every_s=args.progress_every,
                      progress=lambda line: print(line, file=sys.stderr, flush=True), stop=stop.is_set)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.truth:
        summary["truth"] = args.truth
    print("summary: " + json.dumps(summary), file=sys.stderr)
    return 130 if summary.get("interrupted") else 0


def _write_truth(path: str, intervals: list[dict[str, Any]]) -> None:
    from smartmine.errors import UsageError

    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(intervals, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
    except OSError as exc:
        raise UsageError(f"--truth {path}: cannot write: {exc.strerror or exc}") from None


def _list_scenarios() -> int:
    from simulators.scenario import available_scenarios, load_scenario

    for name in available_scenarios():
        s = load_scenario(name)
        kinds = sorted({f.kind for f in s.faults})
        print(f"{name:22} {s.description}\n{'':22} faults: {', '.join(kinds)}")
    return 0


def _list_faults() -> int:
    from simulators.faults import FAULT_KINDS

    for kind, cls in FAULT_KINDS.items():
        params = ", ".join(f"{k}={v.default}" for k, v in cls.Params.model_fields.items())
        print(f"{kind:22} {cls.layer:9} {cls.summary}" + (f"\n{'':32} params: {params}" if params else ""))
    return 0
