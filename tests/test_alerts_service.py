"""The alerts service end to end: events over the real Mosquitto, history in the real influxd, e-mail to a
local aiosmtpd server, a signed webhook to a local receiver, annotations to a recording Grafana API, and
ops commands from the CLI while the service runs."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from grafana_api import GrafanaRecorder

from alerts.notifiers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from alerts.service import AlertService
from smartmine.cli import main
from smartmine.config import Settings, load_settings
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.services import free_port
from smartmine.wire import AnomalyEvent, topic

SECRET = "test-webhook-secret"
SITE, AREA, EQ = "yanshan_mine", "face_1203", "gas_face_1203"


class WebhookReceiver:
    """Records POSTs; answers 503 to the first one so the dispatcher's retry is exercised."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                status = 503 if receiver.attempts == 1 else 204
                if status == 204:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def channels(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    webhook = WebhookReceiver()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    grafana = GrafanaRecorder().start()
    for key, value in {
        "SMARTMINE_ALERTS__CLIENT_ID": f"alerts-{settings.topic_prefix}",
        "SMARTMINE_ALERTS__CLEAR_HOLD_S": "0.5",
        "SMARTMINE_ALERTS__ESCALATE_AFTER_S": "1.5",
        "SMARTMINE_ALERTS__RETRY_BACKOFF_S": "0.1",
        "SMARTMINE_ALERTS__WEBHOOK_URL": webhook.url,
        "SMARTMINE_ALERTS__WEBHOOK_SECRET": SECRET,
        "SMARTMINE_ALERTS__SMTP_HOST": "127.0.0.1",
        "SMARTMINE_ALERTS__SMTP_PORT": str(smtp.port),
        "SMARTMINE_ALERTS__SMTP_TO": '["duty-officer@yanshan.example"]',
        "SMARTMINE_GRAFANA_URL": grafana.url,
        "SMARTMINE_GRAFANA_TOKEN": "glsa_test",
    }.items():
        monkeypatch.setenv(key, value)
    yield {"webhook": webhook, "mailbox": mailbox, "grafana": grafana, "settings": load_settings()}
    smtp.stop()
    webhook.server.shutdown()
    grafana.stop()


def anomaly(rule: str, severity: str, state: str = "firing", value: float = 1.6) -> bytes:
    now = datetime.now(UTC)
    return AnomalyEvent(ts=now, start=now, site=SITE, area=AREA, equipment=EQ, sensor="ch4_pct", detector="limit",
                        rule=rule, severity=severity, state=state, score=1.0, threshold=1.5,
                        values={"ch4_pct": value}, message=f"CH4 {value} %vol at the coal face").encode()


def wait_until(what: str, check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_alert_lifecycle_through_every_channel(channels: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    settings: Settings = channels["settings"]
    webhook: WebhookReceiver = channels["webhook"]
    mailbox: Mailbox = channels["mailbox"]
    grafana: GrafanaRecorder = channels["grafana"]
    prefix = settings.topic_prefix
    service = AlertService(settings)
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop, 60.0), daemon=True)
    runner.start()
    state_topic = topic(SITE, AREA, EQ, "alert", prefix)
    states: queue.Queue[dict[str, Any]] = queue.Queue()
    watcher = make_client(settings.mqtt, f"watch-{prefix}")
    watcher.on_message = lambda _c, _u, msg: states.put(json.loads(msg.payload))
    watcher.connect(settings.mqtt.host, settings.mqtt.port)
    watcher.subscribe(state_topic, qos=1)
    watcher.loop_start()
    publisher = make_client(settings.mqtt, f"pub-{prefix}")
    publisher.connect(settings.mqtt.host, settings.mqtt.port)
    publisher.loop_start()
    event_topic = topic(SITE, AREA, EQ, "event", prefix)
    try:
        assert service.connected.wait(10)
        publisher.publish(event_topic, b'{"v": 1, "site": "yanshan_mine"}', qos=1).wait_for_publish(5)
        for value in (1.55, 1.6, 1.7):  # one problem, three events: one alert
            publisher.publish(event_topic, anomaly("limit:methane", "critical", value=value), qos=1)
        publisher.publish(event_topic, anomaly("limit:co_limit", "warning"), qos=1).wait_for_publish(5)

        def latest_with(n: int) -> dict[str, Any] | None:
            while True:
                try:
                    state = states.get(timeout=0.1)
                except queue.Empty:
                    return None
                if len(state["alerts"]) == n:
                    return state
        both = wait_until("both alerts on the retained state topic", lambda: latest_with(2))
        methane = both["alerts"]["limit:methane"]
        assert methane["events"] == 3 and methane["severity"] == "critical"

        # Ops at a terminal, while the service runs: list, then acknowledge the CO warning.
        listed = cli_json(capsys, "alerts", "list", "--format", "json")
        assert [(a["rule"], a["severity"]) for a in listed] == [("limit:methane", "critical"),
                                                                ("limit:co_limit", "warning")]
        co_id = listed[1]["id"]
        assert main(["alerts", "ack", co_id, "--by", "li@dispatch"]) == 0
        assert f"acknowledged alert {co_id}" in capsys.readouterr().out
        assert main(["alerts", "ack", "999"]) == 2
        assert "no alert with id '999'" in capsys.readouterr().err

        # Nobody acknowledges the methane alert: it escalates (critical -> emergency) after 1.5 s.
        escalated = wait_until("the escalation webhook", lambda: [
            b for b in webhook.bodies() if b["transition"] == "escalated"])
        assert escalated[0]["alert"]["severity"] == "emergency" and escalated[0]["alert"]["escalated"]

        publisher.publish(event_topic, anomaly("limit:methane", "critical", state="cleared", value=0.8),
                          qos=1).wait_for_publish(5)
        after = wait_until("methane resolved on the state topic", lambda: latest_with(1))
        assert list(after["alerts"]) == ["limit:co_limit"]
        assert after["alerts"]["limit:co_limit"]["state"] == "acknowledged"
        assert after["last"]["transition"] == "resolved"
        wait_until("the resolve webhook", lambda: any(b["transition"] == "resolved" for b in webhook.bodies()))
        wait_until("the annotation region", lambda: any("timeEnd" in a for a in grafana.annotations.values()))
    finally:
        stop.set()
        runner.join(20)
        watcher.loop_stop()
        publisher.loop_stop()
    assert not runner.is_alive()

    # Webhook: every delivery signed over timestamp + body; the first 503 was retried, nothing lost.
    assert webhook.attempts == len(webhook.received) + 1
    for headers, body in webhook.received:
        assert headers[SIGNATURE_HEADER] == sign(SECRET.encode(), headers[TIMESTAMP_HEADER], body)
    assert [b["transition"] for b in webhook.bodies()] == ["fired", "fired", "acknowledged", "escalated", "resolved"]

    # E-mail: only critical and above (the default floor): fired, escalated and resolved of methane.
    subjects = [message_from_bytes(m)["Subject"] for m in mailbox.messages]
    assert len(subjects) == 3 and all("limit:methane" in s for s in subjects)
    assert subjects[1].startswith("[EMERGENCY ESCALATED] escalated")
    assert "smartmine alerts ack" in message_from_bytes(mailbox.messages[0]).get_payload()

    # Grafana: one annotation per alert, the resolved one patched into a region; all per the documented API.
    assert grafana.problems == []
    assert [r.method for r in grafana.requests if r.path.startswith("/api/annotations")].count("PATCH") >= 1

    # History in InfluxDB: every transition, for the dashboards and `alerts history`.
    client = InfluxClient.from_settings(settings)
    frame = client.query_df("SELECT alert_id, transition, severity FROM alert_history GROUP BY rule")
    client.close()
    assert sorted(frame["transition"]) == sorted(["fired", "fired", "acknowledged", "escalated", "resolved"])

    # The bad event went to the dead-letter file with the reason, and did not stop anything.
    (dead,) = [json.loads(line) for line in service.deadletter_path.read_text().splitlines()]
    assert dead["topic"] == event_topic and "ts" in dead["reason"]
    assert service.summary.bad_events == 1 and service.summary.events == 6

    # A restarted service knows the acknowledged CO alert (state file) and keeps deduplicating against it.
    again = AlertService(settings, notifiers=lambda _client: [])
    (open_alert,) = again.engine.open_alerts()
    assert open_alert.rule == "limit:co_limit" and open_alert.acknowledged_by == "li@dispatch"
    again.dispatcher.close()


def test_cli_says_when_no_service_answers(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMARTMINE_ALERTS__COMMAND_TIMEOUT_S", "0.5")
    assert main(["alerts", "list"]) == 2
    err = capsys.readouterr().err
    assert "no alerts service answered" in err and settings.topic_prefix in err


def test_webhook_without_secret_is_refused(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMARTMINE_ALERTS__WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert main(["alerts", "run", "--duration", "1"]) == 2
    assert "SMARTMINE_ALERTS__WEBHOOK_SECRET" in capsys.readouterr().err


def test_a_command_sent_while_the_service_is_down_is_not_executed_later(settings: Settings,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from alerts.commands import send_command
    from smartmine.errors import UsageError

    monkeypatch.setenv("SMARTMINE_ALERTS__CLIENT_ID", f"alerts-{settings.topic_prefix}")
    settings = load_settings()
    first = AlertService(settings, notifiers=lambda _client: [])
    stop = threading.Event()
    runner = threading.Thread(target=first.run, args=(stop, 30.0), daemon=True)
    runner.start()
    assert first.connected.wait(10)
    publisher = make_client(settings.mqtt, f"pub-{settings.topic_prefix}")
    publisher.connect(settings.mqtt.host, settings.mqtt.port)
    publisher.loop_start()
    publisher.publish(topic(SITE, AREA, EQ, "event", settings.topic_prefix), anomaly("limit:methane", "critical"),
                      qos=1).wait_for_publish(5)
    publisher.loop_stop()
    wait_until("the alert to open", lambda: first.engine.open_alerts())
    stop.set()
    runner.join(20)
    # The service is down; its persistent session would queue the command for it.
    with pytest.raises(UsageError, match="no alerts service answered"):
        send_command(settings, "ack", {"id": "1"}, by="late@ops", timeout_s=1.0)
    time.sleep(1.5)  # past the command's message expiry
    second = AlertService(settings, notifiers=lambda _client: [])
    summary = second.run(threading.Event(), duration_s=2.0)
    assert summary.commands == 0
    assert second.engine.get("1").state == "firing"
