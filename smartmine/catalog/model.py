"""The equipment catalog's typed model: sites, equipment types, sensors, units and limits.

Everything the simulators, ingest, analytics and dashboards agree on about the plant is data in the
YAML files next to this module; this module only gives that data a shape and checks it is coherent.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smartmine.wire import QUALITY_SUFFIX, RESERVED_FIELDS, is_reserved_sensor_id

SiteKind = Literal["coal_mine", "steel_plant"]
SensorKind = Literal["gauge", "counter", "state"]
Direction = Literal["high", "low"]

# An id is used in MQTT topics, InfluxDB tags and Grafana variables: keep it to a safe alphabet.
ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DisplayName(_Strict):
    en: str = Field(min_length=1)
    zh: str = Field(min_length=1)

    def get(self, language: str) -> str:
        return self.zh if language == "zh" else self.en


class Unit(_Strict):
    id: str
    name: DisplayName
    quantity: str


class Limit(_Strict):
    """One regulatory or standard limit with hysteresis.

    ``alarm`` raises the alarm, ``power_off`` is the action level (power-off in a coal mine, trip or
    stop-work on a machine), and the alarm clears only once the value is back past ``restore``.
    For a ``high`` limit the value violates when it is >= the level and clears when it is < restore;
    for a ``low`` limit it violates when <= the level and clears when > restore.
    """

    name: str = Field(pattern=ID_PATTERN)
    direction: Direction = "high"
    alarm: float | None = None
    power_off: float | None = None
    restore: float | None = None
    source: str = Field(min_length=3, description="Regulation, standard or plant practice that sets it")
    # Whether analytics extrapolates the reading's trend towards this limit (time to threshold). False for a
    # quantity someone sets, such as the load the faces put on a belt: its swings are decisions, not a
    # trend, and a line through them points at the limit all day. The limit itself still alarms.
    early_warning: bool = True

    @model_validator(mode="after")
    def _coherent(self) -> Limit:
        if self.alarm is None and self.power_off is None:
            raise ValueError(f"limit {self.name!r} sets neither alarm nor power_off")
        first = self.alarm if self.alarm is not None else self.power_off
        assert first is not None
        high = self.direction == "high"
        if self.alarm is not None and self.power_off is not None and (
                (high and self.power_off < self.alarm) or (not high and self.power_off > self.alarm)):
                word = "below" if high else "above"
                raise ValueError(f"limit {self.name!r}: power_off {self.power_off} is {word} alarm {self.alarm}")
        if self.restore is not None:
            if high and self.restore > first:
                raise ValueError(f"limit {self.name!r}: restore {self.restore} is above alarm {first}")
            if not high and self.restore < first:
                raise ValueError(f"limit {self.name!r}: restore {self.restore} is below alarm {first}")
        return self

    @property
    def restore_level(self) -> float:
        """The clearing level: ``restore`` when given, otherwise the alarm level itself."""
        if self.restore is not None:
            return self.restore
        level = self.alarm if self.alarm is not None else self.power_off
        assert level is not None
        return level


class PermittedError(_Strict):
    """How far an instrument of this kind may read from the truth and still be in calibration (the basic
    error its product standard permits over the sensor's normal range), and that standard."""

    value: float = Field(gt=0, description="± in the sensor's unit")
    source: str = Field(min_length=3, description="Standard or data sheet that sets it")


class SensorType(_Strict):
    name: DisplayName
    unit: str
    kind: SensorKind = "gauge"
    sample_period_s: float = Field(gt=0, le=3600)
    normal: tuple[float, float]
    physical: tuple[float, float]
    limits: tuple[Limit, ...] = ()
    # A manipulated variable: who sets it (the blowing pattern, the rolling schedule). It moves because
    # someone moved it, so analytics does not score its level against its past (limits and sensor health
    # still watch it). None: a measured process value.
    set_by: str | None = None
    # A level that integrates flows (a sump fills with the inflow and empties with the pumps): what it
    # integrates. It rises and falls with the duty cycle by design, so its level is not scored against its
    # past either; its limits and the trend towards them (early warning) watch it.
    integrates: str | None = None
    # A reading that differs from place to place within one airway or vessel (dust settles, the air speed
    # depends on where in the section it is taken): why. Two redundant monitors are not expected to agree
    # on it, so analytics does not check its drift against the twin. None: the twin reads the same.
    local: str | None = None
    # The instrument's permitted error: two redundant monitors whose difference has moved by more than this
    # have at least one instrument out of calibration. None: analytics falls back to a share of the normal range.
    permitted_error: PermittedError | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _ranges(self) -> SensorType:
        lo, hi = self.physical
        if lo >= hi:
            raise ValueError(f"physical range {list(self.physical)} is empty (low must be below high)")
        nlo, nhi = self.normal
        if nlo > nhi:
            raise ValueError(f"normal range {list(self.normal)} is reversed")
        if nlo < lo or nhi > hi:
            raise ValueError(f"normal range {list(self.normal)} is outside physical range {list(self.physical)}")
        for limit in self.limits:
            for level in (limit.alarm, limit.power_off, limit.restore):
                if level is not None and not lo <= level <= hi:
                    raise ValueError(
                        f"limit {limit.name!r} level {level} is outside physical range {list(self.physical)}"
                    )
        return self


class BearingGeometry(_Strict):
    """Rolling-element bearing geometry, for bearing-fault frequencies (BPFO, BPFI)."""

    rolling_elements: int = Field(ge=3)
    ball_diameter_mm: float = Field(gt=0)
    pitch_diameter_mm: float = Field(gt=0)
    contact_angle_deg: float = Field(ge=0, lt=90)
    shaft_hz: float = Field(gt=0)


class RotatingMachine(_Strict):
    """ISO 10816-3 machine class, which fixes the vibration zone boundaries."""

    iso10816_group: Literal[1, 2]
    foundation: Literal["rigid", "flexible"]
    bearing: BearingGeometry | None = None


class RunningState(_Strict):
    """When a machine that starts and stops counts as running, from the sensor that drives it (a pump's
    motor current). Its other readings jump at every start and stop: that is the duty cycle, not a fault,
    so level statistics look only at readings taken while it has been running for ``settle_s``."""

    sensor: str
    above: float
    settle_s: float = Field(default=60.0, ge=0)
    # A batch machine (a converter's heats): how much running time the level statistics' reference spans.
    # Several runs, so the run-to-run variation is in its spread and the next heat is compared with it,
    # not with the last heat's few steady minutes. None: the analytics' window.
    reference_s: float | None = Field(default=None, gt=0)
    source: str | None = None


class EquipmentType(_Strict):
    name: DisplayName
    site_kinds: tuple[SiteKind, ...]
    sensors: dict[str, SensorType]
    # Location-dependent limits (e.g. methane at a coal face vs. a return airway): profile -> sensor -> limits.
    limit_profiles: dict[str, dict[str, tuple[Limit, ...]]] = {}
    rotating: RotatingMachine | None = None
    running: RunningState | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _sensor_ids_are_field_names(self) -> EquipmentType:
        # A sensor id becomes an InfluxDB field key and a Grafana variable: the id alphabet, and none of the
        # names the stored schema writes beside the readings.
        for sid in self.sensors:
            if not re.fullmatch(ID_PATTERN.strip("^$"), sid):
                raise ValueError(f"sensor id {sid!r} should match pattern '{ID_PATTERN}'")
            if is_reserved_sensor_id(sid):
                raise ValueError(f"sensor id {sid!r} is reserved for the stored schema "
                                 f"({', '.join(sorted(RESERVED_FIELDS))}, *{QUALITY_SUFFIX})")
        return self

    @model_validator(mode="after")
    def _running_sensor_exists(self) -> EquipmentType:
        if self.running is not None and self.running.sensor not in self.sensors:
            raise ValueError(f"running.sensor {self.running.sensor!r} is not a sensor of this type")
        return self


class Equipment(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    type: str
    name: DisplayName
    limit_profile: str | None = None
    # Sensors measuring the same quantity at the same place: drift is judged against them.
    redundant_with: tuple[str, ...] = ()
    sensors_enabled: tuple[str, ...] | None = None


class Line(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: DisplayName
    equipment: tuple[Equipment, ...]


class Area(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: DisplayName
    lines: tuple[Line, ...]


class Site(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    kind: SiteKind
    name: DisplayName
    timezone: str = "Asia/Shanghai"
    areas: tuple[Area, ...]
