"""Grafana channel: each alert as an annotation region (fired → resolved) through Grafana's HTTP API.

Created with ``POST /api/annotations`` when the alert fires (tags ``smartmine``, ``alert``, the site,
equipment, rule and severity, so a dashboard's annotation query can pick them by tag); when it resolves,
``PATCH /api/annotations/:id`` sets ``timeEnd``, turning the mark into a region over the whole problem.
The service remembers each alert's annotation id; after a restart it finds the alert's annotation again in
Grafana (``GET /api/annotations`` by the alert's tags at the time it fired), so a resolve still closes the
region it opened rather than adding a second mark.
"""

from __future__ import annotations

from typing import Any

from alerts.model import Notification
from alerts.notifiers.base import NotifyError


def identity_tags(notification: Notification) -> list[str]:
    """The tags that name the alert's problem; they stay while its severity changes."""
    a = notification.alert
    return ["smartmine", "alert", a.site, a.equipment, a.rule]


def annotation_tags(notification: Notification) -> list[str]:
    return [*identity_tags(notification), notification.alert.severity]


def _ms(notification: Notification, which: str) -> int:
    a = notification.alert
    ts = a.fired_at if which == "start" else notification.at
    return int(ts.timestamp() * 1000)


class GrafanaAnnotationNotifier:
    name = "grafana"

    def __init__(self, api: Any) -> None:
        """``api`` is a ``grafana_client.GrafanaApi``."""
        self.api = api
        self._annotation_ids: dict[str, int] = {}

    def wants(self, notification: Notification) -> bool:
        return notification.transition in ("fired", "refired", "escalated", "resolved")

    def _known(self, notification: Notification) -> int | None:
        a = notification.alert
        known = self._annotation_ids.get(a.id)
        if known is None and notification.transition != "fired":
            # Not in memory (the service restarted since the alert fired): the annotation opened then has the
            # alert's site, equipment and rule tags and starts at its fired time, to the millisecond.
            fired = _ms(notification, "start")
            found = self.api.annotations.find_annotations(
                time_from=fired, time_to=fired, tags=identity_tags(notification), limit=10)
            opened = [f for f in found or [] if f.get("time") == fired and f.get("timeEnd") in (None, fired)]
            if opened:
                known = self._annotation_ids[a.id] = int(opened[0]["id"])
        return known

    def _patch(self, annotation_id: int, **fields: Any) -> None:
        # Only the fields meant: grafana-client's partial_update_annotation sends every field, and Grafana
        # replaces the tags with any list it is given, so a resolve through it would wipe the alert's tags
        # and drop the region from the dashboards' tag-filtered annotation queries.
        self.api.client.PATCH(f"/annotations/{annotation_id}", json=fields)

    def send(self, notification: Notification) -> None:
        from grafana_client.client import GrafanaException

        a = notification.alert
        text = notification.subject()
        try:
            known = self._known(notification)
            if notification.transition == "resolved":
                if known is not None:
                    self._patch(known, timeEnd=_ms(notification, "end"), tags=annotation_tags(notification), text=text)
                    del self._annotation_ids[a.id]
                else:
                    self.api.annotations.add_annotation(time_from=_ms(notification, "start"),
                                                        time_to=_ms(notification, "end"),
                                                        tags=annotation_tags(notification), text=text)
            elif known is not None:
                self._patch(known, tags=annotation_tags(notification), text=text)
            else:
                created = self.api.annotations.add_annotation(time_from=_ms(notification, "start"),
                                                              tags=annotation_tags(notification), text=text)
                self._annotation_ids[a.id] = int(created["id"])
        except GrafanaException as exc:
            status = getattr(exc, "status_code", 0) or 0
            raise NotifyError(f"Grafana annotation for alert {a.id}: {exc}",
                              retryable=status == 0 or status == 429 or status >= 500) from None
        except OSError as exc:
            raise NotifyError(f"Grafana annotation for alert {a.id}: {exc}") from None

    def close(self) -> None:
        pass
