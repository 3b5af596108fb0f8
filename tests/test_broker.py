"""The real Mosquitto broker carries a telemetry message from a publisher to a subscriber."""

from __future__ import annotations

import queue
import threading
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from smartmine.config import parse_mqtt_url
from smartmine.mqtt import make_client
from smartmine.services import Mosquitto
from smartmine.wire import encode_telemetry, parse_telemetry, parse_topic, subscription, topic


def test_telemetry_crosses_the_real_broker(mosquitto: Mosquitto, topic_prefix: str) -> None:
    url = parse_mqtt_url(mosquitto.url)
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()

    sub = make_client(url, f"{topic_prefix}-sub")
    sub.on_message = lambda _c, _u, msg: received.put(msg)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_connect = lambda c, *_a: c.subscribe(subscription("telemetry", topic_prefix), qos=1)
    sub.connect(url.host, url.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "subscription was not acknowledged by the broker"
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}-pub")
        pub.connect(url.host, url.port)
        pub.loop_start()
        ts = datetime(2026, 11, 27, 8, 0, 0, 250000, tzinfo=UTC)
        name = topic("yanshan_mine", "face_1203", "gas_upper_corner_1203", prefix=topic_prefix)
        info = pub.publish(name, encode_telemetry(ts, 7, {"ch4_pct": 0.42, "co_ppm": (3.0, "uncertain")}), qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()

        msg = received.get(timeout=10)
        assert parse_topic(msg.topic, topic_prefix).equipment == "gas_upper_corner_1203"
        payload = parse_telemetry(bytes(msg.payload))
        assert payload.ts == ts
        assert payload.seq == 7
        assert payload.values() == {"ch4_pct": (0.42, "good"), "co_ppm": (3.0, "uncertain")}
    finally:
        sub.loop_stop()
        sub.disconnect()
