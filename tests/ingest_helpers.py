"""Helpers for the ingest tests: make telemetry from the catalog, publish it, read back what was stored."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt

from smartmine.catalog import Catalog, ResolvedEquipment
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.mqtt import make_client
from smartmine.schema import ts_ns
from smartmine.wire import encode_telemetry, topic


@dataclass(frozen=True)
class Sample:
    equipment: ResolvedEquipment
    ts: datetime
    seq: int
    readings: dict[str, float]

    def topic(self, prefix: str) -> str:
        eq = self.equipment
        return topic(eq.site, eq.area, eq.id, "telemetry", prefix)

    def payload(self) -> bytes:
        return encode_telemetry(self.ts, self.seq, self.readings, src="test")

    @property
    def key(self) -> tuple[str, int]:
        return (self.equipment.id, ts_ns(self.ts))


def samples(catalog: Catalog, count: int, *, equipment: int = 8, seed: int = 1,
            start: datetime | None = None) -> list[Sample]:
    """``count`` samples round-robin over ``equipment`` pieces of equipment, values in the normal range."""
    rng = random.Random(seed)
    eqs = _spread(catalog)[:equipment]
    t0 = (start or datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    out = []
    for i in range(count):
        eq = eqs[i % len(eqs)]
        n = i // len(eqs)
        readings = {sid: round(rng.uniform(*s.spec.normal), 4) for sid, s in eq.sensors.items()}
        out.append(Sample(eq, t0 + timedelta(milliseconds=10 * n), n, readings))
    return out


def _spread(catalog: Catalog) -> list[ResolvedEquipment]:
    """Every equipment, ordered so that the first few cover as many equipment types as possible."""
    seen: dict[str, int] = {}
    ranked: list[tuple[int, int, ResolvedEquipment]] = []
    for eq in catalog.all_equipment():
        seen[eq.type] = seen.get(eq.type, -1) + 1
        ranked.append((seen[eq.type], len(ranked), eq))
    return [eq for _, _, eq in sorted(ranked, key=lambda r: (r[0], r[1]))]


class Publisher:
    """A QoS 1 publisher that waits until the broker has every message."""

    def __init__(self, settings: Settings, client_id: str = "test-publisher") -> None:
        self.client = make_client(settings.mqtt, client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        url = settings.mqtt
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        self.prefix = settings.topic_prefix

    def publish(self, items: Iterable[tuple[str, bytes]], timeout_s: float = 30.0) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in items]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge a publish"

    def publish_samples(self, batch: Iterable[Sample]) -> None:
        self.publish((s.topic(self.prefix), s.payload()) for s in batch)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored_points(influx: InfluxClient) -> dict[tuple[str, int], dict[str, object]]:
    """Every stored telemetry point as (equipment, ts ns) -> fields (nulls dropped)."""
    out: dict[tuple[str, int], dict[str, object]] = {}
    for series in _series(influx, "SELECT * FROM /.*/ GROUP BY equipment"):
        cols = series["columns"]
        eq = series["tags"]["equipment"]
        for row in series["values"]:
            rec = {c: v for c, v in zip(cols, row, strict=True) if v is not None and c != "time"}
            key = (eq, int(row[0]))
            assert key not in out, f"point {key} stored twice"
            out[key] = rec
    return out


def stored_count(influx: InfluxClient) -> int:
    """Points stored in the default retention policy (each point has a ``seq`` field)."""
    total = 0
    for series in _series(influx, "SELECT count(seq) FROM /.*/"):
        total += int(series["values"][0][1])
    return total


def _series(influx: InfluxClient, q: str) -> Iterator[dict]:
    for result in influx.query(q):
        yield from result.get("series", [])


def wait_until(check: object, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def assert_stored_exactly(influx: InfluxClient, sent: list[Sample]) -> None:
    """Every sample stored once with its values and seq; nothing else stored."""
    stored = stored_points(influx)
    expected = {s.key: s for s in sent}
    missing = set(expected) - set(stored)
    extra = set(stored) - set(expected)
    assert not missing, f"{len(missing)} samples lost, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} unexpected points, e.g. {sorted(extra)[:3]}"
    for key, s in expected.items():
        fields = stored[key]
        assert fields["seq"] == s.seq
        for sensor, value in s.readings.items():
            assert fields[sensor] == value, f"{key} {sensor}: stored {fields[sensor]}, sent {value}"


def mqtt_client_for(settings: Settings, client_id: str) -> mqtt.Client:
    client = make_client(settings.mqtt, client_id)
    url = settings.mqtt
    client.connect(url.host, url.port)
    return client
