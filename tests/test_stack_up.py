"""``smartmine up`` runs the whole pipeline on free ports in a temporary data folder, and ``down`` ends it all.

The scenario test is the README's main command as a user meets it, headless: telemetry lands in the
InfluxDB that up started, the demo scenario's methane alarm reaches the retained alert topic, ``report``
draws that run, a second ``up`` on the same folder is refused, and ``down`` leaves no process and no lock.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smartmine.config import parse_mqtt_url
from smartmine.influx import InfluxClient, InfluxError
from smartmine.mqtt import make_client
from smartmine.services import Mosquitto, free_port
from smartmine.stack import STAGES, command_available
from smartmine.supervisor import process_start_ticks

STAGES_BUILT = all(command_available(spec.command) for spec in STAGES)
READY_TIMEOUT_S = 60
ALERT_TIMEOUT_S = 75  # the demo scenario raises its methane alarm within ~45 s of simulated time


def _env(**extra: str) -> dict[str, str]:
    """The user's environment without the test session's SMARTMINE_* settings: up must choose its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update(extra)
    return env


def smartmine(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartmine.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


@dataclass
class UpRun:
    proc: subprocess.Popen[str]
    data_dir: Path
    mqtt_port: int
    influx_port: int
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str] = field(default_factory=queue.Queue)

    def follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            self._q.put(line.rstrip())

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout_s} s; up said:\n" + "\n".join(self.lines[-40:]))


@pytest.fixture
def up_run(tmp_path: Path) -> Iterator[UpRun]:
    data_dir = tmp_path / "data"
    mqtt_port, influx_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartmine.cli", "up", "--headless", "--data-dir", str(data_dir), "--mqtt-port",
         str(mqtt_port), "--influx-port", str(influx_port), "--interval", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    run = UpRun(proc, data_dir, mqtt_port, influx_port)
    threading.Thread(target=run.follow, daemon=True).start()
    try:
        yield run
    finally:
        if proc.poll() is None:  # the test failed before down: do not leave the stack behind
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_for_methane_alert(mqtt_port: int, timeout_s: float) -> dict[str, object]:
    """The first alert on a retained ``alert`` topic of the coal mine's gas monitors, as ops would see it."""
    url = parse_mqtt_url(f"mqtt://127.0.0.1:{mqtt_port}")
    found: queue.Queue[dict[str, object]] = queue.Queue()

    def on_message(_c: object, _u: object, msg: object) -> None:
        body = json.loads(msg.payload or b"{}")  # type: ignore[attr-defined]
        for alert in (body.get("alerts") or {}).values():
            found.put(alert)

    client = make_client(url, "test-stack-alerts")
    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe("smartmine/yanshan_mine/+/+/alert", qos=1)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                alert = found.get(timeout=1)
            except queue.Empty:
                continue
            if alert.get("equipment") == "gas_upper_corner_1203":
                return alert
        raise AssertionError(f"no alert for gas_upper_corner_1203 within {timeout_s} s")
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.slow
@pytest.mark.skipif(not STAGES_BUILT, reason="needs the simulate, ingest, analyze stream and alerts run commands")
def test_up_runs_the_demo_end_to_end_and_down_leaves_nothing(up_run: UpRun, tmp_path: Path) -> None:
    up_run.wait_for("ready:", READY_TIMEOUT_S)
    influx = InfluxClient(f"http://127.0.0.1:{up_run.influx_port}", "smartmine")

    # Telemetry from both sites is queryable in the InfluxDB that up started (bounded; generous because
    # four stages start at once on a machine that may be busy).
    deadline = time.monotonic() + 60
    counts: dict[str, int] = {}
    while time.monotonic() < deadline and len(counts) < 2:
        try:
            for measurement, site in (("gas_monitor", "yanshan_mine"), ("blast_furnace", "jinggang_steel")):
                frame = influx.query_df(f"SELECT count(seq) FROM {measurement} WHERE site = '{site}'")
                if len(frame) and frame["count"].iloc[0] > 0:
                    counts[site] = int(frame["count"].iloc[0])
        except InfluxError:
            pass
        time.sleep(1)
    assert set(counts) == {"yanshan_mine", "jinggang_steel"}, f"telemetry stored per site: {counts}"

    # The demo's methane alarm reaches ops as a retained alert, and up's log says so.
    alert = _wait_for_methane_alert(up_run.mqtt_port, ALERT_TIMEOUT_S)
    assert alert["severity"] in ("warning", "critical", "emergency")
    up_run.wait_for("ALERT", 10)

    # A second up on the same data folder is refused, naming the running one.
    second = smartmine("up", "--headless", "--data-dir", str(up_run.data_dir))
    assert second.returncode == 2 and "already running" in second.stderr

    # report draws this run from the same InfluxDB.
    out = tmp_path / "report"
    env = _env(SMARTMINE_INFLUX_URL=f"http://127.0.0.1:{up_run.influx_port}")
    report = smartmine("report", "--since", "10m", "--site", "yanshan_mine", "--out", str(out), env=env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert (out / "yanshan_mine_methane.png").stat().st_size > 20_000
    page = (out / "index.html").read_text()
    assert "gas_upper_corner_1203" in page and "Data completeness" in page

    # down stops everything: no process left, no lock left, ingest flushed before influxd stopped.
    state = json.loads((up_run.data_dir / "up.json").read_text())
    pids = [(c["pid"], c["start_ticks"]) for c in state["children"]] + [(state["pid"], state["start_ticks"])]
    down = smartmine("down", "--data-dir", str(up_run.data_dir), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert up_run.proc.wait(30) == 0
    alive = [pid for pid, ticks in pids if process_start_ticks(pid) == ticks]
    assert not alive, f"processes left behind: {alive}"
    assert not (up_run.data_dir / "up.lock").exists() and not (up_run.data_dir / "up.json").exists()
    stopping = [ln.split("stopping ", 1)[1].split(" ")[0] for ln in up_run.lines if " stopping " in ln
                and "(pid" in ln]
    assert stopping == ["simulate", "alerts", "analytics", "ingest", "influxd", "mosquitto"], stopping


def test_up_refuses_a_port_in_use_with_what_to_do(mosquitto: Mosquitto, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = smartmine("up", "--headless", "--data-dir", str(data_dir), "--mqtt-port", str(mosquitto.port),
                     "--influx-port", str(free_port()))
    assert proc.returncode == 2
    assert f"port {mosquitto.port} (MQTT broker) is already in use" in proc.stderr
    assert "--mqtt-port" in proc.stderr and "SMARTMINE_MQTT_URL" in proc.stderr
    assert not (data_dir / "up.lock").exists() and not (data_dir / "up.json").exists()


def test_down_stops_what_a_killed_up_left_behind(tmp_path: Path) -> None:
    """An up killed with SIGKILL cannot stop its children; down finds them in the state file and does."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = process_start_ticks(orphan.pid)
        (data_dir / "up.lock").touch()
        (data_dir / "up.json").write_text(json.dumps({
            "pid": 999_999_999, "start_ticks": 1,
            "children": [{"name": "influxd", "pid": orphan.pid, "start_ticks": ticks}]}))
        proc = smartmine("down", "--data-dir", str(data_dir))
        assert proc.returncode == 0, proc.stderr
        assert "stopped 1 processes it left behind" in proc.stdout
        assert orphan.wait(10) == -signal.SIGTERM
        assert not (data_dir / "up.lock").exists() and not (data_dir / "up.json").exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_down_with_nothing_running_says_so(tmp_path: Path) -> None:
    proc = smartmine("down", "--data-dir", str(tmp_path))
    assert proc.returncode == 0 and "not running" in proc.stdout


def test_up_refuses_a_disk_without_room(tmp_path: Path) -> None:
    # More free space than any disk has: the same path a nearly full disk takes.
    proc = smartmine("up", "--headless", "--data-dir", str(tmp_path / "data"),
                     env=_env(SMARTMINE_STACK__MIN_FREE_DISK_MB=str(10**12)))
    assert proc.returncode == 2
    assert f"free on the disk holding {tmp_path / 'data'}" in proc.stderr
    assert "--data-dir on a larger disk" in proc.stderr
    assert not (tmp_path / "data" / "up.lock").exists()
