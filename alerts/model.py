"""What an alert, a silence and a notification are: the data the engine, the channels and the CLI share.

An alert is one real problem: one per (site, equipment, rule) while it is open. Its lifecycle is
``firing → acknowledged → resolved`` (acknowledging is optional: a cleared alert resolves either way).
These models are also the JSON of the MQTT alert topic, the webhook body and the CLI's replies, so one
definition serves every channel.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from smartmine.wire import SEVERITY_RANK, Severity

AlertState = Literal["firing", "acknowledged", "resolved"]
# What happened to an alert; the channels decide from it whether to page someone.
Transition = Literal["fired", "refired", "escalated", "acknowledged", "resolved", "severity_raised", "unsilenced"]
# Transitions that page a person (webhook, e-mail). The others only update the state (MQTT, history, Grafana).
PAGING: frozenset[str] = frozenset({"fired", "escalated", "severity_raised", "unsilenced"})

AlertKey = tuple[str, str, str]  # (site, equipment, rule)


class Alert(BaseModel):
    """One open or past problem of one equipment under one rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    id: str = Field(description="Short id ops type in `smartmine alerts ack ID`")
    site: str
    area: str
    equipment: str
    rule: str
    sensor: str | None = None
    detector: str
    severity: Severity = Field(description="Highest severity seen while open (after escalation: raised one rank)")
    state: AlertState = "firing"
    message: str
    values: dict[str, float] = Field(default_factory=dict)
    score: float = 0.0
    threshold: float | None = None
    started: AwareDatetime = Field(description="Start of the anomalous span, from the first event")
    fired_at: AwareDatetime = Field(description="When the service opened the alert")
    last_event_at: AwareDatetime = Field(description="When the last firing event arrived")
    clearing_since: AwareDatetime | None = Field(default=None, description="Cleared by analytics, resolving after "
                                                                           "the hold time unless it fires again")
    acknowledged_at: AwareDatetime | None = None
    acknowledged_by: str | None = None
    resolved_at: AwareDatetime | None = None
    escalated: bool = False
    escalated_at: AwareDatetime | None = None
    events: int = Field(default=1, description="Firing events folded into this alert (dedup)")
    refired: int = Field(default=0, description="Times it fired again within the cooldown after resolving")
    silenced_by: str | None = Field(default=None, description="Id of the silence that holds back its paging")

    @property
    def key(self) -> AlertKey:
        return (self.site, self.equipment, self.rule)

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"


class Silence(BaseModel):
    """Hold back paging for matching alerts until ``until``. Alerts are still tracked and shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    site: str | None = Field(default=None, description="None matches every site")
    equipment: str | None = Field(default=None, description="None matches every equipment")
    rule: str = Field(default="*", description="Shell-style pattern, e.g. 'limit:*'")
    until: AwareDatetime
    reason: str = Field(min_length=1, max_length=200)
    created_by: str
    created_at: AwareDatetime

    def matches(self, alert: Alert) -> bool:
        return ((self.site is None or self.site == alert.site)
                and (self.equipment is None or self.equipment == alert.equipment)
                and fnmatch.fnmatchcase(alert.rule, self.rule))

    def active(self, now: datetime) -> bool:
        return now < self.until


class Notification(BaseModel):
    """One transition of one alert, handed to every channel.

    ``equipment_alerts`` is every open alert of the same equipment after the transition, so a channel
    that keeps per-equipment state (the retained MQTT alert topic) needs no access to the engine.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    transition: Transition
    alert: Alert
    at: AwareDatetime
    equipment_alerts: dict[str, Alert] = Field(default_factory=dict, description="rule -> open alert")

    @property
    def pages(self) -> bool:
        """Whether this transition should reach a person (and is not held back by a silence)."""
        return self.transition in PAGING and self.alert.silenced_by is None

    def at_least(self, severity: str) -> bool:
        return SEVERITY_RANK[self.alert.severity] >= SEVERITY_RANK[severity]

    def subject(self) -> str:
        """One line for an e-mail subject or a chat message."""
        a = self.alert
        flag = " ESCALATED" if a.escalated else ""
        return (f"[{a.severity.upper()}{flag}] {self.transition}: {a.site}/{a.equipment} {a.rule} "
                f"({a.id}) {a.message}")
