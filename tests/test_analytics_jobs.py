"""The analytics jobs against the real Mosquitto and influxd: streaming scores published telemetry,
batch finds a planted limit crossing in InfluxDB, and the file tools work end to end."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics.jobs import StreamJob, parse_time, run_batch
from smartmine.catalog import load_catalog
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.schema import series_prefix, telemetry_line
from smartmine.wire import AnomalyEvent, encode_telemetry, parse_event, subscription, topic

NAB = Path("/work/shared/datasets/nab")
SITE, AREA, GAS = "yanshan_mine", "face_1203", "gas_upper_corner_1203"
T0 = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
# Methane at the upper corner: normal, alarm (>= 1.0 %), power-off (>= 1.5 %), held above restore, cleared.
METHANE = [0.42] * 20 + [1.1] * 3 + [1.62] * 3 + [1.2] * 3 + [0.8] * 5


def _events(settings: Settings, got: queue.Queue, ready: threading.Event):  # type: ignore[no-untyped-def]
    client = make_client(settings.mqtt, f"{settings.topic_prefix}-events")
    client.on_connect = lambda c, *_a: c.subscribe(subscription("event", settings.topic_prefix), qos=1)
    client.on_subscribe = lambda *_a: ready.set()
    client.on_message = lambda _c, _u, msg: got.put(parse_event(bytes(msg.payload)))
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    return client


def _wait_rows(influx: InfluxClient, q: str, rows: int, timeout_s: float = 15.0) -> pd.DataFrame:
    deadline = time.monotonic() + timeout_s
    frame = pd.DataFrame()
    while time.monotonic() < deadline:
        frame = influx.query_df(q)
        if len(frame) >= rows:
            return frame
        time.sleep(0.2)
    return frame


def test_stream_job_scores_live_telemetry_writes_anomalies_and_publishes_events(
        settings: Settings, influx: InfluxClient) -> None:
    job = StreamJob(settings, load_catalog())
    worker = threading.Thread(target=job.run, kwargs={"duration_s": 60}, daemon=True)
    events: queue.Queue = queue.Queue()
    listening = threading.Event()
    listener = _events(settings, events, listening)
    worker.start()
    try:
        assert job.ready.wait(10) and listening.wait(10), "subscriptions were not acknowledged"
        pub = make_client(settings.mqtt, f"{settings.topic_prefix}-pub")
        pub.connect(settings.mqtt.host, settings.mqtt.port)
        pub.loop_start()
        name = topic(SITE, AREA, GAS, prefix=settings.topic_prefix)
        for seq, ch4 in enumerate(METHANE):
            info = pub.publish(name, encode_telemetry(T0 + timedelta(seconds=seq), seq, {"ch4_pct": ch4}), qos=1)
        pub.publish(topic(SITE, AREA, GAS, prefix=settings.topic_prefix), b"{not json", qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()

        seen: list[AnomalyEvent] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(e.state == "cleared" for e in seen):
            with contextlib.suppress(queue.Empty):
                seen.append(events.get(timeout=0.5))
        methane = [e for e in seen if e.rule == "limit:methane"]
        # Alarm on the first sample at 1.1 %, power-off on the first at 1.62 %, cleared on the first below 1.0 %.
        assert [(e.state, e.severity) for e in methane] == [
            ("firing", "critical"), ("firing", "emergency"), ("cleared", "emergency")]
        assert methane[0].ts == T0 + timedelta(seconds=20)
        assert methane[1].ts == T0 + timedelta(seconds=23)
        assert methane[2].ts == T0 + timedelta(seconds=29) and methane[2].end == T0 + timedelta(seconds=28)
        assert methane[0].values["ch4_pct"] == 1.1 and methane[0].threshold == 1.0
        assert "Upper corner 1203" in methane[1].message and "1.50 %" in methane[1].message
        assert methane[0].sensor == "ch4_pct" and methane[0].area == AREA

        rows = _wait_rows(influx, "SELECT * FROM anomalies WHERE rule = 'limit:methane'", 2)
        assert set(rows["severity"]) == {"critical", "emergency"}
        final = rows[rows["severity"] == "emergency"].iloc[0]
        assert final["state"] == "cleared"
        assert final["end"] == int((T0 + timedelta(seconds=28)).timestamp() * 1e9)
        assert final["equipment"] == GAS and final["detector"] == "limit" and final["sensor"] == "ch4_pct"
    finally:
        job.stop_event.set()
        worker.join(15)
        listener.loop_stop()
        listener.disconnect()
    assert not worker.is_alive()
    assert job.summary.rejected == 1  # the bad message was counted, and the job kept going
    assert job.summary.readings == len(METHANE)


def _plant(influx: InfluxClient, values: list[float], start: datetime, equipment: str = GAS,
           sensor: str = "ch4_pct") -> None:
    eq = load_catalog().equipment(SITE, equipment)
    assert eq is not None
    prefix = series_prefix(eq.type, SITE, eq.area, equipment)
    influx.write_lines([telemetry_line(prefix, start + timedelta(seconds=i), i, {sensor: (v, "good")})
                        for i, v in enumerate(values)])


def test_batch_job_finds_a_planted_limit_crossing_in_influxdb(settings: Settings, influx: InfluxClient) -> None:
    rng = np.random.default_rng(3)
    values = list(0.4 + 0.01 * rng.standard_normal(600))
    values[400] = 1.04  # one sample at the alarm level: never missed
    _plant(influx, values, T0)
    summary, transitions = run_batch(settings, load_catalog(), T0 - timedelta(minutes=1), T0 + timedelta(hours=1),
                                     site=SITE, equipment=GAS, publish_events=False)
    fired = [t for t in transitions if t.episode.rule == "limit:methane" and t.kind == "firing"]
    assert len(fired) == 1
    assert fired[0].ts == int((T0 + timedelta(seconds=400)).timestamp() * 1e9)
    assert summary.readings == 600
    rows = _wait_rows(influx, "SELECT * FROM anomalies WHERE rule = 'limit:methane'", 1)
    assert len(rows) == 1 and rows.iloc[0]["state"] == "cleared" and rows.iloc[0]["severity"] == "critical"


def test_batch_job_finds_a_belt_overload_at_its_rated_load_and_forecasts_no_load_swing(
        settings: Settings, influx: InfluxClient) -> None:
    """Main belt 2 (catalog: rated 2,000 t/h, no early warning on a load): dispatch raises the load from
    1,200 to 1,800 t/h in four minutes (a line through that would reach 2,000 t/h within minutes), then two
    faces load it at once and it climbs to 2,430 t/h."""
    rng = np.random.default_rng(8)
    load = np.concatenate([np.full(900, 1200.0), np.linspace(1200, 1800, 240), np.full(900, 1800.0),
                           np.linspace(1800, 2430, 120), np.full(300, 2430.0)])
    load += 15 * rng.standard_normal(len(load))
    _plant(influx, load.tolist(), T0, equipment="belt_main_2", sensor="load_t_h")
    _, transitions = run_batch(settings, load_catalog(), T0 - timedelta(minutes=1), T0 + timedelta(hours=1),
                               site=SITE, equipment="belt_main_2", publish_events=False)
    rules = {t.episode.rule for t in transitions if t.anomaly.ctx.sensor == "load_t_h"}
    assert not {r for r in rules if r.startswith("early:")}, "a load someone sets is not forecast"
    fired = [t for t in transitions if t.episode.rule == "limit:rated_load" and t.kind == "firing"]
    assert len(fired) == 1 and fired[0].episode.severity == "critical"
    first = int(np.argmax(load >= 2000.0))
    assert fired[0].ts == int((T0 + timedelta(seconds=first)).timestamp() * 1e9), "on the first sample past it"
    assert "2000 t/h" in fired[0].message
    rows = _wait_rows(influx, "SELECT * FROM anomalies WHERE rule = 'limit:rated_load'", 1)
    assert len(rows) == 1 and rows.iloc[0]["equipment"] == "belt_main_2"


def test_batch_cli_refuses_an_unknown_site(settings: Settings) -> None:
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "analyze", "batch", "--from", "now-1h",
                           "--site", "atlantis"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "site 'atlantis' is not in the catalog" in proc.stderr


def test_parse_time_accepts_relative_and_iso_times() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_time("-2h", now) == parse_time("now-2h", now) == now - timedelta(hours=2)
    assert parse_time("2026-11-27T08:00:00", now) == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    assert parse_time("now", now) == now


def test_score_file_cli_end_to_end(tmp_path: Path) -> None:
    # Semicolon-separated, two signals and a label column to exclude; a step in `pressure` at row 900 (after
    # the warm-up: a 480-row reference, then 240 of its statistics to calibrate against).
    rng = np.random.default_rng(7)
    n = 1200
    frame = pd.DataFrame({
        "datetime": pd.date_range("2026-01-01", periods=n, freq="1s").strftime("%Y-%m-%d %H:%M:%S"),
        "pressure": 5 + 0.05 * rng.standard_normal(n),
        "temperature": 60 + 0.2 * rng.standard_normal(n),
        "anomaly": 0,
    })
    frame.loc[900:, "pressure"] += 1.5
    frame.loc[900:, "anomaly"] = 1
    src = tmp_path / "valve.csv"
    frame.to_csv(src, sep=";", index=False)
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "analyze", "score-file", str(src),
                           "--time-col", "datetime", "--exclude", "anomaly", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(out)
    assert list(result.columns[:4]) == ["timestamp", "anomaly_score", "is_anomaly", "detector"]
    assert len(result) == n and (result["timestamp"] == frame["datetime"]).all()
    assert result["anomaly_score"].between(0, 1).all()
    assert result["is_anomaly"].iloc[900] == 1, "the step is flagged on its first row"
    assert "pressure" in result["detector"].iloc[900] or result["detector"].iloc[900].startswith("pca")
    assert result["is_anomaly"].iloc[:900].sum() == 0, "no false alarm before the step"
    score = result["anomaly_score"]
    assert score.iloc[900] == score.max() and score.iloc[900] >= 0.5, "the evidence is highest where it begins"
    # Several signals are a process (the process monitor, judged point-wise as TEP and the rigs are): the
    # step stays flagged while it lasts. (One signal is scored for news, NAB's way: see the NAB tests.)
    assert result["is_anomaly"].iloc[900:].mean() > 0.95


def test_score_file_is_causal(tmp_path: Path) -> None:
    """Changing a later row never changes an earlier row's score."""
    rng = np.random.default_rng(11)
    values = 10 + rng.standard_normal(1100)
    times = pd.date_range("2026-01-01", periods=1100, freq="1min").astype(str)
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    pd.DataFrame({"timestamp": times, "value": values}).to_csv(a, index=False)
    values[800:] += 50
    pd.DataFrame({"timestamp": times, "value": values}).to_csv(b, index=False)
    from analytics.scorefile import score_file

    ra = score_file(a, tmp_path / "ra.csv", "timestamp")
    rb = score_file(b, tmp_path / "rb.csv", "timestamp")
    assert ra["anomaly_score"].iloc[:800].equals(rb["anomaly_score"].iloc[:800])
    assert rb["is_anomaly"].iloc[800] == 1


@pytest.mark.skipif(not NAB.is_dir(), reason="shared NAB subset not present")
def test_evaluate_on_a_nab_file(tmp_path: Path) -> None:
    src = NAB / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
    out = tmp_path / "scores.csv"
    cli = [sys.executable, "-m", "smartmine.cli", "analyze"]
    subprocess.run([*cli, "score-file", str(src), "--out", str(out)], check=True, timeout=120,
                   capture_output=True)
    proc = subprocess.run([*cli, "evaluate", "--scores", str(out), "--labels", str(NAB / "combined_windows.json"),
                           "--series", "machine_temperature_system_failure.csv", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["windows"] == 4
    assert summary["windows_found"] >= 2  # the failure it is named for is found
    for key in ("event_precision", "event_recall", "event_f1", "far", "mar", "delay_median_s",
                "nab_standard", "nab_reward_low_fp_rate", "nab_reward_low_fn_rate", "nab_standard_threshold",
                "onset_nab_standard", "onset_nab_reward_low_fp_rate", "onset_nab_reward_low_fn_rate"):
        assert key in summary
    assert summary["onset_nab_standard"] > 0  # better than the null detector
    assert summary["nab_standard"] >= 0  # NAB's optimiser never does worse than flagging nothing


def test_evaluate_a_simulated_scenario_against_its_ground_truth(tmp_path: Path) -> None:
    """The simulators' demo: methane crosses the 1.0 % alarm and the 1.5 % power-off within a minute."""
    telemetry, truth = tmp_path / "demo.jsonl", tmp_path / "truth.json"
    subprocess.run([sys.executable, "-m", "smartmine.cli", "simulate", "--scenario", "demo", "--site", SITE,
                    "--start", "2026-11-27T08:00:00Z", "--duration", "3m", "--speed", "max",
                    "--out", str(telemetry), "--truth", str(truth)], check=True, capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "analyze", "evaluate", "--telemetry", str(telemetry),
                           "--truth", str(truth), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["limit_violating_samples"] > 0
    assert summary["limit_recall"] == 1.0, "every sample past a limit lies in a limit alarm"
    assert summary["limit_excursions_not_flagged_on_first_sample"] == 0, "zero delay"
    assert summary["found_by_kind"]["methane_accumulation"] == "1/1"


def test_stream_job_raises_and_clears_silence_of_an_equipment(settings: Settings) -> None:
    """An equipment that published and went quiet raises health:silent; its next message clears it."""
    from analytics.store import CollectingSink

    sink = CollectingSink()
    job = StreamJob(settings.model_copy(update={"analytics": settings.analytics.model_copy(
        update={"silence_after_s": 1.0})}), load_catalog(), sinks=[sink])
    name = topic(SITE, AREA, GAS, prefix=settings.topic_prefix)
    job.handle(name, encode_telemetry(T0, 0, {"ch4_pct": 0.4}))
    assert job.check_silence() == []  # just heard from it
    fired = job.check_silence(now=time.monotonic() + 2.0)
    assert [(t.kind, t.episode.rule) for t in fired] == [("firing", "health:silent")]
    assert "No data from Upper corner 1203 for about 2 s" in fired[0].message
    assert job.check_silence(now=time.monotonic() + 3.0) == [], "one alarm per silence"
    cleared = job.handle(name, encode_telemetry(T0 + timedelta(seconds=5), 1, {"ch4_pct": 0.4}))
    assert [(t.kind, t.episode.rule) for t in cleared] == [("cleared", "health:silent")]
    from analytics.store import anomaly_event

    assert anomaly_event(fired[0]).sensor is None and anomaly_event(cleared[0]).state == "cleared"


def test_score_file_knows_the_time_of_day_and_evaluate_reads_a_nab_folder(tmp_path: Path) -> None:
    """A plant that runs by day and idles by night. On the fifth evening it does not idle: 15 at 21:00
    is not the usual 10, which the time-of-day baseline of score-file sees (and nothing else of the day
    and night rhythm). The text report of ``evaluate --nab`` names the series and what was found."""
    from analytics.scorefile import FILE_DEFAULTS, file_detectors, sample_period_s, time_ns

    rng = np.random.default_rng(8)
    times = pd.date_range("2026-11-01", periods=6 * 288, freq="5min")
    hour = times.hour.to_numpy()
    fault = (times >= pd.Timestamp("2026-11-05 20:00")) & (times < pd.Timestamp("2026-11-06 00:00"))
    value = np.where(((hour >= 8) & (hour < 20)) | fault, 15.0, 10.0) + 0.2 * rng.standard_normal(len(times))
    written = pd.Series(times.strftime("%Y-%m-%d %H:%M:%S"))
    assert sample_period_s(written) == 300.0 and sample_period_s(pd.Series(range(10))) is None
    daily = [d for d in file_detectors(["value"], FILE_DEFAULTS, 300.0)["value"] if d.name == "seasonal"]
    assert len(daily) == 1 and not any(d.name == "seasonal" for d in file_detectors(["value"])["value"])
    seasonal = daily[0].run(time_ns(written), value).level > 0
    assert seasonal[fault].any() and not seasonal[~fault].any()

    (tmp_path / "data" / "plant").mkdir(parents=True)
    pd.DataFrame({"timestamp": written, "value": value}).to_csv(tmp_path / "data" / "plant" / "day_shift.csv",
                                                                index=False)
    (tmp_path / "combined_windows.json").write_text(json.dumps(
        {"plant/day_shift.csv": [["2026-11-05 19:30:00.000000", "2026-11-06 00:30:00.000000"]]}))
    cli = [sys.executable, "-m", "smartmine.cli", "analyze"]
    proc = subprocess.run([*cli, "evaluate", "--nab", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "plant/day_shift.csv" in proc.stdout and "found  1" in proc.stdout
