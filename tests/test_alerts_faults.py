"""The alerts service under a night shift's faults, against the real Mosquitto (and its ACL):
a SIGTERM mid-stream, a damaged state file, a lost broker session, hostile ops commands."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hardening_helpers import SecureBroker, connect, make_pki, start_secure_broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_alerts_service import wait_until

from alerts.commands import reply_topic, request_topic, send_command
from alerts.notifiers.mqtt import MqttAlertNotifier
from alerts.service import AlertService
from smartmine.config import Settings, load_settings
from smartmine.errors import UsageError
from smartmine.mqtt import make_client
from smartmine.services import Mosquitto
from smartmine.wire import AnomalyEvent, topic

SITE, AREA = "yanshan_mine", "face_1203"


def event(equipment: str, rule: str) -> bytes:
    now = datetime.now(UTC)
    return AnomalyEvent(ts=now, start=now, site=SITE, area=AREA, equipment=equipment, sensor="ch4_pct",
                        detector="limit", rule=rule, severity="warning", state="firing", score=1.0, threshold=1.0,
                        values={"ch4_pct": 1.1}, message="CH4 1.1 %vol").encode()


def publish_all(settings: Settings, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    client = make_client(settings.mqtt, f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(settings.mqtt.host, settings.mqtt.port)
    client.loop_start()
    infos = [client.publish(name, body, qos=1, retain=retain) for name, body in messages]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def run_in_thread(service: AlertService) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop, 120.0), daemon=True)
    runner.start()
    assert service.connected.wait(10)
    return stop, runner


@pytest.fixture
def alerts_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SMARTMINE_ALERTS__CLIENT_ID", f"alerts-{settings.topic_prefix}")
    return load_settings()


def test_sigterm_mid_stream_loses_no_event(alerts_settings: Settings) -> None:
    """400 distinct firing events, SIGTERM while they are handled, restart: all 400 alerts exist."""
    settings = alerts_settings
    prefix = settings.topic_prefix
    first = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "alerts", "run"], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_file = settings.data_dir / "alerts" / "state.json"
    try:
        # The session exists once the service is subscribed: its retained-free ops reply proves it.
        wait_until("the service to answer", lambda: _answers(settings), timeout_s=30)
        events = [(topic(SITE, AREA, f"gas_{i // 10}", "event", prefix), event(f"gas_{i // 10}", f"limit:r{i}"))
                  for i in range(400)]
        publish_all(settings, events)
        wait_until("the first alerts saved", lambda: state_file.exists() and b'"id"' in state_file.read_bytes())
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, err[-2000:]
    second = AlertService(settings, notifiers=lambda _c: [])
    stop, runner = run_in_thread(second)
    try:
        wait_until("all 400 alerts after the restart", lambda: len(second.engine.open_alerts()) == 400, 60)
    finally:
        stop.set()
        runner.join(30)
    assert sorted(a.rule for a in second.engine.open_alerts()) == sorted(f"limit:r{i}" for i in range(400))
    assert all(a.events == 1 for a in second.engine.open_alerts())  # each handled once, none twice


def _answers(settings: Settings) -> bool:
    try:
        send_command(settings, "list", timeout_s=1.0)
    except UsageError:
        return False
    return True


def test_damaged_state_file_is_kept_aside_and_open_alerts_rebuilt(alerts_settings: Settings,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = alerts_settings
    prefix = settings.topic_prefix
    first = AlertService(settings, notifiers=lambda c: [MqttAlertNotifier(c, prefix)])
    stop, runner = run_in_thread(first)
    publish_all(settings, [(topic(SITE, AREA, "gas_1", "event", prefix), event("gas_1", "limit:methane")),
                           (topic(SITE, AREA, "gas_2", "event", prefix), event("gas_2", "limit:co"))])
    wait_until("two alerts", lambda: len(first.engine.open_alerts()) == 2)
    stop.set()
    runner.join(30)
    state_file = first.state_path
    state_file.write_bytes(b"")  # what a power cut after an unsynced rename leaves

    caplog.set_level(logging.WARNING, logger="alerts.service")
    second = AlertService(settings, notifiers=lambda c: [MqttAlertNotifier(c, prefix)])
    (damaged,) = state_file.parent.glob("state.json.damaged-*")
    assert damaged.read_bytes() == b"" and second.summary.damaged_state == str(damaged)
    assert any(r.levelno == logging.ERROR and "damaged" in r.getMessage() for r in caplog.records)
    stop, runner = run_in_thread(second)
    try:
        wait_until("the open alerts rebuilt from the retained alert topics",
                   lambda: len(second.engine.open_alerts()) == 2)
        publish_all(settings, [(topic(SITE, AREA, "gas_3", "event", prefix), event("gas_3", "limit:methane"))])
        wait_until("a third alert", lambda: len(second.engine.open_alerts()) == 3)
    finally:
        stop.set()
        runner.join(30)
    assert sorted(a.id for a in second.engine.open_alerts()) == ["1", "2", "3"]  # no id handed out twice
    assert json.loads(state_file.read_text())["alerts"]  # and the state is saved again


def test_lost_broker_session_is_a_warning(alerts_settings: Settings, mosquitto_factory: Callable[..., Mosquitto],
                                          monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first = AlertService(alerts_settings, notifiers=lambda _c: [])
    first.run(threading.Event(), duration_s=0.5)
    assert first.summary.sessions_lost == 0  # a first start: a new session is expected
    fresh = mosquitto_factory(persistence=False)  # as a broker restarted without its persistence
    monkeypatch.setenv("SMARTMINE_MQTT_URL", fresh.url)
    caplog.set_level(logging.INFO, logger="alerts.service")
    second = AlertService(load_settings(), notifiers=lambda _c: [])
    second.run(threading.Event(), duration_s=0.5)
    assert second.summary.sessions_lost == 1
    (record,) = [r for r in caplog.records if "may be lost" in r.getMessage()]
    assert record.levelno == logging.WARNING


# ---------------------------------------------------------------------------------------------- ops commands
@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sb = start_secure_broker(tmp_path_factory.mktemp("alerts_acl_broker"), make_pki(tmp_path_factory.mktemp("pki")))
    yield sb
    sb.broker.stop()


def _as(sb: SecureBroker, user: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    url = sb.url(user)
    for key, value in {"SMARTMINE_MQTT_URL": f"mqtts://{url.host}:{url.port}", "SMARTMINE_MQTT_USERNAME": user,
                       "SMARTMINE_MQTT_PASSWORD": sb.passwords[user], "SMARTMINE_MQTT_CA_FILE": str(sb.ca.ca),
                       "SMARTMINE_TOPIC_PREFIX": sb.prefix, "SMARTMINE_DATA_DIR": str(data_dir),
                       "SMARTMINE_ALERTS__CLIENT_ID": f"alerts-{uuid.uuid4().hex[:8]}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SMARTMINE_CONFIG", raising=False)
    return load_settings()


def test_bad_ops_commands_are_refused_and_never_stop_the_service(secure_broker: SecureBroker, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sb, prefix = secure_broker, secure_broker.prefix
    service = AlertService(_as(sb, "alerts", tmp_path, monkeypatch), notifiers=lambda _c: [])
    ops_settings = _as(sb, "ops", tmp_path, monkeypatch)
    stop, runner = run_in_thread(service)
    ops = connect(sb, "ops", f"ops-{uuid.uuid4().hex[:8]}")
    alert_topic = topic(SITE, AREA, "gas_1", "alert", prefix)
    mine = reply_topic(prefix, "ops", "t1")
    try:
        ops.client.subscribe(f"{prefix}/#", qos=1)  # ops may read everything: it would see a stray reply
        ops.expect("subscribe")

        def send(body: bytes, response_topic: str) -> None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = b"c1"
            ops.client.publish(request_topic(prefix), body, qos=1, properties=props).wait_for_publish(10)

        bad = [b'{"cmd":"list","args":[]}', b'{"cmd":"ack","args":{}}', b"not json", b'{"cmd":"reboot"}',
               b'{"cmd":"silence","args":{"duration_s":-5,"reason":"x","site":"yanshan_mine"}}', b"[]"]
        for body in bad * 2:  # more than `smartmine up`'s restart limit of crashes
            send(body, mine)
        for hostile in ("x/#", alert_topic, f"{prefix}/_ops/alerts/reply/+/t", f"{prefix}/_ops/alerts/request"):
            send(b'{"cmd":"list"}', hostile)
        replies: list[dict[str, Any]] = []
        while len(replies) < len(bad) * 2:
            msg = ops.messages.get(timeout=10)
            assert msg.topic != alert_topic, "the service published on an alert topic for an ops command"
            if msg.topic == mine:
                replies.append(json.loads(msg.payload))
        assert all(r["ok"] is False and r["error"] for r in replies)
        assert "args" in replies[0]["error"] and "not JSON" in replies[2]["error"]
        assert "duration_s" in replies[4]["error"]
        # Still alive and answering, through its own reply branch of the ACL.
        assert send_command(ops_settings, "list", timeout_s=10) == []
        assert runner.is_alive() and service.summary.bad_commands == len(bad) * 2 + 4
        with pytest.raises(queue.Empty):
            while True:
                assert ops.messages.get(timeout=0.5).topic != alert_topic
    finally:
        ops.close()
        stop.set()
        runner.join(30)


def test_a_command_as_the_services_own_login_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """With client id = login, `smartmine alerts list` as user alerts would take the service's session over."""
    from smartmine.cli import main

    monkeypatch.setenv("SMARTMINE_MQTT_USERNAME", "alerts")
    assert main(["alerts", "list"]) == 2
    assert "log in as ops" in capsys.readouterr().err
