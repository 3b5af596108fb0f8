"""The on-disk spool: batches that could not be written to InfluxDB, kept until it is back.

A batch is spooled as one segment file (gzip'd line protocol) named by an increasing number, written
to a temporary name, fsync'd, renamed and the folder fsync'd: once :meth:`Spool.append` returns the
batch survives a crash or a power cut, and only then does ingest acknowledge its messages to the
broker. Segments are replayed oldest first. The spool is bounded (``spool_max_mb``); when full,
:meth:`Spool.append` raises :class:`SpoolFull` and ingest stops acknowledging, so the broker keeps
the messages instead (Mosquitto's queue for the persistent session).

A segment that cannot be read back (a gzip file cut short by a power cut before its rename was on disk,
a bad sector) is moved aside to ``quarantine/`` in the spool folder, reported through ``on_quarantine``
with its path and the reason, and the next segment is replayed: one bad file never stops the drain.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from smartmine.influx import gzip_body

_SUFFIX = ".lp.gz"


class SpoolFull(RuntimeError):
    """The spool has no room for a batch; the message says how full it is and what to do."""


class Spool:
    """Ordered, bounded, durable segments of line protocol in one folder. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int,
                 on_quarantine: Callable[[Path, str], None] | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.quarantine_dir = directory / "quarantine"
        self._on_quarantine = on_quarantine or (lambda path, reason: None)
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        for tmp in directory.glob("*.tmp"):  # a crash mid-append: that batch was never acknowledged
            tmp.unlink()
        self._segments: list[tuple[int, int]] = sorted(  # (number, size in bytes)
            (int(p.name[: -len(_SUFFIX)]), p.stat().st_size) for p in directory.glob("*" + _SUFFIX)
            if p.name[: -len(_SUFFIX)].isdigit())
        self._bytes = sum(size for _, size in self._segments)
        self._next = self._segments[-1][0] + 1 if self._segments else 1

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    @property
    def depth(self) -> int:
        """Segments waiting (each one batch)."""
        return len(self._segments)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._segments)

    def append(self, lines: bytes) -> int:
        """Store one batch durably; returns its segment number. Raises :class:`SpoolFull`."""
        data = gzip_body(lines)
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.directory} is full ({self._bytes / 1e6:.3g} MB of "
                                f"{self.max_bytes / 1e6:.3g} MB, {len(self._segments)} batches); raise "
                                "SMARTMINE_INGEST__SPOOL_MAX_MB or bring InfluxDB back")
            number = self._next
            self._next += 1
            path = self._path(number)
            tmp = path.with_name(path.name + ".tmp")
            try:
                with tmp.open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                _fsync_dir(self.directory)
            except OSError:  # a full disk: leave no half-written file behind for each retry
                tmp.unlink(missing_ok=True)
                raise
            self._segments.append((number, len(data)))
            self._bytes += len(data)
            return number

    def oldest(self) -> tuple[int, bytes] | None:
        """The oldest readable segment (number, line protocol), or None when the spool is empty.

        Unreadable segments on the way are quarantined (see the module's docstring).
        """
        while True:
            with self._lock:
                if not self._segments:
                    return None
                number = self._segments[0][0]
            path = self._path(number)
            try:
                data = gzip.decompress(path.read_bytes())
                data.decode()  # the writer splits it into lines of text
                return number, data
            except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
                self._quarantine(number, f"{type(exc).__name__}: {exc}")

    def _quarantine(self, number: int, reason: str) -> None:
        path = self._path(number)
        target = self.quarantine_dir / path.name
        with self._lock:
            self._forget(number)
            try:
                self.quarantine_dir.mkdir(exist_ok=True)
                os.replace(path, target)
                _fsync_dir(self.directory)
            except FileNotFoundError:
                target = path  # gone already (removed by hand): nothing to keep
            except OSError as exc:  # cannot move it: delete rather than fail on it after every restart
                reason += f"; could not move it to {self.quarantine_dir} ({exc}), deleted"
                path.unlink(missing_ok=True)
        self._on_quarantine(target, reason)

    def _forget(self, number: int) -> None:
        for i, (n, size) in enumerate(self._segments):
            if n == number:
                del self._segments[i]
                self._bytes -= size
                break

    def remove(self, number: int) -> None:
        """Drop a segment once InfluxDB has it."""
        with self._lock:
            self._forget(number)
            self._path(number).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
