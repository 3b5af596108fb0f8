"""Shift / daily seasonal baseline: is this value usual *for this time of day*?

A coal mine runs a maintenance shift at night and two production shifts; a steel plant's cooling water
follows the afternoon heat. A belt current of 60 A is normal at 03:00 and a fault at 10:00. The day is
cut into slots (an hour by default, so the three 8-hour shifts and their hand-overs are captured) in
the site's local time; each slot keeps an exponentially weighted mean and variance of what it has seen
over the last few days. A sample is scored against its slot once the slot has seen a full day's worth.

Batch form: the slots are independent recursions, so each slot's samples are filtered at once with
scipy's IIR filter (the same multiply-add order as the streaming form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from analytics.detector import Detector, FloatArray, SensorContext, Verdicts, level_of, ratio_scores
from analytics.kernels import NOVELTY_MARGIN, NoveltyGate, ewma_init, novelty_gate
from analytics.statistical import min_sigma_of

DAY_S = 86_400


class SeasonalBaseline(Detector):
    """Score a sample against the usual value of its time-of-day slot."""

    name = "seasonal"
    resume_from = 64

    def __init__(self, ctx: SensorContext | None = None, *, slot_s: int = 3600, utc_offset_s: int = 8 * 3600,
                 days: float = 3.0, threshold: float = 5.0, min_count: int | None = None,
                 severity: str = "warning", novelty: int = 0, novelty_margin: float = NOVELTY_MARGIN) -> None:
        super().__init__(ctx)
        if DAY_S % slot_s:
            raise ValueError(f"slot_s {slot_s} does not divide a day")
        self.slot_s = slot_s
        self.utc_offset_ns = utc_offset_s * 1_000_000_000
        per_slot_day = max(slot_s / self.ctx.sample_period_s, 1.0)  # samples a slot sees per day
        self.alpha = 1.0 / (days * per_slot_day)
        self.min_count = min_count if min_count is not None else max(int(per_slot_day), 2)
        self.threshold = threshold
        self.min_sigma = min_sigma_of(self.ctx)
        self._level = level_of(severity)
        self.novelty = novelty
        self.novelty_margin = novelty_margin
        self.gate = NoveltyGate(threshold, novelty, novelty_margin)
        slots = DAY_S // slot_s
        self.mean = [math.nan] * slots
        self.var = [0.0] * slots
        self.weight = [0.0] * slots  # the variance's weights so far: early estimates are not biased low
        self.count = [0] * slots
        self.ev: tuple[float, float, float, float] = (0.0, math.nan, 0.0, threshold)  # z, expected, slot, thr

    def slot_of(self, ts: int) -> int:
        return int(((ts + self.utc_offset_ns) // 1_000_000_000) % DAY_S) // self.slot_s

    def _step(self, ts: int, x: float) -> tuple[float, int]:
        s = self.slot_of(ts)
        a = self.alpha
        z = 0.0
        if self.count[s] == 0:
            self.mean[s] = x
            expected = math.nan
        else:
            mu, var, w = self.mean[s], self.var[s], self.weight[s]
            d = x - mu
            expected = mu
            if self.count[s] >= self.min_count:
                z = abs(d) / max(math.sqrt(var / w), self.min_sigma)
            self.mean[s] = a * x + (1.0 - a) * mu
            self.var[s] = ((1.0 - a) * a) * (d * d) + (1.0 - a) * var
            self.weight[s] = ((1.0 - a) * a) * 1.0 + (1.0 - a) * w
        self.count[s] += 1
        eff, flagged = self.gate.judge(z)
        self.ev = (z, expected, float(s), eff)  # a dict only when asked (evidence): this runs per sample
        return (z / (z + eff) if z > 0 else 0.0), (self._level if flagged else 0)

    def _run(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        from scipy.signal import lfilter

        n = len(x)
        slot = (((ts + self.utc_offset_ns) // 1_000_000_000) % DAY_S) // self.slot_s
        z = np.zeros(n)
        expected = np.full(n, np.nan)
        a = self.alpha
        order = np.argsort(slot, kind="stable")
        bounds = np.flatnonzero(np.diff(slot[order])) + 1
        for idx in np.split(order, bounds):
            if len(idx) < 2:
                continue
            v = x[idx]
            mu = ewma_init(v, a)  # mean after each sample
            d = v[1:] - mu[:-1]  # each later sample against the mean before it
            var = np.zeros(len(v))
            weight = np.zeros(len(v))
            var[1:], _ = lfilter([(1.0 - a) * a], [1.0, -(1.0 - a)], d * d, zi=np.zeros(1))
            weight[1:], _ = lfilter([(1.0 - a) * a], [1.0, -(1.0 - a)], np.ones(len(d)), zi=np.zeros(1))
            scored = np.arange(1, len(v)) >= self.min_count
            zz = np.zeros(len(v) - 1)
            spread = np.sqrt(var[:-1][scored] / weight[:-1][scored])
            zz[scored] = np.abs(d[scored]) / np.maximum(spread, self.min_sigma)
            z[idx[1:]] = zz
            expected[idx[1:]] = mu[:-1]
        eff, flagged = novelty_gate(z, self.threshold, self.novelty, self.novelty_margin)
        score = np.zeros(n)
        pos = z > 0
        score[pos] = z[pos] / (z[pos] + eff[pos])
        return Verdicts(score, np.where(flagged, self._level, 0).astype(np.int8),
                        {"z": z, "expected": expected, "slot": slot.astype(np.float64), "threshold": eff})

    def _resume(self, ts: np.ndarray, x: FloatArray) -> Verdicts:
        """The slots' recursions continued from their state, one filter per slot present (a micro-batch of
        the streaming job spans one or two slots)."""
        from scipy.signal import lfilter

        n = len(x)
        slot = (((ts + self.utc_offset_ns) // 1_000_000_000) % DAY_S) // self.slot_s
        z = np.zeros(n)
        expected = np.full(n, np.nan)
        a = self.alpha
        keep = 1.0 - a
        order = np.argsort(slot, kind="stable")
        for idx in np.split(order, np.flatnonzero(np.diff(slot[order])) + 1):
            s = int(slot[idx[0]])
            v = x[idx]
            if self.count[s] == 0:  # the slot's first sample only sets its mean
                self.mean[s] = float(v[0])
                self.count[s] = 1
                idx, v = idx[1:], v[1:]
                if len(v) == 0:
                    continue
            mu0, var0, w0, count0 = self.mean[s], self.var[s], self.weight[s], self.count[s]
            mu = ewma_init(v, a, mu0)
            mu_before = np.concatenate([[mu0], mu[:-1]])
            d = v - mu_before
            var, _ = lfilter([keep * a], [1.0, -keep], d * d, zi=np.array([keep * var0]))
            weight, _ = lfilter([keep * a], [1.0, -keep], np.ones(len(v)), zi=np.array([keep * w0]))
            scored = count0 + np.arange(len(v)) >= self.min_count
            if scored.any():
                var_before = np.concatenate([[var0], var[:-1]])[scored]
                w_before = np.concatenate([[w0], weight[:-1]])[scored]
                z[idx[scored]] = np.abs(d[scored]) / np.maximum(np.sqrt(var_before / w_before), self.min_sigma)
            expected[idx] = mu_before
            self.mean[s], self.var[s], self.weight[s] = float(mu[-1]), float(var[-1]), float(weight[-1])
            self.count[s] = count0 + len(v)
        eff, flagged = self.gate.judge_many(z)
        self.ev = (float(z[-1]), float(expected[-1]), float(slot[-1]), float(eff[-1]))
        return Verdicts(ratio_scores(z, eff), np.where(flagged, self._level, 0).astype(np.int8),
                        {"z": z, "expected": expected, "slot": slot.astype(np.float64), "threshold": eff})

    def evidence(self) -> dict[str, float]:
        z, expected, slot, threshold = self.ev
        return {"z": z, "expected": expected, "slot": slot, "threshold": threshold}

    def explain(self, x: float, ev: Mapping[str, float], level: int) -> str:
        slot = int(ev["slot"])
        start = slot * self.slot_s
        when = f"{start // 3600:02d}:{start % 3600 // 60:02d}"
        side = "above" if x >= ev["expected"] else "below"
        return (f"{self.ctx.where} is {self.ctx.fmt(x)}, {ev['z']:.1f} sigma {side} what is usual at {when} "
                f"({self.ctx.fmt(ev['expected'])})")
