"""Early warning (未诉先办): a trend that will cross a catalog limit, raised before it does.

Every ``hop`` samples a least-squares line is fitted through the last ``window`` samples (from running
sums, so a fit costs the same however long the window). Each sample
is then projected along that line: when the slope points at the limit, is significant (at least
``min_t`` standard errors, so noise does not extrapolate), and the limit would be reached within
``horizon_s`` and within twice the window's span (a line is not extrapolated further than that), the
detector warns with the expected time to the limit. Once the value is past the limit the limit rule owns
the situation and the early warning stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, about, level_of
from analytics.kernels import HopWindow, LineSums, broadcast, line_from_sums, line_prefix
from smartmine.catalog import Limit


class EarlyWarning(Detector):
    """Time-to-threshold against one catalog limit (its alarm level, or power-off if it has no alarm).

    ``second_window`` adds a second trend window beside ``window``. Each line is extrapolated at most
    twice its own span, so a longer window may promise further ahead: a five-minute line sees a methane
    build-up, a fifteen-minute line the slow rise of CO from a heating coal seam or of a warming bearing,
    whose crossing is half an hour away. The earliest credible crossing wins (one within its line's reach
    before one beyond it). A shorter second window was tried for fast build-ups and not kept: its noisy
    slopes cost more false warnings than the minutes it gained (docs/benchmarks.md).
    """

    name = "early"
    resume_from = 256

    def __init__(self, ctx: SensorContext, limit: Limit, *, window: int = 300, hop: int = 10,
                 horizon_s: float = 1800.0, min_t: float = 6.0, severity: str = "warning",
                 second_window: int | None = None) -> None:
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
        self.windows = (window,) if second_window is None else (window, max(second_window, 3))
        # A line fitted over a window is not extrapolated further than twice that window's duration.
        self.reach = tuple(2.0 * w * ctx.sample_period_s for w in self.windows)
        self.sums = LineSums(max(self.windows))
        self.count = 0
        self._level = level_of(severity)
        nan = math.nan
        self.fits: list[tuple[float, ...]] = [(nan, nan, nan, nan)] * len(self.windows)  # level, slope/s, se, t_end
        self.eta = nan
        self.now = nan
        self.slope = nan

    def _eta(self, fit: tuple[float, ...], ts: int, x: float) -> tuple[float, float]:
        """(eta, trend level now) along one fitted line; eta NaN when it does not point at the limit."""
        level, slope, se, t_end = fit
        if math.isnan(level):
            return math.nan, math.nan
        now = level + slope * ((ts - t_end) / 1e9)
        s = self.sign
        rate = s * slope
        if not (rate > 0 and rate >= self.min_t * se and s * x < s * self.target):
            return math.nan, now
        return max((s * self.target - s * now) / rate, 0.0), now

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        if self.hop.due(self.count):
            nan = math.nan
            # a window longer than the history seen so far has no line yet
            self.fits = [self.sums.fit(w) if self.count >= w else (nan, nan, nan, nan) for w in self.windows]
        self.sums.push(ts, x)
        self.count += 1
        best = (math.nan, math.nan, math.nan)
        credible = False
        for fit, reach in zip(self.fits, self.reach, strict=True):
            eta, now = self._eta(fit, ts, x)
            within = eta <= reach  # False for NaN
            if math.isnan(best[1]) or (not math.isnan(eta) and (math.isnan(best[0]) or (within and not credible)
                                                                or (within == credible and eta < best[0]))):
                best, credible = (eta, now, fit[1]), within
        self.eta, self.now, self.slope = best
        if math.isnan(self.eta):
            return 0.0, 0
        score = max(1.0 - self.eta / (2.0 * self.horizon_s), 0.0)
        return score, (self._level if self.eta <= self.horizon_s and credible else 0)

    @staticmethod
    def _better(best: tuple[FloatArray, ...], eta: FloatArray, within: np.ndarray) -> np.ndarray:
        """Per sample, whether a window's (eta, within its reach) beats ``best`` (eta, now, slope, within):
        the streaming form's choice in :meth:`_step`."""
        b_eta, b_now, _, b_within = best
        return np.isnan(b_now) | (~np.isnan(eta) & (np.isnan(b_eta) | (within & ~b_within)
                                                   | ((within == b_within) & (eta < b_eta))))

    def _run_window(self, ts: np.ndarray, x: FloatArray, window: int, prefix: FloatArray, u: FloatArray,
                    fit_idx: np.ndarray, ends: np.ndarray) -> tuple[FloatArray, FloatArray, FloatArray]:
        early = ends < window  # a window longer than the history so far has no line yet
        start = np.maximum(ends - window, 0)
        level, slope, se = line_from_sums(prefix[ends] - prefix[start], window, u[ends - 1], float(x[0]))
        if early.any():
            level, slope, se = (np.where(early, np.nan, a) for a in (level, slope, se))
        level, slope, se, t_end = broadcast((level, slope, se, ts[ends - 1].astype(np.float64)), fit_idx)
        return self._eta_all(level, slope, se, t_end, ts, x)

    def _eta_all(self, level: FloatArray, slope: FloatArray, se: FloatArray, t_end: FloatArray, ts: np.ndarray,
                 x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """:meth:`_eta` of every sample along its line (NaN level: no line yet): (eta, trend now, slope)."""
        s = self.sign
        ok = ~np.isnan(level)
        now = np.full(len(x), np.nan)
        now[ok] = level[ok] + slope[ok] * ((ts[ok] - t_end[ok]) / 1e9)
        rate = s * slope
        active = ok & (rate > 0) & (rate >= self.min_t * se) & (s * x < s * self.target)
        eta = np.full(len(x), np.nan)
        eta[active] = np.maximum((s * self.target - s * now[active]) / rate[active], 0.0)
        return eta, now, slope

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        n = len(x)
        dues = self.hop.dues(self.count, n)
        kept = len(self.sums.prefix)
        sums, ts_rows, u_rows = self.sums.extend(ts, x)
        self.count += n
        fit_idx = np.searchsorted(dues, np.arange(n), side="right") - 1  # -1: the line carried in
        ok = fit_idx >= 0
        rows = kept - 1 + dues  # the sums just before each due sample
        best: tuple[FloatArray, ...] | None = None
        fits = []
        for w, carried, reach in zip(self.windows, self.fits, self.reach, strict=True):
            line = [np.full(n, c) for c in carried]
            if len(dues):
                back = rows - w  # < 0: fewer than w samples seen before that refit, no line yet
                level, slope, se = line_from_sums(sums[rows] - sums[np.maximum(back, 0)], w, u_rows[rows],
                                                  self.sums.x0)
                if (back < 0).any():
                    level, slope, se = (np.where(back < 0, np.nan, a) for a in (level, slope, se))
                for col, f in zip(line, (level, slope, se, ts_rows[rows].astype(np.float64)), strict=True):
                    col[ok] = f[fit_idx[ok]]
            fits.append(tuple(float(col[-1]) for col in line))
            level, slope, se, t_end = line
            eta, now, slope = self._eta_all(level, slope, se, t_end, ts, x)
            within = eta <= reach
            if best is None:
                best = (eta, now, slope, within)
            else:  # the streaming form's choice, sample by sample
                take = self._better(best, eta, within)
                best = tuple(np.where(take, a, b) for a, b in zip((eta, now, slope, within), best, strict=True))
        assert best is not None
        self.fits = fits
        eta, now, slope, within = best
        self.eta, self.now, self.slope = float(eta[-1]), float(now[-1]), float(slope[-1])
        return self._verdicts(eta, now, slope, within)

    def _verdicts(self, eta: FloatArray, now: FloatArray, slope: FloatArray, within: np.ndarray) -> Verdicts:
        active = ~np.isnan(eta)
        score = np.zeros(len(eta))
        score[active] = np.maximum(1.0 - eta[active] / (2.0 * self.horizon_s), 0.0)
        flagged = active & (eta <= self.horizon_s) & within
        lv = np.where(flagged, self._level, 0).astype(np.int8)
        return Verdicts(score, lv, {"eta_s": eta, "trend_level": now, "slope_per_s": slope})

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        n = len(x)
        fit_idx = self.hop.fit_index(n)
        ends = np.arange(self.hop.window, n, self.hop.hop)  # a fit before scoring sample `end`
        if len(ends) == 0:
            return Verdicts.empty(n)
        prefix, u = line_prefix(ts, x)
        best: tuple[FloatArray, ...] | None = None
        for w, reach in zip(self.windows, self.reach, strict=True):
            eta, now, slope = self._run_window(ts, x, w, prefix, u, fit_idx, ends)
            within = eta <= reach
            if best is None:
                best = (eta, now, slope, within)
            else:  # the same choice as the streaming form
                take = self._better(best, eta, within)
                best = tuple(np.where(take, a, b) for a, b in zip((eta, now, slope, within), best, strict=True))
        assert best is not None
        eta, now, slope, within = best
        return self._verdicts(eta, now, slope, within)

    def evidence(self) -> dict[str, float]:
        return {"eta_s": self.eta, "trend_level": self.now, "slope_per_s": self.slope}

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return self.target

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        fmt = self.ctx.fmt
        word = "rising" if ev["slope_per_s"] > 0 else "falling"
        rate = fmt(abs(ev["slope_per_s"]) * 60)
        return (f"{self.ctx.where} will reach {fmt(self.target)} in {about(ev['eta_s'])} "
                f"(now {fmt(x)}, {word} {rate}/min; {self.limit.name} limit)")


def early_warnings(ctx: SensorContext, **params: float) -> list[EarlyWarning]:
    return [EarlyWarning(ctx, lim, **params) for lim in ctx.limits if lim.early_warning]  # type: ignore[arg-type]
