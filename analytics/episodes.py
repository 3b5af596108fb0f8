"""From anomalous samples to episodes: one firing, escalations, one clearing per equipment and rule.

Ops want one alert per problem, not one per sample. A detector's flagged samples on one rule are
grouped into an episode: it fires on the first flagged sample, escalates when a later sample is more
severe (methane alarm -> power-off), and clears on the first unflagged sample at least ``hold_s``
after the last flagged one. Limit rules carry their own hysteresis, so their hold is 0 (they clear
on the first sample past restore); statistical detectors hold a little so a flickering score does
not flap the alert.

A detector with a ``confirm_s`` (the level statistics) has to persist before it pages: its episode fires
at ``info`` and escalates to the detector's severity on the first flag at least ``confirm_s`` after the
episode began. A plant fault lasts (a slipping belt, an inrush, a leak); a start, a stop or a bar
entering a mill stand moves a reading for a few seconds, and so does a one-off glitch.

The streaming job feeds :class:`EpisodeTracker` sample by sample; the batch job feeds it only the
flagged samples and the samples where a clearing is due (:func:`batch_transitions`), which yields
exactly the same transitions without a Python loop over every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from analytics.detector import Anomaly, Detector, Verdicts
from smartmine.wire import SEVERITY_RANK

TransitionKind = Literal["firing", "escalated", "cleared"]


@dataclass(slots=True)
class Episode:
    """One open problem of one equipment under one rule."""

    rule: str
    detector: str
    start: int  # ns, first flagged sample
    segment_start: int  # ns, when the current severity began
    last: int  # ns, latest flagged sample
    severity: str
    first: Anomaly
    peak: Anomaly  # the most anomalous sample so far (its evidence goes into the record)


@dataclass(frozen=True, slots=True)
class Transition:
    """Something alerts and the anomalies record must hear about."""

    kind: TransitionKind
    ts: int  # ns, the sample that caused it
    episode: Episode  # a snapshot taken at the transition
    anomaly: Anomaly  # the sample's anomaly (for a clearing: the episode's peak)
    message: str
    previous_severity: str | None = None  # for an escalation: the severity of the segment that ended
    previous_segment_start: int | None = None

    @property
    def end(self) -> int | None:
        return self.episode.last if self.kind == "cleared" else None


class EpisodeTracker:
    """The open episodes of one equipment, keyed by rule."""

    def __init__(self) -> None:
        self.open: dict[str, Episode] = {}

    def flagged(self, a: Anomaly, confirm_s: float = 0.0) -> Transition | None:
        """A flagged sample on ``a.rule``; below ``confirm_s`` into its episode it counts as ``info``."""
        ep = self.open.get(a.rule)
        if confirm_s > 0.0 and a.severity != "info" and (ep is None or a.ts - ep.start < confirm_s * 1e9):
            a = replace(a, severity="info")  # not confirmed yet: shown, not paged
        if ep is None:
            ep = Episode(a.rule, a.detector, a.ts, a.ts, a.ts, a.severity, a, a)
            self.open[a.rule] = ep
            return Transition("firing", a.ts, replace(ep), a, a.message)
        ep.last = a.ts
        if a.score > ep.peak.score:
            ep.peak = a
        if SEVERITY_RANK[a.severity] > SEVERITY_RANK[ep.severity]:
            previous, previous_start = ep.severity, ep.segment_start
            ep.severity, ep.segment_start = a.severity, a.ts
            return Transition("escalated", a.ts, replace(ep), a, a.message, previous, previous_start)
        return None

    def quiet(self, detector: Detector, ts: int, x: float) -> Transition | None:
        """An unflagged sample on an open rule: clears the episode once the hold has passed."""
        ep = self.open.get(detector.rule)
        if ep is None or ts - ep.last < detector.hold_s * 1e9:
            return None
        del self.open[detector.rule]
        duration_s = (ep.last - ep.start) / 1e9
        return Transition("cleared", ts, ep, ep.peak, detector.cleared_message(x, duration_s))

    def observe(self, detector: Detector, ts: int, x: float) -> Transition | None:
        """The streaming form: score one sample with ``detector`` and track its episode."""
        if not math.isfinite(x):  # as in the batch form: a value that is not a number is no sample
            return None
        # Detector.update inlined: this runs for every detector on every reading of the streaming job.
        score, level = detector.step(ts, x)
        if level:
            return self.flagged(detector.anomaly(ts, x, score, level, detector.evidence()), detector.confirm_s)
        if detector.rule in self.open:
            return self.quiet(detector, ts, x)
        return None


def batch_transitions(tracker: EpisodeTracker, detector: Detector, ts: np.ndarray, x: np.ndarray,
                      v: Verdicts) -> list[Transition]:
    """The batch form of feeding ``tracker``: only flagged samples and due clearings are visited.

    ``ts``, ``x`` and ``v`` cover the finite samples only (NaN samples never reach a tracker in
    streaming either).
    """
    flagged = np.flatnonzero(v.level)
    if len(flagged) == 0 and detector.rule not in tracker.open:
        return []
    # In integer ns, so the clearing sample is the one streaming picks (``ts - last < hold_s * 1e9`` on
    # integers is ``ts - last < ceil(hold_s * 1e9)``); float ns near 1.8e18 are 256 ns apart.
    hold_ns = math.ceil(detector.hold_s * 1e9)
    # For every flagged sample followed by an unflagged one: the first later sample at least
    # `hold` after it, if it comes before the next flagged sample, clears the episode.
    visits: list[tuple[int, bool]] = [(int(i), True) for i in flagged]
    next_flag = np.append(flagged[1:], len(ts))
    run_ends = flagged[next_flag > flagged + 1]
    nxt = next_flag[next_flag > flagged + 1]
    if len(run_ends):
        due = np.searchsorted(ts, ts[run_ends] + hold_ns, side="left")
        due = np.maximum(due, run_ends + 1)
        visits += [(int(k), False) for k in due[due < nxt]]
    if detector.rule in tracker.open and (len(flagged) == 0 or flagged[0] > 0):
        # An episode left open by an earlier batch: clear it on the first sample that qualifies.
        first_flag = flagged[0] if len(flagged) else len(ts)
        ep = tracker.open[detector.rule]
        k = int(np.searchsorted(ts, ep.last + hold_ns, side="left"))
        if k < first_flag:
            visits.append((k, False))
    visits.sort()
    out: list[Transition] = []
    for i, is_flag in visits:
        t: Transition | None
        if is_flag:
            ev = {k: float(col[i]) for k, col in v.evidence.items()}
            a = detector.anomaly(int(ts[i]), float(x[i]), float(v.score[i]), int(v.level[i]), ev)
            t = tracker.flagged(a, detector.confirm_s)
        else:
            t = tracker.quiet(detector, int(ts[i]), float(x[i]))
        if t is not None:
            out.append(t)
    return out
