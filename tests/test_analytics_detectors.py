"""Every detector gives the same answers in its streaming and its batch form, and each finds what it
is for: limits never miss, hysteresis holds, early warnings come before the crossing, sensor faults
are named as such."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.detector import Detector, SensorContext
from analytics.early import EarlyWarning
from analytics.engine import STATE_DRIVEN, EquipmentScorer, combine
from analytics.episodes import EpisodeTracker, Transition, batch_transitions
from analytics.health import CounterDecrease, Dropout, Flatline, MissingReadings, PhysicalRange, Spike
from analytics.limits import LimitRule
from analytics.multivariate import PcaMonitor, RedundantDrift
from analytics.scenario import EpisodeRecord, episodes_of, pages
from analytics.seasonal import SeasonalBaseline
from analytics.statistical import Cusum, EwmaChart, RobustZ
from smartmine.catalog import Limit, ResolvedEquipment, load_catalog
from smartmine.config import AnalyticsSettings

CATALOG = load_catalog()


def equipment(eq_id: str) -> ResolvedEquipment:
    eq = CATALOG.equipment("yanshan_mine", eq_id)
    assert eq is not None
    return eq


GAS = equipment("gas_upper_corner_1203")
CH4 = SensorContext.from_catalog(GAS, "ch4_pct")
METHANE = CH4.limits[0]  # working face: alarm 1.0, power-off 1.5, restore 1.0
O2_LOW = Limit(name="oxygen_low", direction="low", alarm=20.0, restore=20.3, source="test: low limit mirror")
ENERGY = equipment("meter_mine_main")
T0 = 1_800_000_000_000_000_000

# name -> factory of a fresh detector; every detector of analytics is here.
DETECTORS: dict[str, Callable[[], Detector]] = {
    "limit": lambda: LimitRule(CH4, METHANE),
    "limit_low": lambda: LimitRule(CH4, O2_LOW),
    "mad": lambda: RobustZ(CH4, window=40, hop=7, threshold=4.0),
    "mad_novelty": lambda: RobustZ(CH4, window=40, hop=7, threshold=4.0, novelty=25),
    "ewma": lambda: EwmaChart(CH4, window=40, hop=7, threshold=3.0, novelty=25),
    "cusum": lambda: Cusum(CH4, window=40, hop=7, threshold=5.0, memory=30, novelty=25),
    "early": lambda: EarlyWarning(CH4, METHANE, window=30, hop=5, horizon_s=600, min_t=3.0),
    "early_low": lambda: EarlyWarning(CH4, O2_LOW, window=30, hop=5, horizon_s=600, min_t=3.0),
    "early_two_windows": lambda: EarlyWarning(CH4, METHANE, window=30, hop=5, horizon_s=600, min_t=3.0,
                                              second_window=8),
    "early_long_window": lambda: EarlyWarning(CH4, METHANE, window=30, hop=5, horizon_s=600, min_t=3.0,
                                              second_window=90),
    "seasonal": lambda: SeasonalBaseline(CH4, slot_s=60, utc_offset_s=3600, days=2.0, min_count=3,
                                         threshold=3.0, novelty=20),
    "stuck": lambda: Flatline(CH4, samples=5),
    "dropout": lambda: Dropout(CH4, factor=3.0),
    "spike": lambda: Spike(CH4, jump=0.5),
    "missing": lambda: MissingReadings(CH4, window_s=30, share=0.2, max_gap_s=8),
    "missing_restart": lambda: MissingReadings(CH4, window_s=20, share=0.1, max_gap_s=4),
    "range": lambda: PhysicalRange(CH4),
    "counter": lambda: CounterDecrease(SensorContext.from_catalog(ENERGY, "energy_kwh")),
    "drift": lambda: RedundantDrift(CH4, "gas_return_1203", window=30, hop=5),
}


def streaming(det: Detector, ts: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = [det.step(int(t), float(v)) for t, v in zip(ts, x, strict=True)]
    return np.array([s for s, _ in out]), np.array([lv for _, lv in out])


def assert_same(name: str, ts: np.ndarray, x: np.ndarray) -> None:
    score, level = streaming(DETECTORS[name](), ts, x)
    batch = DETECTORS[name]().run(ts, x)
    np.testing.assert_array_equal(level, batch.level, err_msg=f"{name}: flags differ")
    np.testing.assert_allclose(score, batch.score, rtol=1e-12, atol=1e-12, err_msg=f"{name}: scores differ")


# Plant-like series: a level, noise, and pieces that break it (spikes, steps, ramps, flat runs, gaps).
@st.composite
def plant_series(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_value=0, max_value=260))
    seed = draw(st.integers(min_value=0, max_value=2**31))
    rng = np.random.default_rng(seed)
    level = draw(st.sampled_from([0.3, 0.9, 1.2, 20.5]))
    noise = draw(st.sampled_from([0.0, 0.001, 0.05]))
    x = level + noise * rng.standard_normal(n)
    for _ in range(draw(st.integers(0, 4))):
        if n < 2:
            break
        a = int(rng.integers(0, n - 1))
        b = int(rng.integers(a + 1, n + 1))
        kind = draw(st.sampled_from(["step", "ramp", "spike", "flat", "nan", "quantise"]))
        if kind == "step":
            x[a:b] += draw(st.sampled_from([-0.5, 0.4, 1.0, 3.0]))
        elif kind == "ramp":
            x[a:b] += np.linspace(0, draw(st.sampled_from([-1.0, 0.8, 2.0])), b - a)
        elif kind == "spike":
            x[a] += draw(st.sampled_from([-2.0, 5.0]))
        elif kind == "flat":
            x[a:b] = x[a]
        elif kind == "nan":
            x[a:b] = np.nan
        else:
            x[a:b] = np.round(x[a:b], 1)
    gaps = rng.choice([1, 1, 1, 1, 5], size=n) if draw(st.booleans()) else np.ones(n, dtype=np.int64)
    ts = T0 + np.cumsum(gaps).astype(np.int64) * 1_000_000_000
    return ts, x


@pytest.mark.parametrize("name", sorted(DETECTORS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series=plant_series())
def test_streaming_and_batch_forms_agree(name: str, series: tuple[np.ndarray, np.ndarray]) -> None:
    ts, x = series
    assert_same(name, ts, x)


def test_pca_streaming_and_batch_forms_agree() -> None:
    rng = np.random.default_rng(5)
    n = 400
    speed = 4 + 0.05 * rng.standard_normal(n)
    rows = np.column_stack([speed, speed + 0.01 * rng.standard_normal(n), 100 + 10 * rng.standard_normal(n)])
    rows[300:, 1] -= 0.4  # belt slip: drive and belt speed part ways
    rows[50:60, 2] = np.nan  # a sensor that reports less often: carried forward
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    stream = PcaMonitor(["belt", "drive", "current"], window=120, hop=60)
    out = [stream.step(int(t), r) for t, r in zip(ts, rows, strict=True)]
    batch = PcaMonitor(["belt", "drive", "current"], window=120, hop=60).run(ts, rows)
    np.testing.assert_array_equal([lv for _, lv in out], batch.level)
    np.testing.assert_allclose([s for s, _ in out], batch.score, rtol=1e-9)
    assert batch.level[300:310].all(), "the broken correlation is flagged at once"
    assert not batch.level[120:300].any(), "no alarm while the belt runs normally"


def test_detect_returns_the_evidence_of_each_flagged_sample() -> None:
    times = pd.date_range("2026-11-27 08:00", periods=5, freq="1s", tz="UTC")
    found = LimitRule(CH4, METHANE).detect(pd.Series([0.5, 1.0, 1.7, 0.99, 0.5], index=times))
    assert [(a.ts, a.severity) for a in found] == [
        (times[1].value, "critical"), (times[2].value, "emergency")]
    a = found[1]
    assert (a.detector, a.rule, a.threshold, a.values["ch4_pct"]) == ("limit", "limit:methane", 1.5, 1.7)
    assert a.message == "Methane at Upper corner 1203 is 1.70 %, >= the power-off level 1.50 % (CMSR-498)"


# ------------------------------------------------------------------------------------------ limit rules
@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=3.0, allow_nan=False), max_size=80))
def test_limit_rules_never_miss_a_violating_sample(values: list[float]) -> None:
    x = np.array(values)
    ts = T0 + np.arange(len(x), dtype=np.int64)
    v = LimitRule(CH4, METHANE).run(ts, x)
    assert (v.level[x >= 1.0] >= 3).all(), "every sample at or above 1.0 % is at least critical"
    assert (v.level[x >= 1.5] == 4).all(), "every sample at or above 1.5 % is an emergency (power-off)"
    assert (v.level[x < 1.0] == 0).all(), "restore 1.0 %: everything below clears"


def test_hysteresis_holds_power_off_until_restore() -> None:
    lim = Limit(name="sump_high", alarm=4.5, power_off=6.0, restore=4.0, source="test")
    x = np.array([3.0, 4.6, 6.1, 5.0, 4.2, 4.4, 3.9, 4.3, 4.6])
    v = LimitRule(CH4, lim).run(T0 + np.arange(len(x)), x)
    # normal, alarm, power-off, held (5.0), held (4.2), held (4.4), cleared below 4.0, normal (4.3 < alarm), alarm
    assert v.level.tolist() == [0, 3, 4, 4, 4, 4, 0, 0, 3]


def test_low_limit_is_the_mirror_image() -> None:
    x = np.array([20.8, 20.1, 19.9, 20.2, 20.4])
    v = LimitRule(CH4, O2_LOW).run(T0 + np.arange(5), x)
    assert v.level.tolist() == [0, 0, 3, 3, 0]  # alarm at <= 20.0, clears only above restore 20.3


# ------------------------------------------------------------------------------------------ early warning
def test_early_warning_comes_before_the_limit_is_crossed() -> None:
    rng = np.random.default_rng(2)
    n = 1800
    x = 0.4 + 0.01 * rng.standard_normal(n)
    x[600:] += np.arange(n - 600) * (0.8 / 1200)  # +0.04 %/min: 1.0 % is reached at about t = 1500 s
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    det = EarlyWarning(CH4, METHANE, window=300, hop=10, horizon_s=900, min_t=6.0)
    warnings = [a for t, v in zip(ts, x, strict=True) if (a := det.update(int(t), float(v)))]
    crossing = int(np.argmax(x >= 1.0))
    assert warnings, "a steady rise towards the alarm level is warned about"
    first = (warnings[0].ts - T0) // 1_000_000_000
    assert first < crossing - 300, "at least five minutes ahead of the crossing"
    assert all(a.values["ch4_pct"] < 1.0 for a in warnings), "past the limit, the limit rule owns it"
    assert "will reach 1.00 % in about" in warnings[0].message and "Upper corner 1203" in warnings[0].message
    eta = warnings[0].values["eta_s"]
    assert abs((first + eta) - crossing) < 240, "the predicted time to the limit is about right"


def test_a_rated_load_is_a_limit_but_a_load_swing_is_not_forecast() -> None:
    belt, afc = equipment("belt_main_2"), equipment("afc_1")
    rated = belt.sensors["load_t_h"].limits[0]
    assert (rated.name, rated.alarm, rated.early_warning) == ("rated_load", 2000.0, False)
    motor = afc.sensors["motor_current_a"].limits[0]
    assert (motor.alarm, motor.restore, motor.early_warning) == (440.0, 400.0, False), "110 % of a 400 A rating"
    cfg = AnalyticsSettings()
    for eq, sensor, name in ((belt, "load_t_h", "rated_load"), (afc, "motor_current_a", "motor_overload")):
        rules = {d.rule for d in EquipmentScorer(eq, cfg).detectors[sensor]}
        assert f"limit:{name}" in rules and f"early:{name}" not in rules
    # Dispatch raising the belt from 1,200 to 1,800 t/h in four minutes: a line through it would promise
    # the rated load within minutes, which is why the catalog switches the forecast off for a load.
    rng = np.random.default_rng(6)
    swing = np.concatenate([np.full(600, 1200.0), np.linspace(1200, 1800, 240), np.full(600, 1800.0)])
    swing += 15 * rng.standard_normal(len(swing))
    ts = T0 + np.arange(len(swing), dtype=np.int64) * 1_000_000_000
    ctx = SensorContext.from_catalog(belt, "load_t_h")
    line = EarlyWarning(ctx, rated.model_copy(update={"early_warning": True}), window=300, hop=5, min_t=10.0)
    assert line.run(ts, swing).level.any()


def test_no_early_warning_on_a_noisy_flat_signal() -> None:
    rng = np.random.default_rng(4)
    x = 0.8 + 0.05 * rng.standard_normal(3000)
    ts = T0 + np.arange(3000, dtype=np.int64) * 1_000_000_000
    assert not EarlyWarning(CH4, METHANE, window=300, hop=10).run(ts, x).level.any()
    assert not EarlyWarning(CH4, METHANE, window=300, hop=10, second_window=900).run(ts, x).level.any()


def test_a_slow_co_rise_is_warned_by_the_long_trend_window() -> None:
    """CO at a coal face rising 40 ppm/h from 3 ppm (a heating seam): the 24 ppm limit is about 31 min away
    from the start. A five-minute line may promise ten minutes, so it stays silent until the last ten; the
    fifteen-minute line may promise thirty and warns within the first twenty minutes."""
    face = equipment("gas_face_1203")
    co = SensorContext.from_catalog(face, "co_ppm")
    limit = co.limits[0]
    assert limit.alarm == 24.0
    rng = np.random.default_rng(11)
    t = np.arange(0, 20 * 60, co.sample_period_s)
    x = 3.0 + 40.0 * t / 3600 + 0.2 * rng.standard_normal(len(t))
    ts = T0 + (t * 1e9).astype(np.int64)
    crossing_s = (24.0 - 3.0) / 40.0 * 3600
    assert not EarlyWarning(co, limit, window=60, hop=1, horizon_s=1800, min_t=10).run(ts, x).level.any()
    both = EarlyWarning(co, limit, window=60, hop=1, horizon_s=1800, min_t=10, second_window=180)
    warned = [a for a, b in zip(ts, x, strict=True) if both.update(int(a), float(b))]
    assert warned, "warned before the run ends, about ten minutes ahead of the short line"
    first_s = (warned[0] - T0) / 1e9
    v = both.run(ts, x)
    eta = v.evidence["eta_s"][int(first_s / co.sample_period_s)]
    assert first_s < 17 * 60 and abs(first_s + eta - crossing_s) < 240, "the time to 24 ppm is about right"


# ------------------------------------------------------------------------------------------ statistics
def test_robust_scores_find_a_spike_and_a_step_but_not_noise() -> None:
    rng = np.random.default_rng(8)
    n = 2000
    x = 0.4 + 0.01 * rng.standard_normal(n)
    x[1000] = 0.6  # a spike of 20 sigma
    x[1500:] += 0.05  # a step of 5 sigma
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    mad = RobustZ(CH4, window=240, hop=30, threshold=6.0).run(ts, x)
    assert mad.level[1000] and mad.level[:1000].sum() == 0
    cusum = Cusum(CH4, window=240, hop=30, threshold=10.0, memory=120).run(ts, x)
    first = int(np.argmax(cusum.level[1400:] > 0)) + 1400
    assert 1500 <= first < 1520, "the change point is found within 20 samples"
    assert not cusum.level[:1000].any()
    ewma = EwmaChart(CH4, window=240, hop=30, threshold=5.0).run(ts, x)
    assert ewma.level[1500:1560].any() and not ewma.level[:1000].any()


def test_novelty_gate_stays_quiet_on_a_repeating_cycle() -> None:
    # A duty cycle (a hoist trip every 100 s) the reference window is too short to learn.
    n = 3000
    x = np.where((np.arange(n) % 100) < 20, 1.0, 0.3) + 0.001 * np.random.default_rng(1).standard_normal(n)
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    plain = RobustZ(CH4, window=60, hop=10, threshold=6.0).run(ts, x)
    gated = RobustZ(CH4, window=60, hop=10, threshold=6.0, novelty=300).run(ts, x)
    assert plain.level[1000:].sum() > 100
    assert gated.level[1000:].sum() == 0


# ------------------------------------------------------------------------------------------ sensor health
def test_sensor_health_names_the_fault() -> None:
    ts = T0 + np.arange(10, dtype=np.int64) * 1_000_000_000
    stuck = Flatline(CH4, samples=4).detect(pd.Series([0.41, 0.42] + [0.43] * 8, index=ts))
    assert stuck[0].ts == ts[5] and "read exactly 0.43 % for about 4 s: sensor stuck?" in stuck[0].message
    stopped = Flatline(CH4, samples=4).detect(pd.Series([0.4] + [0.0] * 9, index=ts))
    assert stopped == [], "a reading at the bottom of the physical range is a stopped machine"
    rng = PhysicalRange(CH4).detect(pd.Series([0.4, 120.0, 0.4], index=ts[:3]))
    assert len(rng) == 1 and "sensor fault" in rng[0].message
    gap_ts = ts.copy()
    gap_ts[5:] += 600_000_000_000
    gaps = Dropout(CH4, factor=10).detect(pd.Series(np.full(10, 0.4), index=gap_ts))
    assert [a.ts for a in gaps] == [gap_ts[5]] and "No data from Methane at Upper corner 1203" in gaps[0].message
    meter = SensorContext.from_catalog(ENERGY, "energy_kwh")
    resets = CounterDecrease(meter).detect(pd.Series([100.0, 101.0, 5.0, 6.0], index=ts[:4]))
    assert len(resets) == 1 and "meter was reset" in resets[0].message


def test_a_spike_is_out_and_straight_back_while_a_start_or_a_step_stays() -> None:
    """A stopped pump's current reads 245 A for one sample (a loose contact): a spike, even while the
    pump stands. Its start (3 -> 96 A, and it stays) and a one-sample dip of a few amps are not."""
    pump = equipment("pump_1")
    ctx = SensorContext.from_catalog(pump, "motor_current_a")  # normal 0-120 A
    x = np.array([3.0, 3.2, 245.0, 3.1, 3.0, 96.0, 96.5, 95.9, 90.0, 96.2, 96.0])
    ts = T0 + np.arange(len(x), dtype=np.int64) * 1_000_000_000
    found = Spike(ctx, jump=0.5).detect(pd.Series(x, index=ts))
    assert [a.ts for a in found] == [ts[3]], "flagged when it is back, once"
    assert found[0].values["spike"] == 245.0 and "read 245 A for one sample" in found[0].message


def test_thinning_data_is_found_and_a_silence_is_not_reported_twice() -> None:
    """Half the readings lost for 20 min (a weak radio link): flagged once 10 min of it are seen. A
    5 min silence is the dropout's to report; the thinning detector stays quiet after it."""
    rng = np.random.default_rng(17)
    t = np.arange(3600)
    thinned = (t >= 1200) & (t < 2400)
    silent = (t >= 2900) & (t < 3200)
    keep = ~silent & ~(thinned & (rng.random(3600) < 0.5))
    ts = T0 + t[keep].astype(np.int64) * 1_000_000_000
    x = 0.4 + 0.01 * rng.standard_normal(len(ts))
    v = MissingReadings(CH4, window_s=600, share=0.2, max_gap_s=10).run(ts, x)
    secs = t[keep]
    flagged = secs[v.level > 0]
    assert flagged.size and flagged.min() < 1200 + 600 and flagged.max() < 2400 + 600, "the thinning, only"
    assert Dropout(CH4, factor=10).run(ts, x).level[secs == 3200].all(), "the silence is a dropout"
    msg = MissingReadings(CH4, window_s=600).detect(pd.Series(x, index=ts))[0].message
    assert "did not arrive" in msg and "expected every 1 s" in msg


def test_drift_against_a_redundant_neighbour() -> None:
    rng = np.random.default_rng(9)
    noise = 0.005 * rng.standard_normal(1200)
    ts = T0 + np.arange(1200, dtype=np.int64) * 1_000_000_000

    def drifting(by: float) -> np.ndarray:
        diff = noise.copy()
        diff[600:] += np.linspace(0, by, 600)  # one sensor drifts, the other holds
        return diff

    assert CH4.permitted_error == 0.10, "the catalog's AQ 6203 basic error of a methane sensor"
    det = RedundantDrift(CH4, "gas_return_1203", window=120, hop=30, share=0.1)
    assert det.limit == 0.10
    v = det.run(ts, drifting(0.2))
    assert not v.level[:700].any() and v.level[-60:].all()
    first = int(np.flatnonzero(v.level)[0])
    assert 900 < first < 1100, "flagged once the difference has moved by more than the permitted 0.10 %"
    # 0.08 % is within what a methane sensor may read off and still pass its calibration; 10 % of the normal
    # range (0.055 %), the rule for a sensor whose permitted error the catalog does not know, would flag it.
    within = drifting(0.08)
    assert not RedundantDrift(CH4, "gas_return_1203", window=120, hop=30).run(ts, within).level.any()
    unknown = dataclasses.replace(CH4, permitted_error=None)
    assert RedundantDrift(unknown, "gas_return_1203", window=120, hop=30, share=0.1).run(ts, within).level.any()


# ------------------------------------------------------------------------------------------ episodes, engine
def test_batch_and_streaming_produce_the_same_episodes() -> None:
    rng = np.random.default_rng(12)
    x = 0.4 + 0.01 * rng.standard_normal(900)
    x[300:320] = 1.2
    x[500] = 0.9
    x[700:] = 0.4  # flat: stuck
    x[400:410] = np.nan
    ts = T0 + np.arange(900, dtype=np.int64) * 1_000_000_000
    cfg = AnalyticsSettings(window_s=240, hop_s=30, mad_threshold=6, stuck_after_s=60, clear_after_s=5)
    stream = EquipmentScorer(GAS, cfg)
    live = [t for i in range(900) for t in stream.step(int(ts[i]), {"ch4_pct": float(x[i])})]
    batch = EquipmentScorer(GAS, cfg).run(pd.DataFrame({"time": pd.to_datetime(ts, utc=True), "ch4_pct": x}))
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity, t.message)  # noqa: E731
    assert sorted(map(key, live)) == sorted(map(key, batch))
    rules = {t.episode.rule for t in batch}
    assert {"limit:methane", "mad:ch4_pct", "health:stuck:ch4_pct"} <= rules


def test_batch_transitions_continue_an_episode_across_chunks() -> None:
    det = LimitRule(CH4, METHANE)
    tracker = EpisodeTracker()
    ts = T0 + np.arange(6, dtype=np.int64)
    x1 = np.array([0.5, 1.2, 1.3])
    first = batch_transitions(tracker, det, ts[:3], x1, det.run(ts[:3], x1))
    det2 = LimitRule(CH4, METHANE)  # the next chunk: the episode is still open in the tracker
    x2 = np.array([1.1, 0.9, 0.8])
    second = batch_transitions(tracker, det2, ts[3:], x2, det2.run(ts[3:], x2))
    assert [t.kind for t in first] == ["firing"] and [t.kind for t in second] == ["cleared"]
    assert second[0].ts == ts[4] and second[0].end == ts[3]


def test_combined_severity_rises_when_detectors_agree() -> None:
    assert combine({"mad": 0.7}, {"mad": 2}).severity == "warning"
    both = combine({"mad": 0.7, "cusum": 0.6}, {"mad": 2, "cusum": 2})
    assert both.severity == "critical" and both.score == 0.7
    assert combine({"limit": 1.0}, {"limit": 4}).severity == "emergency"
    assert combine({"mad": 0.2}, {"mad": 0}).severity is None


def test_equipment_pca_finds_belt_slip_the_same_way_in_both_forms() -> None:
    belt = equipment("belt_main_1")
    rng = np.random.default_rng(21)
    n = 1500
    load = 0.5 + 0.2 * np.sin(np.arange(n) / 120)
    speed = 4.0 + 0.01 * rng.standard_normal(n)
    frame = pd.DataFrame({
        "time": pd.to_datetime(T0 + np.arange(n, dtype=np.int64) * 1_000_000_000, utc=True),
        "belt_speed_m_s": speed, "drive_speed_m_s": speed + 0.005 * rng.standard_normal(n),
        "motor_current_a": 100 + 80 * load + rng.standard_normal(n),
        "load_t_h": 1800 * load + 5 * rng.standard_normal(n),
        "bearing_temp_c": 50 + 0.1 * rng.standard_normal(n), "vibration_mm_s": 1.5 + 0.05 * rng.standard_normal(n),
        "vibration_kurtosis": 3.0 + 0.05 * rng.standard_normal(n),
    })
    frame.loc[1200:, "belt_speed_m_s"] -= 0.12  # slip: the belt lags the drive drum
    cfg = AnalyticsSettings(pca_enabled=True, pca_window_s=600, pca_refit_s=120)
    batch = EquipmentScorer(belt, cfg).run(frame)
    stream = EquipmentScorer(belt, cfg)
    cols = [c for c in frame.columns if c != "time"]
    ts = _ns_of(frame)
    values = frame[cols].to_numpy(dtype=np.float64)
    live = [t for i in range(n) for t in stream.step(int(ts[i]), dict(zip(cols, values[i].tolist(), strict=True)))]
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity)  # noqa: E731
    assert sorted(map(key, live)) == sorted(map(key, batch))
    pca = [t for t in batch if t.episode.rule == "pca:belt_main_1" and t.kind == "firing"]
    assert pca and (pca[0].ts - T0) // 1_000_000_000 == 1200
    assert "Main belt 1" in pca[0].message


def _ns_of(frame: pd.DataFrame) -> np.ndarray:
    return pd.DatetimeIndex(frame["time"]).as_unit("ns").asi8


def test_drift_against_the_redundant_return_airway_sensor_in_the_stream() -> None:
    from analytics.engine import PlantScorer

    plant = PlantScorer(CATALOG, AnalyticsSettings(window_s=60, hop_s=10, drift_threshold=0.1))
    rng = np.random.default_rng(5)
    fired = []
    for i in range(700):
        ts = T0 + i * 1_000_000_000
        true = 0.5 + 0.01 * rng.standard_normal()
        plant.step("yanshan_mine", "gas_return_1203", ts, {"ch4_pct": true})
        drifted = true + (0.0 if i < 300 else 0.0005 * (i - 300))  # the redundant sensor drifts up
        out = plant.step("yanshan_mine", "gas_return_1203_b", ts, {"ch4_pct": drifted})
        assert out is not None
        fired += [t for t in out if t.episode.rule == "health:drift:ch4_pct" and t.kind != "cleared"]
    assert [(t.kind, t.episode.severity) for t in fired] == [("firing", "info"), ("escalated", "warning")], \
        "a drift that lasts is confirmed"
    assert fired[1].ts - fired[0].ts == 60 * 1_000_000_000
    assert 500 < (fired[0].ts - T0) // 1_000_000_000 < 650, "past the permitted 0.10 % (200 s of drift)"
    assert "redundant neighbour gas_return_1203" in fired[0].message
    twin = plant.scorer("yanshan_mine", "gas_return_1203_b")
    assert twin is not None and {"ch4_pct", "co_ppm"} <= set(twin.drift)
    assert not {"dust_mg_m3", "wind_speed_m_s"} & set(twin.drift), "local readings: twins need not agree"


def test_twins_are_not_compared_through_a_gas_upset_but_a_drift_is_found_in_both_forms() -> None:
    """Two return-airway monitors whose difference grows with the gas (one reads 25 % more than the other:
    a span difference). Methane rises to 1.2 % for five minutes, both far above the 0.6 % top of the normal
    range: an upset, not a drift, and not the pair's standing offset either. Later the twin drifts up on
    its own by 0.4 %, beyond the normal range while its partner stays: a drift."""
    from analytics.engine import PlantScorer

    cfg = AnalyticsSettings(window_s=60, hop_s=10)
    rng = np.random.default_rng(21)
    n = 1500
    true = 0.3 + 0.01 * rng.standard_normal(n)
    true[60:360] += 0.9  # the upset: both twins far above the normal range
    twin = 1.25 * true + np.where(np.arange(n) >= 900, np.minimum((np.arange(n) - 900) * 0.002, 0.4), 0.0)
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    plant = PlantScorer(CATALOG, cfg)
    live: list[Transition] = []
    for i in range(n):
        plant.step("yanshan_mine", "gas_return_1203", int(ts[i]), {"ch4_pct": float(true[i])})
        out = plant.step("yanshan_mine", "gas_return_1203_b", int(ts[i]), {"ch4_pct": float(twin[i])})
        assert out is not None
        live += [t for t in out if t.episode.rule == "health:drift:ch4_pct"]
    fired = [t for t in live if t.kind == "firing"]
    assert fired, "the twin drifting alone is found"
    assert (fired[0].ts - T0) // 1_000_000_000 > 900, "nothing before the drift: the upset is not a drift"
    scorer = EquipmentScorer(equipment("gas_return_1203_b"), cfg)
    batch = scorer.run_drift(_frame(ts, ch4_pct=twin), _frame(ts, ch4_pct=true))
    key = lambda t: (t.ts, t.kind, t.episode.severity, t.message)  # noqa: E731
    assert list(map(key, live)) == list(map(key, batch))


def test_seasonal_baseline_knows_the_night_shift_from_a_fault() -> None:
    # Belt current: low in the night maintenance shift (00-08 local), high in the production shifts.
    belt = SensorContext.from_catalog(equipment("belt_main_1"), "motor_current_a")
    period_s = 60
    days = 5
    n = days * 86_400 // period_s
    ts = T0 - (T0 % 86_400_000_000_000) - 8 * 3_600_000_000_000 + np.arange(n, dtype=np.int64) * period_s * 10**9
    local_hour = ((ts // 10**9 + 8 * 3600) % 86_400) // 3600
    rng = np.random.default_rng(3)
    x = np.where(local_hour < 8, 70.0, 180.0) + 3 * rng.standard_normal(n)
    fault = (np.arange(n) > 4 * n // 5) & (local_hour == 10)  # day 5, 10:00: the current drops to night level
    x[fault] = 70.0 + 3 * rng.standard_normal(int(fault.sum()))
    det = SeasonalBaseline(SensorContext(sensor="motor_current_a", sensor_name="Motor current", unit="A",
                                         sample_period_s=period_s, normal=belt.normal),
                           slot_s=3600, threshold=5.0)
    v = det.run(ts, x)
    assert v.level[fault].any(), "a night-level current in the day shift is flagged"
    assert not v.level[~fault].any(), "the shift pattern itself is not"
    first = int(np.flatnonzero(v.level)[0])
    assert "usual at 10:00" in det.detect(pd.Series(x, index=ts))[0].message
    assert fault[first]


def _pump_duty_cycle() -> pd.DataFrame:
    """A drainage pump that runs 20 min, stops 25 min, runs again (a sump pumped on level), with a
    bearing fault while it runs the second time: vibration doubles at minute 75."""
    rng = np.random.default_rng(31)
    n = 100 * 60
    t = np.arange(n)
    running = ((t >= 10 * 60) & (t < 30 * 60)) | (t >= 55 * 60)
    noise = rng.standard_normal((5, n))
    vibration = np.where(running, 0.8, 0.3) + 0.02 * noise[3]
    vibration[75 * 60:] += 0.8
    return pd.DataFrame({
        "time": pd.to_datetime(T0 + t.astype(np.int64) * 1_000_000_000, utc=True),
        "flow_m3_h": np.where(running, 430.0 + 5 * noise[0], 2.0 * np.abs(noise[0])),
        "outlet_pressure_mpa": np.where(running, 5.6 + 0.03 * noise[1], 0.0),
        "motor_current_a": np.where(running, 96.0 + noise[2], 3.0 + np.abs(noise[2])),
        "vibration_mm_s": vibration,
    })


def test_a_pump_starting_and_stopping_is_not_an_anomaly_but_a_fault_while_running_is() -> None:
    pump = equipment("pump_1")
    assert pump.type_spec.running is not None, "the catalog says when a drainage pump runs"
    frame = _pump_duty_cycle()
    cfg = AnalyticsSettings(window_s=600, hop_s=30)
    batch = EquipmentScorer(pump, cfg).run(frame)
    level_rules = {t.episode.rule for t in batch if t.kind == "firing" and t.episode.detector in ("mad", "ewma")}
    assert level_rules == {"mad:vibration_mm_s", "ewma:vibration_mm_s"}, "only the bearing fault, not the starts"
    sump = {d.rule for d in EquipmentScorer(pump, cfg).detectors["sump_level_m"]}
    assert {"limit:sump_high", "early:sump_high"} <= sump and not {d.split(":")[0] for d in sump} & STATE_DRIVEN, \
        "a sump fills and empties by design: its limit and the trend to it watch it, not its level's past"
    first = min(t.ts for t in batch if t.kind == "firing" and t.episode.rule == "mad:vibration_mm_s")
    assert (first - T0) // 1_000_000_000 == 75 * 60

    # The streaming form and the batch form in chunks (a backfill) give the same transitions.
    cols = [c for c in frame.columns if c != "time"]
    ts = _ns_of(frame)
    values = frame[cols].to_numpy(dtype=np.float64)
    stream = EquipmentScorer(pump, cfg)
    live = [t for i in range(len(frame)) for t in stream.step(int(ts[i]), dict(zip(cols, values[i].tolist(),
                                                                                    strict=True)))]
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity, t.message)  # noqa: E731
    assert sorted(map(key, live)) == sorted(map(key, batch))
    chunked = EquipmentScorer(pump, cfg)
    gate = [chunked.running.settled(ts[i:i + 1000], values[i:i + 1000, cols.index("motor_current_a")])
            for i in range(0, len(frame), 1000)] if chunked.running else []
    whole = EquipmentScorer(pump, cfg).running
    assert whole is not None
    assert np.array_equal(np.concatenate(gate), whole.settled(ts, values[:, cols.index("motor_current_a")]))


def _frame(ts: np.ndarray, **columns: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"time": pd.to_datetime(ts, utc=True), **columns})


def _live(scorer: EquipmentScorer, frame: pd.DataFrame) -> list[Transition]:
    cols = [c for c in frame.columns if c != "time"]
    ts = _ns_of(frame)
    values = frame[cols].to_numpy(dtype=np.float64)
    return [t for i in range(len(frame)) for t in scorer.step(int(ts[i]), dict(zip(cols, values[i].tolist(),
                                                                                        strict=True)))]


def test_a_level_statistic_pages_only_once_its_anomaly_has_lasted() -> None:
    """A few seconds off the level (a start transient, a glitch) stay info; a step that lasts becomes a
    warning confirm_s after it began. Both forms agree, and the scenario score counts only the alarm."""
    rng = np.random.default_rng(41)
    n = 1500
    x = 0.4 + 0.01 * rng.standard_normal(n)
    x[700:703] += 0.15  # three seconds off: a transient
    x[1000:] += 0.3  # a step that lasts
    frame = _frame(T0 + np.arange(n, dtype=np.int64) * 1_000_000_000, ch4_pct=x)
    cfg = AnalyticsSettings(window_s=300, hop_s=30, confirm_s=60)
    batch = EquipmentScorer(GAS, cfg).run(frame)
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity, t.message)  # noqa: E731
    assert sorted(map(key, _live(EquipmentScorer(GAS, cfg), frame))) == sorted(map(key, batch))

    mad = [(t.kind, t.episode.severity, (t.ts - T0) // 1_000_000_000) for t in batch
           if t.episode.rule == "mad:ch4_pct"]
    assert mad[:2] == [("firing", "info", 700), ("cleared", "info", 732)], "the transient pages nobody"
    assert mad[2:4] == [("firing", "info", 1000), ("escalated", "warning", 1060)], "the step does, after 60 s"
    records = {(e.rule, (e.start - T0) // 1_000_000_000): e for e in episodes_of(batch)}
    assert records[("mad:ch4_pct", 700)].alarm is None
    assert records[("mad:ch4_pct", 1000)].alarm == T0 + 1060 * 1_000_000_000

    instant = AnalyticsSettings(window_s=300, hop_s=30, confirm_s=0)
    first = next(t for t in EquipmentScorer(GAS, instant).run(frame) if t.episode.rule == "mad:ch4_pct")
    assert first.episode.severity == "warning", "confirm_s = 0: the first flag pages"


def test_a_frozen_instrument_is_not_learnt_by_the_level_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Methane reads frozen for 20 minutes, then live again with its ordinary wander. The stuck check
    pages; the level statistics neither score nor learn the frozen readings and start afresh when it
    fires, so the live process after the repair is compared with the live process. Stream, batch and
    micro-batches agree."""
    import analytics.engine as engine

    rng = np.random.default_rng(17)
    n = 3600
    x = 0.4 + 0.02 * rng.standard_normal(n)
    x[900:2100] = x[899]  # frozen from 15 min to 35 min
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    frame = _frame(ts, ch4_pct=x)
    cfg = AnalyticsSettings(window_s=300, hop_s=30, stuck_after_s=120)
    batch = EquipmentScorer(GAS, cfg).run(frame)
    fired = {(t.episode.rule, t.episode.severity) for t in batch if t.kind in ("firing", "escalated")}
    assert ("health:stuck:ch4_pct", "warning") in fired
    assert not {r for r, _ in fired if r.split(":")[0] in STATE_DRIVEN}, "the live wander after it is no fault"
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity, t.message)  # noqa: E731
    assert sorted(map(key, _live(EquipmentScorer(GAS, cfg), frame))) == sorted(map(key, batch))
    monkeypatch.setattr(engine, "VECTORISE_FROM", 1)
    chunked = EquipmentScorer(GAS, cfg)
    micro = []
    for lo in range(0, n, 450):  # micro-batches across the freeze and the repair
        for i in range(lo, min(lo + 450, n)):
            micro += chunked.ingest(int(ts[i]), {"ch4_pct": float(x[i])})
        micro += chunked.flush()
    assert sorted(map(key, micro)) == sorted(map(key, batch))
    # Learning the frozen value made the live process an anomaly: what this test guards.
    learnt = EquipmentScorer(GAS, cfg)
    learnt.stuck_gates = {}
    assert {t.episode.rule for t in learnt.run(frame) if t.kind == "firing"} & {"mad:ch4_pct", "ewma:ch4_pct"}


def _bof_heats() -> pd.DataFrame:
    """Eight heats of a BOF converter (40 min tap to tap, a 16 min blow). The blowing pattern sets a
    different oxygen flow and lance height for every heat; off-gas CO follows the blow with a 30 s lag
    and differs from heat to heat by up to 7.5 % vol. In the seventh heat, 8 min into the blow, the off-gas CO
    falls to about 20 % vol and stays there (the analyser's sample line draws in air)."""
    rng = np.random.default_rng(53)
    heats = 8
    n = heats * 2400
    t = np.arange(n)
    heat, phase = t // 2400, t % 2400
    blowing = phase < 960
    oxygen_set = rng.uniform(44000, 56000, heats)[heat]
    lance_set = rng.uniform(1.4, 1.8, heats)[heat]
    oxygen = np.where(blowing, oxygen_set + 400 * rng.standard_normal(n), 300.0 + 20 * rng.random(n))
    lance = np.where(blowing, lance_set, 3.8) + 0.01 * rng.standard_normal(n)
    # each heat further from the last than any before it: the step a heat-to-heat comparison would flag
    co_of_heat = np.array([68.0, 67.0, 69.5, 66.0, 71.0, 63.5, 69.0, 72.0])
    target = np.where(blowing, co_of_heat[heat], 1.5)
    co = np.empty(n)
    level = 1.5
    for i in range(n):  # first-order lag, tau 30 s
        level += (target[i] - level) / 30.0
        co[i] = level
    co = np.abs(co + 0.8 * rng.standard_normal(n))
    fault = (heat == 6) & (phase >= 480) & blowing
    co[fault] -= 48.0
    return _frame(T0 + t.astype(np.int64) * 1_000_000_000, oxygen_flow_nm3_h=oxygen, lance_height_m=lance,
                  offgas_co_pct=co)


def test_bof_heats_are_not_anomalies_but_a_fault_during_a_blow_is() -> None:
    bof = CATALOG.equipment("jinggang_steel", "bof_1")
    assert bof is not None and bof.type_spec.running is not None, "the catalog says when a BOF blows"
    assert bof.sensors["oxygen_flow_nm3_h"].spec.set_by and bof.sensors["lance_height_m"].spec.set_by
    frame = _bof_heats()
    cfg = AnalyticsSettings()
    scorer = EquipmentScorer(bof, cfg)
    assert {d.name for d in scorer.detectors["oxygen_flow_nm3_h"]}.isdisjoint(STATE_DRIVEN), \
        "a set point's level is not scored against its past"
    batch = scorer.run(frame)
    alarms = [e for e in episodes_of(batch) if e.alarm is not None]
    fault_start = T0 + (6 * 2400 + 480) * 1_000_000_000
    assert alarms, "the off-gas CO drop during the blow is found"
    assert {e.rule for e in alarms} <= {"mad:offgas_co_pct", "ewma:offgas_co_pct"}
    assert all(fault_start <= e.alarm <= fault_start + 120 * 1_000_000_000 for e in alarms if e.alarm), \
        "no alarm at a heat's start or end, nor from one heat's set points to the next"
    key = lambda t: (t.ts, t.kind, t.episode.rule, t.episode.severity, t.message)  # noqa: E731
    assert sorted(map(key, _live(EquipmentScorer(bof, cfg), frame))) == sorted(map(key, batch))


def test_a_chattering_limit_is_one_page_as_the_alerts_service_folds_it() -> None:
    def alarm(equipment: str, start_s: int, end_s: int | None) -> EpisodeRecord:
        end = None if end_s is None else T0 + end_s * 1_000_000_000
        return EpisodeRecord("yanshan_mine", equipment, "limit:methane", "limit", T0 + start_s * 1_000_000_000, end,
                             T0 + start_s * 1_000_000_000)

    chatter = [alarm("gas_return_1203", s, s + 5) for s in range(0, 600, 20)]  # 30 episodes, 15 s apart
    later = alarm("gas_return_1203", 2000, None)  # long after the fold: a new page, still open
    other = alarm("gas_upper_corner_1203", 10, 20)  # another monitor: its own page
    paged = pages([*chatter, later, other], fold_s=330)
    assert [(p.equipment, (p.start - T0) // 10**9, p.end and (p.end - T0) // 10**9) for p in paged] == [
        ("gas_return_1203", 0, 585), ("gas_upper_corner_1203", 10, 20), ("gas_return_1203", 2000, None)]
