"""Who may do what on the broker, and the key material to prove who is who.

- :func:`broker_acl` turns the catalog into a Mosquitto ACL: each site's simulator (gateway) may publish only
  that site's ``telemetry`` and ``status`` topics; ``ingest`` may only read telemetry (and publish its dead
  letters); only ``analytics`` may publish anomaly events and only ``alerts`` alert state; ``ops`` reads.
  ``deploy/mosquitto/acl`` is this output for the built-in catalog (``smartmine security acl`` regenerates
  it; a test keeps the two identical).
- :func:`write_password_file` hashes passwords with Mosquitto's own ``mosquitto_passwd``.
- :func:`make_ca` / :func:`issue_certificate` make a private CA and a server certificate with the
  ``openssl`` command line, for tests and for a first local TLS set-up (production uses the site's PKI).

Secrets never come from here: callers pass passwords they took from the environment, and nothing in this
module logs or stores them in clear.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from smartmine.catalog import Catalog
from smartmine.services import ServiceError, find_binary
from smartmine.wire import DEFAULT_PREFIX, check_prefix

__all__ = [
    "DEADLETTER_TOPIC_LEVEL",
    "OPS_REPLY",
    "OPS_REQUEST",
    "SERVICE_USERS",
    "TlsFiles",
    "broker_acl",
    "broker_users",
    "ingest_user",
    "issue_certificate",
    "make_ca",
    "simulator_user",
    "write_password_file",
]

# Ingest republishes every rejected message under <prefix>/<this>/... for whoever investigates bad input.
DEADLETTER_TOPIC_LEVEL = "deadletter"
# The alerts service's command topics (alerts/commands.py): "_ops" can never be a site id.
OPS_REQUEST = "_ops/alerts/request"
OPS_REPLY = "_ops/alerts/reply"

# The broker users of the pipeline's own services and of people (the gateways have one user per site).
SERVICE_USERS = ("ingest", "analytics", "alerts", "alerts_health", "ops")


def simulator_user(site: str) -> str:
    """The broker user of a site's gateway or simulator: it may publish that site's data only."""
    return f"sim_{site}"


def broker_users(catalog: Catalog) -> list[str]:
    """Every broker user the ACL names: the services, ops, and one gateway user per site."""
    return [*SERVICE_USERS, *(simulator_user(site) for site in catalog.site_ids())]


def ingest_user(worker: int) -> str:
    """The broker user of ingest worker ``worker`` (1, 2, ...): with client id = login each needs its own."""
    return "ingest" if worker == 1 else f"ingest_{worker}"


def broker_acl(catalog: Catalog, prefix: str = DEFAULT_PREFIX, ingest_workers: int = 1) -> str:
    """The Mosquitto ACL file for ``catalog``'s sites under topic ``prefix`` (deny by default).

    ``ingest_workers`` > 1 adds users ``ingest_2``... with ingest's rights, for workers sharing a ``--group``.
    """
    p = check_prefix(prefix)
    lines = [
        "# Who may read and write which topics. Topic scheme: <prefix>/<site>/<area>/<equipment>/<channel>.",
        "# Generated from the catalog by `smartmine security acl`; do not edit, regenerate it after adding a",
        "# site. Anything not granted is denied: the broker drops a publish to a topic the user may not write",
        "# and never delivers a message the user may not read. Passwords: deploy/mosquitto/entrypoint.sh.",
        "",
        "# ingest reads every site's telemetry and publishes only the dead letters of what it rejects (and the",
        "# gaps it finds); it reads the broker's count of dropped messages.",
    ]
    for worker in range(1, ingest_workers + 1):
        lines += [f"user {ingest_user(worker)}", f"topic read {p}/+/+/+/telemetry",
                  f"topic write {p}/{DEADLETTER_TOPIC_LEVEL}/#", "topic read $SYS/broker/publish/messages/dropped", ""]
    lines += [
        "# analytics reads telemetry and publisher status and is the only one to publish anomaly events.",
        "user analytics",
        f"topic read {p}/+/+/+/telemetry",
        f"topic read {p}/+/+/+/status",
        f"topic readwrite {p}/+/+/+/event",
        "",
        "# alerts: events in, retained alert state out (only alerts publishes it), ops commands in and replies out.",
        "# It may send itself a command and read the replies to its login, but with client id = login (mosquitto.conf)",
        "# a second connection as alerts takes the service's session over: `smartmine alerts` refuses to.",
        f"# Replies go to {p}/{OPS_REPLY}/<user>/<token> only, and each user reads only its own branch.",
        "user alerts",
        f"topic read {p}/+/+/+/event",
        f"topic readwrite {p}/+/+/+/alert",
        f"topic readwrite {p}/{OPS_REQUEST}",
        f"topic write {p}/{OPS_REPLY}/#",
        f"topic read {p}/{OPS_REPLY}/alerts/#",
        "",
        "# alerts' healthcheck: one `smartmine alerts list` round trip with a login of its own, because a second",
        "# connection as alerts would take the service's session over.",
        "user alerts_health",
        f"topic write {p}/{OPS_REQUEST}",
        f"topic read {p}/{OPS_REPLY}/alerts_health/#",
        "",
        "# ops at a terminal (smartmine alerts, smartmine record): see everything, act only through alerts.",
        "user ops",
        f"topic read {p}/#",
        f"topic write {p}/{OPS_REQUEST}",
        f"topic read {p}/{OPS_REPLY}/ops/#",
        "topic read $SYS/#",
    ]
    for site in catalog.site_ids():
        lines += [
            "",
            f"# {site}'s gateway or simulator: this site's telemetry and status (its last will), nothing else.",
            f"user {simulator_user(site)}",
            f"topic write {p}/{site}/+/+/telemetry",
            f"topic write {p}/{site}/+/+/status",
        ]
    return "\n".join(lines) + "\n"


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file for ``users`` (name -> password), hashed by ``mosquitto_passwd``.

    The password goes to ``mosquitto_passwd -b`` as an argument of a short-lived child; it is never
    written to disk in clear and never logged.
    """
    binary = find_binary("mosquitto_passwd", "mosquitto")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    path.chmod(0o600)
    for name, password in users.items():
        if not name or ":" in name or not password:
            raise ValueError(f"broker user {name!r}: a name without ':' and a non-empty password are required")
        proc = subprocess.run([binary, "-b", str(path), name, password], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise ServiceError(f"mosquitto_passwd failed for user {name!r}: {proc.stderr.strip() or proc.stdout}")
    return path


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: a certificate, its private key and the CA certificate that signed it."""

    cert: Path
    key: Path
    ca: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run([find_binary("openssl", "openssl"), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_ca(directory: Path, name: str = "smartmine test CA", days: int = 30) -> TlsFiles:
    """A self-signed CA (EC P-256) in ``directory``: ``ca.pem`` and ``ca.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key.chmod(0o600)
    return TlsFiles(cert=cert, key=key, ca=cert)


def issue_certificate(ca: TlsFiles, directory: Path, hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                      name: str = "server", days: int = 30) -> TlsFiles:
    """A server certificate for ``hosts`` (DNS names or IP addresses) signed by ``ca``."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    host_list = list(hosts)
    alt = []
    for host in host_list:
        try:
            ipaddress.ip_address(host)
            alt.append(f"IP:{host}")
        except ValueError:
            alt.append(f"DNS:{host}")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={host_list[0]}")
    with tempfile.NamedTemporaryFile("w", suffix=".ext", dir=directory, delete=False) as ext:
        ext.write(f"subjectAltName={','.join(alt)}\nextendedKeyUsage=serverAuth\n"
                  "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    try:
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
                 "-out", str(cert), "-days", str(days), "-extfile", ext.name)
    finally:
        Path(ext.name).unlink(missing_ok=True)
        csr.unlink(missing_ok=True)
    key.chmod(0o600)
    return TlsFiles(cert=cert, key=key, ca=ca.cert)


# ---------------------------------------------------------------------------------------- the group centre
# Where a site's own anomaly events and alerts land at the centre (smartmine/bridge.py): "_edge" can never be a
# site id, so they never mix with the centre's own analytics and alerts on <prefix>/<site>/+/+/event|alert.
EDGE_LEVEL = "_edge"
# The bridges' connection state (1 up, 0 down: Mosquitto's notification, a last will) at the centre.
BRIDGE_STATE_LEVEL = "_bridge"


def bridge_user(site: str) -> str:
    """The centre's broker user of a site's bridge: its certificate's CN and its client id."""
    return f"bridge_{site}"


def centre_acl(catalog: Catalog, prefix: str = DEFAULT_PREFIX, ingest_workers: int = 2) -> str:
    """The centre broker's ACL for the sites' listener: :func:`broker_acl` plus one bridge user per site.

    A site's bridge may publish that site's telemetry and status, its own events and alerts under
    ``<prefix>/_edge/<site>/`` and its connection state; nothing of another site, nothing the centre's
    services publish.
    """
    p = check_prefix(prefix)
    # The centre runs several ingest workers on one shared subscription, each with its own login (client id =
    # login: two workers sharing one would take each other's session over).
    lines = [broker_acl(catalog, prefix, ingest_workers).rstrip("\n")]
    for site in catalog.site_ids():
        lines += [
            "",
            f"# {site}'s bridge from its edge broker (smartmine deploy bridge): this site's data, nothing else.",
            f"user {bridge_user(site)}",
            f"topic write {p}/{site}/+/+/telemetry",
            f"topic write {p}/{site}/+/+/status",
            f"topic write {p}/{EDGE_LEVEL}/{site}/+/+/event",
            f"topic write {p}/{EDGE_LEVEL}/{site}/+/+/alert",
            f"topic write {p}/{BRIDGE_STATE_LEVEL}/{site}/state",
        ]
    return "\n".join(lines) + "\n"


def issue_client_certificate(ca: TlsFiles, directory: Path, name: str, days: int = 30) -> TlsFiles:
    """A client certificate with CN ``name`` signed by ``ca``: a site's bridge login at the centre."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}")
    with tempfile.NamedTemporaryFile("w", suffix=".ext", dir=directory, delete=False) as ext:
        ext.write("extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n"
                  "keyUsage=critical,digitalSignature\n")
    try:
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
                 "-out", str(cert), "-days", str(days), "-extfile", ext.name)
    finally:
        Path(ext.name).unlink(missing_ok=True)
        csr.unlink(missing_ok=True)
    key.chmod(0o600)
    return TlsFiles(cert=cert, key=key, ca=ca.cert)
