"""The database, retention policies and 1-minute rollups that ``smartmine.schema.ensure_database`` sets up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartmine.catalog import load_catalog
from smartmine.influx import InfluxClient
from smartmine.schema import (
    RAW_RP,
    ROLLUP_RP,
    backfill_rollups,
    continuous_query_name,
    ensure_database,
    series_prefix,
    telemetry_line,
)


def _policies(influx: InfluxClient) -> dict[str, tuple[str, bool]]:
    series = influx.query(f'SHOW RETENTION POLICIES ON "{influx.database}"', epoch=None)[0]["series"][0]
    cols = series["columns"]
    return {row[0]: (row[cols.index("duration")], row[cols.index("default")]) for row in series["values"]}


def test_ensure_database_creates_policies_and_one_rollup_query_per_equipment_type(influx: InfluxClient) -> None:
    catalog = load_catalog()
    ensure_database(influx, catalog, retention="30d", rollup_retention="400d")
    policies = _policies(influx)
    assert policies[RAW_RP] == ("720h0m0s", True), "raw data is the default policy, kept 30 days"
    assert policies[ROLLUP_RP] == ("9600h0m0s", False)
    shown = influx.query("SHOW CONTINUOUS QUERIES", epoch=None)[0]["series"]
    ours = next(s for s in shown if s["name"] == influx.database)
    names = {row[0] for row in ours["values"]}
    assert names == {continuous_query_name(t) for t in catalog.types}
    gas = next(row[1] for row in ours["values"] if row[0] == continuous_query_name("gas_monitor"))
    assert 'max(ch4_pct) AS ch4_pct_max' in gas.replace('"', "") and "GROUP BY time(1m)" in gas

    # Run again with a longer retention: policies change, nothing else is re-created.
    again = ensure_database(influx, catalog, retention="60d", rollup_retention="400d")
    assert not [s for s in again if "CONTINUOUS QUERY" in s], again
    assert _policies(influx)[RAW_RP] == ("1440h0m0s", True)


def test_rollups_hold_mean_min_max_per_minute(influx: InfluxClient) -> None:
    catalog = load_catalog()
    ensure_database(influx, catalog)
    eq = next(e for e in catalog.all_equipment() if e.type == "gas_monitor")
    prefix = series_prefix(eq.type, eq.site, eq.area, eq.id)
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    values = [0.2, 0.4, 0.9]  # three samples in the first minute, one in the next
    lines = [telemetry_line(prefix, t0 + timedelta(seconds=10 * i), i, {"ch4_pct": (v, "good")})
             for i, v in enumerate(values)]
    lines.append(telemetry_line(prefix, t0 + timedelta(seconds=70), 3, {"ch4_pct": (0.5, "good")}))
    influx.write_lines(lines)
    backfill_rollups(influx, catalog, t0, t0 + timedelta(minutes=2))
    df = influx.query_df(f'SELECT ch4_pct_mean, ch4_pct_min, ch4_pct_max FROM "{ROLLUP_RP}"."gas_monitor" '
                         f"WHERE equipment = '{eq.id}'")
    assert len(df) == 2
    first = df.iloc[0]
    assert first["ch4_pct_mean"] == pytest.approx(0.5) and first["ch4_pct_min"] == 0.2
    assert first["ch4_pct_max"] == 0.9 and df.iloc[1]["ch4_pct_max"] == 0.5


def test_ensure_database_refuses_a_bad_duration(influx: InfluxClient) -> None:
    with pytest.raises(ValueError, match="retention '30 days'"):
        ensure_database(influx, load_catalog(), retention="30 days")
