"""Helpers of the hardening tests: a locked-down broker and a client that records what happens to it."""

from __future__ import annotations

import queue
import secrets
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from smartmine.catalog import load_catalog
from smartmine.config import MqttUrl, parse_mqtt_url
from smartmine.mqtt import make_client
from smartmine.security import TlsFiles, broker_acl, broker_users, issue_certificate, make_ca
from smartmine.services import Mosquitto

PREFIX = "smartmine"
BROKER_MESSAGE_LIMIT = 65536


@dataclass
class SecureBroker:
    """A running broker with TLS, one password per ACL user and the catalog's ACL."""

    broker: Mosquitto
    passwords: dict[str, str]
    ca: TlsFiles
    prefix: str

    def url(self, user: str | None, password: str | None = None) -> MqttUrl:
        base = parse_mqtt_url(self.broker.url)
        if user is not None and password is None:
            password = self.passwords[user]
        return MqttUrl(base.host, base.port, base.tls, user, password)


def make_pki(directory: Path) -> TlsFiles:
    return issue_certificate(make_ca(directory / "ca"), directory / "server")


def start_secure_broker(directory: Path, pki: TlsFiles, prefix: str = PREFIX) -> SecureBroker:
    directory.mkdir(parents=True, exist_ok=True)
    acl = directory / "acl"
    acl.write_text(broker_acl(load_catalog(None), prefix))
    passwords = {user: secrets.token_urlsafe(12) for user in broker_users(load_catalog(None))}
    broker = Mosquitto(directory / "broker", users=passwords, acl_file=acl, tls=pki,
                       message_size_limit=BROKER_MESSAGE_LIMIT)
    broker.start()
    return SecureBroker(broker, passwords, pki, prefix)


class Session:
    """A connected client that records what happens to it (connect result, deliveries, acks)."""

    def __init__(self, url: MqttUrl, ca: Path | None, client_id: str) -> None:
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = make_client(url, client_id, ca_file=ca)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connect", rc))
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.events.put(("subscribe", rcs))
        self.client.on_publish = lambda _c, _u, _m, rc, _p: self.events.put(("publish", rc))
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(url.host, url.port)
        self.client.loop_start()

    def expect(self, kind: str, timeout_s: float = 10.0) -> object:
        while True:
            got, value = self.events.get(timeout=timeout_s)
            if got == kind:
                return value

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(sb: SecureBroker, user: str, client_id: str) -> Session:
    s = Session(sb.url(user), sb.ca.ca, client_id)
    rc = s.expect("connect")
    assert not rc.is_failure, f"{user} could not connect: {rc}"  # type: ignore[attr-defined]
    return s
