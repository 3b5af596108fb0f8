"""Child processes of ``smartmine up``: start, watch, restart with backoff, stop in order, and clean up after a crash.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only ``up``, which then stops the
children one by one in reverse start order: the simulators stop publishing before ingest flushes, and ingest
flushes before influxd goes away. Each child's pid and kernel start time are written to a state file in the
data folder; if ``up`` itself is killed, the next ``up`` or ``down`` finds the children it left and stops them
without ever signalling an unrelated process that reused a pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from smartmine.services import ServiceError, _Service

__all__ = ["Child", "ServiceChild", "StageChild", "UpLock", "process_start_ticks", "stop_pids"]

# A stage that crashes again within this long after a start counts as a fast failure (backoff grows).
FAST_FAILURE_S = 30.0
BACKOFF_MAX_S = 30.0
# Exit code 2 is a user error (bad setting, unknown scenario): restarting cannot fix it.
USAGE_EXIT_CODE = 2


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if no such process.

    A pid plus its start time names one process for good: a pid reused later has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses); starttime is field 22.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
        return None
    return int(fields[19])


def stop_pids(pids: Iterable[tuple[str, int, int]], timeout_s: float, log: Callable[[str], None]) -> int:
    """SIGTERM each (name, pid, start_ticks) still alive as that same process, wait, then SIGKILL. Returns count."""
    stopped = 0
    for name, pid, ticks in pids:
        if process_start_ticks(pid) != ticks:
            continue  # gone, or the pid now belongs to another process
        log(f"stopping {name} (pid {pid}) left behind by an earlier up")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_start_ticks(pid) == ticks and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_start_ticks(pid) == ticks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped += 1
    return stopped


@dataclass
class Child:
    """One supervised process. Subclasses say how it starts; this class watches, restarts and stops it."""

    name: str
    restart_limit: int = 5
    state: str = field(default="new", init=False)  # new, running, restarting, failed, stopped
    restarts: int = field(default=0, init=False)
    note: str = field(default="", init=False)
    started_at: float = field(default=0.0, init=False)
    _next_start: float = field(default=0.0, init=False)
    _fast_failures: int = field(default=0, init=False)

    # ---------------------------------------------------------------- per kind
    def _spawn(self) -> None:
        raise NotImplementedError

    def _process(self) -> subprocess.Popen[bytes] | None:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    def failure_hint(self) -> str:
        return ""

    # ---------------------------------------------------------------- common
    @property
    def pid(self) -> int | None:
        proc = self._process()
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._process()
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        self._spawn()
        self.started_at = time.monotonic()
        self.state = "running"
        self.note = ""

    def check(self) -> str | None:
        """Notice an exit and restart with backoff. Returns a line for the log when something happened."""
        now = time.monotonic()
        if self.state == "restarting" and now >= self._next_start:
            try:
                self.start()
            except (OSError, ServiceError) as exc:
                return self._failed(f"could not restart: {exc}")
            self.restarts += 1
            return f"{self.name} restarted (restart {self.restarts})"
        proc = self._process()
        if self.state != "running" or proc is None:
            return None
        code = proc.poll()
        if code is None:
            if now - self.started_at > FAST_FAILURE_S:
                self._fast_failures = 0
            return None
        self._forget()
        what = f"{self.name} exited with code {code}"
        if code == USAGE_EXIT_CODE:
            return self._failed(f"{what}: a configuration or usage error, not restarted{self.failure_hint()}")
        self._fast_failures += 1
        if self.restarts >= self.restart_limit:
            return self._failed(f"{what}; gave up after {self.restarts} restarts{self.failure_hint()}")
        delay = min(BACKOFF_MAX_S, 2.0 ** (self._fast_failures - 1))
        self.state = "restarting"
        self.note = f"exit {code}, restarting in {delay:.0f} s"
        self._next_start = now + delay
        return f"{what}; restarting in {delay:.0f} s{self.failure_hint()}"

    def _failed(self, message: str) -> str:
        self.state = "failed"
        self.note = message
        return message

    def stop(self, timeout_s: float, hurry: Callable[[], bool] = lambda: False) -> str:
        """SIGTERM, wait up to ``timeout_s`` (less if ``hurry()`` turns true), then SIGKILL. Says how it ended."""
        proc = self._process()
        self.state = "stopped"
        if proc is None or proc.poll() is not None:
            self._forget()
            return "not running"
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        deadline = began + timeout_s
        while proc.poll() is None and time.monotonic() < deadline and not hurry():
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            result = f"killed after {time.monotonic() - began:.1f} s (did not stop on SIGTERM)"
        else:
            result = f"stopped in {time.monotonic() - began:.1f} s (exit {proc.returncode})"
        self._forget()
        return result

    def record(self) -> dict[str, Any] | None:
        """What the state file keeps about this child, to find it again if up dies."""
        pid = self.pid
        ticks = process_start_ticks(pid) if pid else None
        return None if pid is None or ticks is None else {"name": self.name, "pid": pid, "start_ticks": ticks}


@dataclass
class StageChild(Child):
    """A pipeline stage: ``python -m smartmine.cli <command>`` with its output in a log file."""

    argv: list[str] = field(default_factory=list)
    env: Mapping[str, str] = field(default_factory=dict)
    log_file: Path = Path("stage.log")
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def _spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes]
        with self.log_file.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} smartmine up starts: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(self.env), start_new_session=True)

    def _process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def _forget(self) -> None:
        self._proc = None

    def failure_hint(self) -> str:
        tail = last_line(self.log_file)
        return f" — last log line: {tail} (log {self.log_file})" if tail else f" (log {self.log_file})"


@dataclass
class ServiceChild(Child):
    """Mosquitto or influxd (:mod:`smartmine.services`), restarted on the same port if it dies."""

    service: _Service | None = None

    def _spawn(self) -> None:
        assert self.service is not None
        self.service.start()

    def _process(self) -> subprocess.Popen[bytes] | None:
        return self.service.process if self.service is not None else None

    def _forget(self) -> None:
        if self.service is not None:
            self.service.process = None

    def failure_hint(self) -> str:
        return f" (log {self.service.log_file})" if self.service is not None else ""


def last_line(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file (what a crashed process said last)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class UpLock:
    """One ``up`` per data folder: an exclusive ``flock`` on ``up.lock``, plus ``up.json`` saying who holds it.

    The kernel drops a flock when its holder dies, so a crashed ``up`` never leaves a lock that blocks the
    next one; its ``up.json`` still lists the children it started, which the next ``up`` or ``down`` stops.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock_path = data_dir / "up.lock"
        self.state_path = data_dir / "up.json"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, default=str))
        tmp.replace(self.state_path)

    def leftovers(self) -> list[tuple[str, int, int]]:
        """Children an earlier, dead ``up`` recorded, newest first (the order to stop them in)."""
        out = []
        for rec in reversed(self.read_state().get("children", [])):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out.append((str(rec["name"]), int(rec["pid"]), int(rec["start_ticks"])))
        return out

    def release(self) -> None:
        """Remove both files, then drop the lock (in that order, so nobody sees a state file without a holder)."""
        for path in (self.state_path, self.state_path.with_suffix(".json.tmp"), self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
