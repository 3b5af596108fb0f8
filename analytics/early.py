"""Early warning (未诉先办): a trend that will cross a catalog limit, raised before it does.

Every ``hop`` samples a least-squares line is fitted through the last ``window`` samples (from running
sums, so a fit costs the same however long the window). Each sample
is then projected along that line: when the slope points at the limit, is significant (at least
``min_t`` standard errors, so noise does not extrapolate), and the limit would be reached within
``horizon_s``, the detector warns with the expected time to the limit. Once the value is past the
limit the limit rule owns the situation and the early warning stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, about, level_of
from analytics.kernels import HopWindow, LineSums, broadcast, line_from_sums, line_prefix
from smartmine.catalog import Limit


class EarlyWarning(Detector):
    """Time-to-threshold against one catalog limit (its alarm level, or power-off if it has no alarm)."""

    name = "early"

    def __init__(self, ctx: SensorContext, limit: Limit, *, window: int = 300, hop: int = 10,
                 horizon_s: float = 1800.0, min_t: float = 6.0, severity: str = "warning") -> None:
        super().__init__(ctx)
        self.limit = limit
        self.rule = f"early:{limit.name}"
        self.sign = 1.0 if limit.direction == "high" else -1.0
        target = limit.alarm if limit.alarm is not None else limit.power_off
        assert target is not None  # the catalog refuses a limit without either
        self.target = target
        self.horizon_s = horizon_s
        self.min_t = min_t
        self.hop = HopWindow(window, hop)
        self.sums = LineSums(window)
        self.count = 0
        self._level = level_of(severity)
        self.fit: tuple[float, ...] = (math.nan, math.nan, math.nan, math.nan)  # level, slope/s, se, t_end
        self.eta = math.nan
        self.now = math.nan

    # Shared per-sample arithmetic, written for scalars; the batch form mirrors it on arrays.
    def _step(self, ts: int, x: float) -> tuple[float, int]:
        if self.hop.due(self.count):
            self.fit = self.sums.fit(self.hop.window)
        self.sums.push(ts, x)
        self.count += 1
        level, slope, se, t_end = self.fit
        self.eta = math.nan
        if math.isnan(level):
            return 0.0, 0
        self.now = level + slope * ((ts - t_end) / 1e9)
        s = self.sign
        rate = s * slope
        if not (rate > 0 and rate >= self.min_t * se and s * x < s * self.target):
            return 0.0, 0
        self.eta = max((s * self.target - s * self.now) / rate, 0.0)
        score = max(1.0 - self.eta / (2.0 * self.horizon_s), 0.0)
        return score, (self._level if self.eta <= self.horizon_s else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        n = len(x)
        fit_idx = self.hop.fit_index(n)
        ends = np.arange(self.hop.window, n, self.hop.hop)  # a fit before scoring sample `end`
        if len(ends) == 0:
            return Verdicts.empty(n)
        prefix, u = line_prefix(ts, x)
        fits = line_from_sums(prefix[ends] - prefix[ends - self.hop.window], self.hop.window, u[ends - 1],
                              float(x[0]))
        level, slope, se, t_end = broadcast((*fits, ts[ends - 1].astype(np.float64)), fit_idx)
        s = self.sign
        ok = fit_idx >= 0
        now = np.full(n, np.nan)
        now[ok] = level[ok] + slope[ok] * ((ts[ok] - t_end[ok]) / 1e9)
        rate = s * slope
        active = ok & (rate > 0) & (rate >= self.min_t * se) & (s * x < s * self.target)
        eta = np.full(n, np.nan)
        eta[active] = np.maximum((s * self.target - s * now[active]) / rate[active], 0.0)
        score = np.zeros(n)
        score[active] = np.maximum(1.0 - eta[active] / (2.0 * self.horizon_s), 0.0)
        flagged = active & (eta <= self.horizon_s)
        lv = np.where(flagged, self._level, 0).astype(np.int8)
        return Verdicts(score, lv, {"eta_s": eta, "trend_level": now, "slope_per_s": slope})

    def evidence(self) -> dict[str, float]:
        return {"eta_s": self.eta, "trend_level": self.now, "slope_per_s": self.fit[1]}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.target

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        word = "rising" if ev["slope_per_s"] > 0 else "falling"
        rate = fmt(abs(ev["slope_per_s"]) * 60)
        return (f"{self.ctx.where} will reach {fmt(self.target)} in {about(ev['eta_s'])} "
                f"(now {fmt(x)}, {word} {rate}/min; {self.limit.name} limit)")


def early_warnings(ctx: SensorContext, **params: float) -> list[EarlyWarning]:
    return [EarlyWarning(ctx, lim, **params) for lim in ctx.limits]  # type: ignore[arg-type]
