"""Many sites, one group centre: the uplink from each site's edge broker to the centre, generated from the catalog.

The uplink is Mosquitto's own bridge on the edge broker, not a transport of ours (docs/multisite.md):

- :func:`site_load` works out a site's messages/s, readings/s and bytes per message from the catalog's sample
  periods (one message per equipment per tick where any of its sensors is due, as the simulators and real
  gateways publish);
- :func:`queue_plan` sizes the edge broker's queue for an outage of a stated length and says what it costs
  on disk; past it Mosquitto drops (it logs "Outgoing messages are being dropped for client local.<id>")
  and the centre's ingest reports the sequence gap;
- :func:`bridge_section` is the edge broker's bridge: the site's telemetry and status out at QoS 1 under
  their own topics, its anomaly events and alerts out under ``<prefix>/_edge/<site>/...`` (the centre runs
  its own analytics and alerts on the same topics, so the site's own findings keep a place of their own),
  a persistent session (``cleansession false``) with the fixed client id ``bridge_<site>``, TLS with the
  site's certificate;
- :func:`centre_broker_config` is the centre broker: a loopback listener for its own services (as
  ``smartmine up`` runs today) and a TLS listener for the sites that requires a certificate of the group's
  CA, takes the certificate's CN as the user and that user as the client id (nobody can take over another
  site's session), with the ACL of :func:`smartmine.security.centre_acl`;
- :class:`EdgeBroker` and :class:`CentreBroker` are :class:`smartmine.services.Mosquitto` with those
  sections, for ``smartmine up --role edge|centre`` and the tests;
- ``smartmine deploy bridge | centre`` print or write the same sections for a real deployment.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from smartmine.catalog import Catalog
from smartmine.config import parse_mqtt_url
from smartmine.errors import UsageError
from smartmine.security import BRIDGE_STATE_LEVEL, EDGE_LEVEL, bridge_user, centre_acl
from smartmine.services import Mosquitto, find_binary
from smartmine.wire import check_prefix, encode_telemetry, topic

__all__ = ["CentreBroker", "EdgeBroker", "QueuePlan", "SiteLoad", "bridge_section", "centre_broker_config",
           "queue_plan", "register", "site_load"]

DEFAULT_OUTAGE_S = 86_400.0
# What Mosquitto 2.0.11's mosquitto.db holds per queued QoS 1 message beyond its topic and payload: 3,010
# queued 256-byte messages on a 38-byte topic made a 1,122,163-byte file here (374 B each, 80 B of it
# bookkeeping). The broker keeps the same queue in memory as well.
STORE_OVERHEAD_BYTES = 80
# The channels a site sends up, and where they land at the centre: telemetry and status as they are (the
# centre's ingest and analytics read them there), events and alerts under _edge/<site>/ (the centre's own
# analytics and alerts publish on <prefix>/<site>/+/+/event|alert).
SITE_CHANNELS = ("telemetry", "status")
EDGE_CHANNELS = ("event", "alert")


@dataclass(frozen=True, slots=True)
class SiteLoad:
    """What a site publishes, from the catalog's sample periods."""

    site: str
    equipment: int
    messages_per_s: float
    readings_per_s: float
    mean_message_bytes: float  # payload and topic of a whole sample, as the simulator encodes it


def _messages_per_s(periods_s: list[float]) -> float:
    """One message per tick on which any of the periods is due (ticks at the periods' common divisor)."""
    periods = sorted({max(1, round(p * 1000)) for p in periods_s})
    tick, cycle = math.gcd(*periods), math.lcm(*periods)
    due = sum(1 for t in range(0, cycle, tick) if any(t % p == 0 for p in periods))
    return due * 1000 / cycle


def site_load(catalog: Catalog, site: str, prefix: str = "smartmine") -> SiteLoad:
    if site not in catalog.sites:
        raise UsageError(f"unknown site {site!r} (known: {', '.join(catalog.site_ids())})")
    messages = readings = weighted_bytes = 0.0
    count = 0
    now = datetime.now(UTC)
    for eq in catalog.all_equipment(site):
        count += 1
        periods = [s.spec.sample_period_s for s in eq.sensors.values()]
        rate = _messages_per_s(periods)
        messages += rate
        readings += sum(1 / p for p in periods)
        # A whole sample with a long sequence number: an upper bound of the usual message (most carry fewer).
        sample = {sid: float(s.spec.normal[1]) for sid, s in eq.sensors.items()}
        size = len(encode_telemetry(now, 10_000_000, sample, src=f"sim-{site}-{eq.id}"))
        weighted_bytes += rate * (size + len(topic(site, eq.area, eq.id, "telemetry", prefix)))
    return SiteLoad(site, count, messages, readings, weighted_bytes / messages if messages else 0.0)


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """The edge broker's queue for an outage of ``outage_s``: messages, and the disk (and memory) it takes."""

    outage_s: float
    max_queued_messages: int
    disk_bytes: int

    def describe(self, load: SiteLoad) -> str:
        return (f"{load.site}: {load.messages_per_s:.1f} messages/s ({load.readings_per_s:.1f} readings/s, "
                f"{load.equipment} equipment, about {load.mean_message_bytes:.0f} B a message); an uplink outage "
                f"of {self.outage_s / 3600:g} h queues {self.max_queued_messages:,} messages, about "
                f"{self.disk_bytes / 1e6:,.0f} MB in the edge broker's persistence file (and as much memory). "
                f"Past that Mosquitto drops new messages for the bridge (its log says \"Outgoing messages are being "
                f"dropped\"), and the centre's ingest reports the gap in each source's sequence numbers.")


def queue_plan(load: SiteLoad, outage_s: float = DEFAULT_OUTAGE_S) -> QueuePlan:
    if outage_s <= 0:
        raise UsageError(f"--outage {outage_s:g} s: give a positive duration, e.g. 24h")
    messages = max(1000, math.ceil(load.messages_per_s * outage_s))
    return QueuePlan(outage_s, messages, math.ceil(messages * (load.mean_message_bytes + STORE_OVERHEAD_BYTES)))


@dataclass(frozen=True, slots=True)
class BridgeTls:
    """The site's own certificate and key, and the group CA that signed the centre's certificate."""

    cafile: Path
    certfile: Path
    keyfile: Path


def bridge_section(site: str, centre_url: str, tls: BridgeTls | None, plan: QueuePlan,
                   prefix: str = "smartmine") -> str:
    """The edge broker's bridge to the centre (append to the edge's mosquitto.conf; it sets the queue too)."""
    p = check_prefix(prefix)
    url = parse_mqtt_url(centre_url)
    if url.tls != (tls is not None):
        raise UsageError(f"--centre {url.masked()}: use mqtts:// with --cafile/--certfile/--keyfile (the site's own "
                         "certificate), or mqtt:// without them (only inside a network you trust)")
    user = bridge_user(site)
    lines = [
        f"# Uplink of {site} to the group centre, generated by `smartmine deploy bridge` from the catalog.",
        f"# Queue: {plan.max_queued_messages:,} messages = {plan.outage_s / 3600:g} h of this site's telemetry, "
        f"about {plan.disk_bytes / 1e6:,.0f} MB on disk. Mosquitto drops what comes past it (and logs it); the",
        "# centre's ingest reports the sequence gaps. max_queued_messages is per client and global: it also bounds",
        "# the local ingest's session, which is never that far behind.",
        f"max_queued_messages {plan.max_queued_messages}",
        "max_queued_bytes 0",
        "",
        f"connection {user}",
        f"address {url.host}:{url.port}",
        "bridge_protocol_version mqttv50",
        # A persistent session on both sides: the local subscription (and so the queue) survives an uplink
        # cut and an edge broker restart; in-flight QoS 1 messages are resent after a reconnect.
        "cleansession false",
        "local_cleansession false",
        # The client id the centre sees; the centre's site listener replaces it by the certificate's user
        # anyway (use_username_as_clientid), so they are the same name.
        f"remote_clientid {user}",
        f"local_clientid {user}_local",
        "start_type automatic",
        # Reconnect 5 to 30 s after a failure (decorrelated jitter): after a centre broker restart, the
        # centre's ingest (first retry after 1 s) is subscribed again before the sites' backlogs arrive.
        "restart_timeout 5 30",
        # A cut link is noticed by the keepalive: 1.5 x 15 s.
        "keepalive_interval 15",
        "try_private true",
        "notifications true",
        f"notification_topic {p}/{BRIDGE_STATE_LEVEL}/{site}/state",
    ]
    for channel in SITE_CHANNELS:
        lines.append(f"topic +/+/{channel} out 1 {p}/{site}/ {p}/{site}/")
    for channel in EDGE_CHANNELS:
        lines.append(f"topic +/+/{channel} out 1 {p}/{site}/ {p}/{EDGE_LEVEL}/{site}/")
    if tls is not None:
        lines += [f"bridge_cafile {tls.cafile}", f"bridge_certfile {tls.certfile}", f"bridge_keyfile {tls.keyfile}",
                  "bridge_tls_version tlsv1.2", "bridge_insecure false"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class SiteListener:
    """The centre's listener for the sites' bridges (and gateways): TLS with client certificates."""

    host: str
    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    acl_file: Path


def site_listener_section(listener: SiteListener) -> str:
    """The centre broker's listener for the sites (needs ``per_listener_settings true``)."""
    return "\n".join([
        "# The sites' bridges: a certificate of the group CA is the login (its CN is the user, bridge_<site>), the",
        "# user is the client id (no site can take over another's session), the ACL lets each publish its own",
        "# site's topics only. Generated by `smartmine deploy centre` from the catalog.",
        f"listener {listener.port} {listener.host}",
        f"cafile {listener.cafile}",
        f"certfile {listener.certfile}",
        f"keyfile {listener.keyfile}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {listener.acl_file}",
    ]) + "\n"


def centre_broker_config(data_dir: Path, local_port: int, listener: SiteListener, local_host: str = "127.0.0.1",
                         max_queued_messages: int = 1_000_000, run_as: str | None = None) -> str:
    """A whole mosquitto.conf for the centre: loopback for its own services, TLS for the sites."""
    lines = [
        "# The group centre's broker (smartmine up --role centre, smartmine deploy centre).",
        *([f"user {run_as}"] if run_as else []),
        "per_listener_settings true",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 1",
        f"max_queued_messages {max_queued_messages}",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "set_tcp_nodelay true",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "",
        "# The centre's own services (ingest workers, analytics, alerts) on loopback, as smartmine up runs them.",
        f"listener {local_port} {local_host}",
        "allow_anonymous true",
        "",
    ]
    return "\n".join(lines) + site_listener_section(listener)


@dataclass
class EdgeBroker(Mosquitto):
    """A site's broker with the bridge to the centre (``smartmine up --role edge``)."""

    bridge: str = ""

    def _command(self) -> list[str]:
        self.extra_config = [*self.extra_config, *self.bridge.splitlines()]
        try:
            return super()._command()
        finally:
            self.extra_config = self.extra_config[: len(self.extra_config) - len(self.bridge.splitlines())]


@dataclass
class CentreBroker(Mosquitto):
    """The centre's broker: loopback for its services, a TLS listener with the site ACL for the sites."""

    site_listener: SiteListener | None = None
    catalog: Catalog | None = field(default=None, repr=False)
    prefix: str = "smartmine"

    def _command(self) -> list[str]:
        assert self.site_listener is not None and self.catalog is not None
        binary = find_binary("mosquitto", "mosquitto")
        self.site_listener.acl_file.write_text(centre_acl(self.catalog, self.prefix), encoding="utf-8")
        text = centre_broker_config(self.data_dir, self.port, self.site_listener, self.host,
                                    self.max_queued_messages, run_as=pwd.getpwuid(os.getuid()).pw_name)
        self.config_file.write_text(text, encoding="utf-8")
        return [binary, "-c", str(self.config_file)]


# ------------------------------------------------------------------------------------------- smartmine deploy
def _tls_from(args: argparse.Namespace) -> BridgeTls | None:
    files = (args.cafile, args.certfile, args.keyfile)
    if not any(files):
        return None
    if not all(files):
        raise UsageError("--cafile, --certfile and --keyfile go together (the group CA, the site's certificate "
                         "and its key)")
    for f in files:
        if not Path(f).is_file():
            raise UsageError(f"{f}: no such file")
    return BridgeTls(*(Path(f).resolve() for f in files))


def _write_or_print(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"{output}: written", file=sys.stderr)


def _deploy_bridge(args: argparse.Namespace) -> int:
    from smartmine.cli import catalog_from, settings_from

    prefix = settings_from(args).topic_prefix
    load = site_load(catalog_from(args), args.site, prefix)
    plan = queue_plan(load, args.outage)
    text = bridge_section(args.site, args.centre, _tls_from(args), plan, prefix)
    print(plan.describe(load), file=sys.stderr)
    _write_or_print(text, args.output)
    return 0


def _deploy_centre(args: argparse.Namespace) -> int:
    from smartmine.cli import catalog_from, settings_from

    prefix = settings_from(args).topic_prefix
    catalog = catalog_from(args)
    if args.acl_output is not None:
        _write_or_print(centre_acl(catalog, prefix), args.acl_output)
    host, _, port = args.site_listener.rpartition(":")
    listener = SiteListener(host or "0.0.0.0", int(port or 8883), args.cafile, args.certfile, args.keyfile,
                            args.acl_file)
    _write_or_print(site_listener_section(listener), args.output)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from smartmine.cli import parse_duration

    deploy = sub.add_parser("deploy", help="broker configuration of a group: a site's bridge, the centre's listener")
    dsub = deploy.add_subparsers(dest="deploy_command", metavar="WHAT", required=True)
    b = dsub.add_parser("bridge", help="the edge broker's bridge to the centre, sized from the catalog",
                        description="Print (or write) the bridge section of a site's edge broker: the site's "
                                    "telemetry, status, anomaly events and alerts out to the centre at QoS 1, a "
                                    "persistent session with the client id bridge_<site>, TLS with the site's "
                                    "certificate, and a queue sized for --outage of this site's telemetry.")
    b.add_argument("--site", required=True, help="catalog site id")
    b.add_argument("--centre", required=True, metavar="URL", help="the centre broker's site listener, "
                                                                   "mqtts://host:8883")
    b.add_argument("--outage", type=parse_duration, default=DEFAULT_OUTAGE_S, metavar="D",
                   help="uplink outage the queue must ride out (default 24h)")
    b.add_argument("--cafile", help="the group CA's certificate (verifies the centre)")
    b.add_argument("--certfile", help="this site's certificate (CN bridge_<site>, signed by the group CA)")
    b.add_argument("--keyfile", help="its private key")
    b.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    b.set_defaults(func=_deploy_bridge)
    c = dsub.add_parser("centre", help="the centre broker's TLS listener for the sites, and its ACL",
                        description="Print (or write) the centre broker's listener for the sites' bridges "
                                    "(certificate login, user = client id) and, with --acl-output, its ACL "
                                    "generated from the catalog. The broker needs per_listener_settings true.")
    c.add_argument("--site-listener", default="0.0.0.0:8883", metavar="HOST:PORT")
    c.add_argument("--cafile", type=Path, default=Path("/mosquitto/certs/group-ca.pem"))
    c.add_argument("--certfile", type=Path, default=Path("/mosquitto/certs/centre.pem"))
    c.add_argument("--keyfile", type=Path, default=Path("/mosquitto/certs/centre.key"))
    c.add_argument("--acl-file", type=Path, default=Path("/mosquitto/config/centre.acl"),
                   help="where the broker reads the ACL")
    c.add_argument("--acl-output", type=Path, help="write the ACL generated from the catalog here")
    c.add_argument("-o", "--output", type=Path, help="write the listener section to FILE instead of stdout")
    c.set_defaults(func=_deploy_centre)
