"""Grafana channel: each alert as an annotation region (fired → resolved) through Grafana's HTTP API.

Created with ``POST /api/annotations`` when the alert fires (tags ``smartmine``, ``alert``, the site,
equipment, rule and severity, so a dashboard's annotation query can pick them by tag); when it resolves,
``PATCH /api/annotations/:id`` sets ``timeEnd``, turning the mark into a region over the whole problem.
The annotation ids live in memory: after a restart, a resolve adds a new region instead.
"""

from __future__ import annotations

from typing import Any

from alerts.model import Notification
from alerts.notifiers.base import NotifyError


def annotation_tags(notification: Notification) -> list[str]:
    a = notification.alert
    return ["smartmine", "alert", a.site, a.equipment, a.rule, a.severity]


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

    def send(self, notification: Notification) -> None:
        from grafana_client.client import GrafanaException

        a = notification.alert
        text = notification.subject()
        try:
            known = self._annotation_ids.get(a.id)
            if notification.transition == "resolved":
                if known is not None:
                    self.api.annotations.partial_update_annotation(known, time_to=_ms(notification, "end"), text=text)
                    del self._annotation_ids[a.id]
                else:
                    self.api.annotations.add_annotation(time_from=_ms(notification, "start"),
                                                        time_to=_ms(notification, "end"),
                                                        tags=annotation_tags(notification), text=text)
            elif known is not None:
                self.api.annotations.partial_update_annotation(known, tags=annotation_tags(notification), text=text)
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
