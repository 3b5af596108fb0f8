"""ingest's lean PUBLISH reading gives the on_message callback exactly what paho's own reading gives."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt_client import LEAN, LeanPublishClient

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
