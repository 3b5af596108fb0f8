"""Which channels the service runs, from the settings: a channel is on when its target is configured."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt

from alerts.notifiers.base import Notifier
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.grafana import GrafanaAnnotationNotifier
from alerts.notifiers.history import HistoryNotifier
from alerts.notifiers.mqtt import MqttAlertNotifier
from alerts.notifiers.webhook import WebhookNotifier
from smartmine.config import Settings
from smartmine.errors import UsageError
from smartmine.influx import InfluxClient

log = logging.getLogger(__name__)


def build_notifiers(settings: Settings, client: mqtt.Client) -> list[Notifier]:
    cfg = settings.alerts
    notifiers: list[Notifier] = [MqttAlertNotifier(client, settings.topic_prefix),
                                 HistoryNotifier(InfluxClient.from_settings(settings))]
    if cfg.webhook_url:
        if cfg.webhook_secret is None:
            # An unsigned webhook lets anyone who finds the receiver's URL forge alerts: refuse to start.
            raise UsageError("SMARTMINE_ALERTS__WEBHOOK_URL is set but SMARTMINE_ALERTS__WEBHOOK_SECRET is not; "
                             "the webhook is signed with it")
        notifiers.append(WebhookNotifier(cfg.webhook_url, cfg.webhook_secret.get_secret_value(),
                                         min_severity=cfg.webhook_min_severity, timeout_s=cfg.webhook_timeout_s))
    if cfg.smtp_host:
        if not cfg.smtp_to:
            raise UsageError("SMARTMINE_ALERTS__SMTP_HOST is set but SMARTMINE_ALERTS__SMTP_TO lists no recipient")
        notifiers.append(EmailNotifier(
            cfg.smtp_host, cfg.smtp_port, cfg.smtp_from, cfg.smtp_to, starttls=cfg.smtp_starttls, user=cfg.smtp_user,
            password=cfg.smtp_password.get_secret_value() if cfg.smtp_password else None,
            min_severity=cfg.email_min_severity))
    token = settings.grafana_token.get_secret_value() if settings.grafana_token else ""
    if settings.grafana_url and token and cfg.grafana_annotations:
        from grafana_client import GrafanaApi

        notifiers.append(GrafanaAnnotationNotifier(GrafanaApi.from_url(settings.grafana_url, credential=token)))
    elif settings.grafana_url and cfg.grafana_annotations:
        log.warning("SMARTMINE_GRAFANA_URL is set but SMARTMINE_GRAFANA_TOKEN is empty: no Grafana annotations")
    log.info("alert channels: %s", ", ".join(n.name for n in notifiers))
    return notifiers
