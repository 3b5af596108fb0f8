"""The simulated plant: deterministic, on the wire format, inside its ranges, with the couplings of a plant."""

from __future__ import annotations

import hashlib
import json
import statistics
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from simhelp import START, baseline, catalog, payloads, series, simulate

from simulators import generate_raw
from simulators.engine import Simulation, make_simulation
from simulators.model import resolve_models
from smartmine.cli import main
from smartmine.wire import encode_telemetry, parse_telemetry, parse_topic

MINE, STEEL = "yanshan_mine", "jinggang_steel"


def _digest(**kwargs: object) -> str:
    h = hashlib.sha256()
    for t, payload in generate_raw(**kwargs):  # type: ignore[arg-type]
        h.update(t.encode() + b"\0" + payload + b"\n")
    return h.hexdigest()


def test_same_seed_scenario_start_and_duration_give_identical_bytes() -> None:
    args = {"scenario": "demo", "start": "2026-11-27T08:00:00Z", "duration": "90s"}
    assert _digest(**args) == _digest(**args)
    assert _digest(**args) != _digest(**args, seed=1)
    assert _digest(**args) != _digest(**{**args, "start": "2026-11-27T08:00:01Z"})


def test_a_device_stream_does_not_depend_on_the_other_sites_or_replicas() -> None:
    alone = [m for m in generate_raw(sites=MINE, start=START, duration=60)]
    together = [m for m in generate_raw(sites="all", start=START, duration=60, scale=2)
                if m[0].split("/")[1] == MINE]
    assert alone == together


def test_cli_out_files_are_byte_identical_and_truth_is_rfc3339(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTMINE_TOPIC_PREFIX", raising=False)
    outs = []
    for n in (1, 2):
        out, truth = tmp_path / f"out{n}.jsonl", tmp_path / f"truth{n}.json"
        rc = main(["simulate", "--site", "all", "--seed", "3", "--scenario", "demo", "--start",
                   "2026-11-27T08:00:00Z", "--duration", "60s", "--speed", "max", "--out", str(out),
                   "--truth", str(truth)])
        assert rc == 0
        outs.append((out.read_bytes(), truth.read_bytes()))
    assert outs[0] == outs[1]
    err = capsys.readouterr().err
    assert "summary: " in err and '"messages": ' in err
    lines = outs[0][0].decode().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"topic", "payload"} and isinstance(first["payload"], dict)
    intervals = json.loads(outs[0][1])
    kinds = {(i["equipment"], i["kind"]) for i in intervals}
    assert ("gas_upper_corner_1203", "methane_accumulation") in kinds
    assert ("belt_main_1", "bearing_degradation") in kinds
    bearing = next(i for i in intervals if i["kind"] == "bearing_degradation")
    # BPFO of the belt drive's bearing from the catalog geometry: 12/2 * 16.5 Hz * (1 - 22.2/142)
    assert bearing["params"]["bpfo_hz"] == pytest.approx(83.52, abs=0.01)
    for i in intervals:
        assert {"site", "area", "equipment", "sensor", "kind", "start", "end", "severity", "params"} <= set(i)
        start, end = datetime.fromisoformat(i["start"]), datetime.fromisoformat(i["end"])
        assert start.tzinfo is not None and start < end <= datetime(2026, 11, 27, 8, 1, tzinfo=UTC)


def test_every_message_is_valid_wire_format_encoded_like_the_shared_encoder() -> None:
    for t, raw in generate_raw(sites="all", scenario="sensor_faults", start=START, duration=30):
        topic = parse_topic(t)
        assert topic.channel == "telemetry"
        payload = parse_telemetry(raw)
        assert payload.src == f"sim-{topic.site}-{topic.equipment}"
        eq = catalog().equipment(topic.site, topic.equipment)
        assert eq is not None and set(payload.readings) <= set(eq.sensors)
        assert raw == encode_telemetry(payload.ts, payload.seq, payload.readings, src=payload.src)  # type: ignore[arg-type]


def test_without_faults_values_stay_in_physical_range_and_mostly_in_normal_range() -> None:
    models = resolve_models(catalog())
    inside: dict[tuple[str, str], list[bool]] = {}
    for t, payload in simulate("all", 900, seed=11):
        topic = parse_topic(t)
        for sensor, value in payload["readings"].items():
            spec = catalog().sensor(topic.site, topic.equipment, sensor)
            assert spec is not None
            lo, hi = spec.spec.physical
            assert lo <= value <= hi, (topic.equipment, sensor, value)
            nlo, nhi = spec.spec.normal
            eq = catalog().equipment(topic.site, topic.equipment)
            assert eq is not None
            if models.follows_duty_cycle(eq.type, sensor):
                continue  # a standing machine is outside its running range (a parked lance, a stopped pump)
            inside.setdefault((topic.equipment, sensor), []).append(nlo <= value <= nhi or nlo == nhi)
    share = {k: sum(v) / len(v) for k, v in inside.items()}
    # Noise and wander may graze the edges of the normal range now and then, never live outside it.
    outliers = {k: round(v, 2) for k, v in share.items() if v < 0.9}
    assert not outliers
    assert len(share) > 150


def test_sample_periods_follow_the_catalog() -> None:
    msgs = baseline(MINE, 120)
    assert len(series(msgs, "belt_main_1", "motor_current_a")) == 120     # 1 s
    assert len(series(msgs, "belt_main_1", "bearing_temp_c")) == 24       # 5 s
    assert len(series(msgs, "gas_face_1203", "air_temp_c")) == 12         # 10 s


def test_energy_counters_only_count_up() -> None:
    msgs = simulate(STEEL, 600)
    for meter in ("meter_plant_main", "meter_ironmaking"):
        kwh = series(msgs, meter, "energy_kwh")
        assert len(kwh) == 60 and all(b >= a for a, b in pairwise(kwh))
        power = statistics.mean(series(msgs, meter, "active_power_kw"))
        assert kwh[-1] - kwh[0] == pytest.approx(power * 590 / 3600, rel=0.05)


def test_the_maintenance_shift_carries_less_coal_than_a_production_shift() -> None:
    # 02:00 and 10:00 in Asia/Shanghai.
    night = simulate(MINE, 300, start=datetime(2026, 11, 26, 18, 0, tzinfo=UTC))
    day = simulate(MINE, 300, start=datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
    load_night = statistics.mean(series(night, "belt_main_1", "load_t_h"))
    load_day = statistics.mean(series(day, "belt_main_1", "load_t_h"))
    assert load_day > 2.5 * load_night
    assert statistics.mean(series(day, "shearer_1", "cutting_current_a")) > \
        statistics.mean(series(night, "shearer_1", "cutting_current_a"))


def test_belt_load_drives_motor_current_which_warms_the_bearing_with_a_lag() -> None:
    msgs = simulate(MINE, 900, ({"kind": "overload", "equipment": "belt_main_1", "start": "60s",
                                 "duration": "1h", "params": {"ramp_s": 1, "factor": 1.3}},))
    current = series(msgs, "belt_main_1", "motor_current_a")
    temp = series(msgs, "belt_main_1", "bearing_temp_c")

    def half_rise_s(values: list[float], period_s: int) -> float:
        before, after = statistics.mean(values[:50 // period_s]), values[-1]
        half = before + (after - before) / 2
        return next(i for i, v in enumerate(values) if v >= half) * period_s - 60

    assert current[-1] > 1.3 * statistics.mean(current[:50])
    assert temp[-1] > statistics.mean(temp[:10]) + 2.0
    # The current follows the load within a minute or so; the bearing's thermal mass takes many minutes.
    assert half_rise_s(current, 1) < 90
    assert half_rise_s(temp, 5) > 4 * half_rise_s(current, 1)


def test_hot_blast_temperature_moves_the_stave_temperatures_slowly() -> None:
    sim = make_simulation(sites=STEEL, start=START, duration="2h")
    bf = next(g for g in sim.groups if g.type == "blast_furnace")
    hot, stave = bf.index["hot_blast_temp_c"], bf.index["stave_temp_1_c"]

    def run(seconds: int) -> tuple[float, float]:
        for _ in range(seconds):
            sim.step()
        return float(bf.pv[0, hot]), float(bf.lagged[0, stave])

    hot0, stave0 = run(600)
    bf.offsets[:, hot] += 0.4          # the stove operator raises the hot blast by 0.4 of its normal range
    hot1, stave1 = run(600)
    _, stave2 = run(1800)
    assert hot1 - hot0 > 30            # the hot blast has mostly followed after ten minutes
    assert 0 < stave1 - stave0 < stave2 - stave0   # the staves still rising half an hour later
    assert stave2 - stave0 > 5


def test_demo_scenario_shows_methane_and_bearing_within_the_first_minute() -> None:
    """The contract with `smartmine up`: visible, predictable alarms in the first 30-45 s at 1x."""
    msgs = simulate(MINE, 90, seed=0)  # the same plant without the scenario, for comparison below
    demo = [(t, json.loads(p)) for t, p in generate_raw(sites="all", scenario="demo", start=START, duration=90,
                                                        seed=0)]
    ch4 = series(demo, "gas_upper_corner_1203", "ch4_pct")
    alarm = next(i for i, v in enumerate(ch4) if v >= 1.0)
    power_off = next(i for i, v in enumerate(ch4) if v >= 1.5)
    assert 15 <= alarm <= 40 and alarm < power_off <= 45
    rising = ch4[alarm - 12:alarm]
    assert rising[-1] - rising[0] > 0.2 and max(ch4[:alarm]) < 1.0   # a trend to predict from, before the alarm
    vib = series(demo, "belt_main_1", "vibration_mm_s")
    crossing = next(i for i, v in enumerate(vib) if v >= 4.5)
    assert 20 <= crossing <= 45
    kurt = series(demo, "belt_main_1", "vibration_kurtosis")
    assert statistics.mean(kurt[40:50]) > statistics.mean(kurt[:10]) + 3
    assert series(demo, "gas_return_1203_b", "ch4_pct")[25:] == [series(demo, "gas_return_1203_b", "ch4_pct")[25]] * 65
    assert payloads(msgs, "hoist_main") == payloads(demo, "hoist_main")   # faults touch only their targets


def test_scale_replicates_sites_with_their_own_ids_and_noise() -> None:
    sim = Simulation(catalog(), sites=STEEL, seed=0, start=START, duration_s=5, scale=3)
    assert len(sim.devices) == 3 * len(list(catalog().all_equipment(STEEL)))
    sites = {t.split("/")[1]: p for b in sim.batches() for t, p in b if t.endswith("/mill_f1/telemetry")}
    assert set(sites) == {STEEL, f"{STEEL}_r001", f"{STEEL}_r002"}
    assert len(set(sites.values())) == 3


def test_start_in_the_past_backfills_history() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stamps = [json.loads(p)["ts"] for t, p in generate_raw(sites=STEEL, start=start, duration=20)]
    assert min(stamps) == "2025-01-01T00:00:00.000Z" and max(stamps) == "2025-01-01T00:00:19.000Z"
    assert (datetime.fromisoformat(max(stamps)) - start) == timedelta(seconds=19)


def test_noise_is_independent_per_device() -> None:
    msgs = baseline(MINE, 120)
    a = np.diff(series(msgs, "support_001", "leg_pressure_mpa"))
    b = np.diff(series(msgs, "support_002", "leg_pressure_mpa"))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.4
