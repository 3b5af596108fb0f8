"""MQTT channel: the retained current state of every open alert of an equipment, on its ``alert`` topic.

One topic per equipment, ``<prefix>/<site>/<area>/<equipment>/alert``, holds a JSON map of its open
alerts keyed by rule, so the topic scheme (and ``parse_topic``) stays the same for every channel and a
subscriber gets an equipment's whole alert picture from one retained message::

    {"v": 1, "ts": "...", "site": ..., "area": ..., "equipment": ...,
     "alerts": {"limit:methane": {<alert>}, ...},
     "last": {"transition": "resolved", "alert_id": "7", "rule": "limit:co_limit"}}

A resolved alert leaves the map; an equipment with none left publishes ``"alerts": {}``, an explicit
all-clear rather than a deleted message, so a board can tell "no alerts" from "no data".
"""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from alerts.model import Notification
from alerts.notifiers.base import NotifyError
from smartmine.wire import format_ts, topic


def alert_state_payload(notification: Notification) -> bytes:
    a = notification.alert
    body = {"v": 1, "ts": format_ts(notification.at), "site": a.site, "area": a.area, "equipment": a.equipment,
            "alerts": {rule: alert.model_dump(mode="json") for rule, alert in sorted(
                notification.equipment_alerts.items())},
            "last": {"transition": notification.transition, "alert_id": a.id, "rule": a.rule}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class MqttAlertNotifier:
    name = "mqtt"

    def __init__(self, client: mqtt.Client, prefix: str, *, timeout_s: float = 10.0) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s

    def wants(self, notification: Notification) -> bool:
        return True  # the state topic reflects every transition, silenced or not

    def send(self, notification: Notification) -> None:
        a = notification.alert
        info = self.client.publish(topic(a.site, a.area, a.equipment, "alert", self.prefix),
                                   alert_state_payload(notification), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotifyError(f"publish alert state of {a.site}/{a.equipment}: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise NotifyError(f"publish alert state of {a.site}/{a.equipment}: {exc}") from None
        if not info.is_published():
            raise NotifyError(f"publish alert state of {a.site}/{a.equipment}: no PUBACK in {self.timeout_s:g} s")

    def close(self) -> None:
        pass  # the connection belongs to the service
