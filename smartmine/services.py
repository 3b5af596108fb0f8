"""Run a real Mosquitto broker and a real InfluxDB 1.x (``influxd``) as child processes.

Used by the test fixtures and by ``smartmine up``: each service gets a free loopback port, a data folder
and a log file, is waited on until it answers, and is stopped (TERM, then KILL) when done.
The binaries come from Debian's ``mosquitto`` and ``influxdb`` packages.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartmine.security import TlsFiles

__all__ = ["Influxd", "Mosquitto", "ServiceError", "free_port", "wait_for"]


class ServiceError(RuntimeError):
    """A service binary is missing, its port is taken, or it did not become ready. Says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(check: object, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``check()`` until it returns truthy, at most ``timeout_s``; raise :class:`ServiceError` after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(interval_s)
    raise ServiceError(f"{what} not ready after {timeout_s:.0f} s")


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Stop a child gracefully (SIGTERM, so it can flush), then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def find_binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(f"{name} not found; install the Debian package: apt-get install -y {package}")


@dataclass
class _Service:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name = "service"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use; stop what holds it "
                               "or choose another port")
        cmd = self._command()
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise ServiceError(f"{self.name} exited with code {self.process.returncode}; log {self.log_file}:\n"
                                   f"{tail}")
            return self._ready()

        try:
            wait_for(ready, timeout_s, f"{self.name} on {self.host}:{self.port}")
        except ServiceError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL after ``timeout_s``."""
        if self.process is not None:
            terminate(self.process, timeout_s)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> _Service:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class Mosquitto(_Service):
    """A Mosquitto broker listening on loopback. ``extra_config`` lines are appended to its config.

    Locked down: ``users`` (name -> password, hashed into a password file by ``mosquitto_passwd``)
    turns anonymous access off, ``acl_file`` says who may read and write which topics, ``tls`` makes
    the listener TLS-only (``mqtts://``), ``message_size_limit`` drops larger publishes at the broker.
    """

    persistence: bool = True
    allow_anonymous: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    users: dict[str, str] | None = field(default=None, repr=False)
    tls: TlsFiles | None = None
    message_size_limit: int = 0
    extra_config: list[str] = field(default_factory=list)
    # The default in-flight window (20) throttles an acknowledge-after-write consumer; see docs/ingest.md.
    max_inflight_messages: int = 1000
    max_queued_messages: int = 1_000_000
    # Every client's id becomes its login: a session (ingest's queued telemetry) belongs to one user only.
    use_username_as_clientid: bool = False

    name = "mosquitto"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    def _command(self) -> list[str]:
        binary = find_binary("mosquitto", "mosquitto")
        if self.users is not None:
            from smartmine.security import write_password_file

            self.password_file = write_password_file(self.data_dir / "passwd", self.users)
        anonymous = self.allow_anonymous and self.password_file is None
        lines = [
            # Started as root, Mosquitto would switch to user "mosquitto" and lose access to the password
            # file, keys and persistence folder this process made; stay the user who started it.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            *(["use_username_as_clientid true"] if self.use_username_as_clientid else []),
            f"allow_anonymous {'true' if anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 1",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if self.tls:
            lines += [f"certfile {self.tls.cert}", f"keyfile {self.tls.key}", "tls_version tlsv1.2"]
        if self.message_size_limit:
            lines.append(f"message_size_limit {self.message_size_limit}")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        lines += self.extra_config
        self.config_file.write_text("\n".join(lines) + "\n")
        return [binary, "-c", str(self.config_file)]

    def _ready(self) -> bool:
        return port_in_use(self.port, self.host)


@dataclass
class Influxd(_Service):
    """InfluxDB 1.x (``influxd``) with its HTTP API on loopback, data under ``data_dir``.

    With ``admin`` (user, password) authentication is on and that admin is created at the first start
    (1.x lets the first admin be created without credentials); :meth:`create_user` adds the others.
    """

    auth_enabled: bool = False
    admin: tuple[str, str] | None = field(default=None, repr=False)
    rpc_port: int = 0
    cq_run_interval: str = "1s"

    name = "influxd"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "influxdb.conf"

    def _command(self) -> list[str]:
        binary = find_binary("influxd", "influxdb")
        if self.admin:
            self.auth_enabled = True
        if not self.rpc_port:
            self.rpc_port = free_port(self.host)
        d = self.data_dir
        self.config_file.write_text(f"""\
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[coordinator]
  log-queries-after = "0s"
[retention]
  enabled = true
  check-interval = "30m"
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = {"true" if self.auth_enabled else "false"}
  log-enabled = false
  write-tracing = false
  max-body-size = 0
[logging]
  level = "warn"
  suppress-logo = true
[continuous_queries]
  enabled = true
  log-enabled = false
  run-interval = "{self.cq_run_interval}"
""")
        return [binary, "-config", str(self.config_file)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                return int(resp.status) == 204
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout_s: float = 30.0) -> None:
        fresh = not self.running
        super().start(timeout_s)
        if fresh and self.admin:
            from smartmine.influx import quote_ident, quote_string

            name, password = self.admin
            # Idempotent: with the same password CREATE USER succeeds again after a restart.
            self._statement(f"CREATE USER {quote_ident(name)} WITH PASSWORD {quote_string(password)} "
                            "WITH ALL PRIVILEGES")

    def create_user(self, name: str, password: str, database: str | None = None,
                    privilege: str = "WRITE") -> None:
        """A non-admin user with ``privilege`` (READ, WRITE or ALL) on ``database``."""
        from smartmine.influx import quote_ident, quote_string

        if privilege not in ("READ", "WRITE", "ALL"):
            raise ValueError(f"privilege {privilege!r}: READ, WRITE or ALL")
        self._statement(f"CREATE USER {quote_ident(name)} WITH PASSWORD {quote_string(password)}")
        if database:
            self._statement(f"GRANT {privilege} ON {quote_ident(database)} TO {quote_ident(name)}")

    def _statement(self, statement: str) -> None:
        """Run one InfluxQL statement as the admin; the statement text (it may hold a password) is never shown."""
        import base64
        import json
        from urllib.parse import urlencode

        request = urllib.request.Request(f"{self.url}/query", data=urlencode({"q": statement}).encode(),
                                         method="POST")
        if self.admin:
            token = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                results = json.loads(resp.read())["results"]
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"influxd refused a user-management statement: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"influxd at {self.url} unreachable: {exc}") from None
        for result in results:
            if "error" in result:
                raise ServiceError(f"influxd: {result['error']}")

