"""The uplink of a site to the group centre, as `smartmine deploy bridge` and `deploy centre` generate it, on
loopback between two real Mosquitto 2.0.11 brokers: forwarded at QoS 1 through a centre outage within the queue,
dropped (and logged) past it, a site's own events under _edge/, and the centre's site listener refuses what is
not that site."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from smartmine.bridge import (
    BridgeTls,
    CentreBroker,
    EdgeBroker,
    QueuePlan,
    SiteListener,
    bridge_section,
    queue_plan,
    site_load,
)
from smartmine.catalog import builtin_catalog
from smartmine.security import TlsFiles, bridge_user, centre_acl, issue_certificate, issue_client_certificate, make_ca
from smartmine.services import free_port

ROOT = Path(__file__).resolve().parents[1]
SITE, OTHER = "yanshan_mine", "jinggang_steel"
TELEMETRY = f"smartmine/{SITE}/fully_mechanized_face/gas_face_1203/telemetry"


class Listener:
    """A subscriber on the centre's loopback listener, as the centre's ingest is."""

    def __init__(self, port: int, topic: str = "smartmine/#") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"listener-{port}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def topics(self) -> list[str]:
        with self.lock:
            return [m.topic for m in self.messages]

    def wait(self, n: int, timeout_s: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.topics()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.topics()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(port: int, messages: list[tuple[str, bytes]], tls: TlsFiles | None = None) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"pub-{time.monotonic_ns()}")
    if tls is not None:
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.cert), str(tls.key))
        client.tls_set_context(context)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for t, payload in messages:
            client.publish(t, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def logs_in(port: int, tls: TlsFiles, client_id: str) -> bool:
    """Whether the centre's site listener accepts this certificate (a CONNACK with success)."""
    result: list[bool] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id)
    context = ssl.create_default_context(cafile=str(tls.ca))
    if tls.cert != tls.ca:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    client.tls_set_context(context)
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(not reason.is_failure)
    client.on_disconnect = lambda *_a: result.append(False)
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError):
        return False
    deadline = time.monotonic() + 10
    while not result and time.monotonic() < deadline:
        try:
            client.loop(0.1)
        except (ssl.SSLError, OSError):
            return False
    client.disconnect()
    return bool(result and result[0])


@pytest.fixture()
def group(tmp_path: Path) -> Iterator[dict[str, object]]:
    ca = make_ca(tmp_path / "ca")
    centre_cert = issue_certificate(ca, tmp_path / "centre", hosts=("127.0.0.1",), name="centre")
    site_cert = issue_client_certificate(ca, tmp_path / "site", bridge_user(SITE))
    listener = SiteListener("127.0.0.1", free_port(), ca.cert, centre_cert.cert, centre_cert.key,
                            tmp_path / "centre.acl")
    centre = CentreBroker(tmp_path / "centre-broker", site_listener=listener, catalog=builtin_catalog())
    plan = QueuePlan(outage_s=60, max_queued_messages=200, disk_bytes=0)
    bridge = bridge_section(SITE, f"mqtts://127.0.0.1:{listener.port}",
                            BridgeTls(ca.cert, site_cert.cert, site_cert.key), plan)
    edge = EdgeBroker(tmp_path / "edge-broker", bridge=bridge)
    centre.start()
    edge.start()
    yield {"ca": ca, "centre": centre, "edge": edge, "listener": listener, "site_cert": site_cert,
           "tmp": tmp_path}
    edge.stop()
    centre.stop()


def test_site_load_and_queue_come_from_the_catalog() -> None:
    load = site_load(builtin_catalog(), SITE)
    # 31 pieces of equipment; gas monitors every second, others every 2-10 s: 24.4 messages, 65.7 readings a second.
    assert load.equipment == 31
    assert 20 < load.messages_per_s < load.readings_per_s
    plan = queue_plan(load)
    assert plan.max_queued_messages == pytest.approx(load.messages_per_s * 86_400, rel=1e-3)
    assert plan.disk_bytes > plan.max_queued_messages * load.mean_message_bytes


def test_shipped_centre_acl_is_generated_from_the_catalog() -> None:
    assert (ROOT / "deploy/mosquitto/centre.acl").read_text(encoding="utf-8") == centre_acl(builtin_catalog())


def test_uplink_forwards_through_a_centre_outage_and_drops_past_the_queue_loudly(group: dict[str, object]) -> None:
    centre, edge = group["centre"], group["edge"]
    assert isinstance(centre, CentreBroker) and isinstance(edge, EdgeBroker)
    site_event = f"smartmine/{SITE}/fully_mechanized_face/gas_face_1203/event"
    sink = Listener(centre.port)
    try:
        publish(edge.port, [(TELEMETRY, b"live-%d" % i) for i in range(5)] + [(site_event, b"{}")])
        topics = sink.wait(6)
        assert topics.count(TELEMETRY) == 5
        # The site's own event lands under _edge/: the centre's analytics owns <prefix>/<site>/+/+/event.
        assert f"smartmine/_edge/{SITE}/fully_mechanized_face/gas_face_1203/event" in topics
        sink.close()

        centre.stop()  # the centre is away: the edge broker queues for its bridge, up to the plan's 200
        publish(edge.port, [(TELEMETRY, b"queued-%d" % i) for i in range(300)])
        centre.start()
        sink = Listener(centre.port)
        got = sink.wait(200, timeout_s=60)
        time.sleep(1.0)
        queued = [m.payload for m in sink.messages if m.payload.startswith(b"queued-")]
        assert queued == [b"queued-%d" % i for i in range(200)]  # in order, nothing past the queue
        assert len(got) >= 200
        edge.stop()  # Mosquitto's log reaches its file when it exits (stdout to a file is block-buffered)
        assert "Outgoing messages are being dropped" in edge.log_file.read_text(errors="replace")
    finally:
        sink.close()


def test_centre_refuses_a_foreign_bridge_and_a_site_publishing_as_another(group: dict[str, object]) -> None:
    centre, listener = group["centre"], group["listener"]
    assert isinstance(centre, CentreBroker) and isinstance(listener, SiteListener)
    tmp = group["tmp"]
    assert isinstance(tmp, Path)
    sink = Listener(centre.port)
    try:
        # A certificate for the other site's bridge from a CA that is not the group's: refused at the handshake.
        rogue_ca = make_ca(tmp / "rogue-ca", name="rogue CA")
        rogue = issue_client_certificate(rogue_ca, tmp / "rogue", bridge_user(OTHER))
        rogue = TlsFiles(rogue.cert, rogue.key, group["ca"].cert)  # type: ignore[attr-defined]
        assert not logs_in(listener.port, rogue, bridge_user(OTHER))
        # No certificate at all: refused too; the group's own certificate of the site is accepted.
        ca = group["ca"]
        assert isinstance(ca, TlsFiles)
        assert not logs_in(listener.port, TlsFiles(ca.cert, ca.key, ca.cert), bridge_user(OTHER))
        site_cert = group["site_cert"]
        assert isinstance(site_cert, TlsFiles)
        assert logs_in(listener.port, site_cert, "any-client-id")
        # The mine's own certificate may publish the mine's telemetry, not the steel works'.
        other = f"smartmine/{OTHER}/ironmaking/bf_1_stave/telemetry"
        publish(listener.port, [(other, b"as-another-site"), (TELEMETRY, b"own-site")], tls=site_cert)
        topics = sink.wait(1)
        time.sleep(0.5)
        assert TELEMETRY in topics
        assert other not in sink.topics()
    finally:
        sink.close()


def test_group_compose_file_is_valid_and_mounts_the_generated_configs() -> None:
    import json
    import shutil
    import subprocess
    from importlib import resources

    import jsonschema
    import yaml

    compose_file = ROOT / "docker-compose.group.yml"
    compose = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
                        .read_text(encoding="utf-8"))
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(compose)] == []
    for site in (SITE, OTHER):
        bridge = (ROOT / f"deploy/mosquitto/bridge/bridge-{site}.conf").read_text(encoding="utf-8")
        # What `smartmine deploy bridge` writes for this site, with the container's certificate paths.
        load = site_load(builtin_catalog(), site)
        expected = bridge_section(site, "mqtts://centre-mosquitto:8883",
                                  BridgeTls(Path("/mosquitto/certs/group-ca.pem"),
                                            Path(f"/mosquitto/certs/bridge_{site}.pem"),
                                            Path(f"/mosquitto/certs/bridge_{site}.key")), queue_plan(load))
        assert bridge == expected
        assert any(f"bridge-{site}.conf" in v for s in compose["services"].values() for v in s.get("volumes", []))
    if shutil.which("docker-compose"):
        env = ROOT / ".env.example"
        result = subprocess.run(["docker-compose", "--project-directory", str(ROOT), "--env-file", str(env), "-f",
                                 str(compose_file), "config", "-q"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
