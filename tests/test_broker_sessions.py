"""A broker login cannot take another service's persistent session over (the shipped broker settings,
against the real Mosquitto 2.0.11 with the catalog's ACL and a password per user)."""

from __future__ import annotations

import queue
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartmine.catalog import load_catalog
from smartmine.config import MqttUrl
from smartmine.mqtt import make_client
from smartmine.security import broker_acl, broker_users, ingest_user, simulator_user
from smartmine.services import Mosquitto
from smartmine.wire import encode_telemetry, topic

REPO = Path(__file__).resolve().parents[1]
PREFIX = "smartmine"
GATEWAY = simulator_user("yanshan_mine")
TELEMETRY = topic("yanshan_mine", "face_1203", "gas_face_1203", prefix=PREFIX)


def test_shipped_broker_config_ties_client_ids_to_logins() -> None:
    lines = [line.strip() for line in (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()]
    starts = [i for i, line in enumerate(lines) if line.lstrip("#").startswith("listener ")]
    assert starts
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):  # a listener option: each has it
        assert any(line.lstrip("#") == "use_username_as_clientid true" for line in lines[start:end]), lines[start]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    (tmp_path / "acl").write_text(broker_acl(load_catalog(None), PREFIX, ingest_workers=2))
    passwords = {user: secrets.token_urlsafe(12) for user in [*broker_users(load_catalog(None)), ingest_user(2)]}
    server = Mosquitto(tmp_path / "broker", users=passwords, acl_file=tmp_path / "acl",
                       use_username_as_clientid=True)
    server.start()
    yield server, passwords
    server.stop()


class Client:
    def __init__(self, server: Mosquitto, passwords: dict[str, str], user: str, client_id: str,
                 clean_start: bool = False) -> None:
        self.connacks: queue.Queue[tuple[Any, bool]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()
        self.client = make_client(MqttUrl(server.host, server.port, False, user, passwords[user]), client_id)
        self.client.on_connect = lambda _c, _u, f, rc, _p: self.connacks.put((rc, f.session_present))
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_a: self.subscribed.put(True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(server.host, server.port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        rc, self.session_present = self.connacks.get(timeout=10)
        assert not rc.is_failure, rc

    def received(self, settle_s: float) -> int:
        count = 0
        try:
            while True:
                self.messages.get(timeout=settle_s)
                count += 1
        except queue.Empty:
            return count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_gateway_login_cannot_take_over_ingests_session(broker: tuple[Mosquitto, dict[str, str]]) -> None:
    server, passwords = broker
    ingest = Client(server, passwords, "ingest", "smartmine-ingest")
    ingest.client.subscribe(f"{PREFIX}/+/+/+/telemetry", qos=1)
    ingest.subscribed.get(timeout=10)
    ingest.close()  # ingest is restarting: the broker queues its telemetry

    gateway = Client(server, passwords, GATEWAY, "gateway-pub")
    sample = encode_telemetry(datetime(2026, 11, 27, 8, 0, tzinfo=UTC), 1, {"ch4_pct": 0.4})
    for info in [gateway.client.publish(TELEMETRY, sample, qos=1) for _ in range(200)]:
        info.wait_for_publish(10)
    gateway.close()

    # The same gateway login asks for ingest's client id, first resuming, then with a clean start.
    for clean_start in (False, True):
        attacker = Client(server, passwords, GATEWAY, "smartmine-ingest", clean_start=clean_start)
        assert attacker.received(0.5) == 0  # it is handed its own login's session, which subscribes to nothing
        attacker.close()

    back = Client(server, passwords, "ingest", "smartmine-ingest")
    assert back.session_present
    assert back.received(1.0) == 200
    back.close()


def test_ingest_workers_of_one_group_each_with_its_own_login(broker: tuple[Mosquitto, dict[str, str]]) -> None:
    """`smartmine security acl --ingest-workers 2`: two workers share the load and neither takes the other over."""
    server, passwords = broker
    workers = [Client(server, passwords, ingest_user(n), f"smartmine-ingest-{n}") for n in (1, 2)]
    for worker in workers:
        worker.client.subscribe(f"$share/smartmine-ingest/{PREFIX}/+/+/+/telemetry", qos=1)
        worker.subscribed.get(timeout=10)
    gateway = Client(server, passwords, GATEWAY, "gateway-pub")
    sample = encode_telemetry(datetime(2026, 11, 27, 8, 0, tzinfo=UTC), 1, {"ch4_pct": 0.4})
    for info in [gateway.client.publish(TELEMETRY, sample, qos=1) for _ in range(100)]:
        info.wait_for_publish(10)
    gateway.close()
    counts = [worker.received(1.0) for worker in workers]
    assert sum(counts) == 100 and min(counts) > 0, counts
    assert all(w.connacks.empty() for w in workers)  # nobody was disconnected and reconnected
    for worker in workers:
        worker.close()
