"""The streaming job's micro-batches give exactly the answers of one-sample-at-a-time streaming.

Two levels: every detector's ``resume`` (the vectorised streaming form) continues its state across
batch boundaries falling anywhere, mixed with single steps; and the whole job, fed the same encoded
messages, fires, escalates and clears the same episodes with the same scores and evidence whether it
scores each message at once or in micro-batches of 1, 2, 7 or 100 messages or at random points, while
limit alarms still come out on the violating message itself.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_analytics_detectors import DETECTORS, T0, plant_series

from analytics import engine
from analytics.episodes import Transition
from analytics.jobs import StreamJob
from smartmine.catalog import load_catalog
from smartmine.config import AnalyticsSettings, Settings
from smartmine.wire import encode_telemetry, topic

Stepped = tuple[np.ndarray, np.ndarray, list[dict[str, float]]]


def one_at_a_time(name: str, ts: np.ndarray, x: np.ndarray) -> Stepped:
    det = DETECTORS[name]()
    score, level, evidence = [], [], []
    for t, v in zip(ts.tolist(), x.tolist(), strict=True):
        s, lv = det.step(t, v)
        score.append(s)
        level.append(lv)
        evidence.append(det.evidence() if lv else {})
    return np.array(score), np.array(level), evidence


def in_pieces(name: str, ts: np.ndarray, x: np.ndarray, cuts: list[int], vectorised: list[bool]) -> Stepped:
    """The same detector fed in pieces, each either as one micro-batch or sample by sample."""
    det = DETECTORS[name]()
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(x)), len(x)]
    score, level, evidence = [], [], []
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if vectorised[k % len(vectorised)]:
            v = det.resume(ts[lo:hi], x[lo:hi])
            score += v.score.tolist()
            level += v.level.tolist()
            evidence += [{key: float(col[i]) for key, col in v.evidence.items()} if v.level[i] else {}
                         for i in range(hi - lo)]
        else:
            for t, value in zip(ts[lo:hi].tolist(), x[lo:hi].tolist(), strict=True):
                s, lv = det.step(t, value)
                score.append(s)
                level.append(lv)
                evidence.append(det.evidence() if lv else {})
    return np.array(score), np.array(level), evidence


@pytest.mark.parametrize("name", sorted(DETECTORS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series=plant_series(), cuts=st.lists(st.integers(0, 260), max_size=8),
       vectorised=st.lists(st.booleans(), min_size=1, max_size=5))
def test_micro_batches_continue_the_stream_exactly(name: str, series: tuple[np.ndarray, np.ndarray],
                                                   cuts: list[int], vectorised: list[bool]) -> None:
    ts, x = series
    score, level, evidence = one_at_a_time(name, ts, x)
    got_score, got_level, got_evidence = in_pieces(name, ts, x, cuts, vectorised)
    np.testing.assert_array_equal(got_level, level, err_msg=f"{name}: flags differ")
    np.testing.assert_array_equal(got_score, score, err_msg=f"{name}: scores differ")
    for i in np.flatnonzero(level):
        np.testing.assert_equal(got_evidence[i], evidence[i], err_msg=f"{name}: evidence of sample {i} differs")


@pytest.mark.parametrize("name", ["missing", "dropout", "spike"])
@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.sampled_from([1, 1, 1, 2, 5]), min_size=1, max_size=200),
       # 3 and 8 s: exactly the dropout's and the missing-readings window's limit (a gap at the limit is
       # not a silence); 9, 15, 40 s: beyond both.
       silences=st.lists(st.tuples(st.integers(0, 199), st.sampled_from([3, 8, 9, 15, 40])), max_size=3),
       cuts=st.lists(st.integers(0, 200), max_size=8), vectorised=st.lists(st.booleans(), min_size=1, max_size=5))
def test_micro_batches_continue_across_long_silences(name: str, gaps: list[int], silences: list[tuple[int, int]],
                                                      cuts: list[int], vectorised: list[bool]) -> None:
    """Thinning data and silences longer than the detectors' limits (which restart the missing-readings
    window) with batch boundaries anywhere."""
    for at, silence in silences:
        if at < len(gaps):
            gaps[at] = silence
    ts = T0 + np.cumsum(gaps).astype(np.int64) * 1_000_000_000
    x = 0.4 + 0.3 * (np.arange(len(gaps)) % 7 == 3)  # a spike now and then
    score, level, evidence = one_at_a_time(name, ts, x)
    got_score, got_level, got_evidence = in_pieces(name, ts, x, cuts, vectorised)
    np.testing.assert_array_equal(got_level, level)
    np.testing.assert_array_equal(got_score, score)
    for i in np.flatnonzero(level):
        np.testing.assert_equal(got_evidence[i], evidence[i])


@pytest.mark.parametrize("name", ["missing", "dropout"])
@pytest.mark.parametrize("gap_s", [3, 8, 9])
def test_a_gap_at_the_limit_after_a_full_window_is_judged_alike(name: str, gap_s: int) -> None:
    """After a full window of thinning data, one gap exactly at a detector's limit (3 s: the dropout's,
    8 s: the missing-readings window's restart) or just past it. The random cases above rarely have a
    full window before the gap; here the window is full, so a restart taken one way and not the other
    changes the verdicts."""
    gaps = [1, 2, 1, 1, 2] * 8 + [gap_s] + [1, 2] * 10
    ts = T0 + np.cumsum(gaps).astype(np.int64) * 1_000_000_000
    x = np.full(len(gaps), 0.4)
    score, level, _ = one_at_a_time(name, ts, x)
    assert score.any(), "the thinning data is scored before the gap"
    for cuts in ([], [len(gaps) - 20], [len(gaps) - 21], [len(gaps) - 22]):  # the gap inside or opening a piece
        got_score, got_level, _ = in_pieces(name, ts, x, cuts, [True])
        np.testing.assert_array_equal(got_level, level)
        np.testing.assert_array_equal(got_score, score)


# ------------------------------------------------------------------------------------------ the whole job
PREFIX = "mb"
START = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
EQUIPMENT = ["gas_upper_corner_1203", "belt_main_1", "pump_1", "gas_return_1203", "gas_return_1203_b"]
SECONDS = 420
#: Short windows so that every detector warms up, fires and clears within a few minutes of messages.
FAST = AnalyticsSettings(window_s=40, hop_s=7, novelty_s=25, early_window_s=30, early_hop_s=5, early_min_t=3.0,
                         stuck_after_s=6, clear_after_s=3, cusum_enabled=True, cusum_memory_s=30,
                         pca_enabled=True, pca_window_s=60, pca_refit_s=30, dropout_factor=3, silence_after_s=0)


def plant_messages(seed: int) -> list[tuple[str, bytes]]:
    """Interleaved telemetry of a gas monitor whose methane crosses alarm and power-off, a belt, a drainage
    pump that starts and stops, and a redundant pair, with spikes, steps, ramps, stuck runs, gaps and bad
    readings; each sensor at its catalog rate."""
    catalog = load_catalog()
    rng = np.random.default_rng(seed)
    series: dict[str, dict[str, np.ndarray]] = {}
    for eq_id in EQUIPMENT:
        eq = catalog.equipment("yanshan_mine", eq_id)
        assert eq is not None
        series[eq_id] = {}
        for sid, s in eq.sensors.items():
            lo, hi = s.spec.normal
            x = (lo + hi) / 2 + 0.03 * (hi - lo + 0.1) * rng.standard_normal(SECONDS)
            for _ in range(4):
                a = int(rng.integers(0, SECONDS - 30))
                kind = rng.choice(["spike", "step", "ramp", "stuck"])
                if kind == "spike":
                    x[a] += (hi - lo + 1) * rng.choice([-2.0, 3.0])
                elif kind == "step":
                    x[a:a + 60] += 0.4 * (hi - lo + 0.1)
                elif kind == "ramp":
                    x[a:a + 30] += np.linspace(0, 0.5 * (hi - lo + 0.1), len(x[a:a + 30]))
                else:
                    x[a:a + 20] = x[a]
            series[eq_id][sid] = np.round(x, 4)
    ch4 = series["gas_upper_corner_1203"]["ch4_pct"]
    ch4[100:220] = np.round(np.interp(np.arange(120), [0, 60, 120], [0.4, 1.8, 0.3]), 4)  # alarm, power-off, clear
    current = series["pump_1"]["motor_current_a"]
    current[(np.arange(SECONDS) // 90) % 2 == 1] = 0.0  # the pump stops and starts every 90 s
    out = []
    for i in range(SECONDS):
        for eq_id in EQUIPMENT:
            if eq_id == "belt_main_1" and 300 <= i < 320:
                continue  # a gap: dropout
            eq = catalog.equipment("yanshan_mine", eq_id)
            assert eq is not None
            readings: dict[str, float | tuple[float, str]] = {}
            for sid, s in eq.sensors.items():
                if i % round(s.spec.sample_period_s) == 0:
                    value = float(series[eq_id][sid][i])
                    readings[sid] = (value, "bad") if rng.random() < 0.01 else value
            name = topic(eq.site, eq.area, eq.id, prefix=PREFIX)
            out.append((name, encode_telemetry(START + timedelta(seconds=i), i, readings)))
    return out


def job(micro_batch_s: float, micro_batch_max: int = 2000) -> StreamJob:
    cfg = FAST.model_copy(update={"micro_batch_s": micro_batch_s, "micro_batch_max": micro_batch_max})
    return StreamJob(Settings(topic_prefix=PREFIX, analytics=cfg), load_catalog(), sinks=[])


def per_message(messages: list[tuple[str, bytes]]) -> list[list[Transition]]:
    j = job(0.0)
    return [j.handle(name, payload) for name, payload in messages]


def key(t: Transition) -> str:
    """Everything a user sees of a transition (repr shows floats to the last bit)."""
    return repr((t.ts, t.episode.rule, t.kind, t.message, t.episode, t.anomaly, t.previous_severity,
                 t.previous_segment_start))


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, bytes]]:
    return plant_messages(seed=3)


@pytest.fixture(scope="module")
def reference(messages: list[tuple[str, bytes]]) -> list[list[Transition]]:
    return per_message(messages)


def test_micro_batches_with_samples_out_of_time_order_find_what_per_sample_streaming_finds(
        messages: list[tuple[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher replaying its buffer can deliver a sample after a later one; episodes still match."""
    monkeypatch.setattr(engine, "VECTORISE_FROM", 1)
    shuffled = list(messages)
    rng = np.random.default_rng(5)
    for i in rng.choice(len(messages) - len(EQUIPMENT), 60, replace=False):
        j = i + len(EQUIPMENT)  # the same equipment one second later
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    expected = [t for out in per_message(shuffled) for t in out]
    j = job(5.0, 50)
    found = [t for name, payload in shuffled for t in j.handle(name, payload)] + j.flush()
    assert sorted(map(key, found)) == sorted(map(key, expected))


@pytest.mark.parametrize("batch", [1, 2, 7, 100, "random"])
@pytest.mark.parametrize("vectorise_from", [1, None])
def test_micro_batched_job_finds_exactly_what_per_sample_streaming_finds(
        batch: int | str, vectorise_from: int | None, messages: list[tuple[str, bytes]],
        reference: list[list[Transition]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "VECTORISE_FROM", vectorise_from)  # 1: even tiny batches vectorised
    rng = np.random.default_rng(11)
    # flushed by size (no age limit within the test), or by the job's clock at random messages
    j = job(5.0, batch if isinstance(batch, int) else 10**6)
    got = []
    for name, payload in messages:
        out = j.handle(name, payload)
        got.append(out)
        if batch == "random" and rng.random() < 0.05:
            got[-1] = out + j.flush()
    got[-1] = got[-1] + j.flush()
    expected = [t for out in reference for t in out]
    found = [t for out in got for t in out]
    assert {t.episode.detector for t in expected} >= {"limit", "early", "mad", "ewma", "cusum", "stuck",
                                                        "dropout", "range", "pca", "drift"}, "every kind is exercised"
    assert sorted(map(key, found)) == sorted(map(key, expected))
    # limit alarms are not batched: each comes out of the very message that crossed (or cleared) the limit
    limit_at = [(i, key(t)) for i, out in enumerate(reference) for t in out if t.episode.detector == "limit"]
    assert limit_at == [(i, key(t)) for i, out in enumerate(got) for t in out if t.episode.detector == "limit"]
    assert ("limit:methane", "escalated") in {(t.episode.rule, t.kind) for t in expected}, "power-off is reached"


def test_micro_batch_is_scored_once_it_is_old_enough(messages: list[tuple[str, bytes]]) -> None:
    j = job(0.2)
    name, payload = messages[0]
    j.handle(name, payload)
    assert j.plant.buffered("yanshan_mine", "gas_upper_corner_1203") == 1
    assert j.flush(time.monotonic()) == [] and j.plant.buffered("yanshan_mine", "gas_upper_corner_1203") == 1
    j.flush(time.monotonic() + 0.2)
    assert j.plant.buffered("yanshan_mine", "gas_upper_corner_1203") == 0, "flushed by age"


def test_live_job_scores_a_waiting_micro_batch_without_further_messages(settings: Settings) -> None:
    """Through the real broker: a stuck methane sensor (a batched detector) is reported while the job runs,
    though no message follows the ones that made it stuck (the job scores micro-batches by age)."""
    from analytics.store import CollectingSink
    from smartmine.mqtt import make_client

    sink = CollectingSink()
    cfg = settings.analytics.model_copy(update={"stuck_after_s": 5, "micro_batch_s": 0.2})
    live = StreamJob(settings.model_copy(update={"analytics": cfg}), load_catalog(), sinks=[sink])
    worker = threading.Thread(target=live.run, kwargs={"duration_s": 30}, daemon=True)
    worker.start()
    try:
        assert live.ready.wait(10), "subscription was not acknowledged"
        pub = make_client(settings.mqtt, f"{settings.topic_prefix}-pub")
        pub.connect(settings.mqtt.host, settings.mqtt.port)
        pub.loop_start()
        name = topic("yanshan_mine", "face_1203", "gas_upper_corner_1203", prefix=settings.topic_prefix)
        for seq in range(8):
            info = pub.publish(name, encode_telemetry(START + timedelta(seconds=seq), seq, {"ch4_pct": 0.42}), qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sink.transitions:
            time.sleep(0.05)
        assert worker.is_alive(), "reported by the running job, not by its shutdown"
        assert [(t.kind, t.episode.rule, t.ts) for t in sink.transitions] == [
            ("firing", "health:stuck:ch4_pct", int((START + timedelta(seconds=4)).timestamp() * 1e9))]
    finally:
        live.stop_event.set()
        worker.join(15)
    assert not worker.is_alive() and live.summary.readings == 8
