"""What a replay reads: a smartmine recording or the simulators' JSON Lines, as a stream of chunks.

Both come out as :class:`~replay.format.Chunk` s in file order, each message validated once against the wire
format (:func:`classify`), so the player treats them alike. JSON Lines is ``{"topic": ..., "payload": {...}}``
per line (optionally gzip-compressed); its time axis is each payload's ``ts``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from replay.format import BadRegion, Chunk, ChunkInfo, RecordingError, RecordingReader, is_recording
from replay.lines import classify
from smartmine.errors import UsageError
from smartmine.schema import ts_ns

CHUNK_MESSAGES = 10_000
_GZIP_MAGIC = b"\x1f\x8b"


class Source:
    """A readable input of messages; iterate :meth:`chunks` (again for ``--loop``)."""

    path: Path
    bad: list[BadRegion]
    kind: str

    @property
    def total_messages(self) -> int | None:
        return None

    @property
    def meta(self) -> dict[str, object] | None:
        """How the input was made (a recording's manifest ``meta``), if it says."""
        return None

    def sample_bounds(self, start_ns: int | None, end_ns: int | None) -> tuple[int, int] | None:
        """Earliest and latest sample time (``ts``) of the messages in [start, end) of the time axis, as far as
        known without replaying (an estimate is fine: it places a --rebase-time replay)."""
        return None

    def chunks(self, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[Chunk]:
        raise NotImplementedError


class RecordingSource(Source):
    kind = "recording"

    def __init__(self, path: Path, skip_bad: bool) -> None:
        self.path = path
        self.reader = RecordingReader(path, skip_bad=skip_bad)
        self.bad = self.reader.bad

    @property
    def total_messages(self) -> int | None:
        return sum(c.count for c in self.reader.chunks)

    @property
    def meta(self) -> dict[str, object] | None:
        return self.reader.manifest.meta if self.reader.manifest else None

    def sample_bounds(self, start_ns: int | None, end_ns: int | None) -> tuple[int, int] | None:
        if self.reader.manifest is None:
            return None
        chunks = self.select(start_ns, end_ns)
        firsts = [c.first_ts_ns for c in chunks if c.first_ts_ns is not None]
        lasts = [c.last_ts_ns for c in chunks if c.last_ts_ns is not None]
        return (min(firsts), max(lasts)) if firsts and lasts else None

    def select(self, start_ns: int | None, end_ns: int | None) -> list[ChunkInfo]:
        """The chunks that can hold messages in [start, end) — the manifest's time ranges prune the rest."""
        if self.reader.manifest is None:
            return self.reader.chunks  # recovered without a manifest: no time ranges known
        return [c for c in self.reader.chunks
                if (start_ns is None or c.last_ns >= start_ns) and (end_ns is None or c.first_ns < end_ns)]

    def chunks(self, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[Chunk]:
        return self.reader.read_chunks(self.select(start_ns, end_ns))


class JsonLinesSource(Source):
    """The simulators' ``--out`` files: one ``{"topic": ..., "payload": {...}}`` per line."""

    kind = "jsonl"

    def __init__(self, path: Path, skip_bad: bool) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.bad = []
        self.size = path.stat().st_size

    def _open(self) -> IO[bytes]:
        fh = self.path.open("rb")
        if fh.read(2) == _GZIP_MAGIC:
            fh.close()
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        fh.seek(0)
        return fh

    def chunks(self, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[Chunk]:
        self.bad.clear()
        with self._open() as fh:
            yield from self._parse(fh)

    def sample_bounds(self, start_ns: int | None, end_ns: int | None) -> tuple[int, int] | None:
        # The time axis is the samples' ts: a quick pass reading only that (no validation).
        lo = hi = None
        with self._open() as fh:
            for line in fh:
                try:
                    t = _payload_ts(json.loads(line).get("payload"))
                except (ValueError, AttributeError):
                    continue
                if t is None or (start_ns is not None and t < start_ns) or (end_ns is not None and t >= end_ns):
                    continue
                lo = t if lo is None else min(lo, t)
                hi = t if hi is None else max(hi, t)
        return None if lo is None or hi is None else (lo, hi)

    def _bad(self, offset: int, line_no: int, problem: str) -> None:
        text = f"line {line_no}: {problem}"
        if not self.skip_bad:
            raise RecordingError(self.path, offset, text)
        self.bad.append(BadRegion(offset, text, 1))

    def _parse(self, fh: IO[bytes]) -> Iterator[Chunk]:
        chunk = Chunk.empty()
        offset = 0
        last_ns = 0
        for line_no, line in enumerate(fh, start=1):
            at = offset
            offset += len(line)
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except ValueError as exc:
                self._bad(at, line_no, f"not JSON ({exc})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str) or "payload" not in obj:
                self._bad(at, line_no, 'expected {"topic": "...", "payload": {...}}')
                continue
            raw = obj["payload"]
            payload = raw.encode() if isinstance(raw, str) else _payload_bytes(line, raw)
            topic = obj["topic"]
            verdict = classify(topic, payload)
            sample_ns = verdict.ts_ns
            # The time axis is the sample time; a status line or a bad sample keeps the one before it.
            time_ns = sample_ns if sample_ns is not None else _payload_ts(raw)
            time_ns = last_ns if time_ns is None else time_ns
            last_ns = max(last_ns, time_ns)
            chunk.append(time_ns, topic, payload, int(obj.get("qos", 1)), bool(obj.get("retain", False)), verdict)
            if len(chunk) >= CHUNK_MESSAGES:
                yield chunk
                chunk = Chunk.empty()
        if len(chunk):
            yield chunk


def _payload_bytes(line: bytes, raw: Any) -> bytes:
    """The payload's own bytes when the line embeds them verbatim (the simulators write
    ``{"topic":...,"payload":<bytes as published>}``), so a replay publishes exactly what was simulated;
    otherwise the payload re-encoded compactly."""
    at = line.find(b'"payload":')
    if at >= 0:
        candidate = line[at + 10:].rstrip().removesuffix(b"}").strip()
        try:
            if json.loads(candidate) == raw:
                return candidate
        except ValueError:
            pass
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()


def _payload_ts(raw: Any) -> int | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("ts"), str):
        return None
    try:
        dt = datetime.fromisoformat(raw["ts"])
    except ValueError:
        return None
    return ts_ns(dt) if dt.tzinfo is not None else None


def open_source(path: Path | str, *, skip_bad: bool = False) -> Source:
    """A recording or a JSON Lines file (plain or gzip), told apart by their first bytes."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")  # a file named on the command line: exit 2
    if is_recording(p):
        return RecordingSource(p, skip_bad)
    with p.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(_GZIP_MAGIC) or head.lstrip()[:1] == b"{" or not head.strip():
        return JsonLinesSource(p, skip_bad)
    raise RecordingError(p, 0, "neither a smartmine recording nor JSON Lines")


def iter_messages(chunks: Iterable[Chunk]) -> Iterator[tuple[int, str, bytes]]:
    for chunk in chunks:
        yield from zip(chunk.time_ns, chunk.topic, chunk.payload, strict=True)


