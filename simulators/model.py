"""Equipment models: how each catalog equipment type's sensors move, vectorised across devices.

One :class:`TypeGroup` holds every simulated device of one equipment type (across sites and replicas)
as numpy arrays, so a tick costs a handful of array operations per sensor, not a Python loop per
device. The behaviour is data (``models.yaml``): each sensor follows a driver (the site's shift load,
the daily cycle, the main fan's air volume, the equipment's duty cycle or another sensor of the same
equipment) through a first-order lag, with slow process wander and white measurement noise, all sized
as fractions of the sensor's catalog normal range. Faults act through :class:`FaultInputs`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smartmine.catalog import Catalog
from smartmine.catalog.model import EquipmentType
from smartmine.errors import UsageError

MODELS_FILE = Path(__file__).with_name("models.yaml")
# Noise is drawn per device in blocks of this many ticks: one generator call per device per block
# keeps every device's stream its own while the tick loop stays vectorised.
NOISE_BLOCK = 256
# The air-volume ratio under which a gas reading stops growing: the fan has stopped, the gas still
# diffuses, and a division by ~0 would be no model at all.
MIN_VENTILATION = 0.05

SITE_DRIVERS = ("const", "load", "daily", "ventilation")
EQUIPMENT_DRIVERS = ("cycle", "running")


class ModelError(UsageError):
    """``models.yaml`` does not fit the catalog or itself; the message names the type and sensor."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SensorModel(_Strict):
    driver: str = "const"
    at: tuple[float, float] = (0.5, 0.5)
    relation: Literal["linear", "inverse"] = "linear"
    spread: float = Field(0.05, ge=0)
    tau_s: float = Field(0.0, ge=0)
    noise: float = Field(0.01, ge=0)
    wander: float = Field(0.03, ge=0)
    wander_tau_s: float = Field(900.0, gt=0)
    rate_of: str | None = None
    rate_scale: float = 1.0
    rate_per_h: tuple[float, float] | None = None
    initial: tuple[float, float] | None = None
    bearing: bool = False

    @property
    def integrating(self) -> bool:
        return self.rate_of is not None or self.rate_per_h is not None


class CycleModel(_Strict):
    shape: Literal["trapezoid", "square", "sawtooth"]
    period_s: float = Field(gt=0)
    duty: float = Field(gt=0, le=1)
    ramp: float = Field(0.1, ge=0, lt=0.5)


class RunningModel(_Strict):
    sensor: str
    on_above: float
    off_below: float

    @model_validator(mode="after")
    def _hysteresis(self) -> RunningModel:
        if self.off_below >= self.on_above:
            raise ValueError("off_below must be below on_above (hysteresis)")
        return self


class TypeModel(_Strict):
    cycle: CycleModel | None = None
    running: RunningModel | None = None
    sensors: dict[str, dict[str, Any]]
    # Per catalog limit profile (where the equipment hangs): sensor -> fields that differ there.
    profiles: dict[str, dict[str, dict[str, Any]]] = {}


class SiteKindModel(_Strict):
    shift_load: tuple[float, float, float]
    handover_dip: float = Field(ge=0, le=1)
    handover_s: float = Field(gt=0)
    load_wander: float = Field(ge=0)


class SiteDriverSource(_Strict):
    type: str
    sensor: str


class ModelsFile(_Strict):
    defaults: dict[str, Any] = {}
    site_kinds: dict[str, SiteKindModel]
    shift_start_hours: tuple[int, int, int]
    site_drivers: dict[str, SiteDriverSource] = {}
    types: dict[str, TypeModel]


@dataclass(frozen=True)
class Models:
    """The validated models file: per type, its sensor models in dependency order."""

    site_kinds: dict[str, SiteKindModel]
    shift_start_hours: tuple[int, int, int]
    ventilation: SiteDriverSource | None
    types: dict[str, TypeModel]
    sensors: dict[str, dict[str, SensorModel]]

    def follows_duty_cycle(self, tid: str, sid: str) -> bool:
        """Whether the sensor moves with the equipment starting and stopping (directly or via another sensor).

        Such a sensor leaves its catalog normal range, which describes the running machine, whenever the
        machine stands (a parked lance, a stopped pump, a mill between two slabs).
        """
        m = self.sensors[tid][sid]
        if m.driver in EQUIPMENT_DRIVERS:
            return True
        src = m.rate_of or (m.driver.removeprefix("sensor:") if m.driver.startswith("sensor:") else None)
        return src is not None and self.follows_duty_cycle(tid, src)


@cache
def load_models(file: Path = MODELS_FILE) -> ModelsFile:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        return ModelsFile.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{file}: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ModelError(f"{file}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def resolve_models(catalog: Catalog, file: Path = MODELS_FILE) -> Models:
    """Check the models against the catalog: every type and sensor modelled, drivers known, no cycles."""
    data = load_models(file)
    sensors: dict[str, dict[str, SensorModel]] = {}
    for tid, spec in catalog.types.items():
        where = f"{file.name}: types.{tid}"
        tmodel = data.types.get(tid)
        if tmodel is None:
            raise ModelError(f"{where}: equipment type of the catalog has no model")
        unknown = set(tmodel.sensors) - set(spec.sensors)
        if unknown:
            raise ModelError(f"{where}: sensors {sorted(unknown)} are not in the catalog type")
        models: dict[str, SensorModel] = {}
        for sid in spec.sensors:
            if sid not in tmodel.sensors:
                raise ModelError(f"{where}.sensors.{sid}: catalog sensor has no model")
            try:
                models[sid] = SensorModel.model_validate({**data.defaults, **tmodel.sensors[sid]})
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                raise ModelError(f"{where}.sensors.{sid}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            if spec.sensors[sid].kind == "counter" and (models[sid].noise or models[sid].wander):
                raise ModelError(f"{where}.sensors.{sid}: a counter's register is exact; set noise and wander to 0")
        sensors[tid] = _dependency_order(where, models, tmodel, spec)
        for profile, overrides in tmodel.profiles.items():
            pwhere = f"{where}.profiles.{profile}"
            if profile not in spec.limit_profiles:
                raise ModelError(f"{pwhere}: not a limit profile of the catalog type "
                                 f"(known: {', '.join(spec.limit_profiles)})")
            variant = dict(models)
            for sid, fields in overrides.items():
                if sid not in spec.sensors:
                    raise ModelError(f"{pwhere}.{sid}: not a sensor of the catalog type")
                try:
                    variant[sid] = SensorModel.model_validate({**data.defaults, **tmodel.sensors[sid], **fields})
                except ValidationError as exc:
                    err = exc.errors(include_url=False)[0]
                    raise ModelError(f"{pwhere}.{sid}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            sensors[variant_key(tid, profile)] = _dependency_order(pwhere, variant, tmodel, spec)
    vent = data.site_drivers.get("ventilation")
    if vent is not None and (vent.type not in catalog.types or vent.sensor not in catalog.types[vent.type].sensors):
        raise ModelError(f"{file.name}: site_drivers.ventilation: {vent.type}.{vent.sensor} is not in the catalog")
    kinds = {s.kind for s in catalog.sites.values()}
    missing = kinds - set(data.site_kinds)
    if missing:
        raise ModelError(f"{file.name}: site_kinds: no shift model for {sorted(missing)}")
    return Models(data.site_kinds, data.shift_start_hours, vent, data.types, sensors)


def variant_key(tid: str, profile: str | None) -> str:
    """The key of a type's sensor models at one limit profile (``gas_monitor:intake``), or of the type."""
    return f"{tid}:{profile}" if profile else tid


def _dependency_order(where: str, models: dict[str, SensorModel], tmodel: TypeModel,
                      spec: EquipmentType) -> dict[str, SensorModel]:
    deps: dict[str, str | None] = {}
    for sid, m in models.items():
        dep: str | None = None
        if m.driver.startswith("sensor:"):
            dep = m.driver.removeprefix("sensor:")
        elif m.driver == "cycle" and tmodel.cycle is None:
            raise ModelError(f"{where}.sensors.{sid}: driver 'cycle' but the type has no cycle")
        elif m.driver == "running" and tmodel.running is None:
            raise ModelError(f"{where}.sensors.{sid}: driver 'running' but the type has no running rule")
        elif m.driver not in SITE_DRIVERS + EQUIPMENT_DRIVERS:
            raise ModelError(f"{where}.sensors.{sid}: unknown driver {m.driver!r}")
        if m.rate_of is not None:
            dep = m.rate_of
        if dep is not None and dep not in models:
            raise ModelError(f"{where}.sensors.{sid}: depends on unknown sensor {dep!r}")
        deps[sid] = dep
    if tmodel.running is not None and tmodel.running.sensor not in spec.sensors:
        raise ModelError(f"{where}.running.sensor: {tmodel.running.sensor!r} is not a sensor of the type")
    ordered: dict[str, SensorModel] = {}
    while len(ordered) < len(models):
        progress = False
        for sid, dep in deps.items():
            if sid not in ordered and (dep is None or dep in ordered):
                ordered[sid] = models[sid]
                progress = True
        if not progress:
            raise ModelError(f"{where}: sensor drivers form a cycle among {sorted(set(models) - set(ordered))}")
    return ordered


def stable_hash(*parts: str) -> int:
    """A hash that is the same in every process and Python version (``hash()`` is salted)."""
    return zlib.crc32("/".join(parts).encode())


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated piece of equipment: where it publishes and which catalog entry it copies."""

    site: str           # the site id in topics (a replica gets a suffix)
    catalog_site: str
    area: str
    equipment: str
    type: str
    site_index: int     # index into the per-site driver arrays

    @property
    def publisher(self) -> str:
        """The publisher id (``src``): the scope of the device's sequence numbers."""
        return f"sim-{self.site}-{self.equipment}"


@dataclass
class FaultInputs:
    """What process faults do to a group this tick, per [device, sensor].

    ``target * mult + add`` acts before the lag (a change the process follows at its own pace);
    ``pv_add`` acts after it (a gas release the sensor sees at once).
    """

    mult: np.ndarray
    add: np.ndarray
    pv_add: np.ndarray
    active: bool = False

    def reset(self) -> None:
        if self.active:
            self.mult.fill(1.0)
            self.add.fill(0.0)
            self.pv_add.fill(0.0)
            self.active = False


@dataclass
class TypeGroup:
    """Every device of one equipment type, stepped together."""

    type: str
    devices: list[Device]
    sensor_ids: list[str]
    enabled: np.ndarray               # [dev, sensor] bool: sensors_enabled of the catalog entry
    normal_lo: np.ndarray
    span: np.ndarray
    physical_lo: np.ndarray
    physical_hi: np.ndarray
    period_ticks: np.ndarray          # [sensor]
    decimals: np.ndarray              # [sensor]
    phase: np.ndarray                 # [dev] sampling phase in ticks
    models: list[SensorModel]
    step_order: list[int]             # columns in dependency order (a driver before what it drives)
    type_model: TypeModel
    dt_s: float
    rngs: list[np.random.Generator]
    offsets: np.ndarray               # [dev, sensor] per-device position offset (spread)
    pv: np.ndarray                    # [dev, sensor] process value (lagged state + wander)
    lagged: np.ndarray                # [dev, sensor]
    wander: np.ndarray                # [dev, sensor] standardised OU state
    running: np.ndarray               # [dev] 0/1
    cycle_phase: np.ndarray           # [dev] 0..1
    faults: FaultInputs
    index: dict[str, int] = field(default_factory=dict)
    _noise: np.ndarray | None = None
    _noise_start: int = -NOISE_BLOCK

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.sensor_ids)}
        n_sens = len(self.sensor_ids)
        self._alpha = np.array([1.0 if m.tau_s <= 0 else 1.0 - math.exp(-self.dt_s / m.tau_s) for m in self.models])
        a = np.array([math.exp(-self.dt_s / m.wander_tau_s) for m in self.models])
        self._wander_a = a
        self._wander_b = np.sqrt(1.0 - a * a)
        self._noise_sd = np.array([m.noise for m in self.models]) * self.span
        self._wander_sd = np.array([m.wander for m in self.models]) * self.span
        self.scale = 10.0 ** self.decimals
        self.site_idx = np.array([d.site_index for d in self.devices], dtype=int)
        self.levels = _levels(self)
        assert self.pv.shape == (len(self.devices), n_sens)

    def noise(self, tick: int) -> tuple[np.ndarray, np.ndarray]:
        """This tick's standard-normal draws: (measurement noise, wander innovation), each [dev, sensor]."""
        if tick - self._noise_start >= NOISE_BLOCK or tick < self._noise_start:
            self._noise_start = tick - tick % NOISE_BLOCK
            n = len(self.sensor_ids)
            self._noise = np.stack([rng.standard_normal((NOISE_BLOCK, 2 * n)) for rng in self.rngs], axis=1)
        assert self._noise is not None
        row = self._noise[tick - self._noise_start]
        n = len(self.sensor_ids)
        return row[:, :n], row[:, n:]


def build_groups(catalog: Catalog, models: Models, sites: list[tuple[str, str, int]], seed: int,
                 dt_s: float) -> list[TypeGroup]:
    """One group per equipment type over ``sites`` = [(topic site id, catalog site id, site index)].

    Groups come in stepping order: a type that defines a site-wide driver (the main fan's air volume)
    goes before the types that read it.
    """
    profiles = {(site.id, e.id): e.limit_profile for site in catalog.sites.values() for a in site.areas
                for line in a.lines for e in line.equipment}
    by_key: dict[tuple[str, str], list[tuple[Device, Any]]] = {}
    for topic_site, catalog_site, index in sites:
        for eq in catalog.all_equipment(catalog_site):
            dev = Device(topic_site, catalog_site, eq.area, eq.id, eq.type, index)
            # Equipment whose location changes its behaviour (an intake-air gas monitor) gets its own group.
            profile = profiles.get((catalog_site, eq.id))
            key = variant_key(eq.type, profile if profile in models.types[eq.type].profiles else None)
            by_key.setdefault((eq.type, key), []).append((dev, eq))
    first = models.ventilation.type if models.ventilation else None
    types = list(catalog.types)
    order = sorted(by_key, key=lambda k: (k[0] != first, types.index(k[0]), k[1]))
    return [_build_group(catalog.types[t], t, key, by_key[(t, key)], models, seed, dt_s) for t, key in order]


def _build_group(spec: EquipmentType, tid: str, key: str, members: list[tuple[Device, Any]], models: Models,
                 seed: int, dt_s: float) -> TypeGroup:
    ordered = models.sensors[key]
    # Columns (and payload keys) follow the catalog; stepping follows the dependency order.
    sensor_ids = list(spec.sensors)
    sensor_models = {s: ordered[s] for s in sensor_ids}
    step_order = [sensor_ids.index(s) for s in ordered]
    specs = [spec.sensors[s] for s in sensor_ids]
    n_dev, n_sens = len(members), len(sensor_ids)
    lo = np.array([s.normal[0] for s in specs])
    hi = np.array([s.normal[1] for s in specs])
    plo = np.array([s.physical[0] for s in specs])
    phi = np.array([s.physical[1] for s in specs])
    # A state sensor (smoke) has an empty normal range: scale its noise and decimals by the physical one.
    span = np.where(hi > lo, hi - lo, phi - plo)
    decimals = np.clip(3 - np.floor(np.log10(span)), 0, 6).astype(int)
    period = np.array([max(1, round(s.sample_period_s / dt_s)) for s in specs])
    enabled = np.array([[sid in eq.sensors for sid in sensor_ids] for _, eq in members], dtype=bool)

    rngs: list[np.random.Generator] = []
    offsets = np.zeros((n_dev, n_sens))
    phase = np.zeros(n_dev, dtype=int)
    cycle_phase = np.zeros(n_dev)
    lagged = np.zeros((n_dev, n_sens))
    wander = np.zeros((n_dev, n_sens))
    tmodel = models.types[tid]
    for i, (dev, _) in enumerate(members):
        # Each device has its own generator: adding a device elsewhere never changes this one's values.
        rng = np.random.default_rng(np.random.SeedSequence(
            entropy=seed, spawn_key=(stable_hash(dev.site), stable_hash(dev.equipment))))
        rngs.append(rng)
        spread = np.array([m.spread for m in sensor_models.values()])
        offsets[i] = rng.uniform(-1.0, 1.0, n_sens) * spread
        phase[i] = int(rng.integers(0, int(period.max())))
        cycle_phase[i] = rng.uniform()
        wander[i] = rng.standard_normal(n_sens)
        for j, m in enumerate(sensor_models.values()):
            if m.initial is not None:
                lagged[i, j] = rng.uniform(*m.initial)
    group = TypeGroup(
        type=tid, devices=[d for d, _ in members], sensor_ids=sensor_ids, enabled=enabled, normal_lo=lo, span=span,
        physical_lo=plo, physical_hi=phi, period_ticks=period, decimals=decimals, phase=phase,
        models=list(sensor_models.values()), step_order=step_order, type_model=tmodel, dt_s=dt_s, rngs=rngs,
        offsets=offsets,
        pv=np.zeros((n_dev, n_sens)), lagged=lagged, wander=wander, running=np.zeros(n_dev),
        cycle_phase=cycle_phase,
        faults=FaultInputs(np.ones((n_dev, n_sens)), np.zeros((n_dev, n_sens)), np.zeros((n_dev, n_sens))),
    )
    if tmodel.running is not None:
        # Start half the pumps running so a fresh simulation does not begin with every pump idle.
        group.running[:] = (cycle_phase > 0.5).astype(float)
    return group


@dataclass
class SiteDrivers:
    """Site-wide drivers for one tick, one entry per site (replica)."""

    load: np.ndarray
    daily: np.ndarray
    ventilation: np.ndarray


class ShiftClock:
    """The production load and daily cycle of each site, from its shifts and its local time."""

    def __init__(self, catalog: Catalog, models: Models, sites: list[tuple[str, str, int]], seed: int,
                 dt_s: float) -> None:
        self.models = models
        self.zones = [ZoneInfo(catalog.sites[c].timezone) for _, c, _ in sites]
        self.kinds = [models.site_kinds[catalog.sites[c].kind] for _, c, _ in sites]
        self.rngs = [np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(stable_hash(s),)))
                     for s, _, _ in sites]
        self.wander = np.array([rng.standard_normal() for rng in self.rngs])
        self._a = math.exp(-dt_s / 1800.0)  # the site's output wanders on a half-hour scale
        self._offsets: list[timedelta | None] = [None] * len(sites)
        self._offset_day: list[int] = [-1] * len(sites)

    def drivers(self, when: datetime) -> SiteDrivers:
        n = len(self.zones)
        load = np.empty(n)
        daily = np.empty(n)
        hours = self.models.shift_start_hours
        for i, (zone, kind) in enumerate(zip(self.zones, self.kinds, strict=True)):
            local = when.astimezone(zone)
            h = local.hour + local.minute / 60.0 + local.second / 3600.0
            shift = 2 if h >= hours[2] else (1 if h >= hours[1] else 0)
            since = (h - hours[shift]) * 3600.0
            # Production stops and restarts around the handover: a dip at the start of every shift.
            dip = kind.handover_dip * max(0.0, 1.0 - since / kind.handover_s)
            innovation = self.rngs[i].standard_normal()
            self.wander[i] = self._a * self.wander[i] + math.sqrt(1 - self._a ** 2) * innovation
            load[i] = min(1.0, max(0.0, kind.shift_load[shift] * (1.0 - dip) + kind.load_wander * self.wander[i]))
            # Peak at 15:00 local, trough at 03:00.
            daily[i] = 0.5 + 0.5 * math.cos((h - 15.0) / 24.0 * 2.0 * math.pi)
        return SiteDrivers(load, daily, np.ones(n))


def _cycle_wave(model: CycleModel, phase: np.ndarray) -> np.ndarray:
    if model.shape == "square":
        return (phase < model.duty).astype(float)
    if model.shape == "sawtooth":
        return np.where(phase < model.duty, phase / model.duty, 0.0)
    # trapezoid: ramp up, run, ramp down, rest
    up = model.ramp * model.duty
    run_end = model.duty - up
    return np.where(phase < up, phase / up,
                    np.where(phase < run_end, 1.0, np.where(phase < model.duty, (model.duty - phase) / up, 0.0)))


# Driver columns of the per-device driver matrix built each tick (see step_group).
_DRIVER_COLUMN = {"const": 0, "load": 1, "daily": 2, "ventilation": 3, "cycle": 4, "running": 5}


@dataclass
class _Level:
    """Sensors whose drivers are all known once the previous levels are stepped: stepped as one block."""

    cols: np.ndarray            # non-integrating columns of this level
    driver_col: np.ndarray      # per col: column of the driver matrix, or -1 for a sensor driver
    sensor_pos: np.ndarray      # positions in cols with a sensor driver
    sensor_src: np.ndarray      # their source columns
    inverse: np.ndarray         # per col: bool
    at0: np.ndarray
    slope: np.ndarray
    integrating: list[int]      # columns integrated one by one (counters, levels)


def _levels(group: TypeGroup) -> list[_Level]:
    depth: dict[int, int] = {}
    for j in group.step_order:
        m = group.models[j]
        src = m.rate_of or (m.driver.removeprefix("sensor:") if m.driver.startswith("sensor:") else None)
        depth[j] = 0 if src is None else depth[group.index[src]] + 1
    levels = []
    for d in range(max(depth.values()) + 1):
        members = [j for j in group.step_order if depth[j] == d]
        cols = [j for j in members if not group.models[j].integrating]
        models = [group.models[j] for j in cols]
        drv = np.array([_DRIVER_COLUMN.get(m.driver, -1) for m in models], dtype=int)
        sensor_pos = np.flatnonzero(drv < 0)
        levels.append(_Level(
            cols=np.array(cols, dtype=int), driver_col=drv, sensor_pos=sensor_pos,
            sensor_src=np.array([group.index[models[k].driver.removeprefix("sensor:")] for k in sensor_pos], dtype=int),
            inverse=np.array([m.relation == "inverse" for m in models], dtype=bool),
            at0=np.array([m.at[0] for m in models]), slope=np.array([m.at[1] - m.at[0] for m in models]),
            integrating=[j for j in members if group.models[j].integrating]))
    return levels


def step_group(group: TypeGroup, tick: int, site: SiteDrivers) -> np.ndarray:
    """Advance the group by one tick; return the measured values [dev, sensor] (not yet faulted).

    Sensors are stepped level by level (a driver before what it drives), each level as one block of
    array operations, so the cost per tick hardly depends on the number of sensors or devices.
    """
    eps, innov = group.noise(tick)
    idx = group.site_idx
    n = len(group.devices)
    tm = group.type_model
    drivers = np.zeros((n, len(_DRIVER_COLUMN)))
    drivers[:, 1] = site.load[idx]
    drivers[:, 2] = site.daily[idx]
    drivers[:, 3] = site.ventilation[idx]
    if tm.cycle is not None:
        group.cycle_phase = (group.cycle_phase + group.dt_s / tm.cycle.period_s) % 1.0
        drivers[:, 4] = _cycle_wave(tm.cycle, group.cycle_phase)
    if tm.running is not None:
        j = group.index[tm.running.sensor]
        pos = (group.pv[:, j] - group.normal_lo[j]) / group.span[j]
        group.running = np.where(pos > tm.running.on_above, 1.0,
                                 np.where(pos < tm.running.off_below, 0.0, group.running))
        drivers[:, 5] = group.running
    f = group.faults
    group.wander = group.wander * group._wander_a + group._wander_b * innov
    pv, lagged, lo, span = group.pv, group.lagged, group.normal_lo, group.span
    for level in group.levels:
        for j in level.integrating:
            _integrate(group, j, drivers)
        cols = level.cols
        if cols.size == 0:
            continue
        d = drivers[:, np.maximum(level.driver_col, 0)]
        if level.sensor_pos.size:
            src = level.sensor_src
            d[:, level.sensor_pos] = (pv[:, src] - lo[src]) / span[src]
        pos0 = level.at0 + group.offsets[:, cols]
        lo_c, span_c = lo[cols], span[cols]
        linear = lo_c + span_c * (pos0 + level.slope * d)
        if level.inverse.any():
            # A gas diluted by the air: its level scales with 1 / air volume.
            inverse = (lo_c + span_c * pos0) / np.maximum(d, MIN_VENTILATION)
            linear = np.where(level.inverse, inverse, linear)
        target = linear * f.mult[:, cols] + f.add[:, cols]
        if tick == 0:
            state = target  # start settled, not ramping up from zero
        else:
            state = lagged[:, cols]
            state += (target - state) * group._alpha[cols]
        lagged[:, cols] = state
        pv[:, cols] = state + group.wander[:, cols] * group._wander_sd[cols] + f.pv_add[:, cols]
    measured = pv + eps * group._noise_sd
    return np.clip(measured, group.physical_lo, group.physical_hi)


def _integrate(group: TypeGroup, j: int, drivers: np.ndarray) -> None:
    """A counter (integral of another sensor) or a level (filled and emptied at driven rates)."""
    m = group.models[j]
    f = group.faults
    if m.rate_of is not None:
        rate = group.pv[:, group.index[m.rate_of]] * m.rate_scale
        # A meter only counts up: a decrease in its readings is a data fault, never the process.
        group.lagged[:, j] += np.maximum(rate * f.mult[:, j] + f.add[:, j], 0.0) * group.dt_s
    else:
        assert m.rate_per_h is not None
        d = drivers[:, _DRIVER_COLUMN.get(m.driver, 0)]
        r0, r1 = m.rate_per_h
        rate = (r0 + (r1 - r0) * d) * group.span[j] / 3600.0
        group.lagged[:, j] += (rate * f.mult[:, j] + f.add[:, j]) * group.dt_s
        np.clip(group.lagged[:, j], group.physical_lo[j], group.physical_hi[j], out=group.lagged[:, j])
    group.pv[:, j] = group.lagged[:, j]
