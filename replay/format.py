"""The recording file: checksummed, zstd-compressed Arrow chunks of MQTT messages, closed by a JSON manifest.

One file holds a whole recording so it can be copied and attached to an incident ticket::

    header   b"SMREC\\x00\\x01\\n"                                    8 bytes
    frame*   chunk frames, then one manifest frame
    footer   manifest frame offset (u64 LE) + b"SMRECEND"           16 bytes

A frame is ``b"SMCK" | kind (1 byte: C chunk, M manifest) | 3 reserved | body length (u64) | body crc32 (u32) |
record count (u32) | header crc32 (u32)`` (28 bytes, little-endian) followed by its body. A chunk body is an
Arrow IPC stream with one record batch (:data:`SCHEMA`), its buffers zstd-compressed; the manifest body is
JSON: time range, topics with counts, each chunk's offset/count/time range/crc32, and a SHA-256 over all chunk
frames. Every frame carries its own checksums, so a damaged byte is found and named by its offset, and a
recording cut short (the recorder was killed) still yields every chunk written before the cut.

Columns are what a faithful replay needs (receive time, topic, payload bytes, QoS, retain flag) plus what the
recorder learned once when it validated the message (:class:`Verdict`: ``ts_ns`` and ``readings`` of valid
telemetry, ``error`` for invalid telemetry, the line-protocol ``fields`` the shared encoder made of it), so a
replay into InfluxDB does not validate or encode every reading again (see :mod:`replay.lines`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

MAGIC = b"SMREC\x00\x01\n"
FOOTER_MAGIC = b"SMRECEND"
FRAME_MAGIC = b"SMCK"
FORMAT_VERSION = 1
KIND_CHUNK = ord("C")
KIND_MANIFEST = ord("M")
_FRAME = struct.Struct("<4sB3xQIII")  # magic, kind, body length, body crc32, record count, header crc32
_FRAME_NO_HCRC = struct.Struct("<4sB3xQII")
_FOOTER = struct.Struct("<Q8s")
FRAME_HEADER_SIZE = _FRAME.size
FOOTER_SIZE = _FOOTER.size
MAX_FRAME_BODY = 1 << 31  # a frame larger than 2 GiB can only be a corrupt length field

SCHEMA = pa.schema([
    pa.field("time_ns", pa.int64(), nullable=False),   # receive time (export/import: the sample time)
    pa.field("topic", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    pa.field("payload", pa.binary(), nullable=False),  # the bytes as they crossed the wire
    pa.field("qos", pa.uint8(), nullable=False),
    pa.field("retain", pa.bool_(), nullable=False),
    pa.field("ts_ns", pa.int64()),                     # sample time of valid telemetry, else null
    pa.field("error", pa.string()),                    # why a telemetry message is invalid, else null
    pa.field("readings", pa.uint16()),                 # readings in valid telemetry, else null
    pa.field("fields", pa.string()),                   # its line-protocol field set (see replay.lines), or null
])
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class Verdict(NamedTuple):
    """What validating a message once found: kept beside it so a replay need not validate it again."""

    ts_ns: int | None = None      # sample time, for valid telemetry
    error: str | None = None      # why telemetry is invalid
    readings: int | None = None   # how many readings valid telemetry holds
    fields: str | None = None     # the field set the shared encoder made of it, under the recorded catalog


NOT_TELEMETRY = Verdict()


class RecordingError(ValueError):
    """A recording is unreadable, corrupt or truncated. The message names the file and the byte offset."""

    def __init__(self, path: Path | str, offset: int | None, problem: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.problem = problem
        where = f"{self.path}: at offset {offset}" if offset is not None else self.path
        super().__init__(f"{where}: {problem}")


class Chunk:
    """A chunk of messages: one list per column, aligned by index.

    Built with :meth:`append` (recording), or decoded from a file with :meth:`from_arrow`: then each column
    becomes a Python list only when it is first used, and :attr:`batch` keeps the Arrow data for vectorised
    work (a replay into InfluxDB reads neither the payloads nor the receive times).
    """

    COLUMNS = ("time_ns", "topic", "payload", "qos", "retain", "ts_ns", "error", "readings", "fields")
    time_ns: list[int]
    topic: list[str]
    payload: list[bytes]
    qos: list[int]
    retain: list[bool]
    ts_ns: list[int | None]
    error: list[str | None]
    readings: list[int | None]
    fields: list[str | None]

    def __init__(self, batch: pa.RecordBatch | None = None) -> None:
        self.batch = batch
        if batch is None:
            for name in self.COLUMNS:
                setattr(self, name, [])

    def __getattr__(self, name: str) -> Any:
        # Only called for a column not decoded yet (set attributes are found without it).
        batch = self.__dict__.get("batch")
        if batch is None or name not in self.COLUMNS:
            raise AttributeError(name)
        column = batch.column(name)
        if name == "topic" and pa.types.is_dictionary(column.type):
            # Decode each distinct topic once instead of once per message.
            names = column.dictionary.to_pylist()
            value: list[Any] = [names[i] for i in column.indices.to_pylist()]
        else:
            value = column.to_pylist()
        setattr(self, name, value)
        return value

    def time_range(self, index: Sequence[int]) -> tuple[int, int]:
        """Earliest and latest ``time_ns`` of the messages at ``index`` (not empty)."""
        if self.batch is not None and isinstance(index, range) and index == range(self.batch.num_rows) \
                and "time_ns" not in self.__dict__:
            lo_hi = pc.min_max(self.batch.column("time_ns"))
            return int(lo_hi["min"].as_py()), int(lo_hi["max"].as_py())
        times = self.time_ns
        selected = [times[i] for i in index]
        return min(selected), max(selected)

    def __len__(self) -> int:
        return self.batch.num_rows if self.batch is not None else len(self.time_ns)

    @classmethod
    def empty(cls) -> Chunk:
        return cls()

    def append(self, time_ns: int, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
               verdict: Verdict = NOT_TELEMETRY) -> None:
        assert self.batch is None, "a decoded chunk is read-only"
        self.time_ns.append(time_ns)
        self.topic.append(topic)
        self.payload.append(payload)
        self.qos.append(qos)
        self.retain.append(retain)
        self.ts_ns.append(verdict.ts_ns)
        self.error.append(verdict.error)
        self.readings.append(verdict.readings)
        self.fields.append(verdict.fields)

    def to_arrow(self) -> pa.RecordBatch:
        if self.batch is not None:
            return self.batch
        return pa.record_batch([
            pa.array(self.time_ns, pa.int64()),
            pa.array(self.topic, pa.string()).dictionary_encode(),
            pa.array(self.payload, pa.binary()),
            pa.array(self.qos, pa.uint8()),
            pa.array(self.retain, pa.bool_()),
            pa.array(self.ts_ns, pa.int64()),
            pa.array(self.error, pa.string()),
            pa.array(self.readings, pa.uint16()),
            pa.array(self.fields, pa.string()),
        ], schema=SCHEMA)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch) -> Chunk:
        return cls(batch)


@dataclass(slots=True)
class ChunkInfo:
    offset: int
    length: int  # frame length, header included
    count: int
    first_ns: int                      # the recording's time axis (receive time)
    last_ns: int
    crc32: int
    first_ts_ns: int | None = None     # the samples' own times (valid telemetry), for --rebase-time
    last_ts_ns: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"offset": self.offset, "length": self.length, "count": self.count,
                "first_ns": self.first_ns, "last_ns": self.last_ns, "crc32": self.crc32,
                "first_ts_ns": self.first_ts_ns, "last_ts_ns": self.last_ts_ns}


@dataclass(slots=True)
class Manifest:
    """What a recording holds: written last, read first."""

    source: str
    created: str
    first_ns: int | None = None
    last_ns: int | None = None
    messages: int = 0
    telemetry: int = 0
    invalid: int = 0
    readings: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    chunks: list[ChunkInfo] = field(default_factory=list)
    sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        body = {
            "format": "smartmine-recording", "version": self.version, "source": self.source,
            "created": self.created, "first_ns": self.first_ns, "last_ns": self.last_ns,
            "messages": self.messages, "telemetry": self.telemetry, "invalid": self.invalid,
            "readings": self.readings, "topics": dict(sorted(self.topics.items())),
            "chunks": [c.to_dict() for c in self.chunks], "sha256": self.sha256, "meta": self.meta,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        if data.get("format") != "smartmine-recording":
            raise ValueError("not a smartmine recording manifest")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"recording format version {data.get('version')} is not supported "
                             f"(this smartmine reads version {FORMAT_VERSION})")
        return cls(source=data["source"], created=data["created"], first_ns=data["first_ns"],
                   last_ns=data["last_ns"], messages=data["messages"], telemetry=data["telemetry"],
                   invalid=data["invalid"], readings=data["readings"], topics=data["topics"],
                   chunks=[ChunkInfo(**c) for c in data["chunks"]], sha256=data["sha256"],
                   meta=data.get("meta", {}), version=data["version"])


def _frame_header(kind: int, body: bytes, count: int) -> bytes:
    head = _FRAME_NO_HCRC.pack(FRAME_MAGIC, kind, len(body), zlib.crc32(body), count)
    return head + struct.pack("<I", zlib.crc32(head))


def encode_chunk(chunk: Chunk) -> bytes:
    """A chunk's frame body: an Arrow IPC stream of one record batch, zstd-compressed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA, options=_IPC_OPTIONS) as writer:
        writer.write_batch(chunk.to_arrow())
    return bytes(sink.getvalue())


def decode_chunk(body: bytes) -> Chunk:
    table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"unexpected chunk columns {table.schema.names}")
    batches = table.to_batches()
    if len(batches) != 1:
        table = table.combine_chunks()
        batches = table.to_batches() or [pa.record_batch([[] for _ in SCHEMA], schema=SCHEMA)]
    return Chunk.from_arrow(batches[0])


class RecordingWriter:
    """Appends chunks to a new recording file; :meth:`close` writes the manifest and the footer.

    Until closed the file has no footer; a reader then recovers the chunks already written (with
    ``skip_bad``). The file is written as ``<name>.partial`` and renamed on close, so a finished name never
    points at a half-written recording.
    """

    def __init__(self, path: Path | str, source: str, created: str, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO = self.partial.open("wb")
        self._fh.write(MAGIC)
        self._offset = len(MAGIC)
        self._sha = hashlib.sha256()
        self.manifest = Manifest(source=source, created=created, meta=dict(meta or {}))
        self.closed = False

    @property
    def bytes_written(self) -> int:
        return self._offset

    def write(self, chunk: Chunk) -> None:
        """Write one chunk (in time order across calls)."""
        if not len(chunk):
            return
        body = encode_chunk(chunk)
        header = _frame_header(KIND_CHUNK, body, len(chunk))
        self._fh.write(header)
        self._fh.write(body)
        self._sha.update(header)
        self._sha.update(body)
        m = self.manifest
        stamps = [t for t in chunk.ts_ns if t is not None]
        info = ChunkInfo(self._offset, len(header) + len(body), len(chunk), min(chunk.time_ns), max(chunk.time_ns),
                         zlib.crc32(body), min(stamps, default=None), max(stamps, default=None))
        m.chunks.append(info)
        self._offset += info.length
        m.first_ns = info.first_ns if m.first_ns is None else min(m.first_ns, info.first_ns)
        m.last_ns = info.last_ns if m.last_ns is None else max(m.last_ns, info.last_ns)
        m.messages += len(chunk)
        m.readings += sum(n for n in chunk.readings if n)
        for topic in chunk.topic:
            m.topics[topic] = m.topics.get(topic, 0) + 1
        for ts, err in zip(chunk.ts_ns, chunk.error, strict=True):
            if ts is not None:
                m.telemetry += 1
            elif err is not None:
                m.invalid += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> Manifest:
        if self.closed:
            return self.manifest
        self.manifest.sha256 = self._sha.hexdigest()
        body = self.manifest.to_json()
        manifest_offset = self._offset
        self._fh.write(_frame_header(KIND_MANIFEST, body, 0) + body)
        self._fh.write(_FOOTER.pack(manifest_offset, FOOTER_MAGIC))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.partial, self.path)
        self.closed = True
        return self.manifest

    def abort(self) -> None:
        """Close without a manifest, leaving ``<name>.partial`` for recovery with ``--skip-bad``."""
        if not self.closed:
            self._fh.close()
            self.closed = True


@dataclass(slots=True)
class BadRegion:
    """Bytes a ``skip_bad`` reader could not use, and how many messages were lost with them (if known)."""

    offset: int
    problem: str
    messages: int | None


class RecordingReader:
    """Reads a recording: the manifest first, then each chunk with its checksums verified.

    A damaged or truncated file raises :class:`RecordingError` naming the file and the offset, unless
    ``skip_bad`` is set: then each bad chunk is skipped, recorded in :attr:`bad` and the rest is read.
    """

    def __init__(self, path: Path | str, *, skip_bad: bool = False) -> None:
        self.path = Path(path)
        self.skip_bad = skip_bad
        self.bad: list[BadRegion] = []
        self.size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            head = fh.read(len(MAGIC))
            if head != MAGIC:
                raise RecordingError(self.path, 0, "not a smartmine recording (bad magic bytes)")
            self.manifest: Manifest | None = self._read_manifest(fh)
            self.chunks: list[ChunkInfo] = self.manifest.chunks if self.manifest else self._scan(fh)

    # ---------------------------------------------------------------- the manifest
    def _read_manifest(self, fh: BinaryIO) -> Manifest | None:
        problem = self._manifest_problem(fh)
        if isinstance(problem, Manifest):
            return problem
        offset, text = problem
        if not self.skip_bad:
            raise RecordingError(self.path, offset, f"{text}; the recording is truncated or was not closed "
                                                    "(use --skip-bad to read the intact chunks)")
        self.bad.append(BadRegion(offset, text, None))
        return None

    def _manifest_problem(self, fh: BinaryIO) -> Manifest | tuple[int, str]:
        if self.size < len(MAGIC) + FOOTER_SIZE:
            return (self.size, "file ends before the footer")
        fh.seek(self.size - FOOTER_SIZE)
        manifest_offset, magic = _FOOTER.unpack(fh.read(FOOTER_SIZE))
        if magic != FOOTER_MAGIC:
            return (self.size - FOOTER_SIZE, "no footer")
        if not len(MAGIC) <= manifest_offset <= self.size - FOOTER_SIZE - FRAME_HEADER_SIZE:
            return (self.size - FOOTER_SIZE, f"footer points at offset {manifest_offset}, outside the file")
        try:
            kind, body, _ = self._read_frame(fh, manifest_offset, self.size - FOOTER_SIZE)
        except RecordingError as exc:
            return (exc.offset or manifest_offset, exc.problem)
        if kind != KIND_MANIFEST:
            return (manifest_offset, "footer does not point at the manifest")
        try:
            return Manifest.from_json(body)
        except (ValueError, KeyError, TypeError) as exc:
            return (manifest_offset, f"unreadable manifest: {exc}")

    def _scan(self, fh: BinaryIO) -> list[ChunkInfo]:
        """Without a manifest: walk the frames from the start, resynchronising after damage."""
        chunks: list[ChunkInfo] = []
        offset = len(MAGIC)
        while offset + FRAME_HEADER_SIZE <= self.size:
            try:
                kind, body, count = self._read_frame(fh, offset, self.size)
            except RecordingError as exc:
                self.bad.append(BadRegion(exc.offset if exc.offset is not None else offset, exc.problem, None))
                nxt = self._find_next_frame(fh, offset + 1)
                if nxt is None:
                    break
                offset = nxt
                continue
            length = FRAME_HEADER_SIZE + len(body)
            if kind == KIND_CHUNK:
                chunks.append(ChunkInfo(offset, length, count, 0, 0, zlib.crc32(body)))
            offset += length
        if 0 < self.size - offset < FRAME_HEADER_SIZE:
            self.bad.append(BadRegion(offset, "file ends inside a frame header", None))
        return chunks

    def _find_next_frame(self, fh: BinaryIO, start: int) -> int | None:
        fh.seek(start)
        data = fh.read()
        at = data.find(FRAME_MAGIC)
        return None if at < 0 else start + at

    # ---------------------------------------------------------------- frames
    def _read_frame(self, fh: BinaryIO, offset: int, limit: int) -> tuple[int, bytes, int]:
        fh.seek(offset)
        head = fh.read(FRAME_HEADER_SIZE)
        if len(head) < FRAME_HEADER_SIZE:
            raise RecordingError(self.path, offset, "file ends inside a frame header (truncated)")
        magic, kind, length, crc, count, hcrc = _FRAME.unpack(head)
        if magic != FRAME_MAGIC or zlib.crc32(head[:-4]) != hcrc:
            raise RecordingError(self.path, offset, "corrupt frame header (checksum mismatch)")
        if kind not in (KIND_CHUNK, KIND_MANIFEST) or length > MAX_FRAME_BODY:
            raise RecordingError(self.path, offset, f"corrupt frame header (kind {kind}, length {length})")
        if offset + FRAME_HEADER_SIZE + length > limit:
            raise RecordingError(self.path, offset, f"frame of {length} bytes runs past the end of the file "
                                                    "(truncated)")
        body = fh.read(length)
        if len(body) < length:
            raise RecordingError(self.path, offset + FRAME_HEADER_SIZE + len(body), "file ends inside a frame "
                                                                                     "(truncated)")
        if zlib.crc32(body) != crc:
            raise RecordingError(self.path, offset + FRAME_HEADER_SIZE, "chunk data corrupt (checksum mismatch)")
        return kind, body, count

    def read_chunks(self, select: Sequence[ChunkInfo] | None = None) -> Iterator[Chunk]:
        """Each chunk in file order (or the ``select``-ed ones), checksums verified, decoded."""
        with self.path.open("rb") as fh:
            for info in self.chunks if select is None else select:
                try:
                    _, body, _ = self._read_frame(fh, info.offset, self.size)
                    if zlib.crc32(body) != info.crc32:
                        raise RecordingError(self.path, info.offset, "chunk does not match the manifest's checksum")
                    try:
                        chunk = decode_chunk(body)
                    except (pa.ArrowException, ValueError) as exc:
                        raise RecordingError(self.path, info.offset + FRAME_HEADER_SIZE,
                                             f"chunk cannot be decoded: {exc}") from None
                except RecordingError as exc:
                    if not self.skip_bad:
                        raise
                    self.bad.append(BadRegion(exc.offset if exc.offset is not None else info.offset, exc.problem,
                                              info.count))
                    continue
                yield chunk

    def verify(self) -> str:
        """Re-read every frame and compare the SHA-256 with the manifest's; returns the digest."""
        sha = hashlib.sha256()
        with self.path.open("rb") as fh:
            for info in self.chunks:
                self._read_frame(fh, info.offset, self.size)
                fh.seek(info.offset)
                sha.update(fh.read(info.length))
        digest = sha.hexdigest()
        if self.manifest is not None and digest != self.manifest.sha256:
            raise RecordingError(self.path, None, "SHA-256 of the chunks does not match the manifest")
        return digest


def is_recording(path: Path | str) -> bool:
    with Path(path).open("rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
