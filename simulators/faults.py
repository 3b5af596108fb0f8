"""The fault library: what each fault kind does to the simulated plant, its sensors or its messages.

Three layers, one small interface each:

- process faults change what the equipment does (a bearing wears, the main fan fails, a belt slips);
  they act on a :class:`~simulators.model.TypeGroup`'s fault inputs before it is stepped, so the
  couplings carry the effect on (a failing fan raises methane at every gas monitor downstream);
- sensor faults change what an instrument reports (stuck, drift, spikes, dropout, offset, out of range);
  they act on the measured values after the step;
- transport faults change how messages travel (duplicates, out-of-order, late, clock skew, loss);
  they act on the encoded messages of the devices behind one gateway (an area) or one device.

Default sizes are derived from the catalog (a vibration fault ends between the ISO zone C/D alarm and
trip levels of that machine); a scenario overrides them in ``params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simulators.model import TypeGroup
from smartmine.catalog import ResolvedSensor
from smartmine.catalog.model import BearingGeometry

Layer = Literal["process", "sensor", "transport"]


class FaultTargetError(ValueError):
    """A fault names equipment or a sensor it cannot act on; the message says what it needs."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Target:
    """One device a fault acts on, with the sensor columns it touches in that device's group."""

    group: TypeGroup
    device: int
    sensors: dict[str, int]          # role -> column in the group (role "main" is the labelled sensor)
    catalog: dict[str, ResolvedSensor]

    @property
    def main(self) -> int:
        return self.sensors["main"]


@dataclass
class Fault:
    """An active-in-an-interval fault on one or more targets. Subclasses set the class attributes."""

    kind: ClassVar[str]
    layer: ClassVar[Layer]
    summary: ClassVar[str]
    default_severity: ClassVar[str] = "warning"
    default_sensor: ClassVar[str | None] = None      # the labelled sensor when the scenario names none
    extra_sensors: ClassVar[tuple[str, ...]] = ()     # other sensors it touches when the device has them
    Params: ClassVar[type[_Params]] = _Params

    params: Any
    targets: list[Target]
    start_tick: int
    end_tick: int
    rng: np.random.Generator
    baseline: dict[int, np.ndarray] = field(default_factory=dict)   # per target: pv at the first active tick

    def active(self, tick: int) -> bool:
        return self.start_tick <= tick < self.end_tick

    def progress(self, tick: int) -> float:
        """0 at the start of the interval, 1 at its end."""
        return (tick - self.start_tick) / max(1, self.end_tick - self.start_tick)

    def elapsed_s(self, tick: int, dt_s: float) -> float:
        return (tick - self.start_tick) * dt_s

    def ramp(self, tick: int, dt_s: float, ramp_s: float) -> float:
        """0 to 1 over the first ``ramp_s`` seconds of the fault, then 1 (a fault that sets in over time)."""
        return min(1.0, self.elapsed_s(tick, dt_s) / ramp_s) if ramp_s > 0 else 1.0

    @classmethod
    def resolved_params(cls, params: Any, sensors: dict[str, ResolvedSensor], main: str | None) -> dict[str, Any]:
        """The parameters as they act on this equipment: defaults derived from the catalog filled in."""
        return dict(params.model_dump(exclude_none=True))

    @classmethod
    def check_target(cls, sensors: dict[str, ResolvedSensor], sensor: str | None) -> None:
        """Raise :class:`FaultTargetError` when this kind cannot act on equipment with ``sensors``."""
        if cls.layer == "transport":
            return
        main = sensor or cls.default_sensor
        if main is None:
            raise FaultTargetError(f"fault kind {cls.kind!r} needs a sensor")
        if main not in sensors:
            raise FaultTargetError(f"has no sensor {main!r} (sensors: {', '.join(sensors)})")


# ------------------------------------------------------------------ process faults


class ProcessFault(Fault):
    layer: ClassVar[Layer] = "process"

    def apply(self, tick: int, dt_s: float) -> None:
        for t in self.targets:
            if t.device not in self.baseline:
                self.baseline[t.device] = t.group.pv[t.device].copy()
            t.group.faults.active = True
            self.act(t, tick, dt_s)

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        raise NotImplementedError


def _limit_level(sensor: ResolvedSensor, which: Literal["alarm", "power_off"]) -> float | None:
    for lim in sensor.limits:
        if lim.direction == "high" and getattr(lim, which) is not None:
            return float(getattr(lim, which))
    return None


class BearingParams(_Params):
    vibration_peak_mm_s: float | None = Field(None, gt=0, description="vibration at the end (default: between "
                                                                       "the machine's ISO alarm and trip)")
    kurtosis_peak: float = Field(9.0, gt=0, description="impulsiveness of a spalled race")
    temp_rise_k: float = Field(30.0, ge=0, description="bearing temperature rise at the end (before the lag)")
    growth: float = Field(2.0, ge=1, description="exponent of the wear curve: >1 accelerates towards the end")
    ramp_s: float | None = Field(None, gt=0, description="time to reach the peak, then it stays there "
                                                         "(default: the whole interval)")


class BearingDegradation(ProcessFault):
    kind = "bearing_degradation"
    summary = "vibration RMS and kurtosis rise, accelerating; bearing temperature follows with its lag"
    default_sensor = "vibration_mm_s"
    extra_sensors = ("vibration_kurtosis", "bearing_temp_c")
    Params = BearingParams

    @classmethod
    def resolved_params(cls, params: Any, sensors: dict[str, ResolvedSensor], main: str | None) -> dict[str, Any]:
        out = super().resolved_params(params, sensors, main)
        out.setdefault("vibration_peak_mm_s", _vibration_peak(sensors[main or cls.default_sensor or ""]))
        return out

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: BearingParams = self.params
        ramp = self.progress(tick) if p.ramp_s is None else min(1.0, self.elapsed_s(tick, dt_s) / p.ramp_s)
        s = ramp ** p.growth
        base = self.baseline[t.device]
        f = t.group.faults
        peak = p.vibration_peak_mm_s or _vibration_peak(t.catalog["main"])
        f.pv_add[t.device, t.main] += s * max(0.0, peak - base[t.main])
        if "vibration_kurtosis" in t.sensors:
            j = t.sensors["vibration_kurtosis"]
            f.pv_add[t.device, j] += s * max(0.0, p.kurtosis_peak - base[j])
        if "bearing_temp_c" in t.sensors:
            f.add[t.device, t.sensors["bearing_temp_c"]] += s * p.temp_rise_k


def bpfo_hz(bearing: BearingGeometry) -> float:
    """Ball-pass frequency of the outer race, where a spalled outer race shows in the spectrum:
    BPFO = (n / 2) * f_r * (1 - (d / D) * cos(phi))."""
    ratio = bearing.ball_diameter_mm / bearing.pitch_diameter_mm
    return bearing.rolling_elements / 2.0 * bearing.shaft_hz * (1.0 - ratio * math.cos(math.radians(
        bearing.contact_angle_deg)))


def _vibration_peak(sensor: ResolvedSensor) -> float:
    alarm, trip = _limit_level(sensor, "alarm"), _limit_level(sensor, "power_off")
    if alarm is not None and trip is not None:
        return (alarm + trip) / 2.0
    return 3.0 * sensor.spec.normal[1]


class VentilationParams(_Params):
    air_volume_fraction: float = Field(0.3, ge=0, lt=1, description="air volume left, as a fraction")
    ramp_s: float = Field(60.0, ge=0, description="time the fan takes to run down")


class VentilationFailure(ProcessFault):
    kind = "ventilation_failure"
    summary = "main-fan air volume drops; methane accumulates at the gas monitors downstream"
    default_severity = "critical"
    default_sensor = "air_volume_m3_min"
    Params = VentilationParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: VentilationParams = self.params
        ramp = self.ramp(tick, dt_s, p.ramp_s)
        t.group.faults.mult[t.device, t.main] *= 1.0 - ramp * (1.0 - p.air_volume_fraction)


class MethaneParams(_Params):
    peak_pct: float | None = Field(None, gt=0, description="methane at the top (default: just above the "
                                                             "power-off level of the monitor's location)")
    rise_s: float = Field(30.0, gt=0)
    hold_s: float = Field(10.0, ge=0)


class MethaneAccumulation(ProcessFault):
    kind = "methane_accumulation"
    summary = "methane builds up at one monitor (poor local ventilation), holds, then is diluted"
    default_severity = "critical"
    default_sensor = "ch4_pct"
    Params = MethaneParams

    @classmethod
    def resolved_params(cls, params: Any, sensors: dict[str, ResolvedSensor], main: str | None) -> dict[str, Any]:
        out = super().resolved_params(params, sensors, main)
        out.setdefault("peak_pct", round(_methane_peak(sensors[main or "ch4_pct"], 1.05), 4))
        return out

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: MethaneParams = self.params
        e = self.elapsed_s(tick, dt_s)
        fall_s = max(dt_s, (self.end_tick - self.start_tick) * dt_s - p.rise_s - p.hold_s)
        if e < p.rise_s:
            shape = e / p.rise_s
        elif e < p.rise_s + p.hold_s:
            shape = 1.0
        else:
            shape = max(0.0, 1.0 - (e - p.rise_s - p.hold_s) / fall_s)
        peak = p.peak_pct or _methane_peak(t.catalog["main"], 1.05)
        t.group.faults.pv_add[t.device, t.main] += shape * max(0.0, peak - self.baseline[t.device][t.main])


def _methane_peak(sensor: ResolvedSensor, factor: float) -> float:
    level = _limit_level(sensor, "power_off") or _limit_level(sensor, "alarm") or sensor.spec.normal[1]
    return factor * level


class OutburstParams(_Params):
    peak_pct: float | None = Field(None, gt=0, description="methane right after the outburst (default: "
                                                             "half again the power-off level)")
    decay_s: float = Field(180.0, gt=0, description="time constant of the dilution afterwards")


class GasOutburst(ProcessFault):
    kind = "gas_outburst"
    summary = "a fast methane step at one monitor, then an exponential dilution"
    default_severity = "emergency"
    default_sensor = "ch4_pct"
    Params = OutburstParams

    @classmethod
    def resolved_params(cls, params: Any, sensors: dict[str, ResolvedSensor], main: str | None) -> dict[str, Any]:
        out = super().resolved_params(params, sensors, main)
        out.setdefault("peak_pct", round(_methane_peak(sensors[main or "ch4_pct"], 1.5), 4))
        return out

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: OutburstParams = self.params
        peak = p.peak_pct or _methane_peak(t.catalog["main"], 1.5)
        shape = math.exp(-self.elapsed_s(tick, dt_s) / p.decay_s)
        t.group.faults.pv_add[t.device, t.main] += shape * max(0.0, peak - self.baseline[t.device][t.main])


class SlipParams(_Params):
    slip: float = Field(0.15, gt=0, lt=1, description="fraction of the drive speed the belt loses")
    ramp_s: float = Field(10.0, ge=0)


class BeltSlip(ProcessFault):
    kind = "belt_slip"
    summary = "the belt runs slower than the drive drum; the motor current drops with the transmitted torque"
    default_sensor = "belt_speed_m_s"
    extra_sensors = ("motor_current_a",)
    Params = SlipParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: SlipParams = self.params
        ramp = self.ramp(tick, dt_s, p.ramp_s)
        f = t.group.faults
        f.mult[t.device, t.main] *= 1.0 - ramp * p.slip
        if "motor_current_a" in t.sensors:
            f.mult[t.device, t.sensors["motor_current_a"]] *= 1.0 - ramp * p.slip / 2.0


class OverloadParams(_Params):
    factor: float = Field(1.3, gt=1, description="load at the top, as a multiple of the normal maximum")
    ramp_s: float = Field(120.0, ge=0)


class Overload(ProcessFault):
    kind = "overload"
    summary = "the carried load rises beyond the normal maximum; current (and tension) follow"
    default_sensor = "load_t_h"
    Params = OverloadParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: OverloadParams = self.params
        ramp = self.ramp(tick, dt_s, p.ramp_s)
        top = p.factor * t.catalog["main"].spec.normal[1]
        t.group.faults.add[t.device, t.main] += ramp * max(0.0, top - self.baseline[t.device][t.main])


class InrushParams(_Params):
    inflow_factor: float = Field(5.0, gt=1, description="water inflow as a multiple of the normal inflow")


class WaterInrush(ProcessFault):
    kind = "water_inrush"
    summary = "inflow to the sump jumps: the level rises although the pump runs at full flow"
    default_severity = "critical"
    default_sensor = "sump_level_m"
    Params = InrushParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: InrushParams = self.params
        g = t.group
        model = g.models[t.main]
        if model.rate_per_h is None:
            raise FaultTargetError(f"{self.kind}: sensor {g.sensor_ids[t.main]!r} is not a filling level")
        normal_inflow = max(model.rate_per_h[0], 0.0) * g.span[t.main] / 3600.0
        g.faults.add[t.device, t.main] += (p.inflow_factor - 1.0) * normal_inflow


class StaveParams(_Params):
    rise_k: float = Field(150.0, gt=0, description="stave temperature rise reached at the end of the interval")


class StaveBurnThrough(ProcessFault):
    kind = "stave_burn_through"
    summary = "a sustained rise of one stave thermocouple (the lining behind it wears through)"
    default_severity = "critical"
    default_sensor = "stave_temp_1_c"
    Params = StaveParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: StaveParams = self.params
        t.group.faults.add[t.device, t.main] += self.progress(tick) * p.rise_k


class LeakParams(_Params):
    flow_loss: float = Field(0.15, gt=0, lt=1, description="fraction of the cooling-water flow lost")
    ramp_s: float = Field(300.0, ge=0)


class CoolingWaterLeak(ProcessFault):
    kind = "cooling_water_leak"
    summary = "cooling-water flow falls and its temperature rise grows"
    default_severity = "critical"
    default_sensor = "cooling_water_flow_m3_h"
    extra_sensors = ("cooling_water_delta_t_k",)
    Params = LeakParams

    def act(self, t: Target, tick: int, dt_s: float) -> None:
        p: LeakParams = self.params
        ramp = self.ramp(tick, dt_s, p.ramp_s)
        f = t.group.faults
        f.mult[t.device, t.main] *= 1.0 - ramp * p.flow_loss
        if "cooling_water_delta_t_k" in t.sensors:
            # Same heat into less water: the temperature rise grows as 1 / flow.
            f.mult[t.device, t.sensors["cooling_water_delta_t_k"]] *= 1.0 / (1.0 - ramp * p.flow_loss)


# ------------------------------------------------------------------ sensor faults


class SensorFault(Fault):
    """Changes the reported values of one sensor; ``apply`` edits ``values`` and ``missing`` in place."""

    layer: ClassVar[Layer] = "sensor"

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        raise NotImplementedError


class Stuck(SensorFault):
    kind = "stuck"
    summary = "the reading freezes at its value when the fault starts (flatline)"

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        if t.device not in self.baseline:
            self.baseline[t.device] = values[t.device].copy()
        values[t.device, t.main] = self.baseline[t.device][t.main]


class DriftParams(_Params):
    rate_per_h: float | None = Field(None, description="drift per hour in sensor units (default: half the "
                                                       "normal range per hour, upwards)")


class Drift(SensorFault):
    kind = "drift"
    summary = "the reading wanders away from the truth at a steady rate"
    Params = DriftParams

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        p: DriftParams = self.params
        lo, hi = t.catalog["main"].spec.normal
        rate = p.rate_per_h if p.rate_per_h is not None else 0.5 * (hi - lo)
        values[t.device, t.main] += rate * self.elapsed_s(tick, dt_s) / 3600.0


class SpikeParams(_Params):
    probability: float = Field(0.05, gt=0, le=1, description="chance that a sample carries a spike")
    amplitude: float | None = Field(None, gt=0, description="spike height in sensor units (default: twice "
                                                            "the normal range)")


class Spike(SensorFault):
    kind = "spike"
    summary = "isolated samples jump far up or down (EMI, a loose contact)"
    Params = SpikeParams

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        p: SpikeParams = self.params
        lo, hi = t.catalog["main"].spec.normal
        amplitude = p.amplitude if p.amplitude is not None else 2.0 * max(hi - lo, 1.0)
        # Draw every tick, spike or not, so the pattern does not depend on which samples are due.
        hit, sign = self.rng.uniform(), self.rng.uniform()
        if hit < p.probability:
            # Downwards only where that stays inside the instrument's range: out of range is its own fault.
            lo_phys, hi_phys = t.catalog["main"].spec.physical
            down = sign < 0.5 and values[t.device, t.main] - amplitude >= lo_phys
            values[t.device, t.main] = min(hi_phys, values[t.device, t.main] + (-amplitude if down else amplitude))


class DropoutParams(_Params):
    probability: float = Field(1.0, gt=0, le=1, description="chance that a due sample is missing")


class Dropout(SensorFault):
    kind = "dropout"
    summary = "the reading is missing from the messages (the rest of the message still arrives)"
    Params = DropoutParams

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        if self.rng.uniform() < self.params.probability:
            missing[t.device, t.main] = True


class OffsetParams(_Params):
    offset: float | None = Field(None, description="offset in sensor units (default: a third of the normal range)")


class Offset(SensorFault):
    kind = "offset"
    summary = "a constant calibration offset"
    Params = OffsetParams

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        lo, hi = t.catalog["main"].spec.normal
        offset = self.params.offset if self.params.offset is not None else (hi - lo) / 3.0
        values[t.device, t.main] += offset


class RangeParams(_Params):
    side: Literal["high", "low"] = "high"


class OutOfRange(SensorFault):
    kind = "out_of_range"
    summary = "the reading leaves the instrument's physical range (a broken loop, a saturated transmitter)"
    Params = RangeParams

    def apply(self, tick: int, dt_s: float, values: np.ndarray, missing: np.ndarray, t: Target) -> None:
        lo, hi = t.catalog["main"].spec.physical
        margin = 0.1 * (hi - lo)
        values[t.device, t.main] = hi + margin if self.params.side == "high" else lo - margin


# ------------------------------------------------------------------ transport faults


class TransportFault(Fault):
    layer: ClassVar[Layer] = "transport"
    default_severity: ClassVar[str] = "info"


class ProbabilityParams(_Params):
    probability: float = Field(0.5, gt=0, le=1)


class Duplicate(TransportFault):
    kind = "duplicate"
    summary = "messages arrive twice (same seq and ts)"
    Params = ProbabilityParams


class OutOfOrder(TransportFault):
    kind = "out_of_order"
    summary = "a message is overtaken by the device's next one"
    Params = ProbabilityParams


class LateParams(_Params):
    delay_s: float = Field(30.0, gt=0, description="how long messages are held back before they arrive")


class Late(TransportFault):
    kind = "late"
    summary = "messages arrive late, in a burst, with their original ts and seq"
    Params = LateParams


class SkewParams(_Params):
    offset_s: float = Field(120.0, description="the gateway clock's error: its ts = true time + offset")


class ClockSkew(TransportFault):
    kind = "clock_skew"
    summary = "the gateway's clock is off: every ts it stamps is shifted"
    Params = SkewParams


class LossParams(_Params):
    probability: float = Field(1.0, gt=0, le=1)


class MessageLoss(TransportFault):
    kind = "message_loss"
    summary = "messages are lost on the way (a radio outage): gaps in seq"
    Params = LossParams


FAULT_KINDS: dict[str, type[Fault]] = {cls.kind: cls for cls in (
    BearingDegradation, VentilationFailure, MethaneAccumulation, GasOutburst, BeltSlip, Overload, WaterInrush,
    StaveBurnThrough, CoolingWaterLeak,
    Stuck, Drift, Spike, Dropout, Offset, OutOfRange,
    Duplicate, OutOfOrder, Late, ClockSkew, MessageLoss,
)}
