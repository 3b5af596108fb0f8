"""The two analytics jobs: streaming (MQTT telemetry, near real time) and batch / backfill (InfluxDB).

Both score with :mod:`analytics.engine` and hand the resulting transitions to the same sinks: the
InfluxDB ``anomalies`` measurement and the ``event`` channel for alerts (:mod:`analytics.store`).

Streaming: paho's network thread only queues messages; the job's thread decodes, scores and writes,
so a slow InfluxDB never blocks the broker connection. Limit rules judge each message as it is
decoded; the other detectors score each equipment's micro-batch (``micro_batch_s``, 0.2 s by default,
or ``micro_batch_max`` samples) at once, with the answers of scoring one sample at a time
(:mod:`analytics.engine`). A limit transition is written and published at once. A message that does not follow the wire
format, or names equipment the catalog does not know, is counted and logged once per topic; it never
stops the job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from analytics.detector import Anomaly, SensorContext, about
from analytics.engine import EquipmentScorer, PlantScorer, utc_offset
from analytics.episodes import Episode, Transition
from analytics.store import AnomalySink, CollectingSink, EventPublisher, InfluxAnomalySink, write_all
from smartmine import timespec
from smartmine.catalog import Catalog
from smartmine.config import Settings
from smartmine.errors import UsageError
from smartmine.schema import QUALITY_SUFFIX, ts_ns
from smartmine.wire import Reading, TelemetryPayload, WireError, parse_telemetry, parse_topic, subscription

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    messages: int = 0
    readings: int = 0
    rejected: int = 0
    unknown_equipment: int = 0
    firing: int = 0
    escalated: int = 0
    cleared: int = 0
    seconds: float = 0.0
    by_rule: dict[str, int] = field(default_factory=dict)

    def count(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            setattr(self, t.kind, getattr(self, t.kind) + 1)
            if t.kind == "firing":
                self.by_rule[t.episode.rule] = self.by_rule.get(t.episode.rule, 0) + 1

    def line(self) -> str:
        rate = self.readings / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.messages} messages, {self.readings} readings ({rate:,.0f}/s), {self.firing} anomalies "
                f"fired, {self.escalated} escalated, {self.cleared} cleared; {self.rejected} rejected, "
                f"{self.unknown_equipment} from unknown equipment")


def usable_readings(sample: TelemetryPayload) -> dict[str, float]:
    """sensor -> value of a sample's readings, without the ``bad`` ones (bad data is not evidence).
    ``TelemetryPayload.values()`` without the intermediate dict: this runs for every message, and most
    messages carry only bare numbers (the wire model makes them floats)."""
    plain = {s: r for s, r in sample.readings.items() if r.__class__ is float}
    if len(plain) == len(sample.readings):
        return plain
    return {s: r.value if isinstance(r, Reading) else float(r) for s, r in sample.readings.items()
            if not isinstance(r, Reading) or r.quality != "bad"}


def _connect(settings: Settings, client_id: str) -> Any:
    from smartmine.mqtt import make_client

    client = make_client(settings.mqtt, client_id, ca_file=settings.mqtt_ca_file)
    client.connect(settings.mqtt.host, settings.mqtt.port, keepalive=30)
    return client


class StreamJob:
    """``smartmine analyze stream``: subscribe to telemetry, score every sample, write and publish."""

    def __init__(self, settings: Settings, catalog: Catalog, *, site: str | None = None,
                 sinks: Sequence[AnomalySink] | None = None, flush_interval_s: float = 0.5) -> None:
        self.settings = settings
        self.site = site
        cfg = settings.analytics
        self.micro_batch_s = cfg.micro_batch_s
        self.micro_batch_max = cfg.micro_batch_max
        self.plant = PlantScorer(catalog, cfg, settings.language, micro_batch=cfg.micro_batch_s > 0)
        self._batch_started: dict[tuple[str, str], float] = {}  # equipment -> monotonic of its oldest kept sample
        self.flush_interval_s = flush_interval_s
        self.summary = JobSummary()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100_000)
        self._sinks = list(sinks) if sinks is not None else None
        self._warned: set[str] = set()
        self._topics: dict[str, tuple[str, str]] = {}
        # Live silence: an equipment that published before and has gone quiet (wall clock, as it happens;
        # the dropout detector marks the gap in the data once samples resume, in both forms).
        self.silence_after_s = settings.analytics.silence_after_s
        self._last_seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (monotonic, last sample ts)
        self._silent: dict[tuple[str, str], Episode] = {}

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        sub = subscription("telemetry", self.settings.topic_prefix, self.site or "+")
        client.subscribe(sub, qos=1)
        log.info("analytics: subscribed to %s", sub)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.ready.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Blocks paho's thread when the scorer is 100k messages behind: back-pressure, not loss.
        self._queue.put((msg.topic, msg.payload))

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("%s", text)

    def _topic(self, name: str) -> tuple[str, str]:
        """(site, equipment) of a telemetry topic; parsed once per topic (a plant has a few hundred)."""
        key = self._topics.get(name)
        if key is None:
            t = parse_topic(name, self.settings.topic_prefix)
            key = (t.site, t.equipment)
            if len(self._topics) < 100_000:
                self._topics[name] = key
        return key

    def handle(self, topic_name: str, payload: bytes) -> list[Transition]:
        """Decode and score one telemetry message."""
        self.summary.messages += 1
        try:
            key = self._topic(topic_name)
            sample = parse_telemetry(payload)
        except WireError as exc:
            self.summary.rejected += 1
            self._warn_once(topic_name, f"analytics: rejected message on {topic_name}: {exc}")
            return []
        readings = usable_readings(sample)
        ts = ts_ns(sample.ts)
        out = self.plant.step(*key, ts, readings)
        if out is None:
            self.summary.unknown_equipment += 1
            self._warn_once(topic_name, f"analytics: {key[0]}/{key[1]} is not in the catalog; not scored")
            return []
        self.summary.readings += len(readings)
        now = time.monotonic()
        self._last_seen[key] = (now, ts)
        if key in self._silent:
            out.append(self._silence_cleared(key, ts))
        if self.plant.micro_batch:
            started = self._batch_started.setdefault(key, now)
            if now - started >= self.micro_batch_s or self.plant.buffered(*key) >= self.micro_batch_max:
                out.extend(self._flush(key))
        return out

    def _flush(self, key: tuple[str, str]) -> list[Transition]:
        self._batch_started.pop(key, None)
        return self.plant.flush(*key)

    def flush(self, now: float | None = None) -> list[Transition]:
        """Score the micro-batches older than ``micro_batch_s`` (every one when ``now`` is None)."""
        due = [key for key, started in self._batch_started.items()
               if now is None or now - started >= self.micro_batch_s]
        return [t for key in due for t in self._flush(key)]

    def _silence_anomaly(self, key: tuple[str, str], ts: int, silent_s: float) -> Anomaly:
        scorer = self.plant.scorer(*key)
        assert scorer is not None
        eq = scorer.eq
        ctx = SensorContext(site=eq.site, area=eq.area, equipment=eq.id,
                            equipment_name=eq.name.get(self.settings.language), sensor="")
        return Anomaly(ts, "dropout", "health:silent", self.settings.analytics.statistical_severity, 1.0,
                       self.silence_after_s, {"silent_s": round(silent_s, 1)},
                       f"No data from {ctx.equipment_name} for {about(silent_s)}: link, gateway or device down?",
                       ctx)

    def check_silence(self, now: float | None = None) -> list[Transition]:
        """Fire ``health:silent`` for every equipment quiet for longer than ``silence_after_s``."""
        now = time.monotonic() if now is None else now
        out = []
        for key, (seen, last_ts) in self._last_seen.items():
            silent_s = now - seen
            if key in self._silent or silent_s < self.silence_after_s:
                continue
            # The time of the event is the last sample's time plus the silence (the plant's clock).
            ts = last_ts + int(silent_s * 1e9)
            a = self._silence_anomaly(key, ts, silent_s)
            ep = Episode(a.rule, a.detector, ts, ts, ts, a.severity, a, a)
            self._silent[key] = ep
            out.append(Transition("firing", ts, ep, a, a.message))
        return out

    def _silence_cleared(self, key: tuple[str, str], ts: int) -> Transition:
        ep = self._silent.pop(key)
        name = ep.first.ctx.equipment_name
        return Transition("cleared", ts, ep, ep.peak, f"{name} publishes again: health:silent cleared")

    def run(self, *, duration_s: float | None = None, max_messages: int | None = None) -> JobSummary:
        import scipy.signal  # noqa: F401  the micro-batches' filters: loaded now, not during the first one (1 s)

        from smartmine.influx import InfluxClient

        influx = None
        mqtt = _connect(self.settings, f"{self.settings.analytics.client_id}-{id(self):x}")
        if self._sinks is None:
            influx = InfluxClient.from_settings(self.settings)
            self._sinks = [InfluxAnomalySink(influx), EventPublisher(mqtt, self.settings.topic_prefix)]
        mqtt.on_connect = self._on_connect
        mqtt.on_subscribe = self._on_subscribe
        mqtt.on_message = self._on_message
        mqtt.loop_start()
        started = time.monotonic()
        deadline = started + duration_s if duration_s is not None else None
        next_flush = started + self.flush_interval_s
        next_report = started + 60.0
        next_silence_check = started + 1.0
        pending: list[Transition] = []
        urgent = False  # a limit transition waits: written and published without waiting for the interval
        # how long to wait for a message: short while micro-batches wait to be scored by age
        tick_s = min(0.1, self.micro_batch_s / 4) if self.micro_batch_s > 0 else 0.1
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if max_messages is not None and self.summary.messages >= max_messages:
                    break
                try:
                    topic_name, payload = self._queue.get(timeout=tick_s if self._batch_started else 0.1)
                except queue.Empty:
                    pass
                else:
                    new = self.handle(topic_name, payload)
                    drain_until = time.monotonic() + tick_s
                    while True:  # drain what is queued before writing, a tick at most
                        if new:
                            pending.extend(new)
                            urgent = urgent or any(t.anomaly.detector == "limit" for t in new)
                        if len(pending) >= 10_000 or time.monotonic() >= drain_until:
                            break
                        try:
                            topic_name, payload = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        new = self.handle(topic_name, payload)
                if self._batch_started:
                    pending.extend(self.flush(time.monotonic()))
                if pending and (urgent or time.monotonic() >= next_flush or len(pending) >= 10_000):
                    self._emit(pending)
                    pending = []
                    urgent = False
                    next_flush = time.monotonic() + self.flush_interval_s
                if self.silence_after_s > 0 and time.monotonic() >= next_silence_check:
                    pending.extend(self.check_silence())
                    next_silence_check = time.monotonic() + 1.0
                if time.monotonic() >= next_report:
                    self.summary.seconds = time.monotonic() - started
                    log.info("analytics: %s", self.summary.line())
                    next_report += 60.0
        finally:
            self._emit(pending + self.flush())
            for sink in self._sinks:
                sink.close()
            mqtt.loop_stop()
            mqtt.disconnect()
            if influx is not None:
                influx.close()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def _emit(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        assert self._sinks is not None
        self.summary.count(transitions)
        write_all(self._sinks, transitions)


# ------------------------------------------------------------------------------------------------ batch
def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now``, ``now-2h`` / ``-2h``, ISO 8601 (UTC when no offset is given): the shared grammar, smartmine.timespec."""
    return timespec.parse_instant(text, now)


def equipment_query(scorer: EquipmentScorer, start: datetime, end: datetime) -> str:
    from smartmine.influx import quote_ident, quote_string

    eq = scorer.eq
    return (f"SELECT * FROM {quote_ident(eq.type)} WHERE site = {quote_string(eq.site)} "
            f"AND equipment = {quote_string(eq.id)} AND time >= {ts_ns(start)} AND time < {ts_ns(end)}")


def telemetry_frame(raw: pd.DataFrame, sensors: Sequence[str]) -> pd.DataFrame:
    """The sensors' columns of an InfluxQL result, ``bad`` quality readings blanked, sorted by time."""
    frame = pd.DataFrame({"time": raw["time"]})
    for sensor in sensors:
        if sensor not in raw.columns:
            continue
        col = pd.to_numeric(raw[sensor], errors="coerce").astype(np.float64)
        quality = raw.get(sensor + QUALITY_SUFFIX)
        if quality is not None:
            col = col.mask(quality == "bad")
        frame[sensor] = col
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def run_batch(settings: Settings, catalog: Catalog, start: datetime, end: datetime, *, site: str | None = None,
              equipment: str | None = None, sinks: Sequence[AnomalySink] | None = None,
              publish_events: bool = True, progress: Any = None) -> tuple[JobSummary, list[Transition]]:
    """Score ``[start, end)`` of every equipment (of ``site``) from InfluxDB; write and publish the anomalies."""
    from smartmine.influx import InfluxClient

    if end <= start:
        raise UsageError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    if site is not None and site not in catalog.sites:
        raise UsageError(f"site {site!r} is not in the catalog (known: {', '.join(catalog.site_ids())})")
    targets = [eq for eq in catalog.all_equipment(site) if equipment is None or eq.id == equipment]
    if not targets:
        raise UsageError(f"no equipment {equipment!r} in the catalog" + (f" at site {site!r}" if site else ""))
    influx = InfluxClient.from_settings(settings)
    mqtt = None
    collected = CollectingSink()
    if sinks is None:
        sinks = [InfluxAnomalySink(influx)]
        if publish_events:
            mqtt = _connect(settings, f"{settings.analytics.client_id}-batch-{id(collected):x}")
            mqtt.loop_start()
            sinks.append(EventPublisher(mqtt, settings.topic_prefix))
    all_sinks = [*sinks, collected]
    summary = JobSummary()
    started = time.monotonic()
    try:
        for i, eq in enumerate(targets):
            scorer = EquipmentScorer(eq, settings.analytics, settings.language, utc_offset(catalog, eq.site))
            raw = influx.query_df(equipment_query(scorer, start, end))
            if progress is not None:
                progress(i + 1, len(targets), eq, len(raw))
            if raw.empty:
                continue
            frame = telemetry_frame(raw, list(eq.sensors))
            summary.messages += len(frame)
            summary.readings += int(frame.drop(columns="time").notna().to_numpy().sum())
            transitions = scorer.run(frame)
            if scorer.drift:
                neighbour = catalog.equipment(eq.site, eq.redundant_with[0])
                if neighbour is not None:
                    other = EquipmentScorer(neighbour, settings.analytics, settings.language)
                    raw_n = influx.query_df(equipment_query(other, start, end))
                    if not raw_n.empty:
                        transitions += scorer.run_drift(frame, telemetry_frame(raw_n, list(neighbour.sensors)))
            summary.count(transitions)
            write_all(all_sinks, transitions)
    finally:
        for sink in all_sinks:
            sink.close()
        if mqtt is not None:
            mqtt.loop_stop()
            mqtt.disconnect()
        influx.close()
        summary.seconds = time.monotonic() - started
    return summary, collected.transitions
