"""Limit rules from the catalog: alarm / power-off / restore with hysteresis. They never miss.

A ``high`` limit raises its alarm on the very sample at or above ``alarm`` and its power-off on the
sample at or above ``power_off``; both hold until a sample falls below ``restore`` (Coal Mine Safety
Regulations art. 498: methane power-off at 1.5 % at a coal face, power restored only below 1.0 %).
A ``low`` limit is the mirror image. There is no warm-up, no smoothing and no debounce: a violating
sample is flagged on that sample. The levels come only from the catalog (``ResolvedSensor.limits``).

The batch form needs no loop: a sample's state is decided by the latest "set" sample (at or past the
alarm or the power-off level) and the latest "reset" sample (past restore) before or at it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, about, level_of
from smartmine.catalog import Limit

ALARM, POWER_OFF = 1, 2
_STATE_WORD = {ALARM: "alarm", POWER_OFF: "power-off"}


class LimitRule(Detector):
    """One catalog limit on one sensor."""

    name = "limit"

    def __init__(self, ctx: SensorContext, limit: Limit, *, alarm_severity: str = "critical",
                 power_off_severity: str = "emergency") -> None:
        super().__init__(ctx)
        self.limit = limit
        self.rule = f"limit:{limit.name}"
        self.sign = 1.0 if limit.direction == "high" else -1.0
        inf = math.inf
        # Work in "high" orientation: a low limit is a high limit on the negated value.
        self.alarm = self.sign * limit.alarm if limit.alarm is not None else inf
        self.power_off = self.sign * limit.power_off if limit.power_off is not None else inf
        self.restore = self.sign * limit.restore_level
        self.set_level = min(self.alarm, self.power_off)  # at or past this a sample alarms (high orientation)
        self.levels = {ALARM: level_of(alarm_severity), POWER_OFF: level_of(power_off_severity)}
        self.state = 0
        # "CMSR-498: coal face / ..." -> "CMSR-498": the message stays one line, the point keeps the source.
        self.citation = limit.source.split(":", 1)[0].strip()

    def idle_at(self, x: float) -> bool:
        """Whether a sample changes nothing: the rule is normal and ``x`` is short of both levels. The
        streaming job asks first, because almost every sample of a plant is."""
        return self.state == 0 and self.sign * x < self.set_level

    def _raw_state(self, v: float) -> int:
        return POWER_OFF if v >= self.power_off else ALARM if v >= self.alarm else 0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        v = self.sign * x
        raw = self._raw_state(v)
        if raw:
            self.state = max(self.state, raw)
        elif v < self.restore:
            self.state = 0
        if not self.state:
            return 0.0, 0
        return 1.0, self.levels[self.state]

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        v = self.sign * x
        n = len(v)
        idx = np.arange(n)
        # Latest index at or before each sample where the value set power-off / set alarm / reset.
        last_po = np.maximum.accumulate(np.where(v >= self.power_off, idx, -1))
        last_set = np.maximum.accumulate(np.where(v >= self.alarm, idx, -1))
        last_reset = np.maximum.accumulate(np.where((v < self.restore) & (v < self.alarm), idx, -1))
        # The initial state is normal, i.e. as if reset just before the first sample.
        state = np.where(last_po > last_reset, POWER_OFF, np.where(last_set > last_reset, ALARM, 0))
        level = np.zeros(n, dtype=np.int8)
        level[state == ALARM] = self.levels[ALARM]
        level[state == POWER_OFF] = self.levels[POWER_OFF]
        threshold = np.where(state == POWER_OFF, self.sign * self.power_off, self.sign * self.alarm)
        return Verdicts((state > 0).astype(np.float64), level,
                        {"threshold": np.where(state > 0, threshold, np.nan),
                         "state": state.astype(np.float64)})

    def evidence(self) -> dict[str, float]:
        level = self.power_off if self.state == POWER_OFF else self.alarm
        return {"threshold": self.sign * level, "state": float(self.state)}

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        lim = self.limit
        state = int(ev.get("state", ALARM))
        at = ev.get("threshold", math.nan)
        cmp = ">=" if lim.direction == "high" else "<="
        fmt = self.ctx.fmt
        held = (x < at) if lim.direction == "high" else (x > at)
        if held:
            # Between restore and the level: still in alarm/power-off because of the hysteresis.
            return (f"{self.ctx.where} is {fmt(x)}: {_STATE_WORD[state]} holds until it is "
                    f"{'below' if lim.direction == 'high' else 'above'} {fmt(lim.restore_level)} ({self.citation})")
        action = "power-off level" if state == POWER_OFF else "alarm level"
        return f"{self.ctx.where} is {fmt(x)}, {cmp} the {action} {fmt(at)} ({self.citation})"

    def cleared_message(self, x: float, duration_s: float) -> str:
        lim = self.limit
        word = "below" if lim.direction == "high" else "above"
        return (f"{self.ctx.where} back {word} {self.ctx.fmt(lim.restore_level)} ({self.ctx.fmt(x)}): "
                f"{lim.name} cleared after {about(duration_s)}")


def limit_rules(ctx: SensorContext, **severities: str) -> list[LimitRule]:
    """One rule per catalog limit of the sensor."""
    return [LimitRule(ctx, lim, **severities) for lim in ctx.limits]
