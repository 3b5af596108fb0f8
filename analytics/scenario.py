"""Scoring the analytics on the simulators' scenarios: their telemetry (JSON Lines) against their
ground truth (a JSON list of fault intervals), as ``smartmine analyze evaluate --telemetry --truth``.

The telemetry is scored with the batch form per equipment (the same answers as the streaming job, a
test proves it), after the same de-duplication InfluxDB applies (one sample per series and time).
Measured:

- event recall: a fault interval is found when an anomaly episode on its equipment starts inside it
  (or up to ``grace_s`` after it ends); a ventilation failure also counts as found by an episode at
  any gas monitor of its site, because that is where it shows. Transport faults other than message
  loss (duplicates, reordering, lateness, clock skew) are not faults of the plant and are not counted.
- event precision: an episode is right when it falls in any fault interval of its equipment
  (transport included), otherwise it is a false alarm.
- detection delay: episode start minus fault start, for found faults.

These count *alarms*: episodes that reached ``warning`` or above (what pages ops), from the moment they did.
An episode that stayed ``info`` (a level statistic that did not last ``confirm_s``) is shown on the boards
but pages nobody; it is neither a false alarm nor a detection there. The same figures over every episode,
``info`` included, are reported as ``findings_*`` so the effect of the confirmation is visible.
- page precision: the same over *pages*, the alarms folded the way the alerts service folds them into one
  alert (an episode of the same equipment and rule that fires again within ``clear_hold_s + cooldown_s``
  of the last one's end reopens that alert and pages nobody). A limit that chatters around its restore
  level is many episodes but one page: counting episodes would let the chatter inside a fault inflate the
  precision, counting pages does not.
- limit rules: every sample at or past a catalog limit must lie inside an episode of that limit
  (recall) that started no later than the first violating sample of the excursion (zero delay).
- early warning: for every limit excursion, whether an ``early:`` warning on the same limit fired before
  it, and how long before (limits the catalog marks ``early_warning: false`` are not forecast, not counted).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analytics.engine import EquipmentScorer, utc_offset
from analytics.episodes import Transition
from smartmine.catalog import Catalog
from smartmine.config import AlertsSettings, AnalyticsSettings
from smartmine.errors import UsageError
from smartmine.wire import SEVERITY_RANK

SPREADING = {"ventilation_failure": "gas_monitor"}  # fault kind -> equipment type where it also shows
NOT_PLANT_FAULTS = {"duplicate", "out_of_order", "late", "clock_skew"}


@dataclass(frozen=True, slots=True)
class FaultInterval:
    site: str
    equipment: str
    sensor: str | None
    kind: str
    layer: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    site: str
    equipment: str
    rule: str
    detector: str
    start: int
    end: int | None
    alarm: int | None = None  # when it first reached warning or above (None: it stayed info)


def _ns(text: str) -> int:
    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return int(ts.as_unit("ns").value)


def load_truth(path: Path) -> list[FaultInterval]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the ground truth: {exc}") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: the ground truth must be a JSON list of intervals")
    try:
        return [FaultInterval(d["site"], d["equipment"], d.get("sensor"), d["kind"], d.get("layer", "process"),
                              _ns(d["start"]), _ns(d["end"])) for d in data]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: an interval lacks site/equipment/kind/start/end ({exc})") from None


def load_telemetry(path: Path) -> dict[tuple[str, str], pd.DataFrame]:
    """JSON Lines ``{"topic", "payload"}`` as one frame per equipment (time + one column per sensor),
    sorted by time, one row per timestamp (the last message wins, as in InfluxDB); ``bad`` readings blank."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                parts = msg["topic"].split("/")
                payload = msg["payload"]
                site, equipment, channel = parts[-4], parts[-2], parts[-1]
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise UsageError(f"{path}:{n}: not a {{topic, payload}} JSON line") from None
            if channel != "telemetry":
                continue
            row: dict[str, Any] = {"time": payload["ts"]}
            for sensor, r in payload.get("readings", {}).items():
                if isinstance(r, dict):
                    row[sensor] = math.nan if r.get("quality") == "bad" else r.get("value")
                else:
                    row[sensor] = r
            rows[(site, equipment)].append(row)
    frames = {}
    for key, items in rows.items():
        frame = pd.DataFrame(items)
        frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
        frame = frame.sort_values("time", kind="stable").drop_duplicates("time", keep="last")
        frames[key] = frame.reset_index(drop=True)
    return frames


def score_telemetry(frames: dict[tuple[str, str], pd.DataFrame], catalog: Catalog,
                    cfg: AnalyticsSettings) -> tuple[list[Transition], list[EpisodeRecord]]:
    """Run every equipment's detectors on its frame; the transitions and the resulting episodes."""
    transitions: list[Transition] = []
    for (site, eq_id), frame in frames.items():
        eq = catalog.equipment(site, eq_id)
        if eq is None:
            continue
        scorer = EquipmentScorer(eq, cfg, utc_offset_s=utc_offset(catalog, site))
        transitions += scorer.run(frame)
        if scorer.drift and (site, eq.redundant_with[0]) in frames:
            transitions += scorer.run_drift(frame, frames[(site, eq.redundant_with[0])])
    return transitions, episodes_of(transitions)


def episodes_of(transitions: list[Transition]) -> list[EpisodeRecord]:
    """One record per episode: its start, when it became an alarm (if it did) and (when cleared) its end."""
    open_: dict[tuple[str, str, str], EpisodeRecord] = {}
    done: list[EpisodeRecord] = []
    warning = SEVERITY_RANK["warning"]
    for t in sorted(transitions, key=lambda t: t.ts):
        ctx = t.anomaly.ctx
        key = (ctx.site, ctx.equipment, t.episode.rule)
        alarm = t.ts if SEVERITY_RANK[t.episode.severity] >= warning else None
        if t.kind == "firing" and key not in open_:
            open_[key] = EpisodeRecord(ctx.site, ctx.equipment, t.episode.rule, t.episode.detector, t.episode.start,
                                       None, alarm)
        elif t.kind == "escalated" and key in open_ and open_[key].alarm is None and alarm is not None:
            open_[key] = replace(open_[key], alarm=alarm)
        elif t.kind == "cleared" and key in open_:
            done.append(replace(open_.pop(key), end=t.episode.last))
    return done + list(open_.values())


def evaluate(frames: dict[tuple[str, str], pd.DataFrame], truth: list[FaultInterval], catalog: Catalog,
             cfg: AnalyticsSettings, grace_s: float = 120.0) -> dict[str, Any]:
    _, episodes = score_telemetry(frames, catalog, cfg)
    types = {(eq.site, eq.id): eq.type for eq in catalog.all_equipment()}
    alarms = [replace(e, start=e.alarm) for e in episodes if e.alarm is not None]
    out = _events(alarms, truth, types, grace_s)
    alerting = AlertsSettings()
    paged = _events(pages(alarms, alerting.clear_hold_s + alerting.cooldown_s), truth, types, grace_s)
    out.update({"pages": paged["episodes"], "false_pages": paged["false_alarms"],
                "page_precision": paged["event_precision"]})
    findings = _events(episodes, truth, types, grace_s)
    out.update({"info_only_episodes": len(episodes) - len(alarms),
                "findings_recall": findings["event_recall"], "findings": findings["episodes"],
                "findings_false": findings["false_alarms"], "findings_precision": findings["event_precision"]})
    out.update(_limits_and_early(frames, episodes, catalog))
    return out


def pages(alarms: list[EpisodeRecord], fold_s: float) -> list[EpisodeRecord]:
    """The alarms as pages: one that starts within ``fold_s`` of the end of the previous alarm of the same
    equipment and rule extends it instead of paging again."""
    fold = int(fold_s * 1e9)
    out: list[EpisodeRecord] = []
    last: dict[tuple[str, str, str], int] = {}
    for e in sorted(alarms, key=lambda e: e.start):
        key = (e.site, e.equipment, e.rule)
        i = last.get(key)
        prev_end = out[i].end if i is not None else None
        if i is not None and (prev_end is None or e.start <= prev_end + fold):
            end = None if prev_end is None or e.end is None else max(prev_end, e.end)
            out[i] = replace(out[i], end=end)
        else:
            last[key] = len(out)
            out.append(e)
    return out


def _events(episodes: list[EpisodeRecord], truth: list[FaultInterval], types: dict[tuple[str, str], str],
            grace_s: float) -> dict[str, Any]:
    """Event recall, precision and delay of these episodes (each from its ``start``) against the faults."""
    grace = int(grace_s * 1e9)

    def relevant(f: FaultInterval, e: EpisodeRecord) -> bool:
        if e.site != f.site:
            return False
        return e.equipment == f.equipment or types.get((e.site, e.equipment)) == SPREADING.get(f.kind)

    faults = [f for f in truth if f.kind not in NOT_PLANT_FAULTS]
    found = 0
    delays = []
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for f in faults:
        hits = [e.start for e in episodes if relevant(f, e) and f.start <= e.start <= f.end + grace]
        per_kind[f.kind][1] += 1
        if hits:
            found += 1
            per_kind[f.kind][0] += 1
            delays.append((min(hits) - f.start) / 1e9)
    true_eps = [e for e in episodes if any(relevant(f, e) and f.start <= e.start <= f.end + grace for f in truth)]
    false_eps = [e for e in episodes if e not in true_eps]
    return {
        "faults": len(faults), "faults_found": found,
        "event_recall": round(found / len(faults), 4) if faults else None,
        "episodes": len(episodes), "false_alarms": len(false_eps),
        "event_precision": round(len(true_eps) / len(episodes), 4) if episodes else None,
        "delay_median_s": round(float(np.median(delays)), 1) if delays else None,
        "delay_max_s": round(float(np.max(delays)), 1) if delays else None,
        "found_by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(per_kind.items())},
        "false_alarm_rules": _count(e.rule.split(":")[0] for e in false_eps),
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return dict(sorted(out.items()))


def _limits_and_early(frames: dict[tuple[str, str], pd.DataFrame], episodes: list[EpisodeRecord],
                      catalog: Catalog) -> dict[str, Any]:
    """Limit recall / delay from the raw samples, and the lead of early warnings before each excursion."""
    by_rule: dict[tuple[str, str, str], list[EpisodeRecord]] = defaultdict(list)
    for e in episodes:
        by_rule[(e.site, e.equipment, e.rule)].append(e)
    violating = covered = late = excursions = warned = 0
    leads = []
    for (site, eq_id), frame in frames.items():
        eq = catalog.equipment(site, eq_id)
        if eq is None:
            continue
        ts = pd.DatetimeIndex(frame["time"]).as_unit("ns").asi8
        for sid, sensor in eq.sensors.items():
            if sid not in frame.columns:
                continue
            x = pd.to_numeric(frame[sid], errors="coerce").to_numpy(dtype=np.float64)
            for lim in sensor.limits:
                level = lim.alarm if lim.alarm is not None else lim.power_off
                assert level is not None
                bad = (x >= level) if lim.direction == "high" else (x <= level)
                if not bad.any():
                    continue
                eps = by_rule.get((site, eq_id, f"limit:{lim.name}"), [])
                inside = np.zeros(len(x), dtype=bool)
                for e in eps:
                    inside |= (ts >= e.start) & (ts <= (e.end if e.end is not None else ts[-1]))
                violating += int(bad.sum())
                covered += int((bad & inside).sum())
                starts = np.flatnonzero(bad & ~np.concatenate([[False], bad[:-1]]))  # first sample of excursions
                late += int(sum(1 for i in starts if not inside[i]))
                early_eps = by_rule.get((site, eq_id, f"early:{lim.name}"), [])
                for i in starts:
                    if (i > 0 and inside[i - 1]) or not lim.early_warning:
                        continue  # still the same alarm (hysteresis), not a new crossing; or nothing forecasts it
                    excursions += 1
                    before = [e.start for e in early_eps if e.start <= ts[i]]
                    if before:
                        warned += 1
                        leads.append((ts[i] - max(before)) / 1e9)
    return {
        "limit_violating_samples": violating,
        "limit_recall": round(covered / violating, 6) if violating else None,
        "limit_excursions_not_flagged_on_first_sample": late,
        "limit_crossings": excursions,
        "early_warned_before_crossing": warned,
        "early_lead_s_median": round(float(np.median(leads)), 1) if leads else None,
    }


def evaluate_files(telemetry: Path, truth: Path, catalog: Catalog, cfg: AnalyticsSettings) -> dict[str, Any]:
    return evaluate(load_telemetry(telemetry), load_truth(truth), catalog, cfg)
