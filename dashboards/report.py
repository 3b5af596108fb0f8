"""``smartmine report``: a period of the plant as PNG plots and one HTML page, for people who would rather look.

The plots show the key signals per site (methane by location, vibration and bearing temperature of the
rotating machines, the blast furnace's temperatures, the drainage pumps) as 1-to-N-second means with the
min/max band, the catalog's limits drawn as lines, and the spans the analytics flagged shaded by severity.
The HTML page adds the alerts and anomalies of the period and the data completeness of every equipment:
samples stored against samples expected from each sensor's catalog sample period.

It reads InfluxDB only (telemetry, measurement ``anomalies``, measurement ``alert_history``) and the catalog.
"""

from __future__ import annotations

import argparse
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from smartmine import timespec
from smartmine.catalog import Catalog, Limit, ResolvedEquipment, load_catalog
from smartmine.config import Settings, load_settings
from smartmine.errors import UsageError
from smartmine.influx import InfluxClient, InfluxError, quote_ident, quote_string
from smartmine.schema import ts_ns
from smartmine.wire import SEVERITY_RANK

__all__ = ["PLOT_GROUPS", "PlotGroup", "parse_when", "run_report"]

ANOMALIES = "anomalies"
ALERT_HISTORY = "alert_history"
MAX_POINTS = 600  # per curve: enough to see a fault's shape, small enough to draw fast
SEVERITY_COLOUR = {"info": "#9ecae1", "warning": "#fdd49e", "critical": "#fc9272", "emergency": "#de2d26"}
LIMIT_STYLE = {"alarm": ("#e6550d", "--"), "power_off": ("#a50f15", "-."), "restore": ("#31a354", ":")}
# Completeness at or above GOOD is shown green; below POOR red; in between amber.
GOOD, POOR = 0.95, 0.80


@dataclass(frozen=True)
class PlotGroup:
    """A figure per site: these sensors of the equipment that match (by type, or every rotating machine)."""

    slug: str
    title: str
    sensors: tuple[str, ...]
    types: tuple[str, ...] = ()
    rotating: bool = False

    def matches(self, eq: ResolvedEquipment) -> bool:
        return (eq.type in self.types or (self.rotating and eq.type_spec.rotating is not None)) and any(
            s in eq.sensors for s in self.sensors)


# Which signals a dispatcher looks at first. Data, not code: a group is a title, sensor ids and a selection.
PLOT_GROUPS: tuple[PlotGroup, ...] = (
    PlotGroup("methane", "Methane by location", ("ch4_pct",), types=("gas_monitor",)),
    PlotGroup("rotating", "Rotating machines: vibration and bearing temperature",
              ("vibration_mm_s", "bearing_temp_c"), rotating=True),
    PlotGroup("blast_furnace", "Blast furnace temperatures",
              ("hot_blast_temp_c", "stave_temp_1_c", "stave_temp_2_c", "hearth_temp_c"), types=("blast_furnace",)),
    PlotGroup("drainage", "Drainage: sump level and pump flow", ("sump_level_m", "flow_m3_h"),
              types=("drainage_pump",)),
)

def parse_when(text: str, now: datetime) -> datetime:
    """``now``, ``now-1h``, a duration back from now (``90s``, ``1h``) or ISO 8601: smartmine.timespec."""
    return timespec.parse_instant(text, now)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class Period:
    start: datetime
    end: datetime

    def where(self) -> str:
        return f"time >= {ts_ns(self.start)} AND time <= {ts_ns(self.end)}"


@dataclass
class SiteData:
    """What InfluxDB holds for one site in the period."""

    site: str
    first: datetime | None = None
    last: datetime | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # equipment -> field -> stored count


@dataclass
class Completeness:
    site: str
    equipment: str
    name: str
    type: str
    messages: int
    stored: int
    expected: int
    worst_sensor: str
    worst_ratio: float

    @property
    def ratio(self) -> float:
        return self.stored / self.expected if self.expected else 1.0


class Reader:
    """The InfluxQL queries of the report, each bounded by the period."""

    def __init__(self, client: InfluxClient, catalog: Catalog, period: Period) -> None:
        self.client = client
        self.catalog = catalog
        self.period = period
        self.measurements = {s["values"][i][0] for r in client.query("SHOW MEASUREMENTS")
                             for s in r.get("series", []) for i in range(len(s["values"]))}

    def site_data(self, site: str) -> SiteData:
        data = SiteData(site)
        types = sorted({eq.type for eq in self.catalog.all_equipment(site)} & self.measurements)
        if not types:
            return data
        source = ",".join(quote_ident(t) for t in types)
        where = f"{self.period.where()} AND site = {quote_string(site)}"
        for fn in ("first", "last"):
            frame = self.client.query_df(f"SELECT {fn}(seq) FROM {source} WHERE {where}")
            if len(frame):
                ts = frame["time"].min() if fn == "first" else frame["time"].max()
                setattr(data, fn, ts.to_pydatetime())
        frame = self.client.query_df(f"SELECT count(*) FROM {source} WHERE {where} GROUP BY equipment")
        for _, row in frame.iterrows():
            counts = data.counts.setdefault(str(row["equipment"]), {})
            for col, value in row.items():
                if isinstance(col, str) and col.startswith("count_") and pd.notna(value):
                    counts[col.removeprefix("count_")] = counts.get(col.removeprefix("count_"), 0) + int(value)
        return data

    def series(self, eq_type: str, site: str, sensors: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        """Per-bucket mean, min and max of ``sensors`` for every equipment of ``eq_type`` at ``site``."""
        if eq_type not in self.measurements:
            return pd.DataFrame()
        bucket_s = max(1, math.ceil((end - start).total_seconds() / MAX_POINTS))
        cols = ", ".join(f"mean({quote_ident(s)}) AS {quote_ident(s)}, min({quote_ident(s)}) AS "
                         f"{quote_ident(s + '__min')}, max({quote_ident(s)}) AS {quote_ident(s + '__max')}"
                         for s in sensors)
        return self.client.query_df(
            f"SELECT {cols} FROM {quote_ident(eq_type)} WHERE time >= {ts_ns(start)} AND time <= {ts_ns(end)} "
            f"AND site = {quote_string(site)} GROUP BY time({bucket_s}s), equipment fill(none)")

    def anomalies(self) -> pd.DataFrame:
        """The ``anomalies`` rows of the period, one per event, with the span each shades on a plot.

        Analytics writes a row when a span starts and again when it changes (escalates, clears), all with the
        span's ``start``; ``end`` stays empty while it goes on. Each row shades from when it happened (the
        first from the span's start) to the next row of its span, or to its end, or to the end of the period,
        so an escalation shows as a darker band from the moment it escalated.
        """
        if ANOMALIES not in self.measurements:
            return pd.DataFrame()
        frame = self.client.query_df(f"SELECT * FROM {ANOMALIES} WHERE {self.period.where()}")
        if not len(frame):
            return frame
        for col in ("sensor", "severity", "detector", "message", "rule", "state"):
            if col not in frame:
                frame[col] = None
        frame = frame.sort_values("time").reset_index(drop=True)
        frame["start"] = _as_time(frame["start"]) if "start" in frame else frame["time"]
        frame["end"] = _as_time(frame["end"]) if "end" in frame else pd.NaT
        frame["span"] = ["|".join(map(str, key)) for key in zip(frame["site"], frame["equipment"], frame["rule"],
                                                                 frame["detector"], frame["start"], strict=True)]
        spans = frame.groupby("span", sort=False)
        frame["shade_from"] = frame["start"].where(spans.cumcount() == 0, frame["time"])
        frame["shade_to"] = spans["time"].shift(-1).fillna(frame["end"]).fillna(pd.Timestamp(self.period.end))
        return frame


    def alerts(self) -> pd.DataFrame:
        """Alert transitions of the period (fired, acknowledged, resolved, ...), oldest first."""
        if ALERT_HISTORY not in self.measurements:
            return pd.DataFrame()
        frame = self.client.query_df(f"SELECT * FROM {ALERT_HISTORY} WHERE {self.period.where()}")
        return frame.sort_values("time").reset_index(drop=True) if len(frame) else frame


def anomaly_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per anomalous span: its start, its end (NaT while ongoing), its highest severity and message."""
    if not len(rows):
        return rows
    out = []
    for _, group in rows.groupby("span", sort=False):
        rank = group["severity"].map(lambda s: SEVERITY_RANK.get(str(s), -1))
        worst = group.loc[rank[rank == rank.max()].index[-1]]
        last = group.iloc[-1]
        out.append({**worst.to_dict(), "start": group["start"].iloc[0], "end": last["end"],
                    "state": last["state"], "events": len(group)})
    return pd.DataFrame(out).sort_values("start").reset_index(drop=True)


def _as_time(col: pd.Series) -> pd.Series:
    """A start/end field stored as epoch ns (integer) or as an RFC 3339 string, as UTC timestamps."""
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_datetime(col, unit="ns", utc=True)
    return pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")


def completeness(catalog: Catalog, data: SiteData) -> list[Completeness]:
    """Stored vs expected readings per equipment. Expected counts run over the site's own data span.

    The span is from the site's first to its last stored sample in the period, so a stack that ran for ten
    minutes of a one-hour report is judged on those ten minutes; an equipment silent the whole time shows 0 %.
    """
    out = []
    span_s = (data.last - data.first).total_seconds() if data.first and data.last else 0.0
    for eq in catalog.all_equipment(data.site):
        counts = data.counts.get(eq.id, {})
        stored = expected = 0
        worst, worst_ratio = "", 1.0
        for sid, sensor in eq.sensors.items():
            exp = int(span_s // sensor.spec.sample_period_s) + 1 if data.first else 0
            got = min(counts.get(sid, 0), exp)  # a duplicate beyond the expected count is not extra data
            stored += got
            expected += exp
            ratio = got / exp if exp else 1.0
            if ratio < worst_ratio:
                worst, worst_ratio = sid, ratio
        out.append(Completeness(data.site, eq.id, eq.name.en, eq.type, counts.get("seq", 0), stored, expected,
                                worst, worst_ratio))
    return out


# ---------------------------------------------------------------------------------------------------- plots
def _limit_lines(limits: Iterable[Limit], unit: str) -> list[tuple[str, float, str]]:
    """(kind, level, legend label) of the alarm and power-off levels the catalog sets for a sensor."""
    lines = []
    for lim in limits:
        for kind in ("alarm", "power_off"):
            level = getattr(lim, kind)
            if level is not None:
                lines.append((kind, float(level), f"{kind.replace('_', '-')} {level:g} {unit} ({lim.name})"))
    return lines


def plot_group(group: PlotGroup, site: str, reader: Reader, anomalies: pd.DataFrame, out: Path,
               language: str) -> Path | None:
    """One PNG: a row per equipment, a column per sensor. None when the site has no such data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    equipment = [eq for eq in reader.catalog.all_equipment(site) if group.matches(eq)]
    if not equipment:
        return None
    frames: dict[str, pd.DataFrame] = {}
    for eq_type in sorted({eq.type for eq in equipment}):
        sensors = [s for s in group.sensors if s in reader.catalog.types[eq_type].sensors]
        series = reader.series(eq_type, site, sensors, reader.period.start, reader.period.end)
        if len(series):
            frames[eq_type] = series
    panels = []
    for eq in equipment:
        frame = frames.get(eq.type)
        if frame is None or "equipment" not in frame:
            continue
        rows = frame[frame["equipment"] == eq.id]
        for sid in group.sensors:
            if sid in eq.sensors and sid in rows and rows[sid].notna().any():
                panels.append((eq, sid, rows))
    if not panels:
        return None
    # Two columns, readable on a laptop. A pair of sensors (vibration, bearing temperature) keeps one
    # equipment per row so the columns line up; otherwise the panels flow left to right.
    ncols = 2
    positions: list[tuple[int, int]] = []
    if len(group.sensors) == 2:
        row_of: dict[str, int] = {}
        for eq, sid, _ in panels:
            positions.append((row_of.setdefault(eq.id, len(row_of)), group.sensors.index(sid)))
    else:
        positions = [(i // ncols, i % ncols) for i in range(len(panels))]
    grid = panels
    nrows = max(r for r, _ in positions) + 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 2.3 * nrows + 0.8), squeeze=False, sharex=True)
    used = set()
    for (eq, sid, rows), (r, c) in zip(grid, positions, strict=True):
        ax = axes[r][c]
        used.add((r, c))
        sensor = eq.sensors[sid]
        unit = sensor.unit
        rows = rows[rows[sid].notna()]  # sensors sampled more slowly leave empty buckets: draw through them
        t = rows["time"]
        ax.fill_between(t, rows[sid + "__min"], rows[sid + "__max"], color="#9ecae1", alpha=0.5, linewidth=0,
                        label="min–max")
        ax.plot(t, rows[sid], color="#08519c", linewidth=1.0, label="mean")
        for kind, level, label in _limit_lines(sensor.limits, unit):
            colour, style = LIMIT_STYLE[kind]
            ax.axhline(level, color=colour, linestyle=style, linewidth=1.0, label=label)
        _shade(ax, anomalies, site, eq.id, sid)
        ax.set_title(f"{eq.name.get(language)} · {sensor.spec.name.get(language)}", fontsize=9, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="best", framealpha=0.7)
    locator = mdates.AutoDateLocator(tz=UTC)
    for c in range(ncols):
        visible = [r for r in range(nrows) if (r, c) in used]
        for r in range(nrows):
            ax = axes[r][c]
            if (r, c) not in used:
                ax.set_visible(False)
                continue
            ax.set_xlim(reader.period.start, reader.period.end)  # open anomaly spans must not stretch the axis
            if r == visible[-1]:  # the lowest panel of each column carries the time axis
                ax.tick_params(labelbottom=True)
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    site_name = reader.catalog.sites[site].name.get(language)
    fig.suptitle(f"{site_name} — {group.title} (UTC; shaded: anomalies by severity)", fontsize=11)
    fig.tight_layout()
    path = out / f"{site}_{group.slug}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _shade(ax: Any, anomalies: pd.DataFrame, site: str, equipment: str, sensor: str) -> None:
    """Shade this equipment's anomalies (those of this sensor, or of the whole equipment) by severity."""
    if not len(anomalies):
        return
    rows = anomalies[(anomalies["site"] == site) & (anomalies["equipment"] == equipment)
                     & (anomalies["sensor"].isna() | (anomalies["sensor"] == sensor))]
    seen: set[str] = set()
    for _, a in rows.iterrows():
        if a["state"] == "cleared":
            continue
        severity = str(a["severity"]) if a["severity"] in SEVERITY_COLOUR else "warning"
        label = f"anomaly ({severity})" if severity not in seen else None
        seen.add(severity)
        end = a["shade_to"] if a["shade_to"] > a["shade_from"] else a["shade_from"] + pd.Timedelta(seconds=1)
        ax.axvspan(a["shade_from"], end, color=SEVERITY_COLOUR[severity], alpha=0.45, linewidth=0, label=label)


# ---------------------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{margin-bottom:0} .sub{color:#666;margin-top:.3em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4} td.num{text-align:right}
.sev-info{color:#3182bd}.sev-warning{color:#b35806;font-weight:600}.sev-critical{color:#de2d26;font-weight:700}
.sev-emergency{background:#de2d26;color:#fff;font-weight:700;padding:0 4px}
.good{color:#31a354}.fair{color:#b35806;font-weight:600}.poor{color:#de2d26;font-weight:700}
.figures{display:flex;gap:2em;margin:1em 0} .figure{font-size:28px;font-weight:600} .figure small{display:block;
font-size:12px;color:#666;font-weight:400} img{max-width:100%;border:1px solid #eee;margin-bottom:1em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))


def _t(value: Any) -> str:
    if value is None or value is pd.NaT:
        return ""
    ts = pd.Timestamp(value)
    return "" if pd.isna(ts) else ts.tz_convert(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sev(value: Any) -> str:
    return f'<span class="sev-{_e(value)}">{_e(value)}</span>'


def _quality(ratio: float) -> str:
    return "good" if ratio >= GOOD else "fair" if ratio >= POOR else "poor"


def write_html(path: Path, period: Period, plots: Sequence[Path], alerts: pd.DataFrame, anomalies: pd.DataFrame,
               complete: Sequence[Completeness], sites: Sequence[SiteData]) -> None:
    stored = sum(c.stored for c in complete)
    expected = sum(c.expected for c in complete)
    fired = alerts[alerts["transition"] == "fired"] if len(alerts) and "transition" in alerts else alerts
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>smartmine report</title><style>{CSS}</style>"
             "</head><body>",
             f"<h1>smartmine report</h1><p class='sub'>{_t(period.start)} → {_t(period.end)} UTC · generated "
             f"{_t(datetime.now(UTC))} UTC</p>",
             "<div class='figures'>",
             f"<div class='figure'>{len(fired)}<small>alerts fired</small></div>",
             f"<div class='figure'>{len(anomalies)}<small>anomalies</small></div>",
             f"<div class='figure'>{stored:,}<small>readings stored</small></div>",
             f"<div class='figure {_quality(stored / expected if expected else 1)}'>"
             f"{(100 * stored / expected if expected else 0):.1f} %<small>data completeness</small></div>",
             "</div>"]
    for s in sites:
        span = f"{_t(s.first)} → {_t(s.last)}" if s.first else "no telemetry in this period"
        parts.append(f"<p><b>{_e(s.site)}</b>: {span}</p>")

    parts.append("<h2>Alerts</h2>")
    if len(alerts):
        parts.append("<table><tr><th>time (UTC)</th><th>transition</th><th>severity</th><th>equipment</th>"
                     "<th>rule</th><th>id</th><th>message</th></tr>")
        for _, a in alerts.iterrows():
            parts.append(f"<tr><td>{_t(a['time'])}</td><td>{_e(a.get('transition'))}</td><td>{_sev(a.get('severity'))}"
                         f"</td><td>{_e(a.get('site'))}/{_e(a.get('equipment'))}</td><td>{_e(a.get('rule'))}</td>"
                         f"<td>{_e(a.get('alert_id'))}</td><td>{_e(a.get('message'))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No alert in this period.</p>")

    parts.append("<h2>Anomalies</h2>")
    if len(anomalies):
        parts.append("<table><tr><th>start (UTC)</th><th>end</th><th>severity</th><th>where</th><th>detector</th>"
                     "<th>rule</th><th>explanation</th></tr>")
        for _, a in anomalies.tail(300).iloc[::-1].iterrows():
            where = f"{_e(a.get('site'))}/{_e(a.get('equipment'))}" + (f"/{_e(a['sensor'])}" if a.get("sensor")
                                                                     else "")
            end = _t(a["end"]) or "ongoing"
            parts.append(f"<tr><td>{_t(a['start'])}</td><td>{end}</td><td>{_sev(a.get('severity'))}</td>"
                         f"<td>{where}</td><td>{_e(a.get('detector'))}</td><td>{_e(a.get('rule'))}</td>"
                         f"<td>{_e(a.get('message'))}</td></tr>")
        parts.append("</table>")
        if len(anomalies) > 300:
            parts.append(f"<p>(latest 300 of {len(anomalies)})</p>")
    else:
        parts.append("<p>No anomaly in this period.</p>")

    parts.append("<h2>Signals</h2>")
    parts += [f"<img src='{_e(p.name)}' alt='{_e(p.stem)}'>" for p in plots] or ["<p>No telemetry to plot.</p>"]

    parts.append("<h2>Data completeness</h2><p>Readings stored against readings expected from each sensor's "
                 "sample period over the site's data span.</p><table><tr><th>site</th><th>equipment</th><th>type</th>"
                 "<th>messages</th><th>readings</th><th>expected</th><th>complete</th><th>worst sensor</th></tr>")
    for c in sorted(complete, key=lambda c: (c.ratio, c.site, c.equipment)):
        worst = f"{_e(c.worst_sensor)} {100 * c.worst_ratio:.1f} %" if c.worst_sensor else ""
        parts.append(f"<tr><td>{_e(c.site)}</td><td>{_e(c.equipment)}<br><small>{_e(c.name)}</small></td>"
                     f"<td>{_e(c.type)}</td><td class='num'>{c.messages:,}</td><td class='num'>{c.stored:,}</td>"
                     f"<td class='num'>{c.expected:,}</td><td class='num {_quality(c.ratio)}'>{100 * c.ratio:.1f} %"
                     f"</td><td>{worst}</td></tr>")
    parts.append("</table></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- command
def run_report(args: argparse.Namespace) -> int:
    settings: Settings = load_settings(getattr(args, "config", None))
    catalog = load_catalog(settings.catalog_dir)
    now = datetime.now(UTC)
    period = Period(parse_when(args.since, now), parse_when(args.until, now))
    if period.start >= period.end:
        raise UsageError(f"--since {args.since} is not before --until {args.until}")
    sites = args.site or catalog.site_ids()
    for site in sites:
        if site not in catalog.sites:
            raise UsageError(f"unknown site {site!r} (known: {', '.join(catalog.site_ids())})")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None

    client = InfluxClient.from_settings(settings, timeout_s=60)
    try:
        try:
            client.ping()
        except InfluxError as exc:
            raise UsageError(f"InfluxDB at {client.url} does not answer ({exc}); is `smartmine up` "
                             "running, or SMARTMINE_INFLUX_URL set?") from None
        reader = Reader(client, catalog, period)
        site_data = [reader.site_data(site) for site in sites]
        anomalies = reader.anomalies()
        alerts = reader.alerts()
        if len(anomalies):
            anomalies = anomalies[anomalies["site"].isin(sites)]
        if len(alerts) and "site" in alerts:
            alerts = alerts[alerts["site"].isin(sites)]
        plots = []
        for data in site_data:
            if data.first is None:
                continue
            # Plot the span that holds data, not an empty hour around ten minutes of it.
            reader.period = Period(max(period.start, data.first), min(period.end, data.last or period.end))
            if reader.period.end <= reader.period.start:
                reader.period = Period(reader.period.start, reader.period.start + timedelta(seconds=1))
            for group in PLOT_GROUPS:
                path = plot_group(group, data.site, reader, anomalies, out, settings.language)
                if path is not None:
                    plots.append(path)
                    print(f"plotted {path}", flush=True)
            reader.period = period
        complete = [c for data in site_data for c in completeness(catalog, data)]
        summary = out / "index.html"
        spans = anomaly_spans(anomalies)
        write_html(summary, period, plots, alerts, spans, complete, site_data)
    finally:
        client.close()
    stored = sum(c.stored for c in complete)
    expected = sum(c.expected for c in complete)
    n_fired = int((alerts["transition"] == "fired").sum()) if len(alerts) and "transition" in alerts else len(alerts)
    print(f"report {period.start:%Y-%m-%d %H:%M} → {period.end:%H:%M} UTC: {len(plots)} plots, {n_fired} alerts "
          f"fired, {len(spans)} anomalies, completeness {100 * stored / expected if expected else 0:.1f} % "
          f"-> open {summary}")
    return 0
