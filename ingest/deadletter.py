"""The dead letter: what ingest could not store, with the reason and the original bytes.

Each record goes to a JSON Lines file (appended and fsync'd before the message is acknowledged, so a
crash cannot lose it) and to an MQTT topic (``<prefix>/deadletter/ingest``, QoS 1, not retained) for
whoever watches live. One record per line::

    {"time": "...Z", "reason": "unknown_equipment", "detail": "...", "topic": "...",
     "payload": "<the bytes as text, when they are UTF-8>", "payload_b64": "<the bytes, base64>",
     "line": "<the line protocol InfluxDB refused, for rejected_by_influxdb>", "ingest": "<client id>"}

Bounded, because a hostile or broken publisher decides how much of it there is: the payload is kept up to
``keep_bytes`` (``payload_bytes`` then gives the original length, ``payload_truncated`` says so), the topic
and detail up to a few hundred characters; the file rotates at ``max_bytes`` keeping ``backups`` older
files (``deadletter.jsonl.1`` is the newest of them), like the standard library's RotatingFileHandler; and
at most ``rate_per_s`` records a second are written out (a burst of ``burst``), the rest only counted
(``on_suppressed``). The same sink writes the sequence-gap records (``gaps.jsonl``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

_KEPT_CHARS = 1024                   # of a topic, a detail or a refused line in a record


class Record(Protocol):
    """A dead letter or a sequence gap: what the sink writes."""

    @property
    def reason(self) -> str: ...

    def record(self, ingest_id: str, keep_bytes: int) -> dict[str, Any]: ...


def _cut(text: str) -> str:
    return text if len(text) <= _KEPT_CHARS else text[:_KEPT_CHARS] + f"... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    topic: str
    payload: bytes
    line: str | None = None
    time: float = 0.0

    def record(self, ingest_id: str, keep_bytes: int = 1 << 62) -> dict[str, Any]:
        kept = self.payload[:keep_bytes]
        try:
            text: str | None = kept.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reason": self.reason,
            "detail": _cut(self.detail),
            "topic": _cut(self.topic),
            "payload": text,
            "payload_b64": base64.b64encode(kept).decode("ascii"),
        }
        if len(kept) < len(self.payload):
            out["payload_truncated"] = True
            out["payload_bytes"] = len(self.payload)
        if self.line is not None:
            out["line"] = _cut(self.line)
        out["ingest"] = ingest_id
        return out


class DeadLetterSink:
    """Appends records to the file (durably, rotating, rate-limited) and publishes them. Thread-safe.

    ``write`` raises ``OSError`` when the file cannot be written (a full disk, a read-only folder): the
    caller decides the message's fate (ingest does not acknowledge it; it is redelivered).
    """

    def __init__(self, file: Path, ingest_id: str, publish: Callable[[bytes], object] | None = None, *,
                 max_bytes: int = 64_000_000, backups: int = 3, keep_bytes: int = 4096, rate_per_s: float = 200.0,
                 burst: int = 2000, on_suppressed: Callable[[str], None] | None = None) -> None:
        self.file = file
        self.ingest_id = ingest_id
        self.max_bytes = max_bytes
        self.backups = backups
        self.keep_bytes = keep_bytes
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self._on_suppressed = on_suppressed or (lambda reason: None)
        self.suppressed = 0
        self._publish = publish
        self._lock = threading.Lock()
        self._size: int | None = None
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # reported when the first record cannot be written; ingest still starts
            log.error("cannot make the folder of %s: %s", file, exc)

    def _admit(self, letters: Sequence[Record]) -> list[Record]:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate_per_s)
        self._refilled = now
        n = min(len(letters), int(self._tokens))
        self._tokens -= n
        for dl in letters[n:]:
            self.suppressed += 1
            self._on_suppressed(dl.reason)
        return list(letters[:n])

    def _rotate_if_due(self, adding: int) -> None:
        if self._size is None:
            try:
                self._size = self.file.stat().st_size
            except FileNotFoundError:
                self._size = 0
        if self._size + adding <= self.max_bytes or self._size == 0:
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.file.with_name(f"{self.file.name}.{i}")
            if older.exists():
                os.replace(older, self.file.with_name(f"{self.file.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.file, self.file.with_name(f"{self.file.name}.1"))
        else:
            self.file.unlink()
        self._size = 0

    def _append(self, data: bytes) -> None:
        self._rotate_if_due(len(data))
        try:
            with self.file.open("ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            self._size = None  # what is in the file now is unknown: look again next time
            raise
        assert self._size is not None
        self._size += len(data)

    def write(self, letters: Sequence[Record]) -> None:
        """Durably record ``letters`` (those within the rate): when this returns, they are on disk."""
        if not letters:
            return
        with self._lock:
            letters = self._admit(letters)
            if not letters:
                return
            encoded = [json.dumps(dl.record(self.ingest_id, self.keep_bytes), ensure_ascii=False).encode()
                       for dl in letters]
            chunk: list[bytes] = []
            size = 0
            for data in encoded:  # in pieces of at most max_bytes, so that no file grows past it
                if chunk and size + len(data) + 1 > self.max_bytes:
                    self._append(b"\n".join(chunk) + b"\n")
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data) + 1
            self._append(b"\n".join(chunk) + b"\n")
        if self._publish is not None:
            for data in encoded:
                try:
                    self._publish(data)
                except Exception:  # the file holds the record; a broker hiccup must not stop ingest
                    log.exception("could not publish a dead letter (it is in %s)", self.file)


def read_dead_letters(file: Path, rotated: bool = False) -> list[dict[str, Any]]:
    """The records of a dead-letter file, oldest first (an absent file has none); with ``rotated``, those of
    its rotated older files (``<file>.N`` ... ``<file>.1``) first."""
    files = sorted((f for f in file.parent.glob(file.name + ".*") if f.suffix[1:].isdigit()),
                   key=lambda f: -int(f.suffix[1:])) if rotated else []
    out: list[dict[str, Any]] = []
    for f in [*files, file]:
        if f.exists():
            with f.open(encoding="utf-8") as fh:
                out += [json.loads(line) for line in fh if line.strip()]
    return out
