"""Simulators: coal-mine and steel-plant equipment models publishing telemetry over MQTT, with labelled faults.

For tests and offline scoring::

    from simulators import generate
    for topic, payload in generate(sites="yanshan_mine", scenario="demo", start="2026-11-27T08:00:00Z",
                                   duration="10m", seed=0):
        ...

and ``Simulation(...).truth()`` for the labelled fault intervals (see docs/simulators.md).
"""

from simulators.engine import Simulation, generate, generate_raw, make_simulation
from simulators.scenario import Scenario, ScenarioError, available_scenarios, load_scenario

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
