"""What ``smartmine up`` shows: the pipeline seen from outside, as a dispatcher would watch it.

The monitor is an ordinary MQTT client of the broker plus a scraper of ingest's Prometheus metrics; ingest's
health is what its ``/healthz`` says (a process whose ``/metrics`` answers may still have a dead writer).
It counts the telemetry the simulators publish (rate, and lag = arrival time minus sample time), keeps
the retained ``alert`` topic (the active alerts with their severity), follows the ``event`` channel
(the latest anomalies with their explanations), and turns ingest's counters into rates. It reads only
the shared wire format, never a stage's internals, so it shows any stage that speaks the contract.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from smartmine.config import Settings
from smartmine.mqtt import make_client
from smartmine.wire import SEVERITY_RANK, AnomalyEvent, WireError, parse_event, subscription

__all__ = ["ActiveAlert", "IngestMetrics", "PipelineMonitor", "Snapshot", "StageFigures"]

WINDOW_S = 10.0  # rates and lags are over the last 10 s: steady to read, quick to react
MAX_ANOMALIES = 50

# Ingest's Prometheus metric families (names without the _total suffix of counters), see ingest/metrics.py.
INGEST_METRICS = {
    "messages_in": "smartmine_ingest_messages",
    "points_written": "smartmine_ingest_points_written",
    "dead_letters": "smartmine_ingest_dead_letters",
    "lag_s": "smartmine_ingest_lag_seconds",
    "spool_bytes": "smartmine_ingest_spool_bytes",
}


class Window:
    """Values seen in the last :data:`WINDOW_S` seconds: their rate per second and their median."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()
        self.total = 0
        self.last: float | None = None

    def add(self, value: float, now: float) -> None:
        self._items.append((now, value))
        self.total += 1
        self.last = value
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def rate(self, now: float, since: float) -> float:
        self._prune(now)
        span = min(self.window_s, max(now - since, 1e-3))
        return len(self._items) / span

    def median(self, now: float) -> float | None:
        """The median of the window; for rare values (anomaly events) the last one seen, once it is older."""
        self._prune(now)
        return statistics.median(v for _, v in self._items) if self._items else self.last


class CounterRate:
    """A rate from successive readings of a monotonic counter (a restart resets it: no negative rate)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._readings: deque[tuple[float, float]] = deque()

    def add(self, value: float, now: float) -> None:
        if self._readings and value < self._readings[-1][1]:
            self._readings.clear()  # the process restarted
        self._readings.append((now, value))
        while len(self._readings) > 2 and self._readings[0][0] < now - self.window_s:
            self._readings.popleft()

    def rate(self) -> float | None:
        if len(self._readings) < 2:
            return None
        (t0, v0), (t1, v1) = self._readings[0], self._readings[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


@dataclass
class StageFigures:
    """One row of the live view: how fast a stage goes and how far behind it is."""

    rate: float | None = None
    rate_unit: str = "/s"
    lag_s: float | None = None
    detail: str = ""


@dataclass
class ActiveAlert:
    id: str
    severity: str
    state: str
    site: str
    equipment: str
    rule: str
    message: str
    since: datetime | None


@dataclass
class Snapshot:
    stages: dict[str, StageFigures]
    alerts: list[ActiveAlert]
    anomalies: list[AnomalyEvent]
    connected: bool


@dataclass
class IngestMetrics:
    """The ingest figures scraped from its ``/metrics`` endpoint."""

    url: str
    messages_in: CounterRate = field(default_factory=CounterRate)
    points_written: CounterRate = field(default_factory=CounterRate)
    values: dict[str, float] = field(default_factory=dict)
    error: str = ""
    unhealthy: str = ""  # what ingest's /healthz reports wrong, empty while it answers 200

    @property
    def health_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/healthz"

    def check_health(self, timeout_s: float = 1.0) -> None:
        try:
            with urllib.request.urlopen(self.health_url, timeout=timeout_s):
                self.unhealthy = ""
        except urllib.error.HTTPError as exc:  # 503 with the reasons in its JSON body
            try:
                problems = json.loads(exc.read()).get("problems") or [f"HTTP {exc.code}"]
            except (ValueError, AttributeError, OSError):
                problems = [f"HTTP {exc.code}"]
            self.unhealthy = "; ".join(str(p) for p in problems)
        except (urllib.error.URLError, OSError) as exc:
            self.unhealthy = f"/healthz unreachable ({getattr(exc, 'reason', exc)})"

    def scrape(self, now: float, timeout_s: float = 1.0) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.check_health(timeout_s)

        try:
            with urllib.request.urlopen(self.url, timeout=timeout_s) as resp:
                text = resp.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            self.error = f"metrics at {self.url} unreachable ({getattr(exc, 'reason', exc)})"
            return
        self.error = ""
        wanted = {family: key for key, family in INGEST_METRICS.items()}
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            key = wanted.get(family.name)
            if key is None:
                continue
            # Sum over labels (e.g. dead letters by reason); a histogram or summary contributes its _sum.
            total = sum(s.value for s in family.samples if s.name in (family.name, family.name + "_total"))
            values[key] = total
        self.values = values
        if "messages_in" in values:
            self.messages_in.add(values["messages_in"], now)
        if "points_written" in values:
            self.points_written.add(values["points_written"], now)


class PipelineMonitor:
    """Watches the broker (telemetry, events, retained alerts) and ingest's metrics. Thread-safe snapshots."""

    def __init__(self, settings: Settings, ingest_metrics_url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._telemetry = Window()
        self._publishers: set[str] = set()
        self._events = Window()
        self._anomalies: dict[tuple[str, str, str], AnomalyEvent] = {}
        self._anomaly_total = 0
        self._alerts: dict[tuple[str, str], dict[str, Any]] = {}
        self._alert_lag = Window()
        self._news: deque[str] = deque(maxlen=500)
        self._connected = False
        self._ingest = IngestMetrics(ingest_metrics_url) if ingest_metrics_url else None
        self._client: mqtt.Client | None = None

    # ------------------------------------------------------------------ MQTT
    def start(self) -> None:
        client = make_client(self.settings.mqtt, f"smartmine-up-monitor-{int(self._started)}",
                             ca_file=self.settings.mqtt_ca_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 10)
        url = self.settings.mqtt
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            return
        with self._lock:
            self._connected = True
        client.subscribe([(subscription(ch, self.prefix), 0) for ch in ("telemetry", "event", "alert")])

    def _on_disconnect(self, *_a: Any) -> None:
        with self._lock:
            self._connected = False

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = self.clock()
        channel = msg.topic.rsplit("/", 1)[-1]
        try:
            if channel == "telemetry":
                self._telemetry_seen(msg, now)
            elif channel == "event":
                self._event_seen(bytes(msg.payload), now)
            elif channel == "alert":
                self._alert_seen(msg.topic, bytes(msg.payload), now, bool(msg.retain))
        except (ValueError, KeyError, TypeError, WireError):
            pass  # a malformed message is ingest's dead letter to report, not the view's to crash on

    def _telemetry_seen(self, msg: mqtt.MQTTMessage, now: float) -> None:
        # Only the timestamp matters here; full validation is ingest's job.
        body = json.loads(msg.payload)
        ts = _epoch(body["ts"])
        with self._lock:
            self._telemetry.add(now - ts, now)
            self._publishers.add(msg.topic)

    def _event_seen(self, payload: bytes, now: float) -> None:
        event = parse_event(payload)
        key = (event.site, event.equipment, event.rule)
        with self._lock:
            self._events.add(now - event.ts.timestamp(), now)
            before = self._anomalies.get(key)
            self._anomalies[key] = event
            if event.state == "firing":
                self._anomaly_total += 1 if before is None or before.state == "cleared" else 0
            if before is None or before.state != event.state:
                where = f"{event.site}/{event.equipment}" + (f"/{event.sensor}" if event.sensor else "")
                verb = "ANOMALY" if event.state == "firing" else "anomaly cleared"
                self._news.append(f"{verb} {event.severity} {where} [{event.detector}] {event.message}")

    def _alert_seen(self, topic: str, payload: bytes, now: float, retained: bool) -> None:
        """The retained ``alert`` message of one equipment: its open alerts keyed by rule (alerts/notifiers/mqtt.py).

        Each message replaces the equipment's whole set; an empty map (or an empty message) is the all-clear.
        """
        body = json.loads(payload) if payload.strip() else {"alerts": {}}
        if not isinstance(body, dict):
            return
        raw = body.get("alerts")
        current: dict[str, Any] = raw if isinstance(raw, dict) else {}
        with self._lock:
            before = {k[1]: a for k, a in self._alerts.items() if k[0] == topic}
            for rule in before:
                del self._alerts[(topic, rule)]
            for rule, alert in current.items():
                if isinstance(alert, dict) and alert.get("state") != "resolved":
                    self._alerts[(topic, str(rule))] = alert
            if retained:
                return  # the state as it was when we subscribed, not news
            for rule, alert in current.items():
                old = before.get(rule)
                if old is None or (old.get("state"), old.get("severity")) != (alert.get("state"),
                                                                              alert.get("severity")):
                    self._news.append(_alert_line(alert, alert.get("state", "firing")))
                stamp = alert.get("last_event_at")
                if isinstance(stamp, str):
                    self._alert_lag.add(now - _epoch(stamp), now)
            for rule, old in before.items():
                if rule not in current:
                    self._news.append(_alert_line(old, "resolved"))

    # ------------------------------------------------------------------ reading
    def scrape(self) -> None:
        """Read ingest's metrics (call every refresh; an HTTP GET on loopback)."""
        if self._ingest is not None:
            self._ingest.scrape(self.clock())

    def news(self) -> list[str]:
        """Alert and anomaly changes since the last call, oldest first (for log lines)."""
        with self._lock:
            out = list(self._news)
            self._news.clear()
        return out

    def snapshot(self) -> Snapshot:
        now = self.clock()
        with self._lock:
            stages: dict[str, StageFigures] = {
                "simulate": StageFigures(self._telemetry.rate(now, self._started), "msg/s",
                                         self._telemetry.median(now),
                                         f"{len(self._publishers)} publishers, {self._telemetry.total} messages"),
                "analytics": StageFigures(self._events.rate(now, self._started), "events/s",
                                          self._events.median(now),
                                          f"{self._anomaly_total} anomalies, {self._events.total} events"),
                "alerts": StageFigures(None, "", self._alert_lag.median(now), f"{len(self._alerts)} active"),
            }
            alerts = [_active_alert(a) for a in self._alerts.values()]
            anomalies = sorted(self._anomalies.values(), key=lambda e: e.ts, reverse=True)[:MAX_ANOMALIES]
            connected = self._connected
        stages["ingest"] = self._ingest_figures()
        alerts.sort(key=lambda a: (-SEVERITY_RANK.get(a.severity, -1), a.since or datetime.min.replace(tzinfo=UTC)))
        return Snapshot(stages, alerts, anomalies, connected)

    def _ingest_figures(self) -> StageFigures:
        if self._ingest is None:
            return StageFigures(detail="metrics disabled")
        if self._ingest.error:
            return StageFigures(detail=self._ingest.error)
        v = self._ingest.values
        if not v:
            return StageFigures(detail="no smartmine_ingest_* metrics yet")
        parts = [f"UNHEALTHY: {self._ingest.unhealthy}"] if self._ingest.unhealthy else []
        if "dead_letters" in v:
            parts.append(f"{v['dead_letters']:.0f} dead letters")
        if "spool_bytes" in v:
            parts.append(f"spool {v['spool_bytes'] / 1e6:.1f} MB")
        if "points_written" in v:
            parts.append(f"{v['points_written']:.0f} points")
        return StageFigures(self._ingest.points_written.rate(), "points/s", v.get("lag_s"), ", ".join(parts))


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _alert_line(alert: dict[str, Any], state: str) -> str:
    return (f"ALERT {state} {alert.get('severity', '?')} {alert.get('site', '?')}/{alert.get('equipment', '?')} "
            f"{alert.get('rule', '')}: {alert.get('message', '')}").rstrip()


def _active_alert(a: dict[str, Any]) -> ActiveAlert:
    since = a.get("fired_at") or a.get("started")
    return ActiveAlert(
        id=str(a.get("id", "")), severity=str(a.get("severity", "info")), state=str(a.get("state", "firing")),
        site=str(a.get("site", "")), equipment=str(a.get("equipment", "")), rule=str(a.get("rule", "")),
        message=str(a.get("message", "")),
        since=datetime.fromisoformat(since.replace("Z", "+00:00")) if isinstance(since, str) else None,
    )
