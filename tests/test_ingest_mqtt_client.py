"""ingest's lean PUBLISH reading gives the on_message callback exactly what paho's own reading gives; the
benchmark's lean publisher sends exactly paho's packets and sees every PUBACK, through the real Mosquitto."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt_client import LEAN, LeanPublishClient, LeanPublisher
from smartmine.config import parse_mqtt_url
from smartmine.mqtt import make_client
from smartmine.services import Mosquitto
from smartmine.wire import topic

# What MQTT allows in a UTF-8 string (no NUL, no surrogates).
_UTF8_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5)


def _received(cls: type[Client], header: int, body: bytes) -> MQTTMessage:
    client = cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    got: list[MQTTMessage] = []
    client.on_message = lambda _c, _u, m: got.append(m)
    # What paho's _packet_read has filled in when it calls _handle_publish.
    client._in_packet = {"command": header, "have_remaining": 1, "remaining_count": [], "remaining_mult": 1,
                         "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0}
    client._handle_publish()
    assert len(got) == 1
    return got[0]


@settings(max_examples=300, deadline=None)
@given(topic=st.text(min_size=1, max_size=80).map(str.encode), mid=st.integers(1, 65535),
       payload=st.binary(max_size=300), dup=st.booleans(), retain=st.booleans(), qos=st.sampled_from([0, 1]),
       alias=st.one_of(st.none(), st.integers(1, 100)),
       user=st.one_of(st.none(), st.tuples(_UTF8_TEXT, _UTF8_TEXT)))
def test_lean_publish_reading_matches_paho(topic: bytes, mid: int, payload: bytes, dup: bool, retain: bool, qos: int,
                                           alias: int | None, user: tuple[str, str] | None) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if alias is not None:
        props.TopicAlias = alias
    if user is not None:
        props.UserProperty = user
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + props.pack() + payload
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    lean, paho = _received(LeanPublishClient, header, body), _received(Client, header, body)

    def seen(m: MQTTMessage) -> tuple[Any, ...]:
        return m._topic, m.mid, m.qos, m.dup, m.retain, bytes(m.payload), m.state
    assert seen(lean) == seen(paho)
    if alias is not None or user is not None or qos != 1:
        assert lean.properties is not None and paho.properties is not None  # both read by paho's own code
        assert lean.properties.json() == paho.properties.json()


def test_the_installed_paho_is_one_the_lean_reading_was_checked_against() -> None:
    assert LEAN, "paho-mqtt changed: check LeanPublishClient against its _handle_publish, then extend CHECKED_PAHO"


# ---------------------------------------------------------------------------------------------- LeanPublisher
def _v5_client(cls: type[Client]) -> Client:
    return cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5)


@settings(max_examples=200, deadline=None)
@given(topic=st.text(min_size=1, max_size=300).map(str.encode), mid=st.integers(1, 65535),
       payload=st.binary(max_size=20_000))
def test_lean_publisher_sends_the_packet_paho_sends(topic: bytes, mid: int, payload: bytes) -> None:
    paho = _v5_client(Client)
    queued: list[bytes] = []
    paho._sock = object()  # type: ignore[assignment]  # "connected": _send_publish then queues its packet
    paho._packet_queue = lambda _cmd, packet, *_a: queued.append(bytes(packet))  # type: ignore[method-assign,assignment]
    paho._send_publish(mid, topic, payload, 1, False, False, None, None)
    paho._sock = None

    lean = _v5_client(LeanPublisher)
    assert isinstance(lean, LeanPublisher)
    lean._last_mid = mid - 1
    lean.publish_qos1(topic, payload)  # not connected: the packet stays queued
    assert [bytes(p["packet"]) for p in lean._out_packet] == queued
    assert lean.in_flight == 1 and lean._out_messages[mid].payload == payload


def test_lean_publisher_delivers_every_message_and_counts_every_puback(mosquitto: Mosquitto,
                                                                         topic_prefix: str) -> None:
    url = parse_mqtt_url(mosquitto.url)
    received: list[tuple[str, bytes, int]] = []
    subscribed, all_in = threading.Event(), threading.Event()
    count, window = 3000, 200
    messages = [(topic("bench_works", "ironmaking", f"stave_array_{i % 7:03d}", prefix=topic_prefix).encode(),
                 f'{{"seq": {i}, "pad": "{"x" * (i % 500)}"}}'.encode()) for i in range(count)]

    def on_message(_c: Any, _u: Any, m: MQTTMessage) -> None:
        received.append((m.topic, bytes(m.payload), m.qos))
        if len(received) == count:
            all_in.set()
    sub = make_client(url, f"{topic_prefix}-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_connect = lambda c, *_a: c.subscribe(f"{topic_prefix}/#", qos=1)
    sub.connect(url.host, url.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = make_client(url, f"{topic_prefix}-pub", client_class=LeanPublisher)
        assert isinstance(pub, LeanPublisher)
        pub.connect(url.host, url.port)
        most_in_flight = 0
        for t, payload in messages:
            while pub.in_flight >= window:
                pub.loop(0.01)
            pub.publish_qos1(t, payload)
            most_in_flight = max(most_in_flight, pub.in_flight)
        deadline = time.monotonic() + 30
        while pub.acked < count and time.monotonic() < deadline:
            pub.loop(0.05)
        pub.disconnect()
        assert pub.acked == count and pub.in_flight == 0
        assert most_in_flight == window  # the caller's window held, and was used
        assert all_in.wait(30)
        assert received == [(t.decode(), p, 1) for t, p in messages]  # every message, once, in order, QoS 1
    finally:
        sub.loop_stop()
        sub.disconnect()


def _queued_packets(client: Client) -> list[bytes]:
    queued: list[bytes] = []
    client._packet_queue = lambda _cmd, packet, *_a: queued.append(bytes(packet))  # type: ignore[method-assign,assignment]
    return queued


@settings(max_examples=100, deadline=None)
@given(mids=st.lists(st.integers(1, 65535), max_size=3000))
def test_one_write_acknowledges_a_batch_as_paho_would_one_by_one(mids: list[int]) -> None:
    paho = Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    one_by_one = _queued_packets(paho)
    for mid in mids:
        paho.ack(mid, 1)
    lean = LeanPublishClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5,
                             manual_ack=True)
    batched = _queued_packets(lean)
    lean.ack_qos1(mids)
    assert b"".join(batched) == b"".join(one_by_one)  # the same PUBACKs, in the same order
    assert len(batched) == (1 if mids else 0)


def _publish_packet(topic: bytes, mid: int, payload: bytes, qos: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + b"\x00" + payload
    length, n = bytearray(), len(body)
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | 0x80 if n else digit)
        if not n:
            break
    return bytes([0x30 | (qos << 1)]) + bytes(length) + body


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=3000),
                                   st.sampled_from([0, 1])), min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 200_000), max_size=30))
def test_buffered_reads_deliver_every_message_the_socket_brought(messages: list[tuple[bytes, bytes, int]],
                                                                 cuts: list[int]) -> None:
    # Messages arrive in arbitrary pieces; after each piece one loop_read (what a select waking up does) must
    # deliver every message that is complete by then: none may wait in the buffer for data that never comes.
    stream = b"".join(_publish_packet(t, i + 1, p, q) for i, (t, p, q) in enumerate(messages))
    ends = [sum(len(_publish_packet(t, i + 1, p, q)) for i, (t, p, q) in enumerate(messages[:k + 1]))
            for k in range(len(messages))]
    client = LeanPublishClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5,
                               manual_ack=True)
    got: list[tuple[bytes, bytes, int]] = []
    client.on_message = lambda _c, _u, m: got.append((m._topic, bytes(m.payload), m.qos))
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    try:
        sent = 0
        for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
            broker.sendall(stream[sent:cut])
            sent = max(sent, cut)
            for _ in range(len(stream[:sent]) // 65536 + 1):  # a select fires once per readable socket buffer
                client.loop_read()
            assert len(got) == sum(1 for end in ends if end <= sent)
        assert got == [(t, p, q) for t, p, q in messages]
    finally:
        client._sock = None
        ours.close()
        broker.close()


def test_with_an_unchecked_paho_every_override_steps_aside_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A paho release the overrides were not checked against gets plain paho, reads included, and one warning."""
    import ingest.mqtt_client as lean

    monkeypatch.setattr(lean, "LEAN", False)
    monkeypatch.setattr(lean, "_path_logged", False)
    with caplog.at_level(logging.INFO, logger="ingest.mqtt_client"):
        clients = [LeanPublishClient(CallbackAPIVersion.VERSION2, client_id=f"t{i}",
                                     protocol=MQTTProtocolVersion.MQTTv5) for i in range(2)]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "plain paho runs" in record.getMessage()
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"\x30\x05abcdefgh")
        clients[0]._sock = ours
        assert clients[0]._sock_recv(1) == b"\x30"  # paho's own one-byte read, nothing kept back in a buffer
        assert clients[0]._read_buffer == b""
    finally:
        clients[0]._sock = None
        ours.close()
        theirs.close()


def test_the_path_that_runs_is_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import ingest.mqtt_client as lean

    monkeypatch.setattr(lean, "_path_logged", False)
    with caplog.at_level(logging.INFO, logger="ingest.mqtt_client"):
        for i in range(3):
            LeanPublishClient(CallbackAPIVersion.VERSION2, client_id=f"t{i}", protocol=MQTTProtocolVersion.MQTTv5)
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == ["the fast path runs (own QoS 1 PUBLISH "
                                                                              "reading, 64 kB reads, batched PUBACKs)"]
