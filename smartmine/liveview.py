"""How ``smartmine up`` draws what the monitor sees: a rich live screen, or one log line at a time.

The live screen has three parts a dispatcher reads top to bottom: the pipeline (each stage and service,
its state, rate and lag), the active alerts by severity, and the latest anomalies with the detector's own
explanation. ``--headless`` prints the same figures as periodic status lines plus one line per new alert
or anomaly, for scripts and CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from smartmine.monitor import Snapshot, StageFigures
from smartmine.supervisor import Child
from smartmine.wire import SEVERITY_RANK

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red", "emergency": "bold white on red"}
STATE_STYLE = {"running": "green", "restarting": "yellow", "failed": "bold red", "stopped": "dim", "new": "dim",
               "missing": "yellow", "external": "cyan"}


@dataclass(frozen=True)
class Row:
    """One line of the pipeline table: a process (or an external service) and what it does."""

    name: str
    role: str
    child: Child | None
    state_override: str | None = None  # "missing" (command not built yet) or "external" (not started here)

    @property
    def state(self) -> str:
        if self.state_override:
            return self.state_override
        return self.child.state if self.child is not None else "new"


def fmt_rate(fig: StageFigures) -> str:
    if fig.rate is None:
        return "–"
    return f"{fig.rate:,.1f} {fig.rate_unit}" if fig.rate < 100 else f"{fig.rate:,.0f} {fig.rate_unit}"


def fmt_lag(lag_s: float | None) -> str:
    if lag_s is None:
        return "–"
    if lag_s < -0.5:
        # Faster-than-real-time simulation stamps samples in the future.
        return f"{-lag_s:,.1f} s ahead"
    return f"{lag_s * 1000:,.0f} ms" if abs(lag_s) < 0.9995 else f"{lag_s:,.1f} s"


def fmt_age(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "–"
    s = max(0.0, (now - ts).total_seconds())
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def render(rows: Sequence[Row], snap: Snapshot, header: str, footer: str) -> RenderableType:
    now = datetime.now(UTC)
    pipeline = Table(title="pipeline", title_justify="left", expand=True)
    for col, kw in (("stage", {}), ("state", {}), ("rate", {"justify": "right"}), ("lag", {"justify": "right"}),
                    ("", {"ratio": 1})):
        pipeline.add_column(col, **kw)
    for row in rows:
        state = row.state
        fig = snap.stages.get(row.name, StageFigures()) if state != "missing" else StageFigures()
        detail = row.child.note if row.child is not None and row.child.note else (fig.detail or row.role)
        if state == "missing":
            detail = f"{row.role}: command not in this installation"
        pid = f" pid {row.child.pid}" if row.child is not None and row.child.pid else ""
        pipeline.add_row(row.name, Text(state + pid, style=STATE_STYLE.get(state, "")), fmt_rate(fig),
                         fmt_lag(fig.lag_s), detail)

    alerts = Table(title=f"active alerts ({len(snap.alerts)})", title_justify="left", expand=True)
    for col in ("severity", "for", "equipment", "rule", "state"):
        alerts.add_column(col)
    alerts.add_column("message", ratio=1)
    for a in snap.alerts[:12]:
        alerts.add_row(Text(a.severity, style=SEVERITY_STYLE.get(a.severity, "")), fmt_age(a.since, now),
                       f"{a.site}/{a.equipment}", a.rule, a.state, a.message)
    if not snap.alerts:
        alerts.add_row("", "", Text("none", style="dim"), "", "", "")

    anomalies = Table(title="latest anomalies", title_justify="left", expand=True)
    for col in ("time (UTC)", "severity", "where", "detector", "state"):
        anomalies.add_column(col)
    anomalies.add_column("explanation", ratio=1)
    for e in snap.anomalies[:10]:
        where = f"{e.site}/{e.equipment}" + (f"/{e.sensor}" if e.sensor else "")
        anomalies.add_row(e.ts.astimezone(UTC).strftime("%H:%M:%S"),
                          Text(e.severity, style=SEVERITY_STYLE.get(e.severity, "")), where, e.detector, e.state,
                          e.message)
    if not snap.anomalies:
        anomalies.add_row("", "", Text("none yet", style="dim"), "", "", "")

    broker = "" if snap.connected else " · [yellow]monitor not connected to the broker[/]"
    return Group(Panel(header + broker, style="bold"), pipeline, alerts, anomalies, Text(footer, style="dim"))


def status_line(rows: Sequence[Row], snap: Snapshot) -> str:
    """One headless status line: every stage's state, rate and lag, and the count of active alerts."""
    parts = []
    for row in rows:
        fig = snap.stages.get(row.name)
        text = f"{row.name} {row.state}"
        if fig is not None and row.state != "missing" and (fig.rate is not None or fig.lag_s is not None):
            text += f" {fmt_rate(fig)} lag {fmt_lag(fig.lag_s)}"
        parts.append(text)
    worst = max((a.severity for a in snap.alerts), key=lambda s: SEVERITY_RANK.get(s, -1), default=None)
    alerts = f"{len(snap.alerts)} active alerts" + (f" (worst {worst})" if worst else "")
    return " | ".join(parts) + f" | {alerts}"
