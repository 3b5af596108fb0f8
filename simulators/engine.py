"""The simulation loop: sites and replicas, faults, and the telemetry messages of every tick.

:class:`Simulation` steps every equipment type group once per tick (the catalog's shortest sample period),
applies the scenario's faults, and turns each device's due readings into a wire-format message. It never
reads the clock or a global random state: the same catalog, seed, scenario, start and duration give the
same bytes. Pacing (``--speed``) and publishing belong to :mod:`simulators.runner`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from simulators.faults import (
    FAULT_KINDS,
    BearingDegradation,
    ClockSkew,
    Duplicate,
    Fault,
    Late,
    MessageLoss,
    OutOfOrder,
    ProcessFault,
    SensorFault,
    Target,
    TransportFault,
    VentilationFailure,
    bpfo_hz,
)
from simulators.model import (
    Device,
    ShiftClock,
    SiteDrivers,
    TypeGroup,
    build_groups,
    resolve_models,
    stable_hash,
    step_group,
)
from simulators.scenario import PlannedFault, Scenario, plan
from smartmine.catalog import Catalog
from smartmine.errors import UsageError
from smartmine.wire import DEFAULT_PREFIX, format_ts, topic

Message = tuple[str, bytes]
log = logging.getLogger(__name__)


@dataclass
class _Pending:
    release_tick: int
    order: int
    message: Message


@dataclass
class Stats:
    ticks: int = 0
    messages: int = 0
    readings: int = 0


def replica_site_id(site: str, replica: int) -> str:
    """The topic site id of a replica: the catalog id itself for replica 0, then ``<site>_r001``..."""
    return site if replica == 0 else f"{site}_r{replica:03d}"


class Simulation:
    """Simulated sites producing telemetry, tick by tick. Iterate :meth:`batches` or call :meth:`step`."""

    def __init__(self, catalog: Catalog, *, sites: str | list[str] = "all", seed: int = 0,
                 scenario: Scenario | None = None, start: datetime, duration_s: float | None = None,
                 scale: int = 1, prefix: str = DEFAULT_PREFIX) -> None:
        if start.tzinfo is None:
            raise UsageError("start time has no timezone; give one (e.g. 2026-11-27T08:00:00Z)")
        if scale < 1:
            raise UsageError(f"--scale {scale}: must be at least 1")
        names = list(catalog.sites) if sites == "all" else ([sites] if isinstance(sites, str) else list(sites))
        for name in names:
            if name not in catalog.sites:
                raise UsageError(f"unknown site {name!r} (known: {', '.join(catalog.sites)}, or all)")
        self.catalog = catalog
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.prefix = prefix
        self.models = resolve_models(catalog)
        periods_ms = [round(s.sample_period_s * 1000) for t in catalog.types.values() for s in t.sensors.values()]
        self.dt_s = math.gcd(*periods_ms) / 1000.0
        self.n_ticks = None if duration_s is None else math.ceil(duration_s / self.dt_s)
        self.site_list = [(replica_site_id(n, r), n, i)
                          for i, (n, r) in enumerate((n, r) for n in names for r in range(scale))]
        self.groups = build_groups(catalog, self.models, self.site_list, seed, self.dt_s)
        self.clock = ShiftClock(catalog, self.models, self.site_list, seed, self.dt_s)
        self._where = {(d.site, d.equipment): (g, i) for g in self.groups for i, d in enumerate(g.devices)}
        self._prepare_encoding()
        self.planned: list[PlannedFault] = []
        self.faults: list[Fault] = []
        if scenario is not None:
            planned = plan(scenario, catalog, self.start, names)
            # A scenario may cover several sites; a process simulating one of them runs that site's faults.
            self.planned = [p for p in planned if p.site in names]
            skipped = len(planned) - len(self.planned)
            if skipped:
                log.info("scenario %s: %d faults are at sites not simulated here", scenario.name, skipped)
            self.faults = [self._instantiate(p) for p in self.planned]
        self.tick = 0
        # Settle every model once before the first tick, so faults starting at 0 s see a running plant.
        for _ in self._advance(0, self.clock.drivers(self.start)):
            pass
        self.stats = Stats()
        self._pending: list[_Pending] = []
        self._held: dict[tuple[int, int], Message] = {}
        self._order = 0

    # ------------------------------------------------------------------ set-up

    def _prepare_encoding(self) -> None:
        self._topics: list[list[str]] = []
        self._src_part: list[list[str]] = []
        self._keys: list[list[str]] = []
        self._seq: list[list[int]] = []
        for g in self.groups:
            self._topics.append([topic(d.site, d.area, d.equipment, "telemetry", self.prefix) for d in g.devices])
            self._src_part.append([f',"src":{json.dumps(d.publisher)},"readings":{{' for d in g.devices])
            self._keys.append([f'"{s}":' for s in g.sensor_ids])
            self._seq.append([0] * len(g.devices))
        self._vent_group: tuple[TypeGroup, int, np.ndarray] | None = None
        vent = self.models.ventilation
        for g in self.groups:
            if vent is not None and g.type == vent.type:
                j = g.index[vent.sensor]
                m = g.models[j]
                # The fan's healthy air volume: what its model aims at without a fault.
                nominal = g.normal_lo[j] + g.span[j] * (m.at[0] + g.offsets[:, j])
                self._vent_group = (g, j, nominal)

    def _instantiate(self, p: PlannedFault) -> Fault:
        cls = FAULT_KINDS[p.kind]
        targets = []
        for eq in p.equipment:
            g, i = self._where[(p.site, eq)]
            entry = self.catalog.equipment(p.site, eq)
            assert entry is not None
            roles: dict[str, int] = {}
            cat: dict[str, Any] = {}
            if p.sensor is not None:
                roles["main"] = g.index[p.sensor]
                cat["main"] = entry.sensors[p.sensor]
            for extra in cls.extra_sensors:
                if extra in entry.sensors and extra != p.sensor:
                    roles[extra] = g.index[extra]
                    cat[extra] = entry.sensors[extra]
            targets.append(Target(g, i, roles, cat))
        start_tick = self._tick_of(p.start)
        end_tick = self._tick_of(p.end)
        rng = np.random.default_rng(np.random.SeedSequence(
            entropy=self.seed, spawn_key=(stable_hash("fault", p.kind, p.site, *p.equipment), p.index)))
        return cls(params=p.params, targets=targets, start_tick=start_tick, end_tick=end_tick, rng=rng)

    def _tick_of(self, when: datetime) -> int:
        return math.ceil((when - self.start).total_seconds() / self.dt_s - 1e-9)

    @property
    def devices(self) -> list[Device]:
        return [d for g in self.groups for d in g.devices]

    # ------------------------------------------------------------------ ground truth

    def truth(self) -> list[dict[str, Any]]:
        """Every injected fault as labelled intervals, clipped to the simulated span."""
        end = None if self.n_ticks is None else self.start + timedelta(seconds=self.n_ticks * self.dt_s)
        out: list[dict[str, Any]] = []
        for p in self.planned:
            cls = FAULT_KINDS[p.kind]
            for eq in p.equipment:
                entry = self.catalog.equipment(p.site, eq)
                assert entry is not None
                extra = cls.resolved_params(p.params, entry.sensors, p.sensor)
                rotating = entry.type_spec.rotating
                if cls is BearingDegradation and rotating is not None and rotating.bearing is not None:
                    # Where a spectrum would show it (the telemetry carries RMS and kurtosis only).
                    extra["bpfo_hz"] = round(bpfo_hz(rotating.bearing), 2)
                out.append(self._interval(p, entry.area, eq, p.sensor, p.kind, p.start, p.end, cls.layer, end,
                                          extra))
            if cls is VentilationFailure:
                out.extend(self._downstream_methane(p, end))
        return [o for o in out if o]

    def _interval(self, p: PlannedFault, area: str, equipment: str, sensor: str | None, kind: str,
                  t0: datetime, t1: datetime, layer: str, sim_end: datetime | None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if sim_end is not None:
            if t0 >= sim_end:
                return {}
            t1 = min(t1, sim_end)
        params = p.params.model_dump(exclude_none=True)
        params.update(extra or {})
        return {"site": p.site, "area": area, "equipment": equipment, "sensor": sensor, "kind": kind,
                "layer": layer, "start": format_ts(t0), "end": format_ts(t1), "severity": p.severity,
                "params": params, "scenario_index": p.index}

    def _downstream_methane(self, p: PlannedFault, sim_end: datetime | None) -> list[dict[str, Any]]:
        """A failing main fan raises methane at every gas monitor of the mine that its air dilutes."""
        out = []
        for g in self.groups:
            for j, m in enumerate(g.models):
                if m.driver != "ventilation" or m.relation != "inverse":
                    continue
                # The gas takes a few time constants to clear after the fan is back.
                settle = timedelta(seconds=5 * m.tau_s)
                for d in g.devices:
                    if d.site == p.site:
                        out.append(self._interval(p, d.area, d.equipment, g.sensor_ids[j], "methane_accumulation",
                                                  p.start, p.end + settle, "process", sim_end,
                                                  {"cause": f"{p.kind} at {p.equipment[0]}"}))
        return out

    # ------------------------------------------------------------------ stepping

    def time_of(self, tick: int) -> datetime:
        return self.start + timedelta(seconds=tick * self.dt_s)

    @property
    def done(self) -> bool:
        return self.n_ticks is not None and self.tick >= self.n_ticks

    def batches(self) -> Iterator[list[Message]]:
        """One list of messages per tick until the duration is over (forever without one)."""
        while not self.done:
            yield self.step()
        tail = self.finish()
        if tail:
            yield tail

    def step(self) -> list[Message]:
        tick = self.tick
        when = self.time_of(tick)
        ts = format_ts(when)
        site = self.clock.drivers(when)
        for g in self.groups:
            g.faults.reset()
        active = [f for f in self.faults if f.active(tick)]
        for f in active:
            if isinstance(f, ProcessFault):
                f.apply(tick, self.dt_s)
        out: list[Message] = []
        self._release(tick, out)
        transport = [f for f in active if isinstance(f, TransportFault)]
        for gi, (g, values) in enumerate(zip(self.groups, self._advance(tick, site), strict=True)):
            missing = np.zeros(values.shape, dtype=bool)
            for f in active:
                if isinstance(f, SensorFault):
                    for t in f.targets:
                        if t.group is g:
                            f.apply(tick, self.dt_s, values, missing, t)
            self._emit(gi, g, tick, ts, values, missing, transport, out)
        self.tick += 1
        self.stats.ticks += 1
        self.stats.messages += len(out)
        return out

    def _advance(self, tick: int, site: SiteDrivers) -> Iterator[np.ndarray]:
        """Step each group in order, publishing the main fans' air volume to the types that read it."""
        for g in self.groups:
            values = step_group(g, tick, site)
            if self._vent_group is not None and self._vent_group[0] is g:
                _, j, nominal = self._vent_group
                ratio = g.pv[:, j] / nominal
                counts = np.bincount(g.site_idx, minlength=len(self.site_list))
                sums = np.bincount(g.site_idx, weights=ratio, minlength=len(self.site_list))
                site.ventilation = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
            yield values

    def finish(self) -> list[Message]:
        """Messages still held back by transport faults at the end: they arrive now."""
        out: list[Message] = []
        for p in sorted(self._pending, key=lambda p: (p.release_tick, p.order)):
            out.append(p.message)
        out.extend(self._held.values())
        self._pending.clear()
        self._held.clear()
        self.stats.messages += len(out)
        return out

    def _release(self, tick: int, out: list[Message]) -> None:
        if not self._pending:
            return
        due = [p for p in self._pending if p.release_tick <= tick]
        if due:
            self._pending = [p for p in self._pending if p.release_tick > tick]
            out.extend(p.message for p in sorted(due, key=lambda p: (p.release_tick, p.order)))

    def _emit(self, gi: int, g: TypeGroup, tick: int, ts: str, values: np.ndarray, missing: np.ndarray,
              transport: list[TransportFault], out: list[Message]) -> None:
        due = ((tick + g.phase)[:, None] % g.period_ticks[None, :] == 0) & g.enabled & ~missing
        rows = np.flatnonzero(due.any(axis=1))
        if rows.size == 0:
            return
        rounded = (np.round(values[rows] * g.scale) / g.scale).tolist()
        due_rows = due[rows].tolist()
        self.stats.readings += int(due.sum())
        keys = self._keys[gi]
        topics, src, seqs = self._topics[gi], self._src_part[gi], self._seq[gi]
        head = '{"v":1,"ts":"' + ts + '","seq":'
        touched = {t.device: f for f in transport for t in f.targets if t.group is g} if transport else {}
        for r, i in enumerate(rows.tolist()):
            vals, mask = rounded[r], due_rows[r]
            body = ",".join([k + repr(v) for k, v, m in zip(keys, vals, mask, strict=True) if m])
            seq = seqs[i]
            seqs[i] = seq + 1
            if i in touched:
                self._transport(gi, g, i, tick, seq, src[i], body, out, transport)
                continue
            out.append((topics[i], (head + str(seq) + src[i] + body + "}}").encode()))

    def _transport(self, gi: int, g: TypeGroup, i: int, tick: int, seq: int, src_part: str, body: str,
                   out: list[Message], transport: list[TransportFault]) -> None:
        """The slow path for a device behind a faulty link: each active transport fault has its say."""
        faults = [f for f in transport if any(t.group is g and t.device == i for t in f.targets)]
        when = self.time_of(tick)
        for f in faults:
            if isinstance(f, ClockSkew):
                when += timedelta(seconds=f.params.offset_s)
        msg: Message = (self._topics[gi][i],
                        ('{"v":1,"ts":"' + format_ts(when) + '","seq":' + str(seq) + src_part + body + "}}").encode())
        copies = [msg]
        for f in faults:
            draw = f.rng.uniform()
            if isinstance(f, MessageLoss) and draw < f.params.probability:
                return
            if isinstance(f, Duplicate) and draw < f.params.probability:
                copies.append(msg)
        key = (gi, i)
        for f in faults:
            if isinstance(f, Late):
                delay = max(1, round(f.params.delay_s / self.dt_s))
                for m in copies:
                    self._order += 1
                    self._pending.append(_Pending(tick + delay, self._order, m))
                return
        for f in faults:
            if isinstance(f, OutOfOrder) and key not in self._held and f.rng.uniform() < f.params.probability:
                self._held[key] = copies[0]
                copies = copies[1:]
        out.extend(copies)
        if key in self._held and self._held[key] is not msg:
            out.append(self._held.pop(key))


def generate(catalog: Catalog | None = None, *, sites: str | list[str] = "all", seed: int = 0,
             scenario: Scenario | str | None = None, start: datetime | str, duration: float | str,
             scale: int = 1, prefix: str = DEFAULT_PREFIX) -> Iterator[tuple[str, dict[str, Any]]]:
    """Telemetry as ``(topic, payload)`` pairs in publishing order; for tests and offline scoring."""
    for t, payload in generate_raw(catalog, sites=sites, seed=seed, scenario=scenario, start=start,
                                   duration=duration, scale=scale, prefix=prefix):
        yield t, json.loads(payload)


def generate_raw(catalog: Catalog | None = None, *, sites: str | list[str] = "all", seed: int = 0,
                 scenario: Scenario | str | None = None, start: datetime | str, duration: float | str,
                 scale: int = 1, prefix: str = DEFAULT_PREFIX) -> Iterator[Message]:
    """Like :func:`generate` with the payload as the exact bytes that would be published."""
    sim = make_simulation(catalog, sites=sites, seed=seed, scenario=scenario, start=start, duration=duration,
                          scale=scale, prefix=prefix)
    for batch in sim.batches():
        yield from batch


def make_simulation(catalog: Catalog | None = None, *, sites: str | list[str] = "all", seed: int = 0,
                    scenario: Scenario | str | None = None, start: datetime | str,
                    duration: float | str | None, scale: int = 1, prefix: str = DEFAULT_PREFIX) -> Simulation:
    """A :class:`Simulation` from friendly arguments (names, ISO times, ``"90s"`` durations)."""
    from simulators.scenario import load_scenario, parse_duration, parse_time
    from smartmine.catalog import load_catalog

    cat = catalog if catalog is not None else load_catalog()
    scen = load_scenario(scenario) if isinstance(scenario, str) else scenario
    when = parse_time(start, "--start") if isinstance(start, str) else start
    seconds = None if duration is None else parse_duration(duration, "--duration")
    return Simulation(cat, sites=sites, seed=seed, scenario=scen, start=when, duration_s=seconds, scale=scale,
                      prefix=prefix)
