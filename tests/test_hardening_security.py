"""Who may do what: a locked-down Mosquitto (passwords, the catalog's ACL, TLS) and InfluxDB with auth on.

Every test runs against the real Debian binaries. Passwords are made up per run (never in the repo);
the CA and server certificate are made per run with the openssl command line.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hardening_helpers import PREFIX, SecureBroker, Session, connect, make_pki, start_secure_broker

from smartmine.catalog import load_catalog
from smartmine.config import MqttUrl, load_settings
from smartmine.influx import Auth, InfluxClient, InfluxError
from smartmine.mqtt import make_client
from smartmine.security import (
    TlsFiles,
    broker_acl,
    broker_users,
    make_ca,
    simulator_user,
)
from smartmine.services import Influxd, free_port, port_in_use, wait_for
from smartmine.wire import encode_telemetry, topic

REPO = Path(__file__).resolve().parents[1]
MINE, STEEL = "yanshan_mine", "jinggang_steel"
USERS = (simulator_user(MINE), simulator_user(STEEL), "ingest", "analytics", "alerts", "ops")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, pki: TlsFiles) -> Iterator[SecureBroker]:
    """TLS only, a password per user, the ACL generated from the built-in catalog."""
    sb = start_secure_broker(tmp_path_factory.mktemp("secure_mosquitto"), pki)
    yield sb
    sb.broker.stop()


def subscribe(s: Session, *filters: str) -> None:
    for f in filters:
        s.client.subscribe(f, qos=1)
        s.expect("subscribe")


def received(s: Session, settle_s: float = 1.0) -> set[str]:
    """Topics delivered to ``s``, waiting ``settle_s`` after the last one."""
    topics = set()
    try:
        while True:
            topics.add(s.messages.get(timeout=settle_s).topic)
    except queue.Empty:
        return topics


SAMPLE = encode_telemetry(datetime(2026, 11, 27, 8, 0, tzinfo=UTC), 1, {"ch4_pct": 0.4})


def test_shipped_acl_is_the_catalogs() -> None:
    """deploy/mosquitto/acl is what `smartmine security acl` makes from the built-in catalog."""
    assert (REPO / "deploy/mosquitto/acl").read_text() == broker_acl(load_catalog(None), PREFIX)
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "security", "acl", "--prefix", PREFIX],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == (REPO / "deploy/mosquitto/acl").read_text()


def test_compose_gives_every_broker_user_a_password_and_each_stage_its_own_user() -> None:
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    passwords = {k.removeprefix("MQTT_PASSWORD_").lower() for k in services["mosquitto"]["environment"]
                 if k.startswith("MQTT_PASSWORD_")}
    assert passwords == set(broker_users(load_catalog(None)))
    users = {name: s["environment"]["SMARTMINE_MQTT_USERNAME"] for name, s in services.items()
             if isinstance(s.get("environment"), dict) and "SMARTMINE_MQTT_USERNAME" in s["environment"]}
    assert users["ingest"] == "ingest" and users["analytics"] == "analytics" and users["alerts"] == "alerts"
    for site in load_catalog(None).site_ids():
        sims = [name for name, user in users.items() if user == simulator_user(site)]
        assert len(sims) == 1 and site in services[sims[0]]["command"], site


def test_the_acl_knows_the_alerts_command_topics() -> None:
    from alerts.commands import reply_topic, request_topic

    acl = broker_acl(load_catalog(None), PREFIX)
    assert f"topic readwrite {request_topic(PREFIX)}" in acl and f"topic write {request_topic(PREFIX)}" in acl
    space = reply_topic(PREFIX, "x", "t").rsplit("/", 2)[0]
    assert f"topic write {space}/#" in acl
    assert f"topic read {space}/alerts/#" in acl and f"topic read {space}/ops/#" in acl


def test_shipped_mosquitto_conf_starts(tmp_path: Path, pki: TlsFiles) -> None:
    """The production broker set-up works with this Mosquitto: the entrypoint makes the password file, the
    config starts, refuses anonymous clients, lets ops in on plain MQTT and on TLS once that is enabled."""
    plain, tls = free_port(), free_port()
    text = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    enable = ("#listener", "#use_username", "#certfile", "#keyfile", "#tls_version")
    text = "\n".join(line[1:] if line.startswith(enable) else line
                     for line in text.splitlines())  # the TLS block, as an operator enables it
    for container_path, here in (("/mosquitto/config/", f"{tmp_path}/"), ("/mosquitto/data/", f"{tmp_path}/"),
                                 ("/mosquitto/certs/server.pem", str(pki.cert)),
                                 ("/mosquitto/certs/server.key", str(pki.key)),
                                 ("listener 1883", f"listener {plain} 127.0.0.1"),
                                 ("listener 8883", f"listener {tls} 127.0.0.1")):
        assert container_path in text
        text = text.replace(container_path, here)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {pwd.getpwuid(os.getuid()).pw_name}\n{text}")  # as in Mosquitto(): keep our user
    (tmp_path / "acl").write_text(broker_acl(load_catalog(None), PREFIX))
    password = secrets.token_urlsafe(12)
    # Started as the container starts it: the entrypoint makes the password file from MQTT_PASSWORD_<USER>.
    env = {"PATH": os.environ["PATH"], "MQTT_PASSWORD_OPS": password, "MOSQUITTO_CONFIG_FILE": str(conf),
           "MOSQUITTO_PASSWORD_FILE": f"{tmp_path}/passwd"}
    proc = subprocess.Popen(["sh", str(REPO / "deploy/mosquitto/entrypoint.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_in_use(tls) and port_in_use(plain), 10, "shipped mosquitto.conf")
        for port, use_tls, user in ((tls, True, "ops"), (plain, False, "ops"), (plain, False, None)):
            s = Session(MqttUrl("127.0.0.1", port, use_tls, user, password if user else None), pki.ca, "conf")
            assert s.expect("connect").is_failure == (user is None)  # type: ignore[attr-defined]
            s.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_wrong_password_and_anonymous_are_refused(secure_broker: SecureBroker) -> None:
    for user, password in (("ingest", "not-the-password"), ("nobody", "x"), (None, None)):
        s = Session(secure_broker.url(user, password), secure_broker.ca.ca, f"intruder-{user}")
        try:
            rc = s.expect("connect")
            assert rc.is_failure and "authori" in str(rc).lower(), (user, str(rc))  # type: ignore[attr-defined]
        finally:
            s.close()


def test_acl_lets_each_user_do_only_its_job(secure_broker: SecureBroker) -> None:
    ingest = connect(secure_broker, "ingest", "acl-ingest")
    alerts = connect(secure_broker, "alerts", "acl-alerts")
    ops = connect(secure_broker, "ops", "acl-ops")
    mine = connect(secure_broker, simulator_user(MINE), "acl-sim-mine")
    analytics = connect(secure_broker, "analytics", "acl-analytics")
    try:
        subscribe(ingest, f"$share/smartmine-ingest/{PREFIX}/+/+/+/telemetry", f"{PREFIX}/+/+/+/event")
        subscribe(alerts, f"{PREFIX}/+/+/+/event", f"{PREFIX}/+/+/+/telemetry")
        subscribe(ops, f"{PREFIX}/#")

        own = topic(MINE, "face_1203", "gas_face_1203", prefix=PREFIX)
        others = topic(STEEL, "ironmaking", "blast_furnace_1", prefix=PREFIX)
        attempts = [
            (mine, own),                                                   # allowed
            (mine, topic(MINE, "face_1203", "gas_face_1203", "status", PREFIX)),  # allowed (its last will)
            (mine, others),                                                # another site's telemetry
            (mine, topic(MINE, "face_1203", "gas_face_1203", "event", PREFIX)),   # a forged anomaly
            (mine, topic(MINE, "face_1203", "gas_face_1203", "alert", PREFIX)),   # a forged alert
            (ingest, own),                                                 # ingest only reads
            (analytics, topic(MINE, "face_1203", "gas_face_1203", "event", PREFIX)),  # allowed
            (analytics, topic(MINE, "face_1203", "gas_face_1203", "alert", PREFIX)),  # alerts' job
            (ops, own),                                                    # ops only reads
        ]
        for session, name in attempts:
            session.client.publish(name, SAMPLE, qos=1).wait_for_publish(10)

        allowed = {own, topic(MINE, "face_1203", "gas_face_1203", "status", PREFIX),
                   topic(MINE, "face_1203", "gas_face_1203", "event", PREFIX)}
        assert received(ops) == allowed
        # ingest gets the telemetry it may read and nothing else, even though it subscribed to events.
        assert received(ingest, 0.3) == {own}
        # alerts reads events, never telemetry.
        assert received(alerts, 0.3) == {topic(MINE, "face_1203", "gas_face_1203", "event", PREFIX)}
    finally:
        for s in (ingest, alerts, ops, mine, analytics):
            s.close()


def test_tls_round_trip_over_mqtts(secure_broker: SecureBroker) -> None:
    assert secure_broker.broker.url.startswith("mqtts://")
    sub = connect(secure_broker, "ops", "tls-ops")
    pub = connect(secure_broker, simulator_user(STEEL), "tls-sim")
    try:
        subscribe(sub, f"{PREFIX}/{STEEL}/#")
        name = topic(STEEL, "ironmaking", "blast_furnace_1", prefix=PREFIX)
        pub.client.publish(name, SAMPLE, qos=1).wait_for_publish(10)
        msg = sub.messages.get(timeout=10)
        assert (msg.topic, bytes(msg.payload)) == (name, SAMPLE)
    finally:
        sub.close()
        pub.close()


def test_broker_with_a_certificate_from_another_ca_is_refused(secure_broker: SecureBroker, tmp_path: Path) -> None:
    other_ca = make_ca(tmp_path / "other", name="someone else's CA")
    url = secure_broker.url("ops")
    client = make_client(url, "tls-wrong-ca", ca_file=other_ca.cert)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        client.connect(url.host, url.port)
    # Without a CA file the system store is used, which does not know the test CA either.
    with pytest.raises(ssl.SSLCertVerificationError):
        make_client(url, "tls-no-ca").connect(url.host, url.port)


def test_plain_mqtt_to_the_tls_port_gets_nowhere(secure_broker: SecureBroker) -> None:
    url = secure_broker.url("ops")
    s = Session(MqttUrl(url.host, url.port, False, url.username, url.password), None, "tls-plain")
    try:
        with pytest.raises(queue.Empty):
            s.expect("connect", timeout_s=2.0)
    finally:
        s.close()


@pytest.fixture(scope="module")
def secure_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("secure_influxd"), admin=("admin", secrets.token_urlsafe(12)))
    server.start()
    yield server
    server.stop()


def test_influxdb_with_auth_on(secure_influxd: Influxd) -> None:
    assert secure_influxd.admin is not None
    admin = InfluxClient(secure_influxd.url, "plant", auth=Auth(username=secure_influxd.admin[0],
                                                                password=secure_influxd.admin[1]))
    admin.create_database()
    writer_password = secrets.token_urlsafe(12)
    secure_influxd.create_user("ingest", writer_password, "plant", "WRITE")
    line = "gas_monitor,area=a,equipment=e,site=s ch4_pct=0.4,seq=1i 1795766400000000000"

    with pytest.raises(InfluxError) as anonymous:
        InfluxClient(secure_influxd.url, "plant").write_lines([line])
    assert anonymous.value.status == 401
    with pytest.raises(InfluxError) as wrong:
        InfluxClient(secure_influxd.url, "plant", auth=Auth(username="ingest", password="guess")).write_lines([line])
    assert wrong.value.status == 401

    writer = InfluxClient(secure_influxd.url, "plant", auth=Auth(username="ingest", password=writer_password))
    writer.write_lines([line])
    with pytest.raises(InfluxError) as read:  # a writer cannot read back
        writer.query("SELECT * FROM gas_monitor")
    assert read.value.status == 403
    assert admin.query("SELECT count(seq) FROM gas_monitor")[0]["series"][0]["values"][0][1] == 1

    # After a restart the admin still works (creating it again is harmless).
    secure_influxd.stop()
    secure_influxd.start()
    assert admin.query("SELECT count(seq) FROM gas_monitor")[0]["series"][0]["values"][0][1] == 1


def test_settings_carry_influx_credentials(secure_influxd: Influxd, monkeypatch: pytest.MonkeyPatch) -> None:
    assert secure_influxd.admin is not None
    monkeypatch.setenv("SMARTMINE_INFLUX_URL", secure_influxd.url)
    monkeypatch.setenv("SMARTMINE_INFLUX_DB", "plant")
    monkeypatch.setenv("SMARTMINE_INFLUX_USER", secure_influxd.admin[0])
    monkeypatch.setenv("SMARTMINE_INFLUX_PASSWORD", secure_influxd.admin[1])
    client = InfluxClient.from_settings(load_settings())
    client.create_database()
    assert client.query("SHOW MEASUREMENTS") is not None


def test_config_show_never_prints_a_secret(tmp_path: Path) -> None:
    secret = {"SMARTMINE_MQTT_PASSWORD": "mqtt-" + secrets.token_hex(8),
              "SMARTMINE_INFLUX_PASSWORD": "influx-" + secrets.token_hex(8),
              "SMARTMINE_INFLUX_TOKEN": "token-" + secrets.token_hex(8)}
    url_password = "url-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update(secret, SMARTMINE_MQTT_URL=f"mqtts://ingest:{url_password}@broker:8883",
               SMARTMINE_INFLUX_URL=f"https://admin:{url_password}@influx:8086", SMARTMINE_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "-v", "config", "show"], capture_output=True,
                          text=True, env=env, check=True)
    shown = json.loads(proc.stdout)
    assert shown["mqtt_url"] == "mqtts://ingest:****@broker:8883"
    assert shown["mqtt_password"] == shown["influx_password"] == shown["influx_token"] == "****"
    for value in [*secret.values(), url_password]:
        assert value not in proc.stdout + proc.stderr


def test_no_secret_is_committed() -> None:
    """No private key, password file or credential-bearing URL is tracked in git."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    leaks = []
    pattern = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\$7\$\d+\$|[a-z]+s?://[^/\s:@'\"\[]+:[^/\s@'\"*{]+@")
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".parquet", ".gz"):
            continue
        text = path.read_text(errors="replace")
        for m in pattern.finditer(text):
            leaks.append(f"{name}: {m.group(0)[:40]}")
    allowed = {"tests/test_config.py", "tests/test_hardening_security.py"}  # made-up example URLs in tests
    assert [leak for leak in leaks if leak.split(":")[0] not in allowed] == []
