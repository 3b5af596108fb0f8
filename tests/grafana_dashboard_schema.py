"""A JSON Schema of the parts of Grafana's dashboard JSON model that smartmine generates.

Derived by hand from Grafana's published "Dashboard JSON model" reference (classic model: the fields
table for dashboards, panels, templating and annotations) and the field-config/thresholds shapes the
InfluxDB data source and the timeseries, stat, table and bar-gauge panels save. It is stricter than
Grafana where Grafana would silently misbehave (a first threshold step without ``null``, a panel wider
than the 24-column grid, an unknown variable type). It is not Grafana's own validator: Grafana ships its
schema as CUE, and no live Grafana runs in the tests.
"""

from __future__ import annotations

from typing import Any

UID = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{8,40}$"}  # "unique dashboard identifier, string (8-40)"
DATASOURCE_REF = {"type": "object", "required": ["type", "uid"],
                  "properties": {"type": {"type": "string", "minLength": 1}, "uid": {"type": "string", "minLength": 1}}}

THRESHOLDS = {
    "type": "object", "required": ["mode", "steps"],
    "properties": {
        "mode": {"enum": ["absolute", "percentage"]},
        "steps": {"type": "array", "minItems": 1,
                  "prefixItems": [{"type": "object", "properties": {"value": {"type": "null"}}}],
                  "items": {"type": "object", "required": ["value", "color"],
                            "properties": {"value": {"type": ["number", "null"]}, "color": {"type": "string",
                                                                                            "minLength": 1}}}},
    },
}

INFLUXQL_TARGET = {
    "type": "object", "required": ["refId", "query", "rawQuery", "resultFormat"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "datasource": DATASOURCE_REF,
        "query": {"type": "string", "pattern": r"^(SELECT|SHOW) "},
        "rawQuery": {"const": True},
        "resultFormat": {"enum": ["time_series", "table", "logs"]},
        "alias": {"type": "string"},
    },
}

PANEL = {
    "type": "object", "required": ["type", "id", "title", "gridPos", "targets", "fieldConfig", "options"],
    "properties": {
        "type": {"enum": ["timeseries", "stat", "table", "bargauge", "gauge", "text", "row", "state-timeline"]},
        "id": {"type": "integer", "minimum": 1},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "datasource": DATASOURCE_REF,
        "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                    "properties": {"h": {"type": "integer", "minimum": 1},
                                   "w": {"type": "integer", "minimum": 1, "maximum": 24},
                                   "x": {"type": "integer", "minimum": 0, "maximum": 23},
                                   "y": {"type": "integer", "minimum": 0}}},
        "targets": {"type": "array", "minItems": 1, "items": INFLUXQL_TARGET},
        "options": {"type": "object"},
        "transformations": {"type": "array"},
        "fieldConfig": {
            "type": "object", "required": ["defaults", "overrides"],
            "properties": {
                "defaults": {"type": "object", "properties": {
                    "unit": {"type": "string"}, "thresholds": THRESHOLDS, "custom": {"type": "object"},
                    "displayName": {"type": "string"}}},
                "overrides": {"type": "array", "items": {
                    "type": "object", "required": ["matcher", "properties"],
                    "properties": {
                        "matcher": {"type": "object", "required": ["id", "options"],
                                    "properties": {"id": {"enum": ["byName", "byRegexp", "byType", "byFrameRefID"]}}},
                        "properties": {"type": "array", "items": {"type": "object", "required": ["id", "value"]}}}}},
            },
        },
    },
}

VARIABLE = {
    "type": "object", "required": ["name", "type", "query"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "type": {"enum": ["query", "custom", "constant", "datasource", "interval", "textbox", "adhoc"]},
        "label": {"type": "string"},
        "query": {"type": "string", "minLength": 1},
        "datasource": DATASOURCE_REF,
        "refresh": {"enum": [0, 1, 2]},
        "hide": {"enum": [0, 1, 2]},
        "multi": {"type": "boolean"},
        "includeAll": {"type": "boolean"},
        "current": {"type": "object"},
        "sort": {"type": "integer", "minimum": 0, "maximum": 7},
    },
    "if": {"properties": {"type": {"const": "query"}}},
    "then": {"required": ["datasource", "refresh"]},
}

ANNOTATION = {
    "type": "object", "required": ["name", "enable", "iconColor", "datasource"],
    "properties": {"name": {"type": "string", "minLength": 1}, "enable": {"type": "boolean"},
                   "iconColor": {"type": "string"}, "datasource": DATASOURCE_REF},
    "if": {"properties": {"datasource": {"properties": {"type": {"const": "influxdb"}}}}},
    "then": {"required": ["query", "textColumn"], "properties": {"query": {"type": "string", "pattern": "^SELECT "}}},
}

DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Grafana dashboard (classic JSON model), as generated by smartmine",
    "type": "object",
    "required": ["uid", "title", "tags", "timezone", "editable", "graphTooltip", "panels", "time", "templating",
                 "annotations", "refresh", "schemaVersion"],
    "properties": {
        "id": {"type": ["integer", "null"]},
        "uid": UID,
        "title": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "timezone": {"enum": ["browser", "utc", ""]},
        "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "time": {"type": "object", "required": ["from", "to"],
                 "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
        "refresh": {"anyOf": [{"type": "string", "pattern": r"^(\d+[smhd])?$"}, {"const": False}]},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "panels": {"type": "array", "minItems": 1, "items": PANEL},
        "templating": {"type": "object", "required": ["list"],
                       "properties": {"list": {"type": "array", "items": VARIABLE}}},
        "annotations": {"type": "object", "required": ["list"],
                        "properties": {"list": {"type": "array", "items": ANNOTATION}}},
        "links": {"type": "array"},
    },
}
