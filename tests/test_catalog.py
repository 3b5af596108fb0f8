"""The catalog loads, carries the regulatory numbers, and rejects each kind of bad file clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from smartmine.catalog import BUILTIN_DIR, CatalogError, load_catalog


def test_builtin_catalog_has_both_sites_and_every_domain_equipment_type() -> None:
    catalog = load_catalog()
    kinds = {s.kind for s in catalog.sites.values()}
    assert kinds == {"coal_mine", "steel_plant"}
    used = {eq.type for eq in catalog.all_equipment()}
    for expected in ("gas_monitor", "shearer", "armoured_face_conveyor", "belt_conveyor", "main_fan", "hoist",
                     "drainage_pump", "hydraulic_support", "radio_5g", "blast_furnace", "bof_converter",
                     "rolling_mill", "energy_meter"):
        assert expected in used, expected


@pytest.mark.parametrize(("equipment", "alarm", "power_off", "restore"), [
    ("gas_upper_corner_1203", 1.0, 1.5, 1.0),
    ("gas_face_1203", 1.0, 1.5, 1.0),
    ("gas_return_1203", 1.0, 1.0, 1.0),
    ("gas_main_return", 0.75, None, 0.75),
])
def test_methane_limits_follow_the_regulation(equipment: str, alarm: float, power_off: float | None,
                                              restore: float) -> None:
    sensor = load_catalog().sensor("yanshan_mine", equipment, "ch4_pct")
    assert sensor is not None
    (limit,) = sensor.limits
    assert (limit.alarm, limit.power_off, limit.restore_level) == (alarm, power_off, restore)
    assert "CMSR-498" in limit.source


def test_vibration_limits_follow_iso_10816_class() -> None:
    catalog = load_catalog()
    fan = catalog.sensor("yanshan_mine", "main_fan_1", "vibration_mm_s")
    pump = catalog.sensor("yanshan_mine", "pump_1", "vibration_mm_s")
    assert fan is not None and pump is not None
    assert (fan.limits[0].alarm, fan.limits[0].power_off) == (4.5, 7.1)    # group 1 rigid
    assert (pump.limits[0].alarm, pump.limits[0].power_off) == (2.8, 4.5)  # group 2 rigid


def test_every_sensor_has_unit_period_and_ranges() -> None:
    catalog = load_catalog()
    for eq in catalog.all_equipment():
        for s in eq.sensors.values():
            assert s.unit in catalog.units
            lo, hi = s.spec.physical
            assert lo <= s.spec.normal[0] <= s.spec.normal[1] <= hi
            assert s.spec.sample_period_s > 0


def test_catalog_show_json_shape() -> None:
    out = subprocess.run([sys.executable, "-m", "smartmine.cli", "catalog", "show", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    sites = {s["id"]: s for s in data["sites"]}
    assert {s["kind"] for s in sites.values()} == {"coal_mine", "steel_plant"}
    mine = sites["yanshan_mine"]
    eq = {e["id"]: e for e in mine["equipment"]}["gas_upper_corner_1203"]
    assert eq["type"] == "gas_monitor"
    ch4 = {s["id"]: s for s in eq["sensors"]}["ch4_pct"]
    assert ch4["unit"] == "%vol"
    assert ch4["limits"][0]["alarm"] == 1.0


# ---------------------------------------------------------------- bad files

@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    shutil.copytree(BUILTIN_DIR, target)
    return target


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def _types(root: Path) -> Path:
    return root / "equipment_types.yaml"


def _mine(root: Path) -> Path:
    return root / "sites" / "yanshan_mine.yaml"


def _first_eq(data: dict) -> dict:
    return data["site"]["areas"][0]["lines"][0]["equipment"][0]


BAD_FILES: list[tuple[str, Callable[[Path], Path], Callable[[dict], None], str, str]] = [
    ("unknown unit", _types,
     lambda d: d["equipment_types"]["shearer"]["sensors"]["cutting_current_a"].update(unit="amps"),
     "equipment_types.shearer.sensors.cutting_current_a.unit", "unknown unit 'amps'"),
    ("restore above alarm", _types,
     lambda d: d["equipment_types"]["gas_monitor"]["limit_profiles"]["working_face"]["ch4_pct"][0].update(restore=1.2),
     "equipment_types.gas_monitor.limit_profiles.working_face.ch4_pct[0]", "restore 1.2 is above alarm 1.0"),
    ("power-off below alarm", _types,
     lambda d: d["equipment_types"]["gas_monitor"]["limit_profiles"]["working_face"]["ch4_pct"][0]
     .update(power_off=0.8),
     "ch4_pct[0]", "power_off 0.8 is below alarm 1.0"),
    ("empty physical range", _types,
     lambda d: d["equipment_types"]["hoist"]["sensors"]["load_t"].update(physical=[60.0, 0.0]),
     "equipment_types.hoist.sensors.load_t", "physical range [60.0, 0.0] is empty"),
    ("normal outside physical", _types,
     lambda d: d["equipment_types"]["hoist"]["sensors"]["load_t"].update(normal=[0.0, 90.0]),
     "equipment_types.hoist.sensors.load_t", "outside physical range"),
    ("missing source", _types,
     lambda d: d["equipment_types"]["drainage_pump"]["sensors"]["sump_level_m"]["limits"][0].pop("source"),
     "equipment_types.drainage_pump.sensors.sump_level_m.limits[0].source", "Field required"),
    ("permitted error without its source", _types,
     lambda d: d["equipment_types"]["gas_monitor"]["sensors"]["ch4_pct"]["permitted_error"].pop("source"),
     "equipment_types.gas_monitor.sensors.ch4_pct.permitted_error.source", "Field required"),
    ("permitted error not positive", _types,
     lambda d: d["equipment_types"]["gas_monitor"]["sensors"]["co_ppm"]["permitted_error"].update(value=0),
     "equipment_types.gas_monitor.sensors.co_ppm.permitted_error.value", "greater than 0"),
    ("unknown field", _types,
     lambda d: d["equipment_types"]["hoist"]["sensors"]["load_t"].update(colour="red"),
     "equipment_types.hoist.sensors.load_t.colour", "Extra inputs are not permitted"),
    ("duplicate equipment id", _mine,
     lambda d: d["site"]["areas"][1]["lines"][0]["equipment"].append(dict(_first_eq(d))),
     "site.areas[1].lines[0].equipment", "duplicate equipment id 'shearer_1'"),
    ("unknown equipment type", _mine,
     lambda d: _first_eq(d).update(type="teleporter"),
     "site.areas[0].lines[0].equipment[0].type", "unknown equipment type 'teleporter'"),
    ("type from the wrong kind of site", _mine,
     lambda d: _first_eq(d).update(type="blast_furnace"),
     "site.areas[0].lines[0].equipment[0].type", "does not belong in a coal_mine"),
    ("unknown limit profile", _mine,
     lambda d: _first_eq(d).update(type="gas_monitor", limit_profile="moon_base"),
     "site.areas[0].lines[0].equipment[0].limit_profile", "unknown limit profile 'moon_base'"),
    ("bad id characters", _mine,
     lambda d: _first_eq(d).update(id="Shearer 1/x"),
     "site.areas[0].lines[0].equipment[0].id", "should match pattern"),
    ("sensor id outside the id alphabet", _types,
     lambda d: d["equipment_types"]["hoist"]["sensors"].update({"Load t": d["equipment_types"]["hoist"]["sensors"]
                                                                ["load_t"]}),
     "equipment_types.hoist", "sensor id 'Load t' should match pattern"),
    ("sensor id the schema reserves", _types,
     lambda d: d["equipment_types"]["hoist"]["sensors"].update(
         load_t_quality=d["equipment_types"]["hoist"]["sensors"]["load_t"]),
     "equipment_types.hoist", "sensor id 'load_t_quality' is reserved"),
    ("bad site kind", _mine,
     lambda d: d["site"].update(kind="oil_rig"),
     "site.kind", "Input should be 'coal_mine' or 'steel_plant'"),
]


@pytest.mark.parametrize(("case", "which", "change", "path", "problem"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_catalog_is_rejected_naming_file_path_and_problem(
        catalog_copy: Path, case: str, which: Callable[[Path], Path], change: Callable[[dict], None],
        path: str, problem: str) -> None:
    file = which(catalog_copy)
    _edit(file, change)
    with pytest.raises(CatalogError) as info:
        load_catalog(catalog_copy)
    assert info.value.file == str(file)
    assert path in info.value.path
    assert problem in info.value.problem
    assert str(file) in str(info.value)


def test_duplicate_site_id_is_rejected(catalog_copy: Path) -> None:
    shutil.copy(_mine(catalog_copy), catalog_copy / "sites" / "zz_copy.yaml")
    with pytest.raises(CatalogError, match="duplicate site id 'yanshan_mine'"):
        load_catalog(catalog_copy)


def test_invalid_yaml_names_line(catalog_copy: Path) -> None:
    _mine(catalog_copy).write_text("site:\n  id: [unclosed\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"yanshan_mine.yaml: line \d+, column \d+: invalid YAML"):
        load_catalog(catalog_copy)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="catalog folder does not exist"):
        load_catalog(tmp_path / "nope")


def test_cli_validate_reports_bad_file_without_traceback(catalog_copy: Path) -> None:
    _edit(_types(catalog_copy),
          lambda d: d["equipment_types"]["shearer"]["sensors"]["cutting_current_a"].update(unit="amps"))
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "catalog", "validate", str(catalog_copy)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown unit 'amps'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_new_sensor_needs_no_code_change(catalog_copy: Path) -> None:
    _edit(_types(catalog_copy), lambda d: d["equipment_types"]["hoist"]["sensors"].update(
        rope_tension_kn={"name": {"en": "Rope tension", "zh": "钢丝绳张力"}, "unit": "kN", "sample_period_s": 1,
                         "normal": [100, 300], "physical": [0, 1000]}))
    sensor = load_catalog(catalog_copy).sensor("yanshan_mine", "hoist_main", "rope_tension_kn")
    assert sensor is not None and sensor.unit == "kN"
