"""Upsert the boards into a Grafana folder and mark the anomalies as annotations, over Grafana's HTTP API.

Idempotent: the folder is created only when ``GET /api/folders/:uid`` says it is missing; each board is
saved with ``POST /api/dashboards/db`` by uid with ``overwrite``; an anomaly already annotated (same
time and text, found with ``GET /api/annotations``) is not annotated twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dashboards.boards import ANOMALIES, Board
from smartmine.config import Settings, redact_url
from smartmine.errors import UsageError
from smartmine.influx import InfluxClient, InfluxError

log = logging.getLogger(__name__)
ANOMALY_TAGS = ["smartmine", "anomaly"]


@dataclass
class PushSummary:
    folder_created: bool = False
    dashboards: int = 0
    annotations_added: int = 0
    annotations_skipped: int = 0


def grafana_api(settings: Settings) -> Any:
    from grafana_client import GrafanaApi

    if not settings.grafana_url:
        raise UsageError("SMARTMINE_GRAFANA_URL is not set (and SMARTMINE_GRAFANA_TOKEN, a service-account token "
                         "with Editor rights)")
    token = settings.grafana_token.get_secret_value() if settings.grafana_token else None
    return GrafanaApi.from_url(settings.grafana_url, credential=token)


def push(settings: Settings, boards: list[Board], *, anomalies_since_s: float = 86400.0, api: Any = None,
         influx: InfluxClient | None = None) -> PushSummary:
    from grafana_client.client import GrafanaClientError, GrafanaException

    api = api or grafana_api(settings)
    cfg = settings.dashboards
    summary = PushSummary()
    try:
        try:
            api.datasource.get_datasource_by_uid(cfg.datasource_uid)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", 0) != 404:
                raise
            log.warning("Grafana has no data source with uid %r: the boards will show no data until it is "
                        "provisioned (smartmine dashboards build writes the file)", cfg.datasource_uid)
        try:
            api.folder.get_folder(cfg.folder_uid)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", 0) != 404:
                raise
            api.folder.create_folder(cfg.folder_title, uid=cfg.folder_uid)
            summary.folder_created = True
        for b in boards:
            api.dashboard.update_dashboard({"dashboard": b.json, "folderUid": cfg.folder_uid, "overwrite": True,
                                            "message": "smartmine dashboards push"})
            summary.dashboards += 1
            log.info("pushed %s (%s)", b.uid, b.title)
        if anomalies_since_s > 0:
            _push_anomalies(settings, api, anomalies_since_s, summary, influx)
    except GrafanaException as exc:
        raise UsageError(f"Grafana at {redact_url(settings.grafana_url)} refused: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot reach Grafana at {redact_url(settings.grafana_url)}: {exc}") from None
    return summary


def _push_anomalies(settings: Settings, api: Any, since_s: float, summary: PushSummary,
                    influx: InfluxClient | None) -> None:
    client = influx or InfluxClient.from_settings(settings)
    try:
        frame = client.query_df(f'SELECT "message", "score" FROM "{ANOMALIES}" WHERE time > now() - {int(since_s)}s '
                                'GROUP BY "site", "equipment", "sensor", "detector", "severity"')
    except InfluxError as exc:
        if exc.status == 404 or "not found" in str(exc):
            return  # nothing written yet
        raise
    finally:
        if influx is None:
            client.close()
    if frame.empty:
        return
    now_ms = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    from_ms = now_ms - int(since_s * 1000)
    existing = api.annotations.find_annotations(time_from=from_ms, time_to=now_ms, tags=ANOMALY_TAGS, limit=10000)
    seen = {(a.get("time"), a.get("text")) for a in existing or []}
    for row in frame.to_dict("records"):
        when = int(pd.Timestamp(row["time"]).timestamp() * 1000)
        sensor = f" {row['sensor']}" if isinstance(row.get("sensor"), str) and row["sensor"] else ""
        text = f"{row['equipment']}{sensor} {row['detector']} ({row['severity']}): {row['message']}"
        if (when, text) in seen:
            summary.annotations_skipped += 1
            continue
        tags = [*ANOMALY_TAGS, *(str(row[k]) for k in ("site", "equipment", "detector", "severity"))]
        api.annotations.add_annotation(time_from=when, tags=tags, text=text)
        seen.add((when, text))
        summary.annotations_added += 1
