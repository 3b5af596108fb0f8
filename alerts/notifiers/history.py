"""History channel: every transition as a point of measurement ``alert_history`` in InfluxDB.

Tags are only ``site``, ``area``, ``equipment`` and ``rule`` (bounded by the catalog and the detectors);
the alert id, state and severity are fields, because they change over an alert's life and would
otherwise split its history into several series. The dashboards' "active alerts" panel reads the last
transition per (site, equipment, rule).
"""

from __future__ import annotations

from alerts.model import Notification
from alerts.notifiers.base import NotifyError
from smartmine.influx import InfluxClient, InfluxError, Point
from smartmine.wire import SEVERITY_RANK

MEASUREMENT = "alert_history"


def history_point(notification: Notification) -> Point:
    a = notification.alert
    return (Point(MEASUREMENT).tag("site", a.site).tag("area", a.area).tag("equipment", a.equipment)
            .tag("rule", a.rule)
            .field("alert_id", a.id).field("transition", notification.transition).field("state", a.state)
            .field("severity", a.severity).field("severity_rank", SEVERITY_RANK[a.severity])
            .field("message", a.message).field("escalated", a.escalated).field("silenced", a.silenced_by is not None)
            .field("events", a.events).field("score", float(a.score))
            .time(notification.at))


class HistoryNotifier:
    name = "history"

    def __init__(self, client: InfluxClient) -> None:
        self.client = client

    def wants(self, notification: Notification) -> bool:
        return True

    def send(self, notification: Notification) -> None:
        point = history_point(notification)
        try:
            try:
                self.client.write_points([point])
            except InfluxError as exc:
                if exc.status != 404:
                    raise
                # 1.x: the database does not exist yet (nothing was ingested). On 2.x the DBRP mapping
                # is made at set-up, so this branch does not run there.
                self.client.create_database()
                self.client.write_points([point])
        except InfluxError as exc:
            raise NotifyError(f"InfluxDB {MEASUREMENT}: {exc}", retryable=exc.retryable) from None

    def close(self) -> None:
        pass
