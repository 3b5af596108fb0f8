"""``smartmine report`` draws what InfluxDB holds: plots with limits and anomaly spans, alerts, completeness.

The data is written here through the shared schema encoder (as ingest would), into the session's real
influxd, so the report is checked against known numbers: a methane excursion over the alarm limit, a belt
that lost half its samples, one alert and one anomaly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smartmine.catalog import builtin_catalog
from smartmine.config import Settings
from smartmine.influx import InfluxClient, Point
from smartmine.schema import series_prefix, telemetry_line

MINUTES = 10


def _write_plant(influx: InfluxClient, end: datetime) -> datetime:
    """Ten minutes of 1 Hz telemetry for three gas monitors and two belts; belt_main_2 loses every other second."""
    catalog = builtin_catalog()
    start = end - timedelta(minutes=MINUTES)
    lines = []
    for eq_id in ("gas_upper_corner_1203", "gas_face_1203", "gas_main_return", "belt_main_1", "belt_main_2"):
        eq = catalog.equipment("yanshan_mine", eq_id)
        assert eq is not None
        prefix = series_prefix(eq.type, eq.site, eq.area, eq.id)
        for i in range(MINUTES * 60):
            if eq_id == "belt_main_2" and i % 2:
                continue
            ts = start + timedelta(seconds=i)
            readings: dict[str, tuple[float, str]] = {}
            for sid, sensor in eq.sensors.items():
                if i % int(sensor.spec.sample_period_s):
                    continue
                lo, hi = sensor.spec.normal
                value = (lo + hi) / 2
                if eq_id == "gas_upper_corner_1203" and sid == "ch4_pct" and 300 <= i < 360:
                    value = 1.2  # over the 1.0 % alarm for a minute
                readings[sid] = (value, "good")
            lines.append(telemetry_line(prefix, ts, i, readings))
    influx.write_lines(lines)
    anomaly_start = start + timedelta(seconds=300)
    influx.write_points([
        Point("anomalies").tag("site", "yanshan_mine").tag("area", "face_1203")
        .tag("equipment", "gas_upper_corner_1203").tag("sensor", "ch4_pct").tag("detector", "limit")
        .tag("severity", "critical")
        .field("start", int(anomaly_start.timestamp() * 1e9))
        .field("end", int((anomaly_start.timestamp() + 60) * 1e9))
        .field("score", 1.0).field("message", "CH4 1.20 % at Upper corner 1203 is over the alarm limit 1.0 %")
        .time(anomaly_start),
        Point("alert_history").tag("site", "yanshan_mine").tag("area", "face_1203")
        .tag("equipment", "gas_upper_corner_1203").tag("rule", "limit:ch4_limit")
        .field("alert_id", "1").field("transition", "fired").field("state", "firing").field("severity", "critical")
        .field("message", "methane alarm at upper corner 1203").time(anomaly_start + timedelta(seconds=1)),
    ])
    return start


@pytest.fixture
def report_dir(settings: Settings, influx: InfluxClient, tmp_path: Path) -> Path:
    _write_plant(influx, datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "report", "--since", "1h", "--out", str(out),
                           "--site", "yanshan_mine"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 alerts fired, 1 anomalies" in proc.stdout
    return out


def test_report_plots_methane_and_rotating_machines(report_dir: Path) -> None:
    for name in ("yanshan_mine_methane.png", "yanshan_mine_rotating.png"):
        png = report_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
        assert png.stat().st_size > 20_000, f"{name} looks empty"
    # Equipment types the run holds no data for get no empty figure.
    assert not (report_dir / "yanshan_mine_drainage.png").exists()


def test_report_summary_lists_alert_anomaly_and_completeness(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text()
    assert "methane alarm at upper corner 1203" in page
    assert "CH4 1.20 % at Upper corner 1203 is over the alarm limit 1.0 %" in page
    assert "yanshan_mine_methane.png" in page

    def completeness(equipment: str) -> float:
        m = re.search(rf"<td>{equipment}<br>.*?<td class='num (?:good|fair|poor)'>([\d.]+) %", page)
        assert m, f"no completeness row for {equipment}"
        return float(m.group(1))

    assert completeness("belt_main_1") == 100.0
    assert 45.0 <= completeness("belt_main_2") <= 55.0  # half its samples are missing
    assert completeness("shearer_1") == 0.0  # silent the whole time


def test_report_refuses_a_bad_period(settings: Settings, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "report", "--since", "yesterday-ish",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "'yesterday-ish' is neither a duration" in proc.stderr
