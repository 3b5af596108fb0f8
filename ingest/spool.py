"""The on-disk spool: batches that could not be written to InfluxDB, kept until it is back.

A batch is spooled as one segment file (gzip'd line protocol) named by an increasing number, written
to a temporary name, fsync'd, renamed and the folder fsync'd: once :meth:`Spool.append` returns the
batch survives a crash or a power cut, and only then does ingest acknowledge its messages to the
broker. Segments are replayed oldest first. The spool is bounded (``spool_max_mb``); when full,
:meth:`Spool.append` raises :class:`SpoolFull` and ingest stops acknowledging, so the broker keeps
the messages instead (Mosquitto's queue for the persistent session).
"""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

from smartmine.influx import gzip_body

_SUFFIX = ".lp.gz"


class SpoolFull(RuntimeError):
    """The spool has no room for a batch; the message says how full it is and what to do."""


class Spool:
    """Ordered, bounded, durable segments of line protocol in one folder. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
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
                raise SpoolFull(f"spool {self.directory} is full ({self._bytes / 1e6:.1f} MB of "
                                f"{self.max_bytes / 1e6:.0f} MB, {len(self._segments)} batches); raise "
                                "SMARTMINE_INGEST__SPOOL_MAX_MB or bring InfluxDB back")
            number = self._next
            self._next += 1
            path = self._path(number)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.directory)
            self._segments.append((number, len(data)))
            self._bytes += len(data)
            return number

    def oldest(self) -> tuple[int, bytes] | None:
        """The oldest segment (number, line protocol), or None when the spool is empty."""
        with self._lock:
            if not self._segments:
                return None
            number = self._segments[0][0]
        return number, gzip.decompress(self._path(number).read_bytes())

    def remove(self, number: int) -> None:
        """Drop a segment once InfluxDB has it."""
        with self._lock:
            for i, (n, size) in enumerate(self._segments):
                if n == number:
                    del self._segments[i]
                    self._bytes -= size
                    break
            self._path(number).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
