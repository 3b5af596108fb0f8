"""Plain synthetic telemetry from the catalog, for the replay benchmark and tests.

Not a simulator (no dynamics, no faults; that is ``simulators/``): every equipment of the catalog sends every
sensor once per ``period_s`` with a value drawn inside its normal range, deterministically from ``seed``.
Enough to load the broker and InfluxDB with realistic message shapes and to check what comes out the other end.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smartmine.catalog import Catalog
from smartmine.wire import encode_telemetry, topic


def messages(catalog: Catalog, start: datetime, samples: int, *, period_s: float = 1.0, prefix: str = "smartmine",
             seed: int = 1, site: str | None = None) -> Iterator[tuple[str, bytes]]:
    """``(topic, payload)`` in time order: ``samples`` rounds of one message per equipment."""
    rng = random.Random(seed)
    equipment = sorted(catalog.all_equipment(site), key=lambda e: (e.site, e.id))
    topics = [topic(eq.site, eq.area, eq.id, prefix=prefix) for eq in equipment]
    for n in range(samples):
        ts = start + timedelta(seconds=n * period_s)
        for eq, name in zip(equipment, topics, strict=True):
            readings = {}
            for sid, sensor in eq.sensors.items():
                lo, hi = sensor.spec.normal
                readings[sid] = round(rng.uniform(lo, hi), 3)
            yield name, encode_telemetry(ts, n, readings, src=f"synthetic/{eq.site}/{eq.id}")


def write_jsonl(path: Path, catalog: Catalog, start: datetime, samples: int, **kwargs: object) -> int:
    """Write the simulators' JSON Lines format (``{"topic": ..., "payload": {...}}``); returns the line count."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for name, payload in messages(catalog, start, samples, **kwargs):  # type: ignore[arg-type]
            fh.write(json.dumps({"topic": name, "payload": json.loads(payload)}, separators=(",", ":"),
                                ensure_ascii=False) + "\n")
            n += 1
    return n


def _recent_morning() -> datetime:
    # Yesterday 08:00 UTC: recent enough for any retention policy of a day or more (a fixed date falls out of
    # the 30-day default a month later and the tests that store it would fail), and the same all day long.
    today = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


DEFAULT_START = _recent_morning()
