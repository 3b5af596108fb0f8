"""The dead letter: what ingest could not store, with the reason and the original bytes.

Each record goes to a JSON Lines file (appended and fsync'd before the message is acknowledged, so a
crash cannot lose it) and to an MQTT topic (``<prefix>/deadletter/ingest``, QoS 1, not retained) for
whoever watches live. One record per line::

    {"time": "...Z", "reason": "unknown_equipment", "detail": "...", "topic": "...",
     "payload": "<the bytes as text, when they are UTF-8>", "payload_b64": "<the bytes, base64>",
     "line": "<the line protocol InfluxDB refused, for rejected_by_influxdb>", "ingest": "<client id>"}
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    topic: str
    payload: bytes
    line: str | None = None
    time: float = 0.0

    def record(self, ingest_id: str) -> dict[str, Any]:
        try:
            text: str | None = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "payload": text,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
        }
        if self.line is not None:
            out["line"] = self.line
        out["ingest"] = ingest_id
        return out


class DeadLetterSink:
    """Appends dead letters to the file (durably) and publishes them. Thread-safe."""

    def __init__(self, file: Path, ingest_id: str, publish: Callable[[bytes], object] | None = None) -> None:
        self.file = file
        self.ingest_id = ingest_id
        self._publish = publish
        self._lock = threading.Lock()
        file.parent.mkdir(parents=True, exist_ok=True)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Durably record ``letters``: when this returns, they are on disk."""
        if not letters:
            return
        encoded = [json.dumps(dl.record(self.ingest_id), ensure_ascii=False).encode() for dl in letters]
        with self._lock, self.file.open("ab") as fh:
            fh.write(b"\n".join(encoded) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self._publish is not None:
            for data in encoded:
                try:
                    self._publish(data)
                except Exception:  # the file holds the record; a broker hiccup must not stop ingest
                    log.exception("could not publish a dead letter (it is in %s)", self.file)


def read_dead_letters(file: Path) -> list[dict[str, Any]]:
    """The records of a dead-letter file, oldest first (an absent file has none)."""
    if not file.exists():
        return []
    with file.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
