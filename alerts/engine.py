"""The alert lifecycle as a pure state machine: events and the clock in, notifications out.

No I/O happens here (the service feeds it and the channels deliver), so every rule ops rely on can be
tested with a fake clock:

- dedup: one alert per (site, equipment, rule) while it is open; further firing events fold into it.
- hysteresis in time: a ``cleared`` event starts a hold; the alert resolves only after ``clear_hold_s``
  without a new firing event, so a value hovering at its restore level does not resolve and re-fire.
  (The value hysteresis, alarm at 1.0 % / restore below 1.0 %, is analytics' job, from the catalog.)
- cooldown: an alert that fires again within ``cooldown_s`` of resolving reopens the same alert and does
  not page again, unless it comes back more severe.
- escalation: an alert at or above ``escalate_min_severity`` that nobody acknowledges within
  ``escalate_after_s`` pages again, flagged escalated and one severity rank higher.
- silences hold back paging of matching alerts until they expire, never for an ``emergency`` (a methane
  power-off must always reach a person); an alert still open when its silence expires pages then.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from alerts.model import Alert, AlertKey, Notification, Silence, Transition
from smartmine.wire import SEVERITY_RANK, AnomalyEvent, Severity

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical", "emergency")
KEEP_RESOLVED = 500  # resolved alerts kept for `alerts list --all` and the cooldown


class AlertError(ValueError):
    """An ops command that cannot apply (unknown alert id, already acknowledged...)."""


class EngineState(BaseModel):
    """Everything the engine knows; saved by the service so a restart loses no alert, ack or silence."""

    next_id: int = 1
    alerts: list[Alert] = Field(default_factory=list)
    silences: list[Silence] = Field(default_factory=list)


class AlertEngine:
    def __init__(self, *, clear_hold_s: float, cooldown_s: float, escalate_after_s: float,
                 escalate_min_severity: Severity = "critical", state: EngineState | None = None) -> None:
        self.clear_hold = timedelta(seconds=clear_hold_s)
        self.cooldown = timedelta(seconds=cooldown_s)
        self.escalate_after = timedelta(seconds=escalate_after_s)
        self.escalate_min_rank = SEVERITY_RANK[escalate_min_severity]
        state = state or EngineState()
        self._next_id = state.next_id
        self.alerts: dict[str, Alert] = {a.id: a for a in state.alerts}
        self.silences: dict[str, Silence] = {s.id: s for s in state.silences}
        # Open alerts by (site, equipment) then rule: dedup lookups and the per-equipment state the MQTT
        # channel publishes both stay cheap however many alerts are open.
        self._open: dict[tuple[str, str], dict[str, str]] = {}
        for a in state.alerts:
            if a.is_open:
                self._mark_open(a)
        self._last_resolved: dict[AlertKey, str] = {}
        for a in sorted(state.alerts, key=lambda a: a.fired_at):
            if not a.is_open:
                self._last_resolved[a.key] = a.id

    # ------------------------------------------------------------------ state
    def state(self) -> EngineState:
        return EngineState(next_id=self._next_id, alerts=list(self.alerts.values()),
                           silences=list(self.silences.values()))

    def open_alerts(self) -> list[Alert]:
        return sorted((a for a in self.alerts.values() if a.is_open),
                      key=lambda a: (-SEVERITY_RANK[a.severity], a.fired_at))

    def get(self, alert_id: str) -> Alert:
        try:
            return self.alerts[alert_id]
        except KeyError:
            raise AlertError(f"no alert with id {alert_id!r} (see `smartmine alerts list --all`)") from None

    def adopt(self, alerts: list[Alert]) -> int:
        """Take over open alerts known elsewhere (the retained alert topics) that this engine lacks; how many."""
        adopted = 0
        for alert in alerts:
            if not alert.is_open or alert.id in self.alerts or alert.rule in self._open.get(
                    (alert.site, alert.equipment), {}):
                continue
            self.alerts[alert.id] = alert
            self._mark_open(alert)
            if alert.id.isdigit():
                self._next_id = max(self._next_id, int(alert.id) + 1)
            adopted += 1
        return adopted

    # ------------------------------------------------------------------ events
    def on_event(self, event: AnomalyEvent, now: datetime) -> list[Notification]:
        key = (event.site, event.equipment, event.rule)
        open_id = self._open.get((event.site, event.equipment), {}).get(event.rule)
        if event.state == "cleared":
            if open_id is None:
                return []  # a clear for something we never saw open (or already resolved): nothing to do
            alert = self.alerts[open_id]
            if alert.clearing_since is None:
                alert.clearing_since = now
            return self._resolve_if_held(alert, now)
        if open_id is not None:
            return self._fold(self.alerts[open_id], event, now)
        previous = self._last_resolved.get(key)
        if previous is not None:
            old = self.alerts.get(previous)
            if old is not None and old.resolved_at is not None and now - old.resolved_at < self.cooldown:
                return self._reopen(old, event, now)
        return self._open_new(event, now)

    def _open_new(self, event: AnomalyEvent, now: datetime) -> list[Notification]:
        alert = Alert(
            id=str(self._next_id), site=event.site, area=event.area, equipment=event.equipment, rule=event.rule,
            sensor=event.sensor, detector=event.detector, severity=event.severity, message=event.message,
            values=dict(event.values), score=event.score, threshold=event.threshold, started=event.start,
            fired_at=now, last_event_at=now)
        self._next_id += 1
        alert.silenced_by = self._silence_for(alert, now)
        self.alerts[alert.id] = alert
        self._mark_open(alert)
        return [self._notify("fired", alert, now)]

    def _fold(self, alert: Alert, event: AnomalyEvent, now: datetime) -> list[Notification]:
        """A firing event for an open alert: dedup, unless it is more severe than what was paged."""
        alert.events += 1
        alert.last_event_at = now
        alert.clearing_since = None
        alert.values = dict(event.values)
        alert.score = event.score
        if SEVERITY_RANK[event.severity] > SEVERITY_RANK[alert.severity]:
            alert.severity = event.severity
            alert.message = event.message
            alert.silenced_by = self._silence_for(alert, now)
            if alert.state == "acknowledged":
                # Acknowledged at a lower severity; a worse condition needs a fresh acknowledgement.
                alert.state, alert.acknowledged_at, alert.acknowledged_by = "firing", None, None
            return [self._notify("severity_raised", alert, now)]
        return []

    def _reopen(self, alert: Alert, event: AnomalyEvent, now: datetime) -> list[Notification]:
        raised = SEVERITY_RANK[event.severity] > SEVERITY_RANK[alert.severity]
        alert.state, alert.resolved_at, alert.clearing_since = "firing", None, None
        alert.acknowledged_at = alert.acknowledged_by = None
        alert.refired += 1
        alert.events += 1
        alert.last_event_at = now
        alert.values = dict(event.values)
        alert.score = event.score
        if raised:
            alert.severity = event.severity
            alert.message = event.message
        alert.silenced_by = self._silence_for(alert, now)
        self._mark_open(alert)
        self._last_resolved.pop(alert.key, None)
        return [self._notify("severity_raised" if raised else "refired", alert, now)]

    # ------------------------------------------------------------------ ops commands
    def acknowledge(self, alert_id: str, by: str, now: datetime) -> list[Notification]:
        alert = self.get(alert_id)
        if alert.state == "resolved":
            raise AlertError(f"alert {alert_id} is already resolved (at {alert.resolved_at:%Y-%m-%d %H:%M:%S}Z)")
        if alert.state == "acknowledged":
            raise AlertError(f"alert {alert_id} is already acknowledged by {alert.acknowledged_by}")
        alert.state, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", now, by
        return [self._notify("acknowledged", alert, now)]

    def add_silence(self, *, site: str | None, equipment: str | None, rule: str, duration_s: float, reason: str,
                    by: str, now: datetime) -> Silence:
        if duration_s <= 0:
            raise AlertError(f"silence duration must be positive, got {duration_s:g} s")
        if site is None and equipment is None and rule == "*":
            raise AlertError("a silence needs at least one of --site, --equipment or --rule (refusing to silence "
                             "everything)")
        silence = Silence(id=f"s{self._next_id}", site=site, equipment=equipment, rule=rule,
                          until=now + timedelta(seconds=duration_s), reason=reason, created_by=by, created_at=now)
        self._next_id += 1
        self.silences[silence.id] = silence
        for alert in self.open_alerts():
            if alert.silenced_by is None:
                alert.silenced_by = self._silence_for(alert, now)
        return silence

    def remove_silence(self, silence_id: str, now: datetime) -> list[Notification]:
        if silence_id not in self.silences:
            raise AlertError(f"no silence with id {silence_id!r} (see `smartmine alerts silences`)")
        del self.silences[silence_id]
        return self._release(silence_id, now)

    # ------------------------------------------------------------------ the clock
    def tick(self, now: datetime) -> list[Notification]:
        """Resolve held clears, escalate unacknowledged alerts, expire silences. Call about once a second."""
        out: list[Notification] = []
        for silence in [s for s in self.silences.values() if not s.active(now)]:
            del self.silences[silence.id]
            out += self._release(silence.id, now)
        for alert in self.open_alerts():
            if alert.clearing_since is not None:
                out += self._resolve_if_held(alert, now)
            elif (alert.state == "firing" and not alert.escalated
                  and SEVERITY_RANK[alert.severity] >= self.escalate_min_rank
                  and now - alert.fired_at >= self.escalate_after):
                alert.escalated, alert.escalated_at = True, now
                alert.severity = SEVERITIES[min(SEVERITY_RANK[alert.severity] + 1, len(SEVERITIES) - 1)]
                out.append(self._notify("escalated", alert, now))
        return out

    # ------------------------------------------------------------------ helpers
    def _resolve_if_held(self, alert: Alert, now: datetime) -> list[Notification]:
        assert alert.clearing_since is not None
        if now - alert.clearing_since < self.clear_hold:
            return []
        alert.state, alert.resolved_at, alert.clearing_since = "resolved", now, None
        self._mark_closed(alert)
        self._last_resolved[alert.key] = alert.id
        notification = self._notify("resolved", alert, now)
        self._prune()
        return [notification]

    def _release(self, silence_id: str, now: datetime) -> list[Notification]:
        out = []
        for alert in self.open_alerts():
            if alert.silenced_by == silence_id:
                alert.silenced_by = self._silence_for(alert, now)
                if alert.silenced_by is None and alert.state == "firing":
                    out.append(self._notify("unsilenced", alert, now))
        return out

    def _silence_for(self, alert: Alert, now: datetime) -> str | None:
        if alert.severity == "emergency":
            return None
        for silence in self.silences.values():
            if silence.active(now) and silence.matches(alert):
                return silence.id
        return None

    def _mark_open(self, alert: Alert) -> None:
        self._open.setdefault((alert.site, alert.equipment), {})[alert.rule] = alert.id

    def _mark_closed(self, alert: Alert) -> None:
        rules = self._open.get((alert.site, alert.equipment), {})
        rules.pop(alert.rule, None)
        if not rules:
            self._open.pop((alert.site, alert.equipment), None)

    def _notify(self, transition: Transition, alert: Alert, now: datetime) -> Notification:
        same_equipment = {rule: self.alerts[alert_id].model_copy()
                          for rule, alert_id in self._open.get((alert.site, alert.equipment), {}).items()}
        return Notification(transition=transition, alert=alert.model_copy(), at=now,
                            equipment_alerts=same_equipment)

    def _prune(self) -> None:
        open_count = sum(len(rules) for rules in self._open.values())
        if len(self.alerts) - open_count <= KEEP_RESOLVED:
            return
        resolved = sorted((a for a in self.alerts.values() if not a.is_open), key=lambda a: a.fired_at)
        for alert in resolved[:max(0, len(resolved) - KEEP_RESOLVED)]:
            del self.alerts[alert.id]
            if self._last_resolved.get(alert.key) == alert.id:
                del self._last_resolved[alert.key]
