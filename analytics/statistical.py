"""Robust statistics: rolling median/MAD score, EWMA control chart, CUSUM change detector.

All three score a sample against a robust reference of the recent past (median and a MAD-based
sigma, refitted on a hopping window, :mod:`analytics.kernels`), so one spike does not move the
reference and a slow plant drift is followed:

- ``mad``   : a spike or a step. z = |x - median| / sigma.
- ``ewma``  : a small sustained shift. An EWMA of the samples against the median, in units of the
              EWMA's own sigma (Roberts' control chart: sigma * sqrt(lambda / (2 - lambda))).
- ``cusum`` : a change point. The largest cumulative excess of the standardised samples over the
              allowance k in the last ``memory`` samples (a CUSUM that forgets after ``memory``
              samples instead of needing a manual reset). k = 1 sigma: tuned for steps of 2 sigma
              and more, because a sigma estimated from a few minutes of data is itself uncertain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, level_of, ratio_score, ratio_scores
from analytics.kernels import (
    NOVELTY_MARGIN,
    HopWindow,
    NoveltyGate,
    RingBuffer,
    TrailingMin,
    broadcast,
    ewma_init,
    fit_one,
    novelty_gate,
    robust_fit,
    trailing_min,
)


def min_sigma_of(ctx: SensorContext) -> float:
    """The smallest spread worth scoring against: 0.5 % of the normal range's width (a sensor's
    resolution is about that), or a tiny absolute floor when the catalog does not say."""
    span = ctx.span()
    return 0.005 * span if span > 0 else 1e-9


class _RobustBase(Detector):
    """Keeps the hopping robust reference (median, sigma) in both forms."""

    resume_from = 64

    def __init__(self, ctx: SensorContext | None, window: int, hop: int, threshold: float,
                 severity: str = "warning", novelty: int = 0,
                 novelty_margin: float = NOVELTY_MARGIN) -> None:
        super().__init__(ctx)
        self.hop = HopWindow(window, hop)
        self.threshold = threshold
        self.novelty = novelty
        self.novelty_margin = novelty_margin
        self.gate = NoveltyGate(threshold, novelty, novelty_margin)
        self.effective_threshold = threshold
        self.severity = severity
        self._level = level_of(severity)
        self.min_sigma = min_sigma_of(self.ctx)
        self.ring = RingBuffer(self.hop)
        self.median = math.nan
        self.sigma = math.nan

    def _fit(self, windows: FloatArray) -> tuple[FloatArray, FloatArray]:
        return robust_fit(windows, self.min_sigma)

    def _judge(self, stat: float) -> tuple[float, int]:
        """Score and level of one sample's statistic through the novelty gate."""
        eff, flagged = self.gate.judge(stat)
        self.effective_threshold = eff
        return ratio_score(stat, eff), (self._level if flagged else 0)

    def _judge_all(self, stat: FloatArray) -> tuple[FloatArray, np.ndarray, FloatArray]:
        eff, flagged = novelty_gate(stat, self.threshold, self.novelty, self.novelty_margin)
        return ratio_scores(stat, eff), np.where(flagged, self._level, 0).astype(np.int8), eff

    def _resume_reference(self, values: FloatArray) -> tuple[FloatArray, FloatArray, np.ndarray]:
        """Micro-batch form of refit-if-due and push over ``values`` (the samples, or their EWMA),
        continuing the ring buffer, the hop phase and the last fit: (median, sigma, scored) per value;
        the warm-up is not scored and does not reach the gate, as in streaming."""
        med, sigma = self.ring.extend_fits(self._fit, values, (self.median, self.sigma))
        self.median, self.sigma = float(med[-1]), float(sigma[-1])
        return med, sigma, ~np.isnan(med)

    def _resume_judge(self, stat: FloatArray, scored: np.ndarray) -> tuple[FloatArray, np.ndarray, FloatArray]:
        """Score, level and effective threshold of the scored statistics through the novelty gate."""
        n = len(stat)
        score = np.zeros(n)
        level = np.zeros(n, dtype=np.int8)
        eff = np.full(n, self.threshold)
        if scored.any():
            eff[scored], flagged = self.gate.judge_many(stat[scored])
            score[scored] = ratio_scores(stat[scored], eff[scored])
            level[scored] = np.where(flagged, self._level, 0)
            self.effective_threshold = float(eff[scored][-1])
        return score, level, eff

    def _resume_distance(self, values: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray,
                                                             np.ndarray, FloatArray]:
        """(median, sigma, distance in sigmas, score, level, effective threshold) per value."""
        med, sigma, scored = self._resume_reference(values)
        dist = np.zeros(len(values))
        dist[scored] = np.abs(values[scored] - med[scored]) / sigma[scored]
        return (med, sigma, dist, *self._resume_judge(dist, scored))

    def threshold_of(self, ev: Mapping[str, float], level: int) -> float:
        return float(ev.get("threshold", self.threshold))

    def _refit_if_due(self) -> None:
        if self.ring.due():
            self.median, self.sigma = fit_one(self._fit, self.ring.matrix())

    def _reference(self, x: FloatArray) -> tuple[FloatArray, FloatArray, np.ndarray]:
        fit_idx = self.hop.fit_index(len(x))
        fits = self.hop.fit_all(self._fit, x)
        if not fits:
            nan = np.full(len(x), np.nan)
            return nan, nan.copy(), fit_idx
        med, sigma = broadcast(fits, fit_idx)
        return med, sigma, fit_idx


class RobustZ(_RobustBase):
    """Rolling median / MAD score: a spike or a step away from the recent median."""

    name = "mad"

    def __init__(self, ctx: SensorContext | None = None, *, window: int = 240, hop: int = 30,
                 threshold: float = 6.0, severity: str = "warning", novelty: int = 0,
                 novelty_margin: float = NOVELTY_MARGIN) -> None:
        super().__init__(ctx, window, hop, threshold, severity, novelty, novelty_margin)
        self.z = 0.0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self._refit_if_due()
        self.ring.push(x)
        if math.isnan(self.median):
            self.z = 0.0
            return 0.0, 0
        self.z = abs(x - self.median) / self.sigma
        return self._judge(self.z)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        med, sigma, fit_idx = self._reference(x)
        z = np.zeros(len(x))
        ok = fit_idx >= 0
        z[ok] = np.abs(x[ok] - med[ok]) / sigma[ok]
        score, level, eff = self._judge_all(z)
        return Verdicts(score, level, {"z": z, "median": med, "sigma": sigma, "threshold": eff})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        med, sigma, z, score, level, eff = self._resume_distance(x)
        self.z = float(z[-1])
        return Verdicts(score, level, {"z": z, "median": med, "sigma": sigma, "threshold": eff})

    def evidence(self) -> dict[str, float]:
        return {"z": self.z, "median": self.median, "sigma": self.sigma, "threshold": self.effective_threshold}

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        side = "above" if x >= ev["median"] else "below"
        return (f"{self.ctx.where} is {self.ctx.fmt(x)}, {ev['z']:.1f} robust sigma {side} its recent median "
                f"{self.ctx.fmt(ev['median'])}")


class EwmaChart(_RobustBase):
    """EWMA chart: a small shift that lasts. The reference (median and robust sigma) is taken of the
    EWMA itself over the window, not of the raw samples: plant signals wander (load, ventilation,
    weather) and a textbook sigma * sqrt(lambda / (2 - lambda)) limit, which assumes independent
    samples, would flag every slow wander."""

    name = "ewma"

    def __init__(self, ctx: SensorContext | None = None, *, window: int = 240, hop: int = 30,
                 threshold: float = 4.0, smoothing: float = 0.1, severity: str = "warning", novelty: int = 0,
                 novelty_margin: float = NOVELTY_MARGIN) -> None:
        super().__init__(ctx, window, hop, threshold, severity, novelty, novelty_margin)
        self.alpha = smoothing
        self.z = math.nan  # the EWMA
        self.e = 0.0  # its distance from the EWMA's recent median, in the EWMA's robust sigmas

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self._refit_if_due()
        self.z = x if math.isnan(self.z) else self.alpha * x + (1.0 - self.alpha) * self.z
        self.ring.push(self.z)
        if math.isnan(self.median):
            self.e = 0.0
            return 0.0, 0
        self.e = abs(self.z - self.median) / self.sigma
        return self._judge(self.e)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        z = ewma_init(x, self.alpha)
        med, sigma, fit_idx = self._reference(z)
        e = np.zeros(len(x))
        ok = fit_idx >= 0
        e[ok] = np.abs(z[ok] - med[ok]) / sigma[ok]
        score, level, eff = self._judge_all(e)
        return Verdicts(score, level, {"ewma": z, "median": med, "sigma": sigma, "e": e, "threshold": eff})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        z = ewma_init(x, self.alpha, self.z)
        med, sigma, e, score, level, eff = self._resume_distance(z)
        self.z, self.e = float(z[-1]), float(e[-1])
        return Verdicts(score, level, {"ewma": z, "median": med, "sigma": sigma, "e": e, "threshold": eff})

    def evidence(self) -> dict[str, float]:
        return {"ewma": self.z, "median": self.median, "sigma": self.sigma, "e": self.e,
                "threshold": self.effective_threshold}

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        side = "above" if ev["ewma"] >= ev["median"] else "below"
        return (f"{self.ctx.where} has shifted {side} its recent level: average {self.ctx.fmt(ev['ewma'])} "
                f"vs {self.ctx.fmt(ev['median'])} usually ({ev['e']:.1f} sigma)")


class Cusum(_RobustBase):
    """Two-sided CUSUM with finite memory on the standardised samples: a change point."""

    name = "cusum"
    resume_from = 256  # two running minima per sample besides the reference: numpy pays later

    def __init__(self, ctx: SensorContext | None = None, *, window: int = 240, hop: int = 30,
                 threshold: float = 10.0, allowance: float = 1.0, clip: float = 4.0, memory: int = 120,
                 severity: str = "warning", novelty: int = 0,
                 novelty_margin: float = NOVELTY_MARGIN) -> None:
        super().__init__(ctx, window, hop, threshold, severity, novelty, novelty_margin)
        self.allowance = allowance
        self.clip = clip  # a single spike adds at most `clip`: spikes are the MAD score's job
        self.memory = memory
        self.up = self.down = 0.0  # cumulative sums since warm-up
        self.min_up = TrailingMin(memory + 1)
        self.min_down = TrailingMin(memory + 1)
        self.started = False
        self.s = 0.0
        self.direction = 0.0

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        self._refit_if_due()
        self.ring.push(x)
        if math.isnan(self.median):
            self.s = 0.0
            return 0.0, 0
        if not self.started:  # the sums start at 0 just before the first scored sample
            self.min_up.push(0.0)
            self.min_down.push(0.0)
            self.started = True
        y = min(max((x - self.median) / self.sigma, -self.clip), self.clip)
        self.up = self.up + (y - self.allowance)
        self.down = self.down + (-y - self.allowance)
        s_up = self.up - self.min_up.push(self.up)
        s_down = self.down - self.min_down.push(self.down)
        self.s = max(s_up, s_down)
        self.direction = 1.0 if s_up >= s_down else -1.0
        return self._judge(self.s)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        med, sigma, fit_idx = self._reference(x)
        n = len(x)
        s = np.zeros(n)
        direction = np.zeros(n)
        ok = fit_idx >= 0
        if ok.any():
            y = np.clip((x[ok] - med[ok]) / sigma[ok], -self.clip, self.clip)
            s_up = self._side(y - self.allowance)
            s_down = self._side(-y - self.allowance)
            s[ok] = np.maximum(s_up, s_down)
            direction[ok] = np.where(s_up >= s_down, 1.0, -1.0)
        score, level, eff = self._judge_all(s)
        return Verdicts(score, level, {"cusum": s, "median": med, "sigma": sigma, "direction": direction,
                                       "threshold": eff})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        med, sigma, scored = self._resume_reference(x)
        n = len(x)
        s = np.zeros(n)
        direction = np.zeros(n)
        if scored.any():
            if not self.started:  # the sums start at 0 just before the first scored sample
                self.min_up.push(0.0)
                self.min_down.push(0.0)
                self.started = True
            y = np.clip((x[scored] - med[scored]) / sigma[scored], -self.clip, self.clip)
            up = np.cumsum(np.concatenate([[self.up], y - self.allowance]))[1:]  # the same additions in order
            down = np.cumsum(np.concatenate([[self.down], -y - self.allowance]))[1:]
            s_up = up - self.min_up.extend(up)
            s_down = down - self.min_down.extend(down)
            s[scored] = np.maximum(s_up, s_down)
            direction[scored] = np.where(s_up >= s_down, 1.0, -1.0)
            self.up, self.down = float(up[-1]), float(down[-1])
        self.s, self.direction = float(s[-1]), float(direction[-1])
        score, level, eff = self._resume_judge(s, scored)
        return Verdicts(score, level, {"cusum": s, "median": med, "sigma": sigma, "direction": direction,
                                       "threshold": eff})

    def _side(self, increments: FloatArray) -> FloatArray:
        sums = np.concatenate([[0.0], np.cumsum(increments)])
        return (sums - trailing_min(sums, self.memory + 1))[1:]

    def evidence(self) -> dict[str, float]:
        return {"cusum": self.s, "median": self.median, "sigma": self.sigma, "direction": self.direction,
                "threshold": self.effective_threshold}

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        word = "risen" if ev["direction"] > 0 else "fallen"
        return (f"{self.ctx.where} has {word} from its recent median {self.ctx.fmt(ev['median'])} to "
                f"{self.ctx.fmt(x)} (change point, CUSUM {ev['cusum']:.0f})")
