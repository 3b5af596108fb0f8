"""One way to make a paho-mqtt 2.x client from the settings: credentials, TLS and protocol version.

Every stage that talks MQTT builds its client here, so an ``mqtts://`` URL, a CA file or a password
works the same in the simulators, ingest, analytics and replay.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from smartmine.config import MqttUrl


def make_client(url: MqttUrl, client_id: str = "", *, ca_file: Path | None = None,
                protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
                clean_session: bool | None = None, manual_ack: bool = False,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """A configured but not yet connected client (callback API v2) of ``client_class`` (paho's or a subclass)."""
    kwargs: dict[str, object] = {}
    if protocol != MQTTProtocolVersion.MQTTv5 and clean_session is not None:
        kwargs["clean_session"] = clean_session
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                          manual_ack=manual_ack, **kwargs)  # type: ignore[arg-type]
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        client.tls_set_context(context)
    return client
