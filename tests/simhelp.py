"""Helpers for the simulator tests: run a short simulation and pull one sensor's series out of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

from simulators.engine import Simulation
from simulators.scenario import parse_scenario
from smartmine.catalog import Catalog, load_catalog

# 10:00 in Asia/Shanghai: the morning production shift is running at both sites.
START = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)


@cache
def catalog() -> Catalog:
    return load_catalog()


def simulate(site: str, duration_s: float, faults: tuple[dict[str, Any], ...] = (), seed: int = 7,
             start: datetime = START) -> list[tuple[str, dict[str, Any]]]:
    scenario = parse_scenario({"site": site, "faults": list(faults)}) if faults else None
    sim = Simulation(catalog(), sites=site, seed=seed, scenario=scenario, start=start, duration_s=duration_s)
    return [(t, json.loads(p)) for batch in sim.batches() for t, p in batch]


@cache
def baseline(site: str, duration_s: float, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    return simulate(site, duration_s, seed=seed)


def series(messages: list[tuple[str, dict[str, Any]]], equipment: str, sensor: str) -> list[float]:
    """The values of one sensor in publishing order (readings with a quality flag give their value)."""
    out = []
    for t, payload in messages:
        if t.split("/")[3] == equipment and sensor in payload["readings"]:
            r = payload["readings"][sensor]
            out.append(float(r["value"] if isinstance(r, dict) else r))
    return out


def payloads(messages: list[tuple[str, dict[str, Any]]], equipment: str) -> list[dict[str, Any]]:
    return [p for t, p in messages if t.split("/")[3] == equipment]


def dumps(messages: list[tuple[str, dict[str, Any]]]) -> str:
    return "\n".join(json.dumps(m) for m in messages)
