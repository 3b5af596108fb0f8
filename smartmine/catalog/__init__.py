"""The equipment catalog: which sites, equipment, sensors, units and limits exist.

Loaded from YAML (``units.yaml``, ``equipment_types.yaml`` and one file per site under ``sites/``),
validated at load, and resolved into a read-only :class:`Catalog` that every stage queries.
A bad file raises :class:`CatalogError` naming the file, the path inside it and the problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from smartmine.catalog.model import (
    DisplayName,
    Equipment,
    EquipmentType,
    Limit,
    SensorType,
    Site,
    Unit,
)

__all__ = [
    "BUILTIN_DIR",
    "Catalog",
    "CatalogError",
    "DisplayName",
    "Limit",
    "ResolvedEquipment",
    "ResolvedSensor",
    "SensorType",
    "load_catalog",
]

BUILTIN_DIR = Path(__file__).with_name("data")
M = TypeVar("M", bound=BaseModel)


class CatalogError(ValueError):
    """A catalog file is missing, unreadable or inconsistent. The message names file, path and problem."""

    def __init__(self, file: Path | str, path: str, problem: str) -> None:
        self.file = str(file)
        self.path = path
        self.problem = problem
        where = f"{self.file}: {path}" if path else self.file
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class ResolvedSensor:
    id: str
    spec: SensorType
    limits: tuple[Limit, ...]

    @property
    def unit(self) -> str:
        return self.spec.unit


@dataclass(frozen=True, slots=True)
class ResolvedEquipment:
    """One piece of equipment with its place in the ISA-95 hierarchy and its effective sensors."""

    site: str
    site_kind: str
    area: str
    line: str
    id: str
    type: str
    name: DisplayName
    type_spec: EquipmentType
    sensors: dict[str, ResolvedSensor]
    redundant_with: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.id)


class Catalog:
    """The validated, resolved catalog. Read-only; cheap lookups by (site, equipment, sensor)."""

    def __init__(self, units: dict[str, Unit], types: dict[str, EquipmentType], sites: list[Site],
                 source: Path) -> None:
        self.units = units
        self.types = types
        self.sites = {s.id: s for s in sites}
        self.source = source
        self._equipment: dict[tuple[str, str], ResolvedEquipment] = {}
        for site in sites:
            for area in site.areas:
                for line in area.lines:
                    for eq in line.equipment:
                        self._equipment[(site.id, eq.id)] = _resolve(site, area.id, line.id, eq, types[eq.type])

    def equipment(self, site: str, equipment: str) -> ResolvedEquipment | None:
        return self._equipment.get((site, equipment))

    def all_equipment(self, site: str | None = None) -> Iterator[ResolvedEquipment]:
        for (s, _), eq in self._equipment.items():
            if site is None or s == site:
                yield eq

    def sensor(self, site: str, equipment: str, sensor: str) -> ResolvedSensor | None:
        eq = self._equipment.get((site, equipment))
        return None if eq is None else eq.sensors.get(sensor)

    def site_ids(self) -> list[str]:
        return list(self.sites)

    def to_dict(self) -> dict[str, Any]:
        """The catalog as plain data: ``sites`` -> ``equipment`` -> ``sensors`` with ranges and limits."""
        out_sites = []
        for site in self.sites.values():
            equipment = []
            for eq in self.all_equipment(site.id):
                sensors = []
                for s in eq.sensors.values():
                    sensors.append({
                        "id": s.id,
                        "unit": s.unit,
                        "kind": s.spec.kind,
                        "name": s.spec.name.model_dump(),
                        "sample_period_s": s.spec.sample_period_s,
                        "normal_range": list(s.spec.normal),
                        "physical_range": list(s.spec.physical),
                        "limits": [lim.model_dump(exclude_none=True) for lim in s.limits],
                    })
                equipment.append({
                    "id": eq.id, "type": eq.type, "area": eq.area, "line": eq.line,
                    "name": eq.name.model_dump(), "sensors": sensors,
                })
            out_sites.append({
                "id": site.id, "kind": site.kind, "name": site.name.model_dump(),
                "timezone": site.timezone,
                "areas": [{"id": a.id, "name": a.name.model_dump(), "lines": [ln.id for ln in a.lines]}
                          for a in site.areas],
                "equipment": equipment,
            })
        return {"sites": out_sites, "units": {k: v.model_dump() for k, v in self.units.items()}}


def _resolve(site: Site, area: str, line: str, eq: Equipment, spec: EquipmentType) -> ResolvedEquipment:
    profile = spec.limit_profiles.get(eq.limit_profile, {}) if eq.limit_profile else {}
    enabled = eq.sensors_enabled if eq.sensors_enabled is not None else tuple(spec.sensors)
    sensors = {
        sid: ResolvedSensor(sid, spec.sensors[sid], profile.get(sid, spec.sensors[sid].limits))
        for sid in enabled
    }
    return ResolvedEquipment(site.id, site.kind, area, line, eq.id, eq.type, eq.name, spec, sensors,
                             eq.redundant_with)


def _read_yaml(file: Path) -> Any:
    try:
        with file.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise CatalogError(file, "", f"cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(file, where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    parts = [prefix] if prefix else []
    for p in loc:
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
    return ".".join(parts).replace(".[", "[")


def _validate(file: Path, prefix: str, adapter: TypeAdapter[M], data: Any) -> M:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise CatalogError(file, _loc(prefix, loc), msg + more) from exc


def _mapping(file: Path, data: Any, key: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise CatalogError(file, key, f"expected a mapping under top-level key {key!r}")
    return data[key]


def load_catalog(directory: Path | str | None = None) -> Catalog:
    """Load and validate the catalog in ``directory`` (the built-in one by default)."""
    root = Path(directory) if directory is not None else BUILTIN_DIR
    if not root.is_dir():
        raise CatalogError(root, "", "catalog folder does not exist")

    units_file = root / "units.yaml"
    units: dict[str, Unit] = {}
    for uid, raw in _mapping(units_file, _read_yaml(units_file), "units").items():
        body = dict(raw or {})
        body["id"] = uid
        units[uid] = _validate(units_file, f"units.{uid}", TypeAdapter(Unit), body)

    types_file = root / "equipment_types.yaml"
    types: dict[str, EquipmentType] = {}
    for tid, raw in _mapping(types_file, _read_yaml(types_file), "equipment_types").items():
        spec = _validate(types_file, f"equipment_types.{tid}", TypeAdapter(EquipmentType), raw)
        _check_type(types_file, tid, spec, units)
        types[tid] = spec

    site_files = sorted((root / "sites").glob("*.yaml"))
    if not site_files:
        raise CatalogError(root / "sites", "", "no site files (*.yaml) found")
    sites: list[Site] = []
    seen_sites: dict[str, Path] = {}
    for file in site_files:
        data = _read_yaml(file)
        site = _validate(file, "site", TypeAdapter(Site), data.get("site") if isinstance(data, dict) else None)
        if site.id in seen_sites:
            raise CatalogError(file, "site.id", f"duplicate site id {site.id!r} (also in {seen_sites[site.id]})")
        seen_sites[site.id] = file
        _check_site(file, site, types)
        sites.append(site)
    return Catalog(units, types, sites, root)


def _check_type(file: Path, tid: str, spec: EquipmentType, units: dict[str, Unit]) -> None:
    for sid, sensor in spec.sensors.items():
        where = f"equipment_types.{tid}.sensors.{sid}"
        if sensor.unit not in units:
            raise CatalogError(file, f"{where}.unit", f"unknown unit {sensor.unit!r} (known: {', '.join(units)})")
        _check_limit_names(file, where, sensor.limits)
    for pname, profile in spec.limit_profiles.items():
        for sid, limits in profile.items():
            where = f"equipment_types.{tid}.limit_profiles.{pname}.{sid}"
            if sid not in spec.sensors:
                raise CatalogError(file, where, f"unknown sensor {sid!r} for type {tid!r}")
            lo, hi = spec.sensors[sid].physical
            for lim in limits:
                for level in (lim.alarm, lim.power_off, lim.restore):
                    if level is not None and not lo <= level <= hi:
                        raise CatalogError(file, where, f"limit {lim.name!r} level {level} is outside "
                                                        f"physical range [{lo}, {hi}]")
            _check_limit_names(file, where, limits)


def _check_limit_names(file: Path, where: str, limits: tuple[Limit, ...]) -> None:
    names = [lim.name for lim in limits]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise CatalogError(file, where, f"duplicate limit name {sorted(dup)[0]!r}")


def _check_site(file: Path, site: Site, types: dict[str, EquipmentType]) -> None:
    seen: dict[str, str] = {}
    area_ids: set[str] = set()
    for ai, area in enumerate(site.areas):
        if area.id in area_ids:
            raise CatalogError(file, f"site.areas[{ai}].id", f"duplicate area id {area.id!r}")
        area_ids.add(area.id)
        for li, line in enumerate(area.lines):
            for ei, eq in enumerate(line.equipment):
                where = f"site.areas[{ai}].lines[{li}].equipment[{ei}]"
                if eq.id in seen:
                    raise CatalogError(file, f"{where}.id", f"duplicate equipment id {eq.id!r} (also at {seen[eq.id]})")
                seen[eq.id] = where
                spec = types.get(eq.type)
                if spec is None:
                    raise CatalogError(file, f"{where}.type", f"unknown equipment type {eq.type!r}")
                if site.kind not in spec.site_kinds:
                    raise CatalogError(file, f"{where}.type", f"type {eq.type!r} does not belong in a {site.kind}")
                if eq.limit_profile is not None and eq.limit_profile not in spec.limit_profiles:
                    known = ", ".join(spec.limit_profiles) or "none"
                    raise CatalogError(file, f"{where}.limit_profile",
                                       f"unknown limit profile {eq.limit_profile!r} (known: {known})")
                for sid in eq.sensors_enabled or ():
                    if sid not in spec.sensors:
                        raise CatalogError(file, f"{where}.sensors_enabled", f"unknown sensor {sid!r}")
    for ai, area in enumerate(site.areas):
        for li, line in enumerate(area.lines):
            for ei, eq in enumerate(line.equipment):
                for ri, other in enumerate(eq.redundant_with):
                    if other not in seen:
                        raise CatalogError(file, f"site.areas[{ai}].lines[{li}].equipment[{ei}].redundant_with[{ri}]",
                                           f"unknown equipment {other!r}")


@cache
def builtin_catalog() -> Catalog:
    """The shipped reference catalog (one coal mine, one steel plant), loaded once per process."""
    return load_catalog(BUILTIN_DIR)
