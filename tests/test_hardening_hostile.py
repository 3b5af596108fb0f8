"""Hostile clients against the whole locked-down pipeline: TLS broker with passwords and the catalog's ACL,
InfluxDB with authentication, ``smartmine ingest`` as a child process logged in as the write-only user.

- legitimate telemetry flows end to end over ``mqtts://`` and no secret shows up in any log;
- a wrong password, a publish outside the client's rights: refused, and nothing of it reaches InfluxDB;
- a stream of hostile payloads (hypothesis): each one stored or dead-lettered with its reason, never both,
  never neither, and the service stays up;
- oversized payloads are refused (by the broker above its limit, by ingest above its own);
- a flood from one client and a consumer that never reads: ingest's memory stays bounded and the other
  site's data keeps flowing.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hardening_helpers import (
    BROKER_MESSAGE_LIMIT,
    PREFIX,
    SecureBroker,
    Session,
    connect,
    make_pki,
    start_secure_broker,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.metrics import is_healthy
from smartmine.catalog import ResolvedEquipment, load_catalog
from smartmine.influx import Auth, InfluxClient
from smartmine.mqtt import make_client
from smartmine.schema import ts_ns
from smartmine.security import simulator_user
from smartmine.services import Influxd, free_port, terminate
from smartmine.wire import WireError, encode_telemetry, parse_telemetry, topic

MINE, STEEL = "yanshan_mine", "jinggang_steel"
INGEST_PAYLOAD_LIMIT = 16384     # under the broker's limit, so ingest's own check is what refuses
FLOOD_MESSAGES = int(os.environ.get("HARDENING_FLOOD", "20000"))
CATALOG = load_catalog(None)
MINE_GAS = [eq for eq in CATALOG.all_equipment(MINE) if eq.type == "gas_monitor"]
STEEL_EQ = next(iter(CATALOG.all_equipment(STEEL)))


@dataclass
class Pipeline:
    sb: SecureBroker
    influxd: Influxd
    admin: InfluxClient
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    env: dict[str, str]
    metrics_port: int
    secrets: list[str]

    @property
    def deadletter_file(self) -> Path:
        return self.data_dir / "deadletter.jsonl"

    def dead_letters(self) -> list[dict[str, Any]]:
        if not self.deadletter_file.exists():
            return []
        return [json.loads(line) for line in self.deadletter_file.read_text().splitlines() if line.strip()]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.process.poll() is None


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    d = tmp_path_factory.mktemp("hostile")
    secure_broker = start_secure_broker(d / "mqtt", make_pki(d / "pki"))
    admin_password, writer_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    server = Influxd(d / "influxd", admin=("admin", admin_password))
    server.start()
    admin = InfluxClient(server.url, "plant", auth=Auth(username="admin", password=admin_password))
    admin.create_database()  # an operator's job: ingest runs as a user that may only write
    server.create_user("ingest", writer_password, "plant", "WRITE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    port = free_port()
    env.update({
        "SMARTMINE_MQTT_URL": secure_broker.broker.url,
        "SMARTMINE_MQTT_CA_FILE": str(secure_broker.ca.ca),
        "SMARTMINE_MQTT_USERNAME": "ingest",
        "SMARTMINE_MQTT_PASSWORD": secure_broker.passwords["ingest"],
        "SMARTMINE_INFLUX_URL": server.url,
        "SMARTMINE_INFLUX_DB": "plant",
        "SMARTMINE_INFLUX_USER": "ingest",
        "SMARTMINE_INFLUX_PASSWORD": writer_password,
        "SMARTMINE_TOPIC_PREFIX": PREFIX,
        "SMARTMINE_DATA_DIR": str(d / "data"),
        "SMARTMINE_INGEST__FLUSH_INTERVAL_S": "0.1",
        "SMARTMINE_INGEST__CLIENT_ID": "ingest-hostile",
        "SMARTMINE_INGEST__METRICS_PORT": str(port),
        "SMARTMINE_INGEST__MAX_PAYLOAD_BYTES": str(INGEST_PAYLOAD_LIMIT),
    })
    log = d / "ingest.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "-v", "ingest"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    p = Pipeline(secure_broker, server, admin, proc, log, d / "data", env, port,
                 [admin_password, writer_password, *secure_broker.passwords.values()])
    try:
        _wait(lambda: is_healthy(port), 30, "ingest connected over TLS and subscribed")
        yield p
    finally:
        terminate(proc, 30)
        server.stop()
        secure_broker.broker.stop()


def _stored_seqs(p: Pipeline, equipment: str) -> set[int]:
    rows = p.admin.query(f"SELECT seq FROM /.*/ WHERE equipment = '{equipment}'")
    return {int(v[1]) for r in rows for s in r.get("series", []) for v in s["values"]}


def _publish(session: Session, items: list[tuple[str, bytes]]) -> None:
    infos = [session.client.publish(t, b, qos=1) for t, b in items]
    for info in infos:
        info.wait_for_publish(30)


class Stream:
    """One gas monitor's samples with increasing seq: a barrier to know ingest got this far."""

    def __init__(self, eq: ResolvedEquipment) -> None:
        self.eq = eq
        self.seq = 0
        self.t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

    def next(self, n: int = 1) -> list[tuple[str, bytes]]:
        out = []
        for _ in range(n):
            ts = self.t0 + timedelta(milliseconds=10 * self.seq)
            out.append((topic(self.eq.site, self.eq.area, self.eq.id, "telemetry", PREFIX),
                        encode_telemetry(ts, self.seq, {"ch4_pct": 0.3}, src="hostile-test")))
            self.seq += 1
        return out


def test_telemetry_flows_over_tls_with_passwords_and_no_secret_is_logged(pipeline: Pipeline) -> None:
    mine = connect(pipeline.sb, simulator_user(MINE), "tls-e2e-sim")
    stream = Stream(MINE_GAS[0])
    try:
        _publish(mine, stream.next(200))
        _wait(lambda: len(_stored_seqs(pipeline, stream.eq.id)) == 200, 30, "200 samples stored")
    finally:
        mine.close()
    logs = pipeline.log.read_text() + pipeline.sb.broker.log_file.read_text() + pipeline.influxd.log_file.read_text()
    assert "connected to mqtts://ingest:****@" in pipeline.log.read_text()  # -v: debug logs too
    for secret in pipeline.secrets:
        assert secret not in logs
    shown = subprocess.run([sys.executable, "-m", "smartmine.cli", "config", "show"], env=pipeline.env,
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(shown)["mqtt_password"] == "****"
    for secret in pipeline.secrets:
        assert secret not in shown


def test_intruders_and_overreaching_clients_store_nothing(pipeline: Pipeline) -> None:
    mine = connect(pipeline.sb, simulator_user(MINE), "acl-sim-mine")
    ops = connect(pipeline.sb, "ops", "acl-ops")
    barrier = Stream(MINE_GAS[1])
    steel_topic = topic(STEEL, STEEL_EQ.area, STEEL_EQ.id, "telemetry", PREFIX)
    forged = encode_telemetry(datetime.now(UTC) - timedelta(seconds=5), 1, {s: 1.0 for s in STEEL_EQ.sensors})
    try:
        # An intruder with a wrong password never gets in.
        intruder = Session(pipeline.sb.url(simulator_user(STEEL), "guessed"), pipeline.sb.ca.ca, "intruder")
        assert intruder.expect("connect").is_failure  # type: ignore[attr-defined]
        intruder.close()
        # The mine's gateway forging steel-plant data, and ops (read-only) publishing telemetry: dropped.
        _publish(mine, [(steel_topic, forged)] * 5)
        _publish(ops, [(steel_topic, forged), *barrier.next(1)])
        # Then legitimate data: once it is stored, ingest has seen everything sent before it.
        _publish(mine, barrier.next(3))
        _wait(lambda: _stored_seqs(pipeline, barrier.eq.id) == {1, 2, 3}, 30, "the barrier samples")
    finally:
        mine.close()
        ops.close()
    assert _stored_seqs(pipeline, STEEL_EQ.id) == set()
    assert not any(r["topic"] == steel_topic for r in pipeline.dead_letters()), "it never even reached ingest"


# A gateway gone wrong: anything from broken bytes to nearly valid samples with hostile fields.
NASTY_TEXT = st.text(alphabet=st.sampled_from(",= \"'\\\n\r\t\x00#+/甲烷µ_abc019"), max_size=12)
NUMBER = st.one_of(st.floats(), st.integers(min_value=-(10**25), max_value=10**25), st.just(10**400))
near_valid = st.fixed_dictionaries({
    "v": st.sampled_from([1, 1, 1, 2, "1"]),
    "ts": st.one_of(st.just("NOW"), st.just("2026-11-27T08:00:00"), NASTY_TEXT, st.just("0001-01-01T00:00:00+14:00")),
    "seq": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), NUMBER, NASTY_TEXT),
    "readings": st.dictionaries(st.one_of(st.sampled_from(["ch4_pct", "co_ppm", "o2_pct", "seq", "time"]),
                                          NASTY_TEXT),
                                st.one_of(NUMBER, st.fixed_dictionaries({"value": NUMBER, "quality": NASTY_TEXT}),
                                          st.lists(NUMBER, max_size=2)), max_size=4),
}, optional={"src": NASTY_TEXT, "extra": NASTY_TEXT})


def _render(body: dict[str, Any]) -> bytes:
    if body.get("ts") == "NOW":
        body = {**body, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    return json.dumps(body, ensure_ascii=False).encode()


hostile_payload = st.one_of(st.binary(max_size=200), near_valid.map(_render),
                            st.recursive(st.none() | st.booleans() | NUMBER | NASTY_TEXT,
                                         lambda x: st.lists(x, max_size=3) | st.dictionaries(NASTY_TEXT, x, max_size=3),
                                         max_leaves=30).map(lambda v: json.dumps(v).encode()))


@settings(max_examples=1, deadline=None, phases=[Phase.generate], database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(payloads=st.lists(hostile_payload, min_size=60, max_size=60, unique=True))
def test_each_hostile_payload_is_stored_or_dead_lettered_with_its_reason(pipeline: Pipeline,
                                                                          payloads: list[bytes]) -> None:
    eq = MINE_GAS[2]
    name = topic(eq.site, eq.area, eq.id, "telemetry", PREFIX)
    before = len(pipeline.dead_letters())
    mine = connect(pipeline.sb, simulator_user(MINE), "hostile-payloads")
    barrier = Stream(MINE_GAS[3])
    now = datetime.now(UTC)
    # Besides what hypothesis draws, the cases the oracle must see every run: stored, stored in part, refused.
    payloads = [*payloads,
                encode_telemetry(now, 1, {"ch4_pct": 0.4, "co_ppm": 2.0}),
                encode_telemetry(now + timedelta(milliseconds=1), 2, {"ch4_pct": 0.5, "unicorn_pct": 1.0}),
                encode_telemetry(now + timedelta(milliseconds=2), 3, {"seq": 9.0}),
                encode_telemetry(now + timedelta(milliseconds=3), 4, {"ch4_pct": 250.0}),  # out of range: kept
                b'{"v":1,"ts":"2026-11-27T08:00:00Z","seq":5,"readings":{"ch4_pct":NaN}}']
    try:
        _publish(mine, [(name, p) for p in payloads])
        _publish(mine, barrier.next(1))
        _wait(lambda: _stored_seqs(pipeline, barrier.eq.id) >= {0}, 30, "the barrier sample")
    finally:
        mine.close()
    letters = [r for r in pipeline.dead_letters()[before:] if r["topic"] == name]
    by_payload: dict[bytes, list[str]] = {}
    for r in letters:
        assert r["detail"], r
        by_payload.setdefault(base64.b64decode(r["payload_b64"]), []).append(r["reason"])
    points = {}
    for result in pipeline.admin.query(f"SELECT * FROM gas_monitor WHERE equipment = '{eq.id}'"):
        for series in result.get("series", []):
            for row in series["values"]:
                points[int(row[0])] = dict(zip(series["columns"], row, strict=True))
    known = set(eq.sensors)
    # The oracle: the same wire parser and the catalog say what ingest must have done with each payload.
    for p in payloads:
        try:
            sample = parse_telemetry(p)
        except WireError:
            assert by_payload.get(p) == ["invalid_payload"], (p, by_payload.get(p))
            continue
        readings = sample.values()
        unknown = set(readings) - known
        assert by_payload.get(p, []) == (["unknown_sensor"] if unknown else []), (p, by_payload.get(p))
        if unknown == set(readings):
            continue  # nothing to store
        point = points.get(ts_ns(sample.ts))
        assert point is not None and point["seq"] == sample.seq, (p, point)
    assert len(points) <= len(payloads)
    assert pipeline.alive(), pipeline.log.read_text()[-2000:]


def test_oversized_payloads_are_refused_and_the_service_stays_up(pipeline: Pipeline) -> None:
    eq = MINE_GAS[4]
    name = topic(eq.site, eq.area, eq.id, "telemetry", PREFIX)
    before = len(pipeline.dead_letters())
    # Above the broker's limit: Mosquitto drops it (and disconnects this MQTT 5 publisher), so a throwaway
    # client sends it with QoS 0: paho would otherwise resend it on every reconnect.
    rogue = connect(pipeline.sb, simulator_user(MINE), "oversize-broker")
    rogue.client.publish(name, b"{" + b" " * (BROKER_MESSAGE_LIMIT + 1024) + b"}", qos=0)
    time.sleep(0.5)
    rogue.close()
    # Under the broker's limit but over ingest's: dead-lettered as too large, never parsed.
    mine = connect(pipeline.sb, simulator_user(MINE), "oversize-ingest")
    barrier = Stream(eq)
    padded = json.dumps({"v": 1, "ts": datetime.now(UTC).isoformat(), "seq": 99,
                         "readings": {"ch4_pct": 0.3}, "src": "x" * 100}).encode() + b" " * INGEST_PAYLOAD_LIMIT
    try:
        _publish(mine, [(name, padded), *barrier.next(2)])
        _wait(lambda: _stored_seqs(pipeline, eq.id) >= {0, 1}, 30, "data after the oversized payloads")
    finally:
        mine.close()
    assert 99 not in _stored_seqs(pipeline, eq.id)
    letters = [r for r in pipeline.dead_letters()[before:] if r["topic"] == name]
    assert [r["reason"] for r in letters] == ["payload_too_large"]
    assert str(len(padded)) in letters[0]["detail"]
    assert pipeline.alive() and pipeline.sb.broker.running


def test_a_flood_and_a_stalled_consumer_do_not_stop_the_other_sites_data(pipeline: Pipeline) -> None:
    import threading

    # A consumer that subscribes to everything and then never reads: the broker queues for it alone.
    stalled_url = pipeline.sb.url("ops")
    stalled = make_client(stalled_url, "stalled-consumer", ca_file=pipeline.sb.ca.ca)
    stalled.connect(stalled_url.host, stalled_url.port, keepalive=120)
    stalled.subscribe(f"{PREFIX}/#", qos=1)
    for _ in range(20):
        stalled.loop(0.05)  # CONNACK and SUBACK; after this its socket is never read again

    flood_done = threading.Event()
    flooded: list[int] = []
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            steel = connect(pipeline.sb, simulator_user(STEEL), "flooder")
            name = topic(STEEL, STEEL_EQ.area, STEEL_EQ.id, "telemetry", PREFIX)
            t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
            infos = []
            for i in range(FLOOD_MESSAGES):
                body = (encode_telemetry(t0 + timedelta(milliseconds=i), i, {s: 1.0 for s in STEEL_EQ.sensors})
                        if i % 2 else b'{"garbage": ' + str(i).encode())
                infos.append(steel.client.publish(name, body, qos=1))
            deadline = time.monotonic() + 60
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            flooded.append(sum(1 for i in infos if i.is_published()))
            steel.close()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            flood_done.set()

    mine = connect(pipeline.sb, simulator_user(MINE), "steady-during-flood")
    steady = Stream(MINE_GAS[5])
    at_rest = peak_rss = pipeline.rss_mb()
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        for _ in range(30):  # 300 samples at 100/s while the flood runs
            _publish(mine, steady.next(10))
            peak_rss = max(peak_rss, pipeline.rss_mb())
            time.sleep(0.1)
        _wait(lambda: len(_stored_seqs(pipeline, steady.eq.id)) == 300, 60, "the mine's samples during the flood")
        deadline = time.monotonic() + 90
        while not flood_done.wait(0.2) and time.monotonic() < deadline:
            peak_rss = max(peak_rss, pipeline.rss_mb())
        assert not errors, errors
        assert flooded == [FLOOD_MESSAGES], f"the broker acknowledged {flooded} of {FLOOD_MESSAGES} publishes"
        _wait(lambda: len(_stored_seqs(pipeline, STEEL_EQ.id)) >= FLOOD_MESSAGES // 2, 60, "the flood's samples")
    finally:
        mine.close()
        stalled.disconnect()
    assert pipeline.alive() and pipeline.sb.broker.running
    assert peak_rss < 300, f"ingest grew to {peak_rss:.0f} MB under the flood"
    print(f"flood of {FLOOD_MESSAGES} messages: ingest RSS {at_rest:.0f} MB before, {peak_rss:.0f} MB at peak")
