"""The anomalies record, written only by analytics: InfluxDB measurement ``anomalies`` and the
``AnomalyEvent`` published on the ``event`` channel for alerts.

InfluxDB measurement ``anomalies`` (one point per episode and severity; docs/analytics.md):

- tags (all bounded by the catalog and the code, never free text): ``site``, ``area``, ``equipment``,
  ``sensor`` (absent for an equipment-level detector such as PCA), ``detector`` (``limit``, ``mad``,
  ``ewma``, ``cusum``, ``seasonal``, ``early``, ``stuck``, ``dropout``, ``range``, ``counter``,
  ``drift``, ``pca``, ``trend``), ``severity``
- timestamp: when this severity began (the episode's start, or the escalation)
- fields: ``start`` and ``end`` (ns, integers; ``end`` once known), ``state`` (``firing``, ``escalated``
  = this severity segment ended because a higher one began, ``cleared``), ``duration_s``, ``score``
  (0..1, the episode's peak), ``threshold``, ``rule`` (the dedup key, e.g. ``limit:methane``),
  ``message`` (one line), ``value_<name>`` (the evidence: the reading and the detector's reference).

A point is written when the episode fires and rewritten (same series and time, fields merged) when it
escalates or clears, so a query sees every anomaly at once, ongoing ones without ``end``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from influxdb_client.client.write.point import _ESCAPE_MEASUREMENT, _escape_key, _escape_string, _escape_tag_value

from analytics.detector import Anomaly
from analytics.episodes import Transition
from smartmine.wire import AnomalyEvent, topic

MEASUREMENT = "anomalies"
TAG_KEYS = ("area", "detector", "equipment", "sensor", "severity", "site")  # sorted, as InfluxDB stores them
log = logging.getLogger(__name__)


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)


def _line(a: Anomaly, severity: str, point_ns: int, fields: dict[str, Any]) -> str:
    tags = {"site": a.ctx.site, "area": a.ctx.area, "equipment": a.ctx.equipment, "sensor": a.ctx.sensor,
            "detector": a.detector, "severity": severity}
    tag_text = "".join(f",{k}={_escape_tag_value(tags[k])}" for k in TAG_KEYS if tags[k])
    parts = []
    for key, value in fields.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            parts.append(f"{_escape_key(key)}={value}i")
        elif isinstance(value, float):
            if math.isfinite(value):
                parts.append(f"{_escape_key(key)}={value!r}")
        else:
            parts.append(f'{_escape_key(key)}="{_escape_string(str(value))}"')
    return f"{_escape_key(MEASUREMENT, _ESCAPE_MEASUREMENT)}{tag_text} {','.join(parts)} {point_ns}"


def _evidence_fields(a: Anomaly) -> dict[str, Any]:
    return {f"value_{k}": float(v) for k, v in a.values.items()}


def anomaly_lines(t: Transition) -> list[str]:
    """Line protocol for one transition (one line, two for an escalation: the segment that ended)."""
    ep = t.episode
    peak = ep.peak
    base: dict[str, Any] = {"start": ep.start, "rule": ep.rule, "score": float(peak.score),
                            "threshold": float(peak.threshold), "message": peak.message}
    base.update(_evidence_fields(peak))
    lines = []
    if t.kind == "escalated":
        assert t.previous_severity is not None and t.previous_segment_start is not None
        lines.append(_line(ep.first, t.previous_severity, t.previous_segment_start,
                           {**base, "state": "escalated", "end": t.ts,
                            "duration_s": (t.ts - t.previous_segment_start) / 1e9}))
        lines.append(_line(t.anomaly, ep.severity, ep.segment_start, {**base, "state": "firing"}))
    elif t.kind == "cleared":
        lines.append(_line(peak, ep.severity, ep.segment_start,
                           {**base, "state": "cleared", "end": ep.last, "duration_s": (ep.last - ep.start) / 1e9}))
    else:
        lines.append(_line(t.anomaly, ep.severity, ep.segment_start, {**base, "state": "firing"}))
    return lines


def anomaly_event(t: Transition) -> AnomalyEvent:
    """The wire event for alerts: ``firing`` (also on escalation, with the higher severity) or ``cleared``."""
    a = t.anomaly
    ep = t.episode
    values = {k: float(v) for k, v in a.values.items() if math.isfinite(v)}
    threshold = a.threshold if math.isfinite(a.threshold) else None
    return AnomalyEvent(
        ts=_dt(t.ts), start=_dt(ep.start), end=_dt(ep.last) if t.kind == "cleared" else None,
        site=a.ctx.site, area=a.ctx.area, equipment=a.ctx.equipment, sensor=a.ctx.sensor or None,
        detector=a.detector, rule=ep.rule, severity=ep.severity,
        state="cleared" if t.kind == "cleared" else "firing",
        score=float(a.score), threshold=threshold, values=values, message=t.message[:500],
    )


class AnomalySink(Protocol):
    """Where transitions go (Telegraf's output shape: write a batch, close)."""

    def write(self, transitions: Sequence[Transition]) -> None: ...

    def close(self) -> None: ...


class InfluxAnomalySink:
    """Writes the ``anomalies`` measurement. A failed write is kept (bounded) and retried on the next one."""

    def __init__(self, client: Any, max_pending: int = 100_000) -> None:
        self.client = client
        self.pending: list[str] = []
        self.max_pending = max_pending
        self.written = 0

    def write(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            self.pending.extend(anomaly_lines(t))
        self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from smartmine.influx import InfluxError

        try:
            self.client.write_lines(self.pending)
        except InfluxError as exc:
            if not exc.retryable:
                log.error("anomalies rejected by InfluxDB, dropped %d lines: %s", len(self.pending), exc)
                self.pending.clear()
                return
            dropped = max(len(self.pending) - self.max_pending, 0)
            if dropped:
                log.error("InfluxDB unavailable: dropping the %d oldest anomaly lines", dropped)
                del self.pending[:dropped]
            log.warning("InfluxDB write failed (%s); %d anomaly lines kept for retry", exc, len(self.pending))
            return
        self.written += len(self.pending)
        self.pending.clear()

    def close(self) -> None:
        self.flush()


class EventPublisher:
    """Publishes ``AnomalyEvent`` on ``<prefix>/<site>/<area>/<equipment>/event`` (QoS 1, not retained)."""

    def __init__(self, client: Any, prefix: str, close_timeout_s: float = 10.0) -> None:
        self.client = client
        self.prefix = prefix
        self.published = 0
        self.close_timeout_s = close_timeout_s
        self._last: Any = None

    def write(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            a = t.anomaly
            name = topic(a.ctx.site, a.ctx.area, a.ctx.equipment, "event", prefix=self.prefix)
            self._last = self.client.publish(name, anomaly_event(t).encode(), qos=1)
            self.published += 1

    def close(self) -> None:
        # QoS 1 messages leave in order: once the last one is acknowledged, all of them are.
        if self._last is not None and self.client.is_connected():
            try:
                self._last.wait_for_publish(self.close_timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("events may not all have reached the broker: %s", exc)


class CollectingSink:
    """Keeps transitions in memory (the batch job's summary, tests)."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []

    def write(self, transitions: Sequence[Transition]) -> None:
        self.transitions.extend(transitions)

    def close(self) -> None:
        pass


def write_all(sinks: Iterable[AnomalySink], transitions: Sequence[Transition]) -> None:
    if transitions:
        for sink in sinks:
            sink.write(transitions)
