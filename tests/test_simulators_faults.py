"""Each fault kind shows in the signal it is about; scenarios validate with errors that name the mistake.

Every check compares a run with the fault against the same seed without it, so whatever differs is the
fault's doing, not noise.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from itertools import pairwise
from typing import Any

import pytest
from simhelp import START, baseline, catalog, payloads, series, simulate

from simulators.faults import FAULT_KINDS
from simulators.scenario import ScenarioError, available_scenarios, load_scenario, parse_scenario, plan

MINE, STEEL = "yanshan_mine", "jinggang_steel"


def fault(kind: str, equipment: str | None, sensor: str | None = None, start: str = "30s", duration: str = "5m",
          area: str | None = None, **params: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"kind": kind, "start": start, "duration": duration, "params": params}
    if equipment:
        f["equipment"] = equipment
    if sensor:
        f["sensor"] = sensor
    if area:
        f["area"] = area
    return f


def limit(equipment: str, sensor: str, site: str = MINE) -> Any:
    s = catalog().sensor(site, equipment, sensor)
    assert s is not None and s.limits
    return s.limits[0]


# ------------------------------------------------------------------ process faults


def test_bearing_degradation_raises_vibration_past_the_iso_alarm_and_the_temperature_follows() -> None:
    msgs = simulate(MINE, 600, (fault("bearing_degradation", "belt_main_1", start="0s", duration="20m",
                                      ramp_s=300, growth=1.5),))
    base = baseline(MINE, 600)
    vib = series(msgs, "belt_main_1", "vibration_mm_s")
    alarm = limit("belt_main_1", "vibration_mm_s").alarm
    assert max(series(base, "belt_main_1", "vibration_mm_s")) < alarm
    assert statistics.mean(vib[-60:]) > alarm
    assert statistics.mean(series(msgs, "belt_main_1", "vibration_kurtosis")[-60:]) > 6.0
    temp, temp0 = series(msgs, "belt_main_1", "bearing_temp_c"), series(base, "belt_main_1", "bearing_temp_c")
    # The temperature follows with its thermal lag: a small rise early, a clear one later.
    assert temp[-1] - temp0[-1] > 3.0
    assert temp[-1] - temp0[-1] > 2 * (temp[20] - temp0[20])


def test_ventilation_failure_drops_air_volume_and_methane_rises_downstream() -> None:
    msgs = simulate(MINE, 600, (fault("ventilation_failure", "main_fan_1", start="60s", duration="20m",
                                      air_volume_fraction=0.25),))
    base = baseline(MINE, 600)
    air = series(msgs, "main_fan_1", "air_volume_m3_min")
    assert statistics.mean(air[-60:]) < 0.35 * statistics.mean(air[:50])
    for monitor in ("gas_face_1203", "gas_return_1203", "gas_heading_2105"):
        ch4, ch4_0 = series(msgs, monitor, "ch4_pct"), series(base, monitor, "ch4_pct")
        assert statistics.mean(ch4[-30:]) > 2.5 * statistics.mean(ch4_0[-30:]), monitor
    wind, wind0 = series(msgs, "gas_face_1203", "wind_speed_m_s"), series(base, "gas_face_1203", "wind_speed_m_s")
    assert statistics.mean(wind[-20:]) < 0.5 * statistics.mean(wind0[-20:])
    # Intake air comes from the surface: no methane to accumulate there.
    assert max(series(msgs, "gas_intake_main", "ch4_pct")) < limit("gas_intake_main", "ch4_pct").alarm


def test_ventilation_failure_truth_labels_the_methane_downstream_but_not_the_intake() -> None:
    from simulators.engine import Simulation

    sim = Simulation(catalog(), sites=MINE, scenario=load_scenario("ventilation_failure"), start=START,
                     duration_s=7200)
    labelled = {(i["equipment"], i["kind"]) for i in sim.truth()}
    assert ("main_fan_1", "ventilation_failure") in labelled
    assert ("gas_upper_corner_1203", "methane_accumulation") in labelled
    assert ("gas_main_return", "methane_accumulation") in labelled
    assert not any(eq == "gas_intake_main" for eq, _ in labelled)


def test_methane_accumulation_reaches_the_power_off_level() -> None:
    msgs = simulate(MINE, 120, (fault("methane_accumulation", "gas_face_1203", start="10s", duration="3m"),))
    ch4 = series(msgs, "gas_face_1203", "ch4_pct")
    lim = limit("gas_face_1203", "ch4_pct")
    assert max(ch4[:10]) < lim.alarm
    assert max(ch4) >= lim.power_off


def test_gas_outburst_is_a_fast_step() -> None:
    msgs = simulate(MINE, 120, (fault("gas_outburst", "gas_heading_2105", start="60s", duration="10m"),))
    ch4 = series(msgs, "gas_heading_2105", "ch4_pct")
    assert ch4[62] > 3 * ch4[58]                       # within two seconds
    assert ch4[62] > limit("gas_heading_2105", "ch4_pct").power_off


def test_belt_slip_separates_belt_speed_from_drive_speed() -> None:
    msgs = simulate(MINE, 120, (fault("belt_slip", "belt_main_2", start="30s", slip=0.2),))
    belt, drive = series(msgs, "belt_main_2", "belt_speed_m_s"), series(msgs, "belt_main_2", "drive_speed_m_s")
    assert abs(belt[10] - drive[10]) < 0.1 * drive[10]
    assert statistics.mean(belt[-30:]) < 0.85 * statistics.mean(drive[-30:])


def test_overload_drives_load_and_current_above_normal() -> None:
    msgs = simulate(MINE, 600, (fault("overload", "belt_main_2", start="10s", duration="10m", ramp_s=60,
                                      factor=1.3),))
    base = baseline(MINE, 600)
    load = series(msgs, "belt_main_2", "load_t_h")
    normal_hi = catalog().sensor(MINE, "belt_main_2", "load_t_h").spec.normal[1]  # type: ignore[union-attr]
    assert statistics.mean(load[-30:]) > normal_hi
    cur, cur0 = series(msgs, "belt_main_2", "motor_current_a"), series(base, "belt_main_2", "motor_current_a")
    assert statistics.mean(cur[-30:]) > 1.3 * statistics.mean(cur0[-30:])


def test_water_inrush_raises_the_sump_although_the_pump_runs_flat_out() -> None:
    msgs = simulate(MINE, 600, (fault("water_inrush", "pump_2", start="0s", duration="2h", inflow_factor=20),))
    base = baseline(MINE, 600)
    level, level0 = series(msgs, "pump_2", "sump_level_m"), series(base, "pump_2", "sump_level_m")
    assert level[-1] > level[0] + 0.3
    assert level[-1] > level0[-1] + 0.5
    flow = series(msgs, "pump_2", "flow_m3_h")
    assert min(flow[-100:]) > 300  # running at full flow


def test_stave_burn_through_is_a_sustained_stave_rise() -> None:
    msgs = simulate(STEEL, 600, (fault("stave_burn_through", "blast_furnace_1", start="0s", duration="20m",
                                       rise_k=400),))
    base = baseline(STEEL, 600)
    stave, stave0 = series(msgs, "blast_furnace_1", "stave_temp_1_c"), series(base, "blast_furnace_1", "stave_temp_1_c")
    diffs = [a - b for a, b in zip(stave, stave0, strict=True)]
    assert diffs[-1] > 20
    assert diffs[-1] > diffs[len(diffs) // 2] > diffs[5]   # rising, not a step
    other = series(msgs, "blast_furnace_1", "stave_temp_2_c")
    assert other == series(base, "blast_furnace_1", "stave_temp_2_c")


def test_cooling_water_leak_lowers_flow_and_raises_delta_t() -> None:
    msgs = simulate(STEEL, 600, (fault("cooling_water_leak", "blast_furnace_1", start="0s", duration="1h",
                                       ramp_s=60, flow_loss=0.2),))
    base = baseline(STEEL, 600)
    flow, flow0 = (series(m, "blast_furnace_1", "cooling_water_flow_m3_h") for m in (msgs, base))
    dt, dt0 = (series(m, "blast_furnace_1", "cooling_water_delta_t_k") for m in (msgs, base))
    assert statistics.mean(flow[-20:]) < 0.85 * statistics.mean(flow0[-20:])
    assert statistics.mean(dt[-20:]) > 1.15 * statistics.mean(dt0[-20:])


# ------------------------------------------------------------------ sensor faults


def test_stuck_flatlines_the_reading() -> None:
    msgs = simulate(MINE, 120, (fault("stuck", "gas_return_1203_b", "ch4_pct", start="60s"),))
    ch4 = series(msgs, "gas_return_1203_b", "ch4_pct")
    assert len(set(ch4[61:])) == 1
    assert len(set(ch4[:60])) > 10
    assert len(set(series(msgs, "gas_return_1203", "ch4_pct")[61:])) > 10   # its redundant partner moves on


def test_drift_grows_steadily() -> None:
    msgs = simulate(MINE, 600, (fault("drift", "gas_face_1203", "co_ppm", start="0s", duration="1h",
                                      rate_per_h=60.0),))
    base = baseline(MINE, 600)
    diff = [a - b for a, b in zip(series(msgs, "gas_face_1203", "co_ppm"), series(base, "gas_face_1203", "co_ppm"),
                                  strict=True)]
    assert diff[-1] == pytest.approx(10.0, abs=0.5)         # 60 ppm/h for 10 minutes
    assert diff[len(diff) // 2] == pytest.approx(5.0, abs=0.5)


def test_spikes_are_isolated_large_jumps() -> None:
    msgs = simulate(MINE, 120, (fault("spike", "pump_1", "motor_current_a", start="0s", probability=0.2),))
    base = baseline(MINE, 120)
    diff = [abs(a - b) for a, b in zip(series(msgs, "pump_1", "motor_current_a"),
                                       series(base, "pump_1", "motor_current_a"), strict=True)]
    spikes = [d for d in diff if d > 0]
    assert 10 <= len(spikes) <= 45
    assert min(spikes) >= 100   # twice the normal range of 0-120 A, less the clipping at 0


def test_dropout_removes_the_reading_but_not_the_message() -> None:
    msgs = simulate(MINE, 120, (fault("dropout", "belt_main_2", "motor_current_a", start="30s", duration="60s"),))
    base = baseline(MINE, 120)
    current, current0 = series(msgs, "belt_main_2", "motor_current_a"), series(base, "belt_main_2", "motor_current_a")
    assert len(current) == len(current0) - 60
    assert len(payloads(msgs, "belt_main_2")) == len(payloads(base, "belt_main_2"))


def test_offset_is_a_constant_shift() -> None:
    msgs = simulate(STEEL, 120, (fault("offset", "mill_f1", "roll_force_mn", start="0s", offset=2.5),))
    base = baseline(STEEL, 120)
    diff = {round(a - b, 6) for a, b in zip(series(msgs, "mill_f1", "roll_force_mn"),
                                             series(base, "mill_f1", "roll_force_mn"), strict=True)}
    assert diff == {2.5}


def test_out_of_range_leaves_the_physical_range() -> None:
    msgs = simulate(STEEL, 60, (fault("out_of_range", "bf_cooling_pump_1", "outlet_pressure_mpa", start="30s"),))
    hi = catalog().sensor(STEEL, "bf_cooling_pump_1", "outlet_pressure_mpa").spec.physical[1]  # type: ignore[union-attr]
    values = series(msgs, "bf_cooling_pump_1", "outlet_pressure_mpa")
    assert max(values[:30]) <= hi
    assert min(values[30:]) > hi


# ------------------------------------------------------------------ transport faults


def _seqs(msgs: list[tuple[str, dict[str, Any]]], equipment: str) -> list[int]:
    return [p["seq"] for p in payloads(msgs, equipment)]


def test_duplicates_repeat_seq_and_ts() -> None:
    msgs = simulate(STEEL, 120, (fault("duplicate", "mill_f2", start="0s", probability=0.5),))
    seqs = _seqs(msgs, "mill_f2")
    assert 30 <= len(seqs) - len(set(seqs)) <= 90
    assert sorted(set(seqs)) == list(range(120))


def test_out_of_order_messages_are_overtaken() -> None:
    msgs = simulate(STEEL, 120, (fault("out_of_order", "mill_f2", start="0s", probability=0.3),))
    seqs = _seqs(msgs, "mill_f2")
    inversions = sum(1 for a, b in pairwise(seqs) if b < a)
    assert inversions >= 10
    assert sorted(seqs) == list(range(120))


def test_late_messages_arrive_after_newer_ones_with_their_original_ts() -> None:
    msgs = simulate(STEEL, 120, (fault("late", "mill_f3", start="30s", duration="20s", delay_s=40),))
    ts = [datetime.fromisoformat(p["ts"]) for p in payloads(msgs, "mill_f3")]
    lag = max((a - b).total_seconds() for a, b in pairwise(ts))
    assert lag >= 39   # a message stamped 40 s after the one that arrived just after it
    assert sorted(_seqs(msgs, "mill_f3")) == list(range(120))


def test_clock_skew_shifts_every_ts_of_the_gateway() -> None:
    msgs = simulate(MINE, 60, (fault("clock_skew", None, area="network", start="0s", offset_s=-90),))
    base = baseline(MINE, 60)
    for eq in ("gnb_face_1203", "gnb_main_belt"):
        skewed = [datetime.fromisoformat(p["ts"]) for p in payloads(msgs, eq)]
        true = [datetime.fromisoformat(p["ts"]) for p in payloads(base, eq)]
        assert {(b - a).total_seconds() for a, b in zip(skewed, true, strict=True)} == {90.0}
    assert payloads(msgs, "belt_main_1") == payloads(base, "belt_main_1")


def test_message_loss_leaves_gaps_in_seq() -> None:
    msgs = simulate(MINE, 120, (fault("message_loss", "hoist_main", start="30s", duration="30s"),))
    seqs = _seqs(msgs, "hoist_main")
    assert len(seqs) == 90
    assert seqs[29] == 29 and seqs[30] == 60


# ------------------------------------------------------------------ scenarios


def test_each_fault_kind_is_used_by_a_shipped_scenario_and_every_scenario_plans() -> None:
    used: set[str] = set()
    for name in available_scenarios():
        scenario = load_scenario(name)
        planned = plan(scenario, catalog(), START, list(catalog().sites))
        assert planned, name
        used |= {p.kind for p in planned}
    assert used == set(FAULT_KINDS)


@pytest.mark.parametrize(("faults", "message"), [
    ([{"kind": "bearing_wear", "equipment": "belt_main_1", "start": "0s", "duration": "1h"}],
     "faults[0].kind: unknown fault kind 'bearing_wear' (did you mean 'bearing_degradation'?)"),
    ([{"kind": "stuck", "equipment": "belt_mian_1", "sensor": "load_t_h", "start": "0s", "duration": "1h"}],
     "faults[0].equipment: 'belt_mian_1' is not equipment of site yanshan_mine (did you mean 'belt_main_1'?)"),
    ([{"kind": "stuck", "equipment": "belt_main_1", "sensor": "ch4_pct", "start": "0s", "duration": "1h"}],
     "faults[0].sensor: stuck on belt_main_1: has no sensor 'ch4_pct'"),
    ([{"kind": "bearing_degradation", "equipment": "hoist_main", "start": "0s", "duration": "1h"}],
     "faults[0].equipment: bearing_degradation on hoist_main: has no sensor 'vibration_mm_s'"),
    ([{"kind": "spike", "equipment": "pump_1", "sensor": "flow_m3_h", "start": "0s", "duration": "1h",
       "params": {"probability": 2}}],
     "faults[0].params.probability: Input should be less than or equal to 1"),
    ([{"kind": "spike", "equipment": "pump_1", "sensor": "flow_m3_h", "start": "soon", "duration": "1h"}],
     "faults[0].start: start: duration 'soon' is not understood"),
    ([{"kind": "spike", "equipment": "pump_1", "sensor": "flow_m3_h", "start": "0s"}],
     "faults[0].duration: give duration or end"),
])
def test_scenario_errors_name_the_fault_and_the_field(faults: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        plan(parse_scenario({"site": MINE, "faults": faults}), catalog(), START, [MINE])
    assert message in str(err.value)


def test_a_scenario_file_with_an_unknown_field_is_refused(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: yanshan_mine\nfaults:\n  - kind: stuck\n    equipment: pump_1\n    start: 0s\n"
                   "    duration: 1h\n    when: 5s\n")
    with pytest.raises(ScenarioError, match=r"bad.yaml: faults\[0\].when: Extra inputs are not permitted"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="neither a file nor a named scenario"):
        load_scenario("no_such_scenario")


def test_a_site_process_runs_only_its_own_sites_faults() -> None:
    """docker-compose runs one simulator per site with the same scenario: each takes its site's faults."""
    from simulators.engine import Simulation

    steel = Simulation(catalog(), sites=STEEL, scenario=load_scenario("sensor_faults"), start=START, duration_s=60)
    assert steel.faults and {p.site for p in steel.planned} == {STEEL}
    assert {i["site"] for i in steel.truth()} == {STEEL}
    assert Simulation(catalog(), sites=STEEL, scenario=load_scenario("demo"), start=START, duration_s=60).truth() == []
