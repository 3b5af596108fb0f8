"""``smartmine bench NAME``: the project's benchmarks, each printing the numbers it measured.

Each stage owns its benchmarks in a module listed in :data:`BENCHMARKS` that exposes
``add_arguments(parser)`` and ``run(args) -> dict`` (the figures, JSON-serialisable).
Numbers are measured, printed and written to docs/benchmarks.md; no test ever asserts a timing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from typing import Any

# name -> module providing add_arguments(parser) and run(args) -> dict
BENCHMARKS: dict[str, str] = {
    "simulate": "simulators.bench",
    "ingest": "ingest.bench",
    "analytics": "analytics.bench",
    "replay": "replay.bench",
    "soak": "ingest.soak",
}


def _runner(module_name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        result = importlib.import_module(module_name).run(args)
        if getattr(args, "json", False):
            json.dump(result, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
        else:
            for key, value in result.items():
                print(f"{key:>32}: {value}")
        return 0
    return run


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and print what it measured")
    bsub = bench.add_subparsers(dest="bench_command", metavar="NAME", required=True)
    for name, module_name in BENCHMARKS.items():
        if importlib.util.find_spec(module_name) is None:
            continue  # that stage's benchmark is not built yet
        module = importlib.import_module(module_name)
        p = bsub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        module.add_arguments(p)
        p.set_defaults(func=_runner(module_name))
