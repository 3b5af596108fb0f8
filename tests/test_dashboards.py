"""The generated Grafana boards: typed by Grafana's own published schema (@grafana/schema, checked by tsc),
every query returns data from the real influxd holding simulated telemetry, and `push` speaks Grafana's
documented HTTP API."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_api import GrafanaRecorder

from alerts.model import Alert, Notification
from alerts.notifiers.history import history_point
from dashboards.boards import Board, BoardError, BoardFactory
from dashboards.check import check_board
from dashboards.push import push
from dashboards.typecheck import typecheck
from smartmine.catalog import Catalog, load_catalog
from smartmine.catalog.model import Limit
from smartmine.cli import main
from smartmine.config import Settings, load_settings
from smartmine.influx import InfluxClient, Point
from smartmine.schema import series_prefix, telemetry_line

CATALOG = load_catalog()
BUILTIN_VARIABLES = {"timeFilter", "__interval", "interval"}


@pytest.fixture(scope="module", params=["en", "zh"])
def boards(request: pytest.FixtureRequest) -> list[Board]:
    return BoardFactory(CATALOG, language=request.param).all()


def by_uid(boards: list[Board], uid: str) -> dict[str, Any]:
    return next(b.json for b in boards if b.uid == uid)


def steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    thresholds = panel["fieldConfig"]["defaults"].get("thresholds", {"steps": []})
    return [(s["value"], s["color"]) for s in thresholds["steps"]]


# ------------------------------------------------------------------ the model
def test_every_board_type_checks_as_grafanas_dashboard() -> None:
    """Both languages' boards against @grafana/schema 10.4.2 (docker-compose runs Grafana 10.4.2)."""
    boards = BoardFactory(CATALOG, language="en").all() + BoardFactory(CATALOG, language="zh").all()
    result = typecheck(boards)
    assert result.ok, f"{result.file}:\n{result.output}"


def test_a_board_grafana_would_misread_fails_the_type_check_with_tscs_message() -> None:
    good = BoardFactory(CATALOG).equipment_board("belt_conveyor")
    broken = copy.deepcopy(good.json)
    broken["panels"][0]["gridPos"]["h"] = "8"  # a string where Grafana's GridPos has a number
    broken["panels"][1]["fieldConfig"]["defaults"]["unitt"] = "celsius"  # a key Grafana does not know
    result = typecheck([Board(uid=good.uid, title=good.title, json=broken)])
    assert not result.ok
    assert "Type 'string' is not assignable to type 'number'" in result.output
    assert "'\"unitt\"' does not exist" in result.output
    result.file.unlink()


def test_every_board_keeps_its_panels_apart_and_its_variables_defined(boards: list[Board]) -> None:
    assert len({b.uid for b in boards}) == len(boards)
    for b in boards:
        ids = [p["id"] for p in b.json["panels"]]
        assert len(set(ids)) == len(ids), f"{b.uid}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for p in b.json["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{b.uid}: {p['title']} overflows the grid"
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not area & cells, f"{b.uid}: {p['title']} overlaps another panel"
            cells |= area
            values = [v for v, _ in steps(p)[1:] if v is not None]
            assert values == sorted(values), f"{b.uid}: {p['title']} thresholds out of order"
        defined = {v["name"] for v in b.json["templating"]["list"]} | BUILTIN_VARIABLES
        texts = json.dumps([b.json["panels"], b.json["templating"], b.json["annotations"]])
        used = set(re.findall(r"\$(?:\{)?([A-Za-z_]\w*)", texts)) - {"tag_equipment", "tag_severity", "tag_area",
                                                                      "measurement", "__all"}
        assert used <= defined, f"{b.uid}: variables used but not defined: {used - defined}"


def test_boards_cover_the_catalog_with_its_limits(boards: list[Board]) -> None:
    uids = {b.uid for b in boards}
    assert {"sm-overview-yanshan_mine", "sm-overview-jinggang_steel", "sm-gas-yanshan_mine",
            "sm-energy-jinggang_steel", "sm-anomalies", "sm-pipeline"} <= uids
    assert {f"sm-eq-{t}" for t in {eq.type for eq in CATALOG.all_equipment()}} <= uids
    # Equipment board: every sensor of the type, its catalog limits drawn as thresholds.
    belt = by_uid(boards, "sm-eq-belt_conveyor")
    assert len(belt["panels"]) == len(CATALOG.types["belt_conveyor"].sensors)
    (bearing,) = [p for p in belt["panels"] if '"bearing_temp_c"' in p["targets"][0]["query"]]
    assert steps(bearing) == [(None, "green"), (85.0, "orange"), (95.0, "red")]
    assert bearing["fieldConfig"]["defaults"]["unit"] == "celsius"
    assert bearing["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    # Gas board: methane by location, one panel per regulatory limit set (CMSR art. 498).
    gas = by_uid(boards, "sm-gas-yanshan_mine")
    methane = [p for p in gas["panels"] if '"ch4_pct"' in p["targets"][0]["query"]]
    ch4_steps = sorted(steps(p)[1:] for p in methane)
    assert [(1.0, "orange"), (1.5, "red")] in ch4_steps  # coal face: alarm 1.0 %, power-off 1.5 %
    assert [(0.75, "orange")] in ch4_steps  # main return: 0.75 %
    face = next(p for p in methane if steps(p)[1:] == [(1.0, "orange"), (1.5, "red")])
    assert "gas_upper_corner_1203" in face["targets"][0]["query"]
    assert "gas_main_return" not in face["targets"][0]["query"]
    assert "CMSR-498" in face["description"]
    (o2,) = [p for p in gas["panels"] if '"o2_pct"' in p["targets"][0]["query"] and len(steps(p)) > 1]
    assert "gas_intake_main" in o2["targets"][0]["query"]  # O2 >= 20 % applies to intake air
    assert steps(o2)[0][1] != "green"  # O2 is a low limit: the band below the line is the alarm
    # Anomalies as annotations on every board, from measurement "anomalies".
    for b in boards:
        assert any('FROM "anomalies"' in a.get("query", "") for a in b.json["annotations"]["list"])


def test_titles_follow_the_language_setting() -> None:
    zh = {b.uid: b for b in BoardFactory(CATALOG, language="zh").all()}
    en = {b.uid: b for b in BoardFactory(CATALOG, language="en").all()}
    assert zh["sm-gas-yanshan_mine"].title == "燕山煤矿 · 瓦斯监测"
    assert en["sm-gas-yanshan_mine"].title == "Yanshan Coal Mine · Gas monitoring"
    zh_legends = json.dumps(zh["sm-eq-gas_monitor"].json["panels"][0]["fieldConfig"]["overrides"], ensure_ascii=False)
    assert "1203上隅角" in zh_legends  # series named as the plant names its locations


def test_a_sensor_added_to_the_catalog_appears_on_its_board(tmp_path: Path) -> None:
    src = Path(CATALOG.source)
    shutil.copytree(src, tmp_path / "catalog")
    types_file = tmp_path / "catalog" / "equipment_types.yaml"
    data = yaml.safe_load(types_file.read_text(encoding="utf-8"))
    data["equipment_types"]["belt_conveyor"]["sensors"]["belt_tension_kn"] = {
        "name": {"en": "Belt tension", "zh": "皮带张力"}, "unit": "kN", "sample_period_s": 5,
        "normal": [20.0, 60.0], "physical": [0.0, 200.0],
        "limits": [{"name": "belt_tension_high", "alarm": 80.0, "power_off": 100.0, "restore": 75.0,
                    "source": "plant setting for this test"}]}
    types_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    belt = BoardFactory(load_catalog(tmp_path / "catalog")).equipment_board("belt_conveyor").json
    (tension,) = [p for p in belt["panels"] if "belt_tension_kn" in p["targets"][0]["query"]]
    assert tension["title"] == "Belt tension (kN)" and steps(tension)[1:] == [(80.0, "orange"), (100.0, "red")]


def test_a_key_figure_missing_from_the_catalog_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = tmp_path / "boards.yaml"
    text = Path("dashboards/boards.yaml").read_text(encoding="utf-8").replace("sensor: load_t_h", "sensor: load_tph")
    spec.write_text(text, encoding="utf-8")
    monkeypatch.setattr("dashboards.boards.BOARDS_FILE", spec)
    with pytest.raises(BoardError, match=r"belt_conveyor\.load_tph"):
        BoardFactory(CATALOG)


# ------------------------------------------------------------------ queries against the real influxd
def simulated_lines(catalog: Catalog, now: datetime, minutes: int = 20) -> list[str]:
    """One sample a minute for every equipment, mid-range values, a counter that counts, some bad quality."""
    lines = []
    for n, eq in enumerate(catalog.all_equipment()):
        prefix = series_prefix(eq.type, eq.site, eq.area, eq.id)
        for i in range(minutes):
            ts = now - timedelta(minutes=minutes - i)
            readings: dict[str, tuple[float, str]] = {}
            for sensor_id, sensor in eq.sensors.items():
                lo, hi = sensor.spec.normal
                value = lo + (hi - lo) * (0.4 + 0.2 * ((i + n) % 5) / 4)
                if sensor.spec.kind == "counter":
                    value = 1.0e6 + 1000.0 * i
                quality = "uncertain" if (i == 3 and sensor_id == next(iter(eq.sensors))) else "good"
                readings[sensor_id] = (value, quality)
            lines.append(telemetry_line(prefix, ts, i, readings))
    return lines


def anomaly_points(catalog: Catalog, now: datetime) -> list[Point]:
    points = []
    for eq in catalog.all_equipment():
        sensor = next(iter(eq.sensors))
        points.append(Point("anomalies").tag("site", eq.site).tag("area", eq.area).tag("equipment", eq.id)
                      .tag("sensor", sensor).tag("detector", "ewma").tag("severity", "warning")
                      .field("score", 0.9).field("message", f"{sensor} off its usual level")
                      .time(now - timedelta(minutes=5)))
    return points


def alert_history(catalog: Catalog, now: datetime) -> list[Point]:
    out = []
    for n, site in enumerate(catalog.sites):
        eq = next(catalog.all_equipment(site))
        alert = Alert(id=str(n + 1), site=site, area=eq.area, equipment=eq.id, rule="limit:test", detector="limit",
                      severity="critical", message="test alert", started=now, fired_at=now, last_event_at=now)
        out.append(history_point(Notification(transition="fired", alert=alert, at=now - timedelta(minutes=4))))
    return out


@pytest.fixture(scope="module")
def telemetry_db(influxd: Any) -> Iterator[InfluxClient]:
    client = InfluxClient(influxd.url, "dashboards_check")
    client.create_database()
    now = datetime.now(UTC).replace(microsecond=0)
    client.write_lines(simulated_lines(CATALOG, now))
    client.write_points(anomaly_points(CATALOG, now) + alert_history(CATALOG, now))
    yield client
    client.drop_database()
    client.close()


def test_every_board_query_returns_data_from_simulated_telemetry(telemetry_db: InfluxClient,
                                                                 boards: list[Board]) -> None:
    failures = []
    checked = 0
    for b in boards:
        for check in check_board(telemetry_db, b):
            checked += 1
            if not check.ok:
                failures.append(f"{b.uid} {check.where}: {check.error or 'no rows'}\n  {check.query}")
    assert failures == []
    assert checked > 150


def test_queries_narrow_to_the_chosen_equipment(telemetry_db: InfluxClient) -> None:
    board = BoardFactory(CATALOG).equipment_board("belt_conveyor")
    chosen = check_board(telemetry_db, board, {"site": ["yanshan_mine"], "equipment": ["belt_main_1"]})
    everyone = check_board(telemetry_db, board, {"site": ["yanshan_mine"]})
    panel = next(c for c in chosen if c.where.startswith("panel"))
    same = next(c for c in everyone if c.where == panel.where)
    assert 0 < panel.rows < same.rows  # one belt of two
    nobody = check_board(telemetry_db, board, {"site": ["jinggang_steel"]})
    assert all(c.rows == 0 for c in nobody if c.where.startswith("panel"))  # no belts at the steel works


# ------------------------------------------------------------------ build and push
def test_build_writes_dashboards_and_provisioning(settings: Settings, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grafana"
    assert main(["dashboards", "build", "--out", str(out)]) == 0
    assert "wrote 22 dashboards" in capsys.readouterr().out
    files = sorted((out / "dashboards").glob("*.json"))
    assert len(files) == 22 and json.loads(files[0].read_text())["uid"] == files[0].stem
    ds = yaml.safe_load((out / "provisioning" / "datasources" / "smartmine.yaml").read_text())
    (source,) = ds["datasources"]
    assert ds["apiVersion"] == 1 and source["type"] == "influxdb" and source["uid"] == "smartmine-influxdb"
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert "$SMARTMINE_INFLUX_TOKEN" in source["secureJsonData"]["httpHeaderValue1"]  # the secret stays in the env
    provider = yaml.safe_load((out / "provisioning" / "dashboards" / "smartmine.yaml").read_text())["providers"][0]
    assert provider["type"] == "file" and Path(provider["options"]["path"]) == (out / "dashboards").resolve()
    assert provider["folderUid"] == settings.dashboards.folder_uid


@pytest.fixture
def grafana(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[GrafanaRecorder]:
    recorder = GrafanaRecorder().start()
    monkeypatch.setenv("SMARTMINE_GRAFANA_URL", recorder.url)
    monkeypatch.setenv("SMARTMINE_GRAFANA_TOKEN", "glsa_test")
    yield recorder
    recorder.stop()


def test_push_is_idempotent_and_follows_grafanas_http_api(grafana: GrafanaRecorder, influx: InfluxClient) -> None:
    settings = load_settings()
    boards = BoardFactory(CATALOG).all()
    now = datetime.now(UTC).replace(microsecond=0)
    influx.write_points(anomaly_points(CATALOG, now)[:3])
    first = push(settings, boards, influx=influx)
    assert (first.folder_created, first.dashboards, first.annotations_added) == (True, 22, 3)
    second = push(settings, boards, influx=influx)
    assert (second.folder_created, second.dashboards, second.annotations_added, second.annotations_skipped) == (
        False, 22, 0, 3)
    assert grafana.problems == []
    assert set(grafana.dashboards) == {b.uid for b in boards}
    assert {d["version"] for d in grafana.dashboards.values()} == {2}  # the same 22 boards, updated in place
    assert list(grafana.folders) == [settings.dashboards.folder_uid]
    calls = [(r.method, r.path.split("?")[0]) for r in grafana.requests]
    assert calls.count(("POST", "/api/folders")) == 1
    assert calls.count(("POST", "/api/dashboards/db")) == 44
    annotation = next(iter(grafana.annotations.values()))
    assert {"smartmine", "anomaly", "warning", "ewma"} <= set(annotation["tags"])


def test_push_without_grafana_url_says_what_to_set(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "push"]) == 2
    assert "SMARTMINE_GRAFANA_URL" in capsys.readouterr().err


def test_threshold_steps_for_a_band_of_high_and_low_limits() -> None:
    from dashboards.boards import threshold_steps

    wind = [Limit(name="high", alarm=4.0, source="CMSR-136"), Limit(name="low", direction="low", alarm=0.25,
                                                                       source="CMSR-136")]
    assert [(s.value, s.color) for s in threshold_steps(wind)] == [(None, "orange"), (0.25, "green"), (4.0, "orange")]


def test_check_command_reports_boards_without_data(settings: Settings, influx: InfluxClient,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "check"]) == 1  # nothing written yet: every board is empty
    out = capsys.readouterr().out
    assert "sm-gas-yanshan_mine" in out and "no data" in out and "0 of " in out
    now = datetime.now(UTC).replace(microsecond=0)
    influx.write_lines(simulated_lines(CATALOG, now))
    influx.write_points(anomaly_points(CATALOG, now) + alert_history(CATALOG, now))
    assert main(["dashboards", "check"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    total = int(summary.split(" of ")[1].split()[0])
    assert summary.startswith(f"{total} of {total} queries on 22 boards return data")
