"""Ops commands to a running alerts service, over MQTT 5 request/response.

The service owns the alert state; the CLI (`smartmine alerts list | ack | silence ...`) sends it a
request and waits for the reply, so it works from any terminal that reaches the broker (also
``docker compose exec alerts smartmine alerts list``), and two ops acknowledging at once cannot
corrupt a shared file.

- request: ``<prefix>/_ops/alerts/request``, JSON ``{"v": 1, "cmd": ..., "args": {...}, "by": "user@host"}``,
  with the MQTT 5 properties *Response Topic* and *Correlation Data*
  and a *Message Expiry Interval* equal to the CLI's timeout, so the broker drops a command the service
  did not receive in time instead of delivering it after a restart
- reply: on the given response topic, JSON ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
  The service replies only inside ``<prefix>/_ops/alerts/reply/<user>/<token>`` (one level each, no
  wildcards); the broker's ACL lets each user read only its own ``<user>`` branch, so a reply never lands on
  an alert topic or with someone else. A request with another response topic is refused and logged.
- every request is validated (:class:`Request`); a bad one is refused with the reason, never a crash.

``_ops`` cannot be a site id (ids start with a letter), so these topics never collide with equipment
topics. Whoever may publish to the request topic may acknowledge alerts: restrict it with the broker's
ACL (deploy/mosquitto/acl does).
"""

from __future__ import annotations

import getpass
import json
import math
import queue
import socket
import uuid
from typing import Annotated, Any, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartmine.config import Settings
from smartmine.errors import UsageError
from smartmine.mqtt import make_client

COMMANDS = ("list", "ack", "silence", "unsilence", "silences")
SERVICE_LOGIN = "alerts"  # the service's own broker user (deploy/mosquitto/acl)
ANONYMOUS = "anonymous"  # the reply branch of a client without a broker login (a broker without passwords)
_Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ListArgs(_Args):
    all: bool = False


class IdArgs(_Args):
    id: _Id


class SilenceArgs(_Args):
    site: _Id | None = None
    equipment: _Id | None = None
    rule: Annotated[str, Field(min_length=1, max_length=200)] = "*"
    duration_s: Annotated[float, Field(gt=0, le=30 * 86400, strict=False)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class NoArgs(_Args):
    pass


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1] = 1
    by: Annotated[str, Field(min_length=1, max_length=200)] = "unknown"


class ListRequest(_Request):
    cmd: Literal["list"]
    args: ListArgs = Field(default_factory=ListArgs)


class AckRequest(_Request):
    cmd: Literal["ack"]
    args: IdArgs


class SilenceRequest(_Request):
    cmd: Literal["silence"]
    args: SilenceArgs


class UnsilenceRequest(_Request):
    cmd: Literal["unsilence"]
    args: IdArgs


class SilencesRequest(_Request):
    cmd: Literal["silences"]
    args: NoArgs = Field(default_factory=NoArgs)


Command = ListRequest | AckRequest | SilenceRequest | UnsilenceRequest | SilencesRequest


class Request(BaseModel):
    """One ops command as the service accepts it: anything else is refused with pydantic's reason."""

    command: Annotated[Command, Field(discriminator="cmd")]


def parse_request(payload: bytes) -> Command:
    """The validated command, or ``ValueError`` with a reason short enough for a reply."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the command is not JSON: {exc}") from None
    try:
        return Request.model_validate({"command": body}).command
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'command'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise ValueError(f"bad command: {problems}") from None


def request_topic(prefix: str) -> str:
    return f"{prefix}/_ops/alerts/request"


def reply_space(prefix: str) -> str:
    """Where every reply goes; ``<reply_space>/<user>/<token>``, each user reads only its own branch."""
    return f"{prefix}/_ops/alerts/reply"


def reply_topic(prefix: str, user: str | None, token: str) -> str:
    return f"{reply_space(prefix)}/{user or ANONYMOUS}/{token}"


def reply_topic_ok(prefix: str, name: str) -> bool:
    """Whether ``name`` is a reply topic the service may publish to: exactly one user and one token level."""
    space = reply_space(prefix) + "/"
    if not name.startswith(space):
        return False
    parts = name[len(space):].split("/")
    return len(parts) == 2 and all(p and not set(p) & {"+", "#", "\x00"} for p in parts)


def operator() -> str:
    """Who is acting, for the audit trail: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def send_command(settings: Settings, cmd: str, args: dict[str, Any] | None = None, *, by: str | None = None,
                 timeout_s: float | None = None) -> Any:
    """Send one command to the running service and return its result; :class:`UsageError` on any failure."""
    if cmd not in COMMANDS:
        raise UsageError(f"unknown alerts command {cmd!r} (known: {', '.join(COMMANDS)})")
    if settings.mqtt.username == SERVICE_LOGIN:
        # The shipped broker makes every client id the login (use_username_as_clientid): a command sent as
        # the service's user would take the running service's session over and discard its queued events.
        raise UsageError(f"refusing to send an alerts command as broker user {SERVICE_LOGIN!r}, the service's own "
                         "login: the broker would hand this command the service's session; log in as ops "
                         "(SMARTMINE_MQTT_USERNAME=ops and its password)")
    timeout = timeout_s if timeout_s is not None else settings.alerts.command_timeout_s
    token = uuid.uuid4().hex
    prefix = settings.topic_prefix
    replies: queue.Queue[bytes] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client = make_client(settings.mqtt, f"smartmine-alerts-cli-{token[:8]}", ca_file=settings.mqtt_ca_file)
    client.on_message = lambda _c, _u, msg: replies.put(bytes(msg.payload))
    client.on_subscribe = lambda *_a: subscribed.put(True)
    reply = reply_topic(prefix, settings.mqtt.username, token)
    client.on_connect = lambda c, _u, _f, rc, _p: (c.subscribe(reply, qos=1)
                                                   if not rc.is_failure else subscribed.put(False))
    try:
        client.connect(settings.mqtt.host, settings.mqtt.port, keepalive=30)
    except OSError as exc:
        raise UsageError(f"cannot reach the MQTT broker at {settings.mqtt.masked()}: {exc}") from None
    client.loop_start()
    try:
        try:
            if not subscribed.get(timeout=timeout):
                raise UsageError(f"the MQTT broker at {settings.mqtt.masked()} refused the connection")
        except queue.Empty:
            raise UsageError(f"no answer from the MQTT broker at {settings.mqtt.masked()} in {timeout:g} s") from None
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply
        props.CorrelationData = token.encode()
        # The service's session is persistent: without an expiry, a command sent while it is down would
        # be executed when it comes back, long after this CLI gave up (an ack nobody is waiting for).
        props.MessageExpiryInterval = max(1, math.ceil(timeout))
        body = {"v": 1, "cmd": cmd, "args": args or {}, "by": by or operator()}
        client.publish(request_topic(prefix), json.dumps(body).encode(), qos=1, properties=props)
        try:
            raw = replies.get(timeout=timeout)
        except queue.Empty:
            raise UsageError(f"no alerts service answered on {request_topic(prefix)} within {timeout:g} s; "
                             "is `smartmine alerts run` running against this broker and topic prefix?") from None
    finally:
        client.loop_stop()
        client.disconnect()
    answer = json.loads(raw)
    if not answer.get("ok"):
        raise UsageError(str(answer.get("error", "the alerts service refused the command")))
    return answer.get("result")
