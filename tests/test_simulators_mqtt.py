"""Publishing through the real Mosquitto: telemetry, retained online/offline status, the last will, reconnects."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from simhelp import catalog

from simulators.engine import Simulation
from simulators.runner import run
from simulators.sinks import MqttSink, simulator_id
from smartmine.config import Settings, parse_mqtt_url
from smartmine.errors import UsageError
from smartmine.mqtt import make_client
from smartmine.security import write_password_file
from smartmine.services import Mosquitto
from smartmine.wire import parse_telemetry, subscription

STEEL = "jinggang_steel"
USER, PASSWORD = "sim_jinggang_steel", "p@ss word"  # made up for a throw-away broker


@contextmanager
def listener(url: str, filters: list[str]) -> Iterator[queue.Queue[mqtt.MQTTMessage]]:
    """A subscriber on the real broker; yields the queue its messages land in."""
    u = parse_mqtt_url(url)
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    client = make_client(u, f"test-listener-{os.getpid()}-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, msg: received.put(msg)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe([(f, 1) for f in filters])
    client.connect(u.host, u.port)
    client.loop_start()
    try:
        assert subscribed.wait(10), "the broker did not acknowledge the subscription"
        yield received
    finally:
        client.loop_stop()
        client.disconnect()


def drain(q: queue.Queue[mqtt.MQTTMessage], until: Callable[[list[mqtt.MQTTMessage]], bool],
          timeout_s: float = 20.0) -> list[mqtt.MQTTMessage]:
    got: list[mqtt.MQTTMessage] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(got):
        with suppress(queue.Empty):
            got.append(q.get(timeout=0.2))
    return got


def status_of(msgs: list[mqtt.MQTTMessage], topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in msgs if m.topic == topic]


def test_telemetry_and_retained_status_reach_the_broker(settings: Settings, topic_prefix: str) -> None:
    sim = Simulation(catalog(), sites=STEEL, seed=1, start=datetime(2026, 11, 27, 8, tzinfo=UTC), duration_s=30,
                     prefix=topic_prefix)
    expected = sum(1 for _ in Simulation(catalog(), sites=STEEL, seed=1, start=sim.start, duration_s=30,
                                         prefix=topic_prefix).batches() for _ in _)
    with listener(settings.mqtt_url, [subscription("telemetry", topic_prefix)]) as q:
        summary = run(sim, MqttSink(settings, qos=1), speed=None)
        msgs = drain(q, lambda got: len(got) >= expected)
    assert summary["published"] == expected == len(msgs)
    payloads = [parse_telemetry(bytes(m.payload)) for m in msgs]
    by_src: dict[str, list[int]] = {}
    for p in payloads:
        assert p.src is not None
        by_src.setdefault(p.src, []).append(p.seq)
    assert len(by_src) == len(sim.devices)
    assert all(seqs == list(range(len(seqs))) for seqs in by_src.values())   # QoS 1: none lost, in order

    # After a clean stop every device's retained status says offline, and a newcomer is told so at once.
    with listener(settings.mqtt_url, [subscription("status", topic_prefix)]) as q:
        retained = drain(q, lambda got: len(got) >= len(sim.devices))
    states = {m.topic: json.loads(m.payload)["state"] for m in retained}
    assert len(states) == len(sim.devices)
    assert set(states.values()) == {"offline"}
    assert all(m.retain for m in retained)


def _simulate_process(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SMARTMINE_MQTT_URL": settings.mqtt_url, "SMARTMINE_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.Popen([sys.executable, "-m", "smartmine.cli", "simulate", "--site", STEEL, "--seed", "5",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_online_while_running_and_the_last_will_says_offline_when_killed(settings: Settings,
                                                                         topic_prefix: str) -> None:
    sim_status = f"{topic_prefix}/{STEEL}/gateway/{simulator_id([STEEL], 5)}/status"
    device_status = f"{topic_prefix}/{STEEL}/ironmaking/blast_furnace_1/status"
    with listener(settings.mqtt_url, [sim_status, device_status, subscription("telemetry", topic_prefix)]) as q:
        proc = _simulate_process(settings, "--speed", "1")
        try:
            msgs = drain(q, lambda got: any(m.topic.endswith("/telemetry") for m in got)
                         and len(status_of(got, sim_status)) >= 1, timeout_s=30)
            assert [s["state"] for s in status_of(msgs, sim_status)] == ["online"], proc.stderr
            assert [s["state"] for s in status_of(msgs, device_status)] == ["online"]
            proc.send_signal(signal.SIGKILL)   # no goodbye: only the broker can tell the world
            proc.wait(10)
            msgs = drain(q, lambda got: len(status_of(got, sim_status)) >= 1, timeout_s=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    will = status_of(msgs, sim_status)
    assert will and will[-1]["state"] == "offline" and will[-1]["src"] == simulator_id([STEEL], 5)


def test_a_broker_restart_is_survived_with_the_buffer(mosquitto_factory: Callable[..., Mosquitto],
                                                      settings: Settings, topic_prefix: str) -> None:
    broker = mosquitto_factory()
    local = settings.model_copy(update={"mqtt_url": broker.url})
    sim = Simulation(catalog(), sites=STEEL, seed=2, start=datetime(2026, 11, 27, 8, tzinfo=UTC), duration_s=None,
                     prefix=topic_prefix)
    sink = MqttSink(local, qos=1, buffer_messages=50, reconnect_max_s=1)
    stop = threading.Event()
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(run(sim, sink, speed=20, stop=stop.is_set)))
    worker.start()
    try:
        time.sleep(1.0)
        broker.stop()
        time.sleep(2.0)          # 40 simulated seconds: more than the buffer holds
        broker.start()
        with listener(broker.url, [subscription("telemetry", topic_prefix)]) as q:
            assert drain(q, lambda got: len(got) >= 20, timeout_s=20), "no telemetry after the broker came back"
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert result["reconnects"] >= 1
    assert result["dropped_while_disconnected"] > 0     # bounded: the oldest were dropped, and counted
    assert result["published"] > 0


@pytest.fixture
def password_file() -> Iterator[Path]:
    """Mosquitto reads its password file after dropping root to its own user: put it where that user can."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        passwd = write_password_file(Path(tmp) / "passwd", {USER: PASSWORD})
        passwd.chmod(0o644)
        yield passwd


def test_credentials_come_from_the_url(mosquitto_factory: Callable[..., Mosquitto], password_file: Path,
                                       settings: Settings, topic_prefix: str) -> None:
    broker = mosquitto_factory(allow_anonymous=False, password_file=password_file)
    plain = settings.model_copy(update={"mqtt_url": broker.url})
    sim_args = {"sites": STEEL, "seed": 3, "start": datetime(2026, 11, 27, 8, tzinfo=UTC), "duration_s": 5,
                "prefix": topic_prefix}
    with pytest.raises(UsageError, match="refused the connection: Not authorized"):
        run(Simulation(catalog(), **sim_args), MqttSink(plain), speed=None)  # type: ignore[arg-type]
    host_port = broker.url.removeprefix("mqtt://")
    authed_url = f"mqtt://{USER}:{quote(PASSWORD)}@{host_port}"   # quoted: '@' and ' ' in the password
    authed = settings.model_copy(update={"mqtt_url": authed_url})
    with listener(authed_url, [subscription("telemetry", topic_prefix)]) as q:
        summary = run(Simulation(catalog(), **sim_args), MqttSink(authed, qos=1), speed=None)  # type: ignore[arg-type]
        got = drain(q, lambda got: len(got) >= summary["published"])
    assert summary["published"] > 0 and len(got) == summary["published"]
