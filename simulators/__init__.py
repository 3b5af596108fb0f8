"""Simulators: coal-mine and steel-plant equipment models publishing telemetry over MQTT, with labelled faults.

For tests and offline scoring::

    from simulators import generate
    for topic, payload in generate(sites="yanshan_mine", scenario="demo", start="2026-11-27T08:00:00Z",
                                   duration="10m", seed=0):
        ...

and ``Simulation(...).truth()`` for the labelled fault intervals (see docs/simulators.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.engine import Simulation, generate, generate_raw, make_simulation
    from simulators.scenario import Scenario, ScenarioError, available_scenarios, load_scenario

# Loaded on first use: the engine pulls in numpy, and every ``smartmine`` command registers this stage's CLI.
_HOME = {"Simulation": "engine", "generate": "engine", "generate_raw": "engine", "make_simulation": "engine",
         "Scenario": "scenario", "ScenarioError": "scenario", "available_scenarios": "scenario",
         "load_scenario": "scenario"}

__all__ = [
    "Scenario",
    "ScenarioError",
    "Simulation",
    "available_scenarios",
    "generate",
    "generate_raw",
    "load_scenario",
    "make_simulation",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"simulators.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
