"""What ``smartmine up`` shows comes from the real broker: telemetry rate and lag, anomalies, retained alerts.

And how it keeps its children: a crashing stage is restarted with backoff, a misconfigured one is not.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smartmine.config import Settings
from smartmine.liveview import Row, render, status_line
from smartmine.monitor import PipelineMonitor
from smartmine.mqtt import make_client
from smartmine.supervisor import StageChild
from smartmine.wire import AnomalyEvent, encode_telemetry, topic


def _wait(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _alert_state(severity: str, state: str = "firing") -> bytes:
    now = datetime.now(UTC).isoformat()
    alert = {"id": "7", "site": "yanshan_mine", "area": "face_1203", "equipment": "gas_upper_corner_1203",
             "rule": "limit:methane", "severity": severity, "state": state, "message": "CH4 1.12 % over alarm 1.0 %",
             "fired_at": now, "last_event_at": now, "started": now}
    return json.dumps({"v": 1, "ts": now, "alerts": {"limit:methane": alert} if state != "resolved" else {}}).encode()


def test_monitor_shows_rates_anomalies_and_retained_alerts(settings: Settings) -> None:
    prefix = settings.topic_prefix
    pub = make_client(settings.mqtt, f"{prefix}-pub")
    url = settings.mqtt
    pub.connect(url.host, url.port)
    pub.loop_start()
    alert_topic = topic("yanshan_mine", "face_1203", "gas_upper_corner_1203", "alert", prefix)
    # An alert already open before up's monitor connects arrives as a retained message.
    pub.publish(alert_topic, _alert_state("warning"), qos=1, retain=True).wait_for_publish(5)

    monitor = PipelineMonitor(settings)
    monitor.start()
    try:
        _wait(lambda: monitor.snapshot().alerts)
        assert [a.severity for a in monitor.snapshot().alerts] == ["warning"]
        assert monitor.news() == []  # the state found on connecting is not news

        telemetry = topic("yanshan_mine", "face_1203", "gas_upper_corner_1203", "telemetry", prefix)
        sent = datetime.now(UTC) - timedelta(seconds=2)  # samples two seconds old: the lag must say so
        for seq in range(20):
            pub.publish(telemetry, encode_telemetry(sent, seq, {"ch4_pct": 0.4}), qos=1).wait_for_publish(5)
        event = AnomalyEvent(ts=sent, start=sent, site="yanshan_mine", area="face_1203",
                             equipment="gas_upper_corner_1203", sensor="ch4_pct", detector="limit",
                             rule="limit:methane", severity="critical", score=1.0, threshold=1.0,
                             values={"ch4_pct": 1.12}, message="CH4 1.12 % at upper corner 1203 over alarm 1.0 %")
        pub.publish(topic("yanshan_mine", "face_1203", "gas_upper_corner_1203", "event", prefix), event.encode(),
                    qos=1).wait_for_publish(5)
        pub.publish(alert_topic, _alert_state("critical"), qos=1, retain=True).wait_for_publish(5)

        _wait(lambda: monitor.snapshot().anomalies and monitor.snapshot().alerts[0].severity == "critical")
        snap = monitor.snapshot()
        sim = snap.stages["simulate"]
        assert sim.rate is not None and sim.rate > 0
        assert sim.lag_s is not None and 1.5 < sim.lag_s < 10
        assert snap.anomalies[0].message == "CH4 1.12 % at upper corner 1203 over alarm 1.0 %"
        news = monitor.news()
        assert any(n.startswith("ANOMALY critical yanshan_mine/gas_upper_corner_1203/ch4_pct") for n in news), news
        assert any(n.startswith("ALERT firing critical yanshan_mine/gas_upper_corner_1203") for n in news), news

        # The view and the status line carry the same facts.
        rows = [Row("simulate", "", None), Row("alerts", "", None)]
        assert "1 active alerts (worst critical)" in status_line(rows, snap)
        from rich.console import Console

        console = Console(width=160, record=True)
        console.print(render(rows, snap, "header", "footer"))
        screen = console.export_text()
        assert "over alarm 1.0 %" in screen and "critical" in screen

        # Resolution empties the equipment's alert map: the alert leaves the view and the log says so.
        pub.publish(alert_topic, _alert_state("critical", "resolved"), qos=1, retain=True).wait_for_publish(5)
        _wait(lambda: not monitor.snapshot().alerts)
        assert any(n.startswith("ALERT resolved") for n in monitor.news())
    finally:
        monitor.stop()
        pub.publish(alert_topic, b"", qos=1, retain=True).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()


def _stage(tmp_path: Path, code: str, restart_limit: int = 5) -> StageChild:
    return StageChild("flaky", restart_limit=restart_limit, argv=[sys.executable, "-c", code],
                      env={"PATH": "/usr/bin:/bin"}, log_file=tmp_path / "flaky.log")


def test_a_crashing_stage_is_restarted_and_then_given_up(tmp_path: Path) -> None:
    child = _stage(tmp_path, "import sys; print('lost the broker'); sys.exit(1)", restart_limit=1)
    child.start()
    _wait(lambda: child.check() is not None)
    assert child.state == "restarting" and "restarting in 1 s" in child.note
    _wait(lambda: child.check() is not None, 5)  # the restart
    assert child.restarts == 1
    _wait(lambda: child.check() is not None or child.state == "failed", 5)
    assert child.state == "failed"
    assert "gave up after 1 restarts" in child.note and "lost the broker" in child.note


def test_a_stage_with_a_usage_error_is_not_restarted(tmp_path: Path) -> None:
    child = _stage(tmp_path, "import sys; print('setting speed: not a number'); sys.exit(2)")
    child.start()
    _wait(lambda: child.check() is not None)
    assert child.state == "failed" and child.restarts == 0
    assert "configuration or usage error" in child.note and "setting speed: not a number" in child.note


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('SIGTERM', 'ignored', "
            "flush=True); time.sleep(60)")
    child = _stage(tmp_path, code)
    child.start()
    _wait(lambda: "SIGTERM ignored" in (tmp_path / "flaky.log").read_text())
    result = child.stop(0.5)
    assert result.startswith("killed after") and not child.running
