"""Scenarios: YAML files saying which faults happen where, when, for how long and how badly.

A scenario is loaded by name (``simulators/scenarios/<name>.yaml``) or from a file, validated against
the fault library and the catalog, and resolved against a simulation's start time into fault
instances plus the ground truth (one labelled interval per affected equipment and sensor).
Every error names the file, the fault's index and the field, e.g.
``scenarios/demo.yaml: faults[1].equipment: 'belt_mian_1' is not equipment of site yanshan_mine
(did you mean 'belt_main_1'?)``.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartmine import timespec
from smartmine.catalog import Catalog
from smartmine.cli import parse_duration as cli_duration
from smartmine.errors import UsageError
from smartmine.wire import Severity

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class ScenarioError(UsageError):
    """A scenario cannot be found or does not validate; the message names the file and the field."""


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """``90s``, ``15m``, ``2h``, ``1h30m``, ``1d`` or a number of seconds -> seconds (the CLI's parser)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        try:
            seconds = cli_duration(str(text))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if seconds < 0:
        raise ValueError(f"{what} {text!r} is negative")
    return seconds


def parse_time(text: str, what: str = "time") -> datetime:
    """A time in the shared grammar (ISO 8601, UTC without an offset; ``now-1h``...): smartmine.timespec."""
    return timespec.parse_instant(text, what=what)


class FaultSpec(BaseModel):
    """One fault in a scenario file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = Field(description="a fault kind of the library (smartmine simulate --list-faults)")
    site: str | None = Field(None, description="default: the scenario's site")
    area: str | None = Field(None, description="transport faults: every device behind this area's gateway")
    equipment: str | None = None
    sensor: str | None = Field(None, description="default: the sensor the fault kind acts on")
    start: str | float = Field(description="offset from the simulation start (90s, 2h) or an ISO 8601 time")
    duration: str | float | None = Field(None, description="how long; or give end")
    end: str | None = Field(None, description="ISO 8601 time or offset from the simulation start")
    severity: Severity | None = None
    params: dict[str, Any] = {}
    note: str | None = None


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None
    description: str = ""
    site: str | None = None
    faults: list[FaultSpec] = []


@dataclass(frozen=True)
class Scenario:
    name: str
    source: Path | None
    description: str
    site: str | None
    faults: tuple[FaultSpec, ...]

    def where(self) -> str:
        return str(self.source) if self.source else f"scenario {self.name!r}"


def available_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def load_scenario(name_or_file: str | Path) -> Scenario:
    """A scenario by name (shipped with the project) or by path."""
    path = Path(name_or_file)
    named = available_scenarios()
    if str(name_or_file) in named:
        path = named[str(name_or_file)]
    elif not path.is_file():
        raise ScenarioError(f"scenario {str(name_or_file)!r} is neither a file nor a named scenario "
                            f"(named: {', '.join(named)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: invalid YAML: {exc}") from None
    return parse_scenario(raw, path)


def parse_scenario(raw: Any, source: Path | None = None, name: str | None = None) -> Scenario:
    where = str(source) if source else "scenario"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping with 'faults'")
    try:
        data = ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        raise ScenarioError(f"{where}: {loc}: {err['msg']}") from None
    return Scenario(name or data.name or (source.stem if source else "scenario"), source, data.description,
                    data.site, tuple(data.faults))


@dataclass(frozen=True)
class PlannedFault:
    """A scenario fault placed in time and space: what the engine runs and what the truth records."""

    index: int
    spec: FaultSpec
    kind: str
    site: str
    area: str
    equipment: tuple[str, ...]   # one for process/sensor faults; all devices behind the gateway for transport
    sensor: str | None
    start: datetime
    end: datetime
    severity: str
    params: BaseModel


def plan(scenario: Scenario, catalog: Catalog, start: datetime, sites: list[str]) -> list[PlannedFault]:
    """Check every fault against the catalog and the fault library; place it in time."""
    from simulators.faults import FAULT_KINDS, FaultTargetError

    out: list[PlannedFault] = []
    for i, f in enumerate(scenario.faults):
        where = f"{scenario.where()}: faults[{i}]"

        def fail(field: str, problem: str, where: str = where) -> ScenarioError:
            return ScenarioError(f"{where}.{field}: {problem}")

        cls = FAULT_KINDS.get(f.kind)
        if cls is None:
            raise fail("kind", f"unknown fault kind {f.kind!r}{_hint(f.kind, FAULT_KINDS)} "
                               f"(known: {', '.join(FAULT_KINDS)})")
        site = f.site or scenario.site or (sites[0] if len(sites) == 1 else None)
        if site is None:
            raise fail("site", "missing (no site in the fault or the scenario)")
        if site not in catalog.sites:
            raise fail("site", f"unknown site {site!r}{_hint(site, catalog.sites)}")
        all_eq = {e.id: e for e in catalog.all_equipment(site)}
        if f.equipment is not None:
            eq = all_eq.get(f.equipment)
            if eq is None:
                raise fail("equipment", f"{f.equipment!r} is not equipment of site {site}{_hint(f.equipment, all_eq)}")
            if f.area is not None and f.area != eq.area:
                raise fail("area", f"{f.equipment} is in area {eq.area}, not {f.area}")
            try:
                cls.check_target(eq.sensors, f.sensor)
            except FaultTargetError as exc:
                raise fail("sensor" if f.sensor else "equipment", f"{f.kind} on {f.equipment}: {exc}") from None
            area, equipment = eq.area, tuple[str, ...]((eq.id,))
        elif f.area is not None and cls.layer == "transport":
            areas = {e.area for e in all_eq.values()}
            if f.area not in areas:
                raise fail("area", f"{f.area!r} is not an area of site {site}{_hint(f.area, areas)}")
            area, equipment = f.area, tuple(e.id for e in all_eq.values() if e.area == f.area)
        else:
            need = "equipment or area" if cls.layer == "transport" else "equipment"
            raise fail("equipment", f"missing: fault kind {f.kind} needs {need}")
        try:
            params = cls.Params.model_validate(f.params)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise fail("params." + ".".join(map(str, err["loc"])), err["msg"]) from None
        try:
            t0 = _when(f.start, start, "start")
        except ValueError as exc:
            raise fail("start", str(exc)) from None
        try:
            if f.end is not None:
                t1 = _when(f.end, start, "end")
            elif f.duration is not None:
                t1 = t0 + timedelta(seconds=parse_duration(f.duration))
            else:
                raise ValueError("give duration or end")
        except ValueError as exc:
            raise fail("end" if f.end is not None else "duration", str(exc)) from None
        if t1 <= t0:
            raise fail("duration", "the fault ends before it starts")
        sensor = f.sensor or cls.default_sensor if cls.layer != "transport" else None
        out.append(PlannedFault(i, f, f.kind, site, area, equipment, sensor, t0, t1,
                                f.severity or cls.default_severity, params))
    return out


def _when(value: str | float, start: datetime, what: str) -> datetime:
    if isinstance(value, str) and ("T" in value or value.count("-") >= 2):
        return parse_time(value, what)
    return start + timedelta(seconds=parse_duration(value, what))


def _hint(value: str, known: Any) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
