"""Recorded telemetry to line protocol, exactly as ingest stores it, without validating each reading again.

Every message in a recording was validated against the wire format once, when it was recorded (or read
from JSON Lines); the recording keeps the verdict (``ts_ns`` / ``error``) under a checksum. So a replay
decodes a valid payload with the C JSON decoder only, and applies what the catalog says *today*, resolved
once per topic: the measurement (equipment type), the area, the known sensors and their physical range.
The line itself comes from :func:`smartmine.schema.telemetry_line`, the encoder ingest uses.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from replay.format import Chunk
from replay.sources import split_topic
from smartmine.catalog import Catalog
from smartmine.schema import series_prefix, telemetry_line

# Ingest's quality for a value outside the sensor's physical range (kept as evidence of a sensor fault).
OUT_OF_RANGE = "out_of_range"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Series:
    prefix: str                             # escaped "measurement,area=..,equipment=..,site=.."
    ranges: dict[str, tuple[float, float]]  # sensor -> physical range
    where: str


@dataclass(slots=True)
class Rejected:
    """Messages (or readings) the catalog refused, by reason, with one example each for the summary."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, example: str, n: int = 1) -> None:
        self.counts[reason] += n
        self.examples.setdefault(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class LineEncoder:
    """Turns chunks of recorded telemetry into line protocol for one catalog. Not thread-safe."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._series: dict[str, _Series | tuple[str, str]] = {}
        self.rejected = Rejected()

    def series(self, topic: str) -> _Series | tuple[str, str]:
        hit = self._series.get(topic)
        if hit is None:
            hit = self._series[topic] = self._resolve(topic)
        return hit

    def _resolve(self, topic: str) -> _Series | tuple[str, str]:
        parts = split_topic(topic)
        if parts is None or parts.channel != "telemetry":
            return ("not_telemetry", f"{topic}: not a telemetry topic")
        eq = self.catalog.equipment(parts.site, parts.equipment)
        if eq is None:
            reason = "unknown_site" if parts.site not in self.catalog.sites else "unknown_equipment"
            return (reason, f"{parts.site}/{parts.equipment} is not in the catalog")
        if eq.area != parts.area:
            return ("area_mismatch", f"{parts.site}/{parts.equipment} is in area {eq.area!r}, "
                                     f"the topic says {parts.area!r}")
        ranges = {sid: (float(s.spec.physical[0]), float(s.spec.physical[1])) for sid, s in eq.sensors.items()}
        return _Series(series_prefix(eq.type, parts.site, eq.area, parts.equipment), ranges,
                       f"{parts.site}/{parts.equipment}")

    def encode(self, chunk: Chunk, index: Sequence[int], shift_ns: int, out: list[str]) -> int:
        """Append one line per valid telemetry message at ``index`` to ``out``, its time shifted by
        ``shift_ns``; returns the number of readings. Other channels are left out; invalid telemetry and
        what the catalog refuses is counted in :attr:`rejected`."""
        readings_total = 0
        topics, payloads, stamps, errors = chunk.topic, chunk.payload, chunk.ts_ns, chunk.error
        loads = json.loads
        for i in index:
            stamp = stamps[i]
            if stamp is None:
                if errors[i] is not None:
                    self.rejected.add("invalid_payload", f"{topics[i]}: {errors[i]}")
                continue
            target = self.series(topics[i])
            if type(target) is tuple:
                if target[0] != "not_telemetry":
                    self.rejected.add(target[0], target[1])
                continue
            assert isinstance(target, _Series)
            sample = loads(payloads[i])
            ranges = target.ranges
            readings: dict[str, tuple[float, str]] = {}
            for sensor, r in sample["readings"].items():
                if type(r) is dict:
                    value, quality = float(r["value"]), r.get("quality", "good")
                else:
                    value, quality = float(r), "good"
                bounds = ranges.get(sensor)
                if bounds is None:
                    self.rejected.add("unknown_sensor", f"{target.where} has no sensor {sensor!r} in the catalog")
                    continue
                if not bounds[0] <= value <= bounds[1]:
                    quality = OUT_OF_RANGE
                readings[sensor] = (value, quality)
            if not readings:
                continue
            ts = _EPOCH + timedelta(microseconds=(stamp + shift_ns) // 1000)
            out.append(telemetry_line(target.prefix, ts, sample["seq"], readings))
            readings_total += len(readings)
        return readings_total
