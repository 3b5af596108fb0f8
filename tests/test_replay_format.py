"""The recording file keeps every message, and damage is found and named by file and offset, never ignored."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from replay.format import FRAME_HEADER_SIZE, MAGIC, Chunk, RecordingError, RecordingReader, RecordingWriter
from replay.lines import LineEncoder, classify
from replay.player import Pacer, rebase_shift
from replay.sources import open_source
from replay.synthetic import DEFAULT_START, messages, write_jsonl
from smartmine.catalog import builtin_catalog
from smartmine.schema import ts_ns


def _record(path: Path, samples: int = 30, chunk_messages: int = 200) -> list[tuple[str, bytes]]:
    """A closed recording of synthetic telemetry plus one invalid and one status message, in chunks."""
    msgs = list(messages(builtin_catalog(), DEFAULT_START, samples))
    msgs.insert(5, ("smartmine/yanshan_mine/face_1203/shearer_1/telemetry", b'{"v":1,"ts":"nope"}'))
    msgs.insert(9, ("smartmine/yanshan_mine/face_1203/shearer_1/status", b'{"state":"online"}'))
    writer = RecordingWriter(path, "test", "2026-11-27T00:00:00Z")
    chunk = Chunk.empty()
    for n, (topic, payload) in enumerate(msgs):
        chunk.append(1_000_000_000 * n, topic, payload, 1, False, classify(topic, payload))
        if len(chunk) == chunk_messages:
            writer.write(chunk)
            chunk = Chunk.empty()
    writer.write(chunk)
    writer.close()
    return msgs


def _read_all(path: Path, skip_bad: bool = False) -> list[tuple[str, bytes]]:
    reader = RecordingReader(path, skip_bad=skip_bad)
    return [(t, p) for c in reader.read_chunks() for t, p in zip(c.topic, c.payload, strict=True)]


def test_round_trip_keeps_every_message_in_order_with_its_verdict(tmp_path: Path) -> None:
    path = tmp_path / "r.smrec"
    msgs = _record(path)
    assert _read_all(path) == msgs
    reader = RecordingReader(path)
    m = reader.manifest
    assert m is not None and m.messages == len(msgs) and len(m.chunks) > 3
    assert (m.telemetry, m.invalid) == (len(msgs) - 2, 1)
    assert m.topics["smartmine/yanshan_mine/face_1203/shearer_1/status"] == 1
    assert reader.verify() == m.sha256
    first = next(reader.read_chunks())
    assert first.error[5] is not None and "ts" in first.error[5]   # invalid telemetry keeps its reason
    assert first.ts_ns[9] is None and first.error[9] is None        # a status message is neither


def test_truncated_recording_names_file_and_offset_and_skip_bad_recovers(tmp_path: Path) -> None:
    path = tmp_path / "r.smrec"
    msgs = _record(path)
    reader = RecordingReader(path)
    assert reader.manifest is not None
    cut = reader.manifest.chunks[3].offset + 100  # inside the fourth chunk
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(RecordingError) as err:
        RecordingReader(path)
    assert str(path) in str(err.value) and "offset" in str(err.value) and "truncated" in str(err.value)

    recovered = RecordingReader(path, skip_bad=True)
    got = [(t, p) for c in recovered.read_chunks() for t, p in zip(c.topic, c.payload, strict=True)]
    assert got == msgs[:600]  # the three whole chunks before the cut, nothing invented
    assert any(b.offset == reader.manifest.chunks[3].offset for b in recovered.bad)


def test_corrupt_byte_is_named_by_offset_and_skip_bad_counts_the_lost_chunk(tmp_path: Path) -> None:
    path = tmp_path / "r.smrec"
    msgs = _record(path)
    info = RecordingReader(path).chunks[1]
    data = bytearray(path.read_bytes())
    data[info.offset + FRAME_HEADER_SIZE + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError) as err:
        _read_all(path)
    assert err.value.path == str(path)
    assert err.value.offset == info.offset + FRAME_HEADER_SIZE
    assert "checksum" in str(err.value)

    reader = RecordingReader(path, skip_bad=True)
    got = [(t, p) for c in reader.read_chunks() for t, p in zip(c.topic, c.payload, strict=True)]
    assert got == msgs[:200] + msgs[400:]
    assert [(b.offset, b.messages) for b in reader.bad] == [(info.offset + FRAME_HEADER_SIZE, 200)]


def test_not_a_recording_is_refused_at_offset_zero(tmp_path: Path) -> None:
    path = tmp_path / "r.smrec"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(RecordingError, match=r"r\.smrec: at offset 0: neither a smartmine recording"):
        open_source(path)


def test_unclosed_recording_is_kept_as_partial_and_recoverable(tmp_path: Path) -> None:
    path = tmp_path / "r.smrec"
    writer = RecordingWriter(path, "test", "now")
    chunk = Chunk.empty()
    for n, (topic, payload) in enumerate(messages(builtin_catalog(), DEFAULT_START, 2)):
        chunk.append(n, topic, payload, 1, False, classify(topic, payload))
    writer.write(chunk)
    writer.abort()  # the recorder was killed before it could close
    assert not path.exists()
    partial = tmp_path / "r.smrec.partial"
    assert partial.read_bytes().startswith(MAGIC)
    with pytest.raises(RecordingError, match="not closed"):
        RecordingReader(partial)
    assert len(_read_all(partial, skip_bad=True)) == len(chunk)


def test_simulator_json_lines_are_read_plain_and_gzipped(tmp_path: Path) -> None:
    plain = tmp_path / "sim.jsonl"
    n = write_jsonl(plain, builtin_catalog(), DEFAULT_START, 3)
    zipped = tmp_path / "sim.jsonl.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, zipped):
        chunks = list(open_source(path).chunks())
        assert sum(len(c) for c in chunks) == n
        assert all(ts is not None and err is None for c in chunks for ts, err in zip(c.ts_ns, c.error, strict=True))
    first = json.loads(plain.read_text().splitlines()[0])
    chunk = next(open_source(plain).chunks())
    assert json.loads(chunk.payload[0]) == first["payload"] and chunk.topic[0] == first["topic"]


def test_bad_json_line_is_named_by_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    write_jsonl(path, builtin_catalog(), DEFAULT_START, 1)
    lines = path.read_text().splitlines(keepends=True)
    offset = sum(len(x.encode()) for x in lines[:3])
    lines.insert(3, '{"topic": "smartmine/x", "payload": {broken\n')
    path.write_text("".join(lines))
    with pytest.raises(RecordingError) as err:
        list(open_source(path).chunks())
    assert err.value.offset == offset and "line 4" in str(err.value)
    source = open_source(path, skip_bad=True)
    assert sum(len(c) for c in source.chunks()) == len(lines) - 1
    assert [b.offset for b in source.bad] == [offset]


def test_pacer_keeps_recorded_spacing_divided_by_speed() -> None:
    slept: list[float] = []
    pacer = Pacer(speed=4.0, sleep=slept.append)
    for t_s in (0.0, 1.0, 3.0, 2.0):  # the last one is out of order: due with the one before it, not earlier
        pacer.wait(int(t_s * 1e9))
    # Waits are measured from the first message (this fake sleep lets no time pass).
    assert len(slept) == 3
    assert slept[0] == pytest.approx(0.25, abs=0.05) and slept[1] == pytest.approx(0.75, abs=0.05)
    assert slept[2] == pytest.approx(0.75, abs=0.05)


def test_json_lines_payload_bytes_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    payload = b'{"v":1,"ts":"2026-11-27T08:00:00.000Z","seq":3,"readings":{"ch4_pct":0.50,"co_ppm":1e1}}'
    topic = b"smartmine/yanshan_mine/face_1203/gas_face_1203/telemetry"
    path.write_bytes(b'{"topic":"' + topic + b'","payload":' + payload + b"}\n")
    chunk = next(open_source(path).chunks())
    assert chunk.payload == [payload]  # "0.50" and "1e1" as the simulator wrote them, not re-encoded
    assert chunk.error == [None] and chunk.ts_ns[0] is not None


def test_stored_field_sets_give_the_very_lines_the_shared_encoder_gives(tmp_path: Path) -> None:
    catalog = builtin_catalog()
    encoder = LineEncoder(catalog)
    fan = "smartmine/yanshan_mine/ventilation/main_fan_1/telemetry"
    tricky = [
        (fan, b'{"v":1,"ts":"2026-11-27T08:00:00.123456Z","seq":1,"readings":{"vibration_mm_s":1.5,'
              b'"bearing_temp_c":{"value":70.25,"quality":"uncertain"}}}'),
        (fan, b'{"v":1,"ts":"2026-11-27T08:00:01Z","seq":2,"readings":{"vibration_mm_s":1e6}}'),   # out of range
        (fan, b'{"v":1,"ts":"2026-11-27T08:00:02Z","seq":3,"readings":{"vibration_mm_s":2,"no_such":1}}'),
        ("smartmine/yanshan_mine/shaft/main_fan_1/telemetry",                                  # wrong area
         b'{"v":1,"ts":"2026-11-27T08:00:03Z","seq":4,"readings":{"vibration_mm_s":2}}'),
    ]
    chunk = Chunk.empty()
    for n, (topic, payload) in enumerate([*tricky, *messages(catalog, DEFAULT_START, 2)]):
        chunk.append(n, topic, payload, 1, False, classify(topic, payload, encoder))
    assert chunk.fields[0] is not None and chunk.fields[2] is None and chunk.fields[3] is None
    for shift in (0, 123_456_789_123):
        stored: list[str] = []
        again: list[str] = []
        slow, fast = LineEncoder(catalog), LineEncoder(catalog, trust_fields=True)
        assert fast.encode(chunk, range(len(chunk)), shift, stored) == slow.encode(chunk, range(len(chunk)), shift,
                                                                                    again)
        assert stored == again
        assert fast.rejected.counts == slow.rejected.counts == {"unknown_sensor": 1, "area_mismatch": 1}
    assert 'bearing_temp_c_quality="uncertain"' in stored[0] and 'vibration_mm_s_quality="out_of_range"' in stored[1]
    sample_ns = ts_ns(datetime(2026, 11, 27, 8, 0, 0, 123456, tzinfo=UTC))
    assert stored[0].endswith(f" {(sample_ns + 123_456_789_123) // 1000 * 1000}")  # shifted, truncated to µs


def test_column_wise_encoding_gives_the_same_bytes_as_line_by_line(tmp_path: Path) -> None:
    catalog = builtin_catalog()
    encoder = LineEncoder(catalog)
    built = Chunk.empty()
    msgs = list(messages(catalog, DEFAULT_START, 3))
    msgs.insert(7, ("smartmine/yanshan_mine/network/bs_1/status", b'{"state":"online"}'))  # skipped either way
    for n, (topic, payload) in enumerate(msgs):
        built.append(n, topic, payload, 1, False, classify(topic, payload, encoder))
    decoded = Chunk.from_arrow(built.to_arrow())
    for index in (range(len(msgs)), [*range(1, 130, 2)]):
        for shift in (0, -5_000_000_123):
            fast = LineEncoder(catalog, trust_fields=True)
            body, lines, readings = fast.encode_chunk(decoded, index, shift)
            reference: list[str] = []
            assert LineEncoder(catalog).encode(built, index, shift, reference) == readings
            assert body == "\n".join(reference).encode() and lines == len(reference)


@pytest.mark.parametrize("speed", [None, 1.0, 10.0, 0.5])
def test_rebased_times_are_never_ahead_of_the_moment_they_are_sent(speed: float | None) -> None:
    first, last, start = 1_000 * 10**9, 1_600 * 10**9, 1_800_000_000 * 10**9  # a 10-minute recording, replayed now
    shift = rebase_shift(start, first, last, speed)
    for t in range(first, last + 1, 60 * 10**9):
        sent_at = start + (0 if speed is None else (t - first) / speed)
        assert t + shift <= sent_at + 1
    # ... and the replay reads as live: the last (max, ×1, ×10) or the first (×0.5) message is "now"
    if speed is None or speed >= 1:
        assert last + shift == pytest.approx(start + (0 if speed is None else (last - first) / speed), abs=1)
    else:
        assert first + shift == start
