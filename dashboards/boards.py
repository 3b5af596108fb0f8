"""The Grafana boards, generated from the catalog with the Grafana foundation SDK's typed builders.

Every board reads InfluxDB through one InfluxQL data source, in the schema of ``smartmine.schema``
(measurement = equipment type, tags site/area/equipment, one float field per sensor), plus the
measurements ``anomalies`` (written by analytics) and ``alert_history`` (written by alerts). A sensor
added to the catalog appears on the boards with its unit and limits; titles follow ``settings.language``.

Boards: an overview per site, an equipment board per equipment type, the gas board of each coal mine,
the energy board of each site with energy meters, the anomaly timeline and the pipeline's own health.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import InfluxQL, measurements_regex, tag_filter
from smartmine.catalog import Catalog, ResolvedEquipment
from smartmine.catalog.model import Limit, Site
from smartmine.influx import quote_ident

BOARDS_FILE = Path(__file__).with_name("boards.yaml")
ANOMALIES = "anomalies"
ALERT_HISTORY = "alert_history"
TAGS = ["smartmine"]
# Catalog units Grafana knows by an id of its own; any other unit is shown as a suffix.
GRAFANA_UNITS = {"°C": "celsius", "ppm": "ppm", "A": "amp", "kW": "kwatt", "kWh": "kwatth", "m/s": "velocityms",
                 "%": "percent", "Pa": "pressurepa"}
COLORS = {"ok": "green", "alarm": "orange", "power_off": "red"}


class BoardError(ValueError):
    """boards.yaml names something the catalog does not have."""


def grafana_unit(unit: str) -> str:
    return GRAFANA_UNITS.get(unit, f"suffix: {unit}")


def threshold_steps(limits: Sequence[Limit]) -> list[model.Threshold]:
    """Grafana threshold steps coloring each band of a value by the worst limit it breaks.

    High limits colour upwards from their level, low limits (O2, wind speed) downwards; Grafana's steps
    only go upwards, so each band between two levels is coloured by evaluating every limit inside it.
    """
    levels = sorted({v for lim in limits for v in (lim.alarm, lim.power_off) if v is not None})

    def color_at(value: float) -> str:
        worst = 0
        for lim in limits:
            for rank, level in ((1, lim.alarm), (2, lim.power_off)):
                if level is not None and (value >= level if lim.direction == "high" else value <= level):
                    worst = max(worst, rank)
        return ("green", COLORS["alarm"], COLORS["power_off"])[worst]

    if not levels:
        return [model.Threshold(value=None, color="green")]
    steps = [model.Threshold(value=None, color=color_at(levels[0] - 1.0))]
    for i, level in enumerate(levels):
        upper = levels[i + 1] if i + 1 < len(levels) else level + 1.0
        steps.append(model.Threshold(value=level, color=color_at((level + upper) / 2)))
    return steps


def thresholds(limits: Sequence[Limit]) -> board.ThresholdsConfig:
    return board.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(threshold_steps(limits))


class Grid:
    """Places panels left to right, top to bottom, on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0

    def place(self, w: int, h: int) -> model.GridPos:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = model.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    json: dict[str, Any]

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"


class BoardFactory:
    def __init__(self, catalog: Catalog, *, language: str = "en", datasource_uid: str = "smartmine-influxdb") -> None:
        self.catalog = catalog
        self.language = language
        self.ds = datasource_uid
        spec = yaml.safe_load(BOARDS_FILE.read_text(encoding="utf-8"))
        self.texts: dict[str, dict[str, str]] = spec["texts"]
        self.key_figures: dict[str, list[dict[str, str]]] = spec["key_figures"]
        self.energy_types: list[str] = spec["energy"]["types"]
        self._check_spec()
        # Annotations are written as Grafana stores them for the InfluxDB data source (query, textColumn,
        # tagsColumn), which the SDK's typed AnnotationQuery has no fields for; they join the JSON at the end.
        self._annotations: dict[str, list[dict[str, Any]]] = {}

    def _check_spec(self) -> None:
        for kind, figures in self.key_figures.items():
            for fig in figures:
                spec = self.catalog.types.get(fig["type"])
                if spec is None or fig["sensor"] not in spec.sensors:
                    raise BoardError(f"{BOARDS_FILE}: key figure {fig['type']}.{fig['sensor']} of {kind} is not in "
                                     "the catalog")
                if fig["reduce"] not in ("max", "min", "mean", "sum"):
                    raise BoardError(f"{BOARDS_FILE}: key figure reduce {fig['reduce']!r} (use max, min, mean, sum)")

    # ------------------------------------------------------------------ helpers
    def t(self, key: str) -> str:
        return self.texts[key][self.language]

    @cached_property
    def type_ids(self) -> list[str]:
        return sorted({eq.type for eq in self.catalog.all_equipment()})

    def _dashboard(self, uid: str, title: str, variables: Iterable[board.QueryVariable | board.CustomVariable],
                   *, equipment_filter: bool = False) -> board.Dashboard:
        d = (board.Dashboard(title).uid(uid).tags(TAGS).time("now-6h", "now").refresh("30s").timezone("browser")
             .tooltip(model.DashboardCursorSync.CROSSHAIR).readonly())
        for var in variables:
            d = d.with_variable(var)
        where = tag_filter("site", "area", "equipment") if equipment_filter else tag_filter("site")
        anomalies = {
            "name": self.t("anomalies"), "enable": True, "iconColor": "red",
            "datasource": {"type": "influxdb", "uid": self.ds},
            "query": f'SELECT "message", "score", "equipment", "severity", "detector" FROM "{ANOMALIES}" '
                     f"WHERE {where} AND $timeFilter",
            "textColumn": "message", "tagsColumn": "equipment,severity,detector",
        }
        alerts = {"name": self.t("active_alerts"), "enable": True, "iconColor": "orange",
                  "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                  "target": {"refId": "Anno", "type": "tags", "tags": ["smartmine", "alert"], "matchAny": False,
                             "limit": 100}}
        self._annotations[uid] = [anomalies, alerts]
        return d

    def _var_site(self, measurement: str | None = None, *, fixed: str | None = None
                  ) -> board.QueryVariable | board.CustomVariable:
        if fixed is not None:  # a board of one site keeps the variable so every query has the same shape
            return (board.CustomVariable("site").values(fixed).hide(model.VariableHide.HIDE_VARIABLE)
                    .current(model.VariableOption(selected=True, text=fixed, value=fixed)))
        frm = f"FROM {quote_ident(measurement)} " if measurement else ""
        return self._query_var("site", self.t("site"), f'SHOW TAG VALUES {frm}WITH KEY = "site"', multi=False)

    def _var_area(self, measurement: str | None = None) -> board.QueryVariable:
        frm = f"FROM {quote_ident(measurement)} " if measurement else ""
        return self._query_var("area", self.t("area"),
                               f'SHOW TAG VALUES {frm}WITH KEY = "area" WHERE {tag_filter("site")}')

    def _var_equipment(self, measurement: str | None = None) -> board.QueryVariable:
        frm = f"FROM {quote_ident(measurement)} " if measurement else ""
        return self._query_var("equipment", self.t("equipment_var"),
                               f'SHOW TAG VALUES {frm}WITH KEY = "equipment" WHERE {tag_filter("site", "area")}')

    def _query_var(self, name: str, label: str, query: str, *, multi: bool = True) -> board.QueryVariable:
        v = (board.QueryVariable(name).label(label).query(query)
             .datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
             .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
        if multi:
            v = v.multi(True).include_all(True).current(model.VariableOption(selected=True, text="All",
                                                                             value="$__all"))
        return v

    def _names(self, equipment: Iterable[ResolvedEquipment]) -> list[tuple[str, str]]:
        return [(eq.id, eq.name.get(self.language)) for eq in equipment]

    def _timeseries(self, title: str, query: str, unit: str, limits: Sequence[Limit], grid: Grid, *,
                    alias: str = "$tag_equipment", names: Sequence[tuple[str, str]] = (), w: int = 12,
                    h: int = 8, description: str | None = None, bars: bool = False) -> timeseries.Panel:
        p = (timeseries.Panel().title(title).datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
             .with_target(InfluxQL(query, self.ds, alias=alias)).unit(unit).thresholds(thresholds(limits))
             .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                 common.GraphTresholdsStyleMode.DASHED if limits else common.GraphTresholdsStyleMode.OFF))
             .grid_pos(grid.place(w, h)).span_nulls(False))
        if bars:
            p = p.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
        if description:
            p = p.description(description)
        for eq_id, name in names:  # legends in the plant's words and language, not ids
            p = p.override_by_name(eq_id, [model.DynamicConfigValue(id_val="displayName", value=name)])
        return p

    def _table(self, title: str, query: str, grid: Grid, *, w: int = 24, h: int = 8) -> table.Panel:
        return (table.Panel().title(title).datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
                .with_target(InfluxQL(query, self.ds, table=True)).grid_pos(grid.place(w, h)))

    def _stat(self, title: str, query: str, unit: str, limits: Sequence[Limit], grid: Grid, *,
              w: int = 4, h: int = 4, alias: str | None = None) -> stat.Panel:
        return (stat.Panel().title(title).datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
                .with_target(InfluxQL(query, self.ds, alias=alias)).unit(unit).thresholds(thresholds(limits))
                .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.AREA)
                .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
                .grid_pos(grid.place(w, h)))

    def _shared_limits(self, equipment: Sequence[ResolvedEquipment], sensor: str) -> tuple[Limit, ...]:
        """The limits every one of these equipment shares for ``sensor`` (those that differ are left out)."""
        sets = [eq.sensors[sensor].limits for eq in equipment if sensor in eq.sensors]
        return tuple(lim for lim in sets[0] if all(lim in s for s in sets[1:])) if sets else ()

    def _finish(self, d: board.Dashboard) -> Board:
        data = json.loads(json.dumps(d.build(), cls=JSONEncoder))
        data["annotations"] = {"list": self._annotations.pop(data["uid"])}
        data.pop("style", None)  # the SDK's 10.1 model has the dark/light style Grafana 10.4's Dashboard dropped
        data["id"] = None  # an upsert by uid (POST /api/dashboards/db) needs no numeric id
        for number, panel in enumerate(data.get("panels", []), start=1):
            panel["id"] = number  # Grafana links panels (view, share, annotations) by their id
            if panel.get("options") is None:
                panel["options"] = {}
        for var in data.get("templating", {}).get("list", []):
            var.pop("id", None)  # the SDK's all-zero placeholder id means nothing to Grafana
            if var["type"] != "interval":  # the SDK writes the interval variable's auto fields on every variable;
                for key in ("auto", "auto_min", "auto_count"):  # Grafana 10.4's VariableModel has none of them
                    var.pop(key, None)
        return Board(uid=data["uid"], title=data["title"], json=data)

    # ------------------------------------------------------------------ the boards
    def all(self) -> list[Board]:
        boards = [self.overview(site.id) for site in self.catalog.sites.values()]
        boards += [self.equipment_board(t) for t in self.type_ids]
        sites = list(self.catalog.sites.values())
        boards += [self.gas_board(site.id) for site in sites if site.kind == "coal_mine"]
        boards += [self.energy_board(site.id) for site in sites
                   if any(eq.type in self.energy_types for eq in self.catalog.all_equipment(site.id))]
        boards += [self.anomaly_timeline(), self.pipeline_health()]
        return boards

    @property
    def _energy_measurement(self) -> str | None:
        return self.energy_types[0] if len(self.energy_types) == 1 else None

    def _site(self, site_id: str) -> Site:
        return self.catalog.sites[site_id]

    def overview(self, site_id: str) -> Board:
        site = self._site(site_id)
        equipment = list(self.catalog.all_equipment(site_id))
        types = sorted({eq.type for eq in equipment})
        g = Grid()
        d = self._dashboard(f"sm-overview-{site_id}", f"{site.name.get(self.language)} · {self.t('overview')}",
                            [self._var_site(fixed=site_id), self._var_area()])
        open_alerts = (f'SELECT count("state") FROM (SELECT last("state") AS "state" FROM "{ALERT_HISTORY}" '
                       f'WHERE {tag_filter("site")} AND time >= now() - 30d GROUP BY "equipment", "rule") '
                       "WHERE \"state\" != 'resolved'")
        d = d.with_panel(self._stat(self.t("open_alerts"), open_alerts, "none",
                                    [Limit(name="open_alerts", alarm=1, source="any open alert needs attention")], g))
        d = d.with_panel(self._stat(self.t("anomalies_24h"), f'SELECT count("score") FROM "{ANOMALIES}" WHERE '
                                    f'{tag_filter("site", "area")} AND $timeFilter', "none", [], g))
        for fig in self.key_figures.get(site.kind, []):
            of_type = [eq for eq in equipment if eq.type == fig["type"]]
            if not of_type:
                continue
            sensor = of_type[0].sensors[fig["sensor"]]
            field = quote_ident(fig["sensor"])
            where = f'{tag_filter("site", "area")} AND $timeFilter'
            if fig["reduce"] == "sum":  # the plant total: each equipment's mean, added up
                query = (f'SELECT sum("v") FROM (SELECT mean({field}) AS "v" FROM {quote_ident(fig["type"])} '
                         f'WHERE {where} GROUP BY time($__interval), "equipment") WHERE $timeFilter '
                         "GROUP BY time($__interval)")
            else:
                query = (f'SELECT {fig["reduce"]}({field}) FROM {quote_ident(fig["type"])} WHERE {where} '
                         "GROUP BY time($__interval) fill(none)")
            title = f"{sensor.spec.name.get(self.language)} ({fig['reduce']})"
            d = d.with_panel(self._stat(title, query, grafana_unit(sensor.unit),
                                        self._shared_limits(of_type, fig["sensor"]), g))
        d = d.with_panel(self._table(self.t("active_alerts"), self._active_alerts_query(), g, w=14))
        reporting = ('SELECT count("last_seq") FROM (SELECT last("seq") AS "last_seq" '
                     f'FROM {measurements_regex(types)} WHERE {tag_filter("site", "area")} '
                     'AND time >= now() - 5m GROUP BY "equipment")')
        d = d.with_panel(bargauge.Panel().title(self.t("equipment_reporting"))
                         .datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
                         .with_target(InfluxQL(reporting, self.ds, alias="$measurement"))
                         .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
                         .grid_pos(g.place(10, 8)))
        d = d.with_panel(self._table(self.t("last_sample"), self._last_sample_query(types), g))
        return self._finish(d)

    def _active_alerts_query(self) -> str:
        last = ", ".join(f'last("{f}") AS "{f}"' for f in ("alert_id", "severity", "state", "message"))
        return (f'SELECT "alert_id", "severity", "state", "message" FROM (SELECT {last} FROM "{ALERT_HISTORY}" '
                f'WHERE {tag_filter("site")} AND time >= now() - 30d GROUP BY "equipment", "rule") '
                "WHERE \"state\" != 'resolved' GROUP BY \"equipment\", \"rule\"")

    def _last_sample_query(self, types: Sequence[str]) -> str:
        return (f'SELECT last("seq") AS "seq" FROM {measurements_regex(types)} '
                f'WHERE {tag_filter("site", "area")} AND $timeFilter GROUP BY "area", "equipment"')

    def equipment_board(self, type_id: str) -> Board:
        spec = self.catalog.types[type_id]
        equipment = [eq for eq in self.catalog.all_equipment() if eq.type == type_id]
        g = Grid()
        d = self._dashboard(f"sm-eq-{type_id}", f"{self.t('equipment')} · {spec.name.get(self.language)}",
                            [self._var_site(type_id), self._var_area(type_id), self._var_equipment(type_id)],
                            equipment_filter=True)
        where = f'{tag_filter("site", "area", "equipment")} AND $timeFilter'
        for sensor_id, sensor in spec.sensors.items():
            having = [eq for eq in equipment if sensor_id in eq.sensors]
            if not having:
                continue  # no equipment of this type in the catalog carries the sensor
            limits = self._shared_limits(having, sensor_id)
            differing = {lim.name for eq in having for lim in eq.sensors[sensor_id].limits} - {
                lim.name for lim in limits}
            description = (f"Limits that differ by location ({', '.join(sorted(differing))}) are on the gas board."
                           if differing else sensor.description)
            query = (f'SELECT mean({quote_ident(sensor_id)}) FROM {quote_ident(type_id)} WHERE {where} '
                     'GROUP BY time($__interval), "equipment" fill(none)')
            d = d.with_panel(self._timeseries(f"{sensor.name.get(self.language)} ({sensor.unit})", query,
                                              grafana_unit(sensor.unit), limits, g, names=self._names(having),
                                              description=description))
        return self._finish(d)

    def gas_board(self, site_id: str) -> Board:
        """CH4, CO and O2 by location, one panel per set of regulatory limits (working face, return...)."""
        site = self._site(site_id)
        monitors = [eq for eq in self.catalog.all_equipment(site_id) if eq.type == "gas_monitor"]
        g = Grid()
        d = self._dashboard(f"sm-gas-{site_id}", f"{site.name.get(self.language)} · {self.t('gas_board')}",
                            [self._var_site(fixed=site_id), self._var_area("gas_monitor")])
        for sensor_id in ("ch4_pct", "co_ppm", "o2_pct"):
            groups: dict[tuple[Limit, ...], list[ResolvedEquipment]] = {}
            for eq in monitors:
                if sensor_id in eq.sensors:
                    groups.setdefault(eq.sensors[sensor_id].limits, []).append(eq)
            for limits, members in groups.items():
                sensor = members[0].sensors[sensor_id]
                lines = ", ".join(
                    f"{self.t(kind)} {value:g} {sensor.unit}" for lim in limits
                    for kind, value in (("alarm", lim.alarm), ("power_off", lim.power_off)) if value is not None)
                title = sensor.spec.name.get(self.language) + (f" — {lines}" if lines else "")
                ids = "|".join(eq.id for eq in members)
                query = (f'SELECT mean({quote_ident(sensor_id)}) FROM "gas_monitor" WHERE {tag_filter("site", "area")} '
                         f'AND "equipment" =~ /^({ids})$/ AND $timeFilter GROUP BY time($__interval), "equipment" '
                         "fill(none)")
                sources = "; ".join(lim.source for lim in limits) or None
                d = d.with_panel(self._timeseries(title, query, grafana_unit(sensor.unit), limits, g,
                                                  names=self._names(members), description=sources))
        return self._finish(d)

    def energy_board(self, site_id: str) -> Board:
        site = self._site(site_id)
        meters = [eq for eq in self.catalog.all_equipment(site_id) if eq.type in self.energy_types]
        g = Grid()
        d = self._dashboard(f"sm-energy-{site_id}", f"{site.name.get(self.language)} · {self.t('energy_board')}",
                            [self._var_site(fixed=site_id), self._var_area(self._energy_measurement),
                             self._var_equipment(self._energy_measurement)])
        for type_id in sorted({eq.type for eq in meters}):
            where = f'{tag_filter("site", "area", "equipment")} AND $timeFilter'
            for sensor_id, sensor in self.catalog.types[type_id].sensors.items():
                if not any(sensor_id in eq.sensors for eq in meters):
                    continue  # e.g. blast-furnace gas is metered at the steel works, not at the mine
                name = sensor.name.get(self.language)
                if sensor.kind == "counter":
                    # A counter's consumption in the range; a meter reset shows as a negative step, so
                    # the difference ignores decreases (non_negative_difference) in the trend below.
                    d = d.with_panel(bargauge.Panel().title(f"{self.t('energy_consumed')} ({sensor.unit})")
                                     .datasource(model.DataSourceRef(type_val="influxdb", uid=self.ds))
                                     .with_target(InfluxQL(f"SELECT spread({quote_ident(sensor_id)}) FROM "
                                                           f"{quote_ident(type_id)} WHERE {where} "
                                                           'GROUP BY "equipment"', self.ds, alias="$tag_equipment"))
                                     .unit(grafana_unit(sensor.unit)).grid_pos(g.place(12, 8)))
                    query = (f"SELECT non_negative_difference(last({quote_ident(sensor_id)})) FROM "
                             f'{quote_ident(type_id)} WHERE {where} GROUP BY time($__interval), "equipment" fill(none)')
                    d = d.with_panel(self._timeseries(f"{name} Δ ({sensor.unit})", query, grafana_unit(sensor.unit),
                                                      [], g, names=self._names(meters), bars=True))
                    continue
                query = (f"SELECT mean({quote_ident(sensor_id)}) FROM {quote_ident(type_id)} WHERE {where} "
                         'GROUP BY time($__interval), "equipment" fill(none)')
                d = d.with_panel(self._timeseries(f"{name} ({sensor.unit})", query, grafana_unit(sensor.unit),
                                                  self._shared_limits(meters, sensor_id), g,
                                                  names=self._names(meters)))
        return self._finish(d)

    def anomaly_timeline(self) -> Board:
        g = Grid()
        d = self._dashboard("sm-anomalies", self.t("anomalies"),
                            [self._var_site(ANOMALIES), self._var_area(ANOMALIES), self._var_equipment(ANOMALIES)],
                            equipment_filter=True)
        where = f'{tag_filter("site", "area", "equipment")} AND $timeFilter'
        d = d.with_panel(self._timeseries(self.t("anomalies_by_severity"),
                                          f'SELECT count("score") FROM "{ANOMALIES}" WHERE {where} '
                                          'GROUP BY time($__interval), "severity" fill(none)', "none", [], g,
                                          alias="$tag_severity", bars=True))
        d = d.with_panel(self._timeseries(self.t("anomaly_score"),
                                          f'SELECT max("score") FROM "{ANOMALIES}" WHERE {where} '
                                          'GROUP BY time($__interval), "equipment" fill(none)', "none", [], g,
                                          names=self._names(self.catalog.all_equipment())))
        d = d.with_panel(self._table(self.t("anomaly_list"),
                                     f'SELECT "score", "message" FROM "{ANOMALIES}" WHERE {where} '
                                     'GROUP BY "equipment", "sensor", "detector", "severity"', g, h=10))
        d = d.with_panel(self._table(self.t("alert_transitions"),
                                     f'SELECT "alert_id", "transition", "severity", "message" FROM "{ALERT_HISTORY}" '
                                     f'WHERE {where} GROUP BY "equipment", "rule"', g, h=10))
        return self._finish(d)

    def pipeline_health(self) -> Board:
        """The pipeline seen from InfluxDB: is every equipment's data arriving, fresh and of good quality.

        Ingest's own metrics are Prometheus; the stack has no Prometheus data source, so this board reads
        what InfluxDB holds: samples per minute, the last sample of each equipment, non-good readings.
        """
        g = Grid()
        types = self.type_ids
        d = self._dashboard("sm-pipeline", self.t("pipeline_health"),
                            [self._var_site(), self._var_area()])
        d = d.with_panel(self._timeseries(self.t("samples_per_minute"),
                                          f'SELECT count("seq") FROM {measurements_regex(types)} WHERE '
                                          f'{tag_filter("site", "area")} AND $timeFilter GROUP BY time(1m), "area" '
                                          "fill(0)", "none", [], g, alias="$tag_area · $measurement", w=24))
        d = d.with_panel(self._table(self.t("last_sample"), self._last_sample_query(types), g, w=12, h=10))
        d = d.with_panel(self._table("quality ≠ good", f"SELECT count(/_quality$/) FROM {measurements_regex(types)} "
                                     f'WHERE {tag_filter("site", "area")} AND $timeFilter GROUP BY "equipment"',
                                     g, w=12, h=10))
        return self._finish(d)
