"""paho-mqtt's client, with a cheaper way in for the messages ingest receives by the thousand per second.

paho builds an MQTT 5 ``Properties`` object for every PUBLISH it reads, even one that carries no property:
about 20 µs of pure Python per message, the largest cost paho adds per message (profile in
docs/benchmarks.md, *ingest*). :class:`LeanPublishClient` reads a QoS 1 MQTT 5 PUBLISH without properties
itself and hands paho's own ``MQTTMessage`` to paho's own dispatch; any other packet (QoS 0 or 2, properties
such as a topic alias, MQTT 3.1.1, anything short) goes through paho unchanged. The override touches paho
internals (``_handle_publish``, ``_in_packet``), so it is used only with the paho versions it was checked
against; tests/test_ingest_validate.py compares it with paho's own decoding.
"""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

# paho versions whose PUBLISH handling this mirrors (client.Client._handle_publish, _packet.decode_publish).
CHECKED_PAHO = ("2.1.", "2.2.")
LEAN = paho_version.startswith(CHECKED_PAHO)

_U16 = struct.Struct("!H")
_QOS_MASK, _QOS_1, _DUP, _RETAIN = 0x06, 0x02, 0x08, 0x01


class LeanPublishClient(mqtt.Client):
    """``paho.mqtt.client.Client`` that reads a QoS 1 MQTT 5 PUBLISH without properties in a few steps."""

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        header = self._in_packet["command"]
        if (not LEAN or self._protocol != MQTTProtocolVersion.MQTTv5 or header & _QOS_MASK != _QOS_1
                or len(packet) < 5):
            return super()._handle_publish()
        # topic length, topic, packet id, property length (0: none), payload
        at = 2 + _U16.unpack_from(packet, 0)[0]
        if len(packet) < at + 3 or packet[at + 2] != 0:
            return super()._handle_publish()
        message = mqtt.MQTTMessage(_U16.unpack_from(packet, at)[0], bytes(packet[2:at]))
        message.dup = bool(header & _DUP)
        message.qos = 1
        message.retain = bool(header & _RETAIN)
        message.payload = bytes(packet[at + 3:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        return MQTTErrorCode.MQTT_ERR_SUCCESS if self._manual_ack else self._send_puback(message.mid)
