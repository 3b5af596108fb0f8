"""paho-mqtt's client, with a cheaper way in for the messages ingest receives by the thousand per second.

paho builds an MQTT 5 ``Properties`` object for every PUBLISH it reads, even one that carries no property:
about 20 µs of pure Python per message, the largest cost paho adds per message (profile in
docs/benchmarks.md, *ingest*). :class:`LeanPublishClient` reads a QoS 1 MQTT 5 PUBLISH without properties
itself and hands paho's own ``MQTTMessage`` to paho's own dispatch; any other packet (QoS 0 or 2, properties
such as a topic alias, MQTT 3.1.1, anything short) goes through paho unchanged. The override touches paho
internals (``_handle_publish``, ``_in_packet``), so it is used only with the paho versions it was checked
against (``CHECKED_PAHO``, and pyproject.toml pins paho-mqtt to them; with any other paho every override
below steps aside for paho's own code, and the first client logs which path runs);
tests/test_ingest_mqtt_client.py compares it with paho's own decoding. It also acknowledges a batch
of messages with one write (``ack_qos1``: the PUBACKs paho's ``ack`` sends one at a time, byte for byte), and
both classes below read the socket 64 kB at a time instead of three ``recv`` calls and a ``select`` per
packet (``_BufferedReads``).

:class:`LeanPublisher` is the other direction, for the ingest benchmark's load generator: paho's
``publish()`` and PUBACK handling cost ~70 µs of Python per QoS 1 message (a wake-up byte on paho's socket
pair, a ``Properties`` and two ``ReasonCode`` objects per PUBACK, a scan of every in-flight message after
each PUBACK), CPU that the benchmark's publisher takes from the system it measures on the same cores.
It builds the same PUBLISH packet paho builds (a test compares them byte for byte) and queues it on paho's
own connection, and counts a successful PUBACK without building objects; everything else (connect, reads,
a PUBACK with an error or properties, reconnection) is paho's.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

# paho versions whose PUBLISH handling this mirrors (client.Client._handle_publish, _packet.decode_publish).
CHECKED_PAHO = ("2.1.", "2.2.")
LEAN = paho_version.startswith(CHECKED_PAHO)

log = logging.getLogger(__name__)
_path_logged = False


def log_path_once() -> bool:
    """Log, once per process, whether the overrides run or plain paho does (an unchecked paho version)."""
    global _path_logged
    if not _path_logged:
        _path_logged = True
        if LEAN:
            log.info("paho-mqtt %s: the fast path runs (own QoS 1 PUBLISH reading, 64 kB reads, batched PUBACKs)",
                     paho_version)
        else:
            log.warning("paho-mqtt %s is not a version the fast path was checked against (%s): plain paho runs, "
                        "slower (docs/ingest.md, 'Fast path')", paho_version, ", ".join(v + "x" for v in CHECKED_PAHO))
        return True
    return False

_U16 = struct.Struct("!H")
_READ_BYTES = 65536
_QOS_MASK, _QOS_1, _DUP, _RETAIN = 0x06, 0x02, 0x08, 0x01
_PUBLISH_QOS_1 = b"\x32"
_PUBACK_WORD = 0x4002_0000  # PUBACK, remaining length 2, then the packet id: paho's ack(mid, 1), as one integer
_NO_PROPERTIES = b"\x00"


class _BufferedReads(mqtt.Client):
    """paho reads a packet with three ``recv`` calls (its first byte, its length, the rest) and handles one
    packet per ``select`` in its network loop; this reads up to 64 kB at once and hands paho its bytes from
    memory, and ``loop_read`` goes on until the bytes read are used up, so nothing waits in the buffer for a
    ``select`` that would not come. Cleared with the socket, so no byte crosses to a new connection."""

    _read_buffer = b""
    _read_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        log_path_once()

    def _sock_recv(self, bufsize: int) -> bytes:
        if not LEAN:
            return super()._sock_recv(bufsize)
        if self._read_at >= len(self._read_buffer):
            data = super()._sock_recv(_READ_BYTES)  # BlockingIOError when nothing is waiting, as before
            if not data:
                return data  # the connection closed
            self._read_buffer, self._read_at = data, 0
        chunk = self._read_buffer[self._read_at:self._read_at + bufsize]
        self._read_at += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while LEAN and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_at < len(self._read_buffer) and self._sock:
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        self._read_buffer, self._read_at = b"", 0
        super()._sock_close()


class LeanPublishClient(_BufferedReads):
    """``paho.mqtt.client.Client`` that reads a QoS 1 MQTT 5 PUBLISH without properties in a few steps, and
    acknowledges many QoS 1 messages with one write."""

    def ack_qos1(self, mids: Sequence[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (manual acknowledgement) in the order given, as one write.

        The bytes are those of ``ack(mid, 1)`` for each (paho's 4-byte PUBACK: MQTT 5 omits the reason code
        of a success), queued as one packet: one wake-up of the network thread and one ``send`` for a whole
        batch instead of one of each per message, on the thread that also reads every message.
        """
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if not LEAN:
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            for mid in mids:
                rc = self.ack(mid, 1) or rc
            return rc
        packet = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
        return self._packet_queue(mqtt.PUBACK, packet, 0, 1)

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


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1-4 bytes, 7 bits each, least significant first)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


class LeanPublisher(_BufferedReads):
    """``paho.mqtt.client.Client`` with a cheap QoS 1 publish for a load generator (MQTT 5 only).

    ``publish_qos1(topic, payload)`` sends at once; the caller keeps ``in_flight`` within the broker's receive
    maximum (run ``loop()`` until PUBACKs come back), as paho's own queue is not used. ``acked`` counts the
    successful PUBACKs; a PUBACK with an error reason goes through paho's handling and ``on_publish``.
    """

    acked = 0

    @property
    def in_flight(self) -> int:
        return self._inflight_messages

    def publish_qos1(self, topic: bytes, payload: bytes) -> mqtt.MQTTErrorCode:
        if not LEAN or self._protocol != MQTTProtocolVersion.MQTTv5:
            raise RuntimeError(f"LeanPublisher needs MQTT 5 and paho {' or '.join(CHECKED_PAHO)}x")
        mid = self._mid_generate()
        message = mqtt.MQTTMessage(mid, topic)
        message.payload = payload
        message.qos = 1
        message.state = mqtt.mqtt_ms_wait_for_puback
        # fixed header, remaining length; topic; packet id; property length 0; payload (paho's _send_publish)
        packet = b"".join((_PUBLISH_QOS_1, _remaining_length(len(topic) + len(payload) + 5),
                           _U16.pack(len(topic)), topic, _U16.pack(mid), _NO_PROPERTIES, payload))
        with self._out_message_mutex:
            if mid in self._out_messages:
                raise RuntimeError("65535 messages in flight: keep in_flight below the broker's receive maximum")
            self._out_messages[mid] = message
            self._inflight_messages += 1
        self._out_packet.append({"command": mqtt.PUBLISH, "mid": mid, "qos": 1, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": message.info})
        return self.loop_write()  # no wake-up byte: the caller runs the loop itself

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        # MQTT 5 PUBACK: packet id, then a reason code (omitted when 0, success) and properties (omitted)
        if cmd != "PUBACK" or len(packet) > 3 or len(packet) < 2 or (len(packet) == 3 and packet[2] >= 0x80):
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            message = self._out_messages.pop(_U16.unpack_from(packet, 0)[0], None)
            if message is not None:
                message.info._set_as_published()
                self._inflight_messages -= 1
                self.acked += 1
        return MQTTErrorCode.MQTT_ERR_SUCCESS
