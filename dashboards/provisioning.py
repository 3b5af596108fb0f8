"""Write the boards as JSON files plus Grafana's provisioning files (data source and dashboard provider).

Grafana reads ``provisioning/datasources/*.yaml`` and ``provisioning/dashboards/*.yaml`` at start-up
(``GF_PATHS_PROVISIONING``). The data source file refers to environment variables (``$VAR``), which
Grafana expands when it reads the file, so no secret is written to disk: the InfluxDB token reaches
Grafana through its environment only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dashboards.boards import Board
from smartmine.config import Settings

DATASOURCE_NAME = "smartmine InfluxDB"


def datasource_provisioning(settings: Settings) -> dict[str, Any]:
    """An InfluxDB data source in InfluxQL mode, reaching 2.x through its v1 API with a token header."""
    return {"apiVersion": 1, "datasources": [{
        "name": DATASOURCE_NAME, "uid": settings.dashboards.datasource_uid, "type": "influxdb", "access": "proxy",
        "url": "$SMARTMINE_INFLUX_URL", "isDefault": True, "editable": False,
        "jsonData": {"dbName": "$SMARTMINE_INFLUX_DB", "httpMode": "POST", "httpHeaderName1": "Authorization"},
        "secureJsonData": {"httpHeaderValue1": "Token $SMARTMINE_INFLUX_TOKEN"},
    }]}


def dashboard_provider(settings: Settings, dashboards_path: str) -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{
        "name": "smartmine", "orgId": 1, "type": "file", "folder": settings.dashboards.folder_title,
        "folderUid": settings.dashboards.folder_uid, "disableDeletion": False, "allowUiUpdates": False,
        "updateIntervalSeconds": 30, "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }]}


@dataclass
class BuildResult:
    dashboards: list[Path]
    datasource_file: Path
    provider_file: Path


def write_all(boards: list[Board], settings: Settings, out: Path, *, grafana_path: str | None = None) -> BuildResult:
    """``out/dashboards/<uid>.json`` and ``out/provisioning/{datasources,dashboards}/smartmine.yaml``.

    ``grafana_path`` is where Grafana will find the JSON files (default: ``out/dashboards`` as an
    absolute path, right when Grafana reads the same folder, as in docker-compose.yml).
    """
    dash_dir = out / "dashboards"
    dash_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for b in boards:
        path = dash_dir / b.file_name
        path.write_text(json.dumps(b.json, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    for stale in set(dash_dir.glob("*.json")) - set(written):  # a board removed from the catalog
        stale.unlink()
    ds_file = out / "provisioning" / "datasources" / "smartmine.yaml"
    provider_file = out / "provisioning" / "dashboards" / "smartmine.yaml"
    for path, data in ((ds_file, datasource_provisioning(settings)),
                       (provider_file, dashboard_provider(settings, grafana_path or str(dash_dir.resolve())))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return BuildResult(written, ds_file, provider_file)
