"""Alerts: engine throughput, and event-to-alert latency through a real Mosquitto and influxd.

- ``engine_events_per_s``: firing events folded by the pure engine (dedup path: a few open alerts,
  many repeats) and ``engine_new_alerts_per_s`` (every event opens an alert).
- ``event_to_state_ms_p50/p95/max``: from publishing an anomaly event to receiving the retained alert
  state on the equipment's ``alert`` topic, with the service's MQTT and InfluxDB history channels on,
  against a Mosquitto and an influxd this benchmark starts on free loopback ports.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerts.engine import AlertEngine
from alerts.service import AlertService
from smartmine.config import Settings
from smartmine.mqtt import make_client
from smartmine.services import Influxd, Mosquitto
from smartmine.wire import AnomalyEvent, topic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-events", type=int, default=200_000, help="events through the pure engine")
    parser.add_argument("--alerts", type=int, default=200, help="alerts opened through the running service")
    parser.add_argument("--tcp-nodelay", action=argparse.BooleanOptionalAction, default=True,
                        help="run Mosquitto with set_tcp_nodelay true, as deploy/mosquitto/mosquitto.conf does "
                             "(default; --no-tcp-nodelay for Mosquitto's own default)")


def _event(i: int, *, equipment: str | None = None, ts: datetime | None = None) -> AnomalyEvent:
    now = ts or datetime.now(UTC)
    return AnomalyEvent(ts=now, start=now, site="yanshan_mine", area="face_1203",
                        equipment=equipment or f"gas_point_{i}", sensor="ch4_pct", detector="limit",
                        rule="limit:methane", severity="critical", score=1.0, threshold=1.0,
                        values={"ch4_pct": 1.1}, message="CH4 1.1 %vol >= 1.0 %")


def _engine(n: int) -> dict[str, float]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    repeats = [_event(i % 20, ts=t0) for i in range(n)]
    engine = AlertEngine(clear_hold_s=30, cooldown_s=300, escalate_after_s=600)
    start = time.perf_counter()
    for i, ev in enumerate(repeats):
        engine.on_event(ev, t0 + timedelta(milliseconds=i))
    dedup = n / (time.perf_counter() - start)
    fresh = [_event(i, ts=t0) for i in range(min(n, 20_000))]
    engine = AlertEngine(clear_hold_s=30, cooldown_s=300, escalate_after_s=600)
    start = time.perf_counter()
    for i, ev in enumerate(fresh):
        engine.on_event(ev, t0 + timedelta(milliseconds=i))
    return {"engine_events_per_s": round(dedup), "engine_new_alerts_per_s": round(len(fresh) /
                                                                                (time.perf_counter() - start))}


def _service(n: int, workdir: Path, *, tcp_nodelay: bool) -> dict[str, float]:
    broker = Mosquitto(workdir / "mqtt", extra_config=["set_tcp_nodelay true"] if tcp_nodelay else [])
    influxd = Influxd(workdir / "influx")
    broker.start()
    influxd.start()
    try:
        settings = Settings(mqtt_url=broker.url, influx_url=influxd.url, influx_db="alerts_bench",
                            data_dir=workdir / "data", topic_prefix="bench")
        service = AlertService(settings)
        stop = threading.Event()
        runner = threading.Thread(target=service.run, args=(stop, 600.0), daemon=True)
        runner.start()
        if not service.connected.wait(15):
            raise RuntimeError("alerts service did not subscribe")
        arrived: queue.Queue[tuple[str, float]] = queue.Queue()
        watcher = make_client(settings.mqtt, "bench-watch")
        watcher.on_message = lambda _c, _u, msg: arrived.put((json.loads(msg.payload)["equipment"],
                                                              time.perf_counter()))
        watcher.connect(settings.mqtt.host, settings.mqtt.port)
        watcher.subscribe("bench/+/+/+/alert", qos=1)
        watcher.loop_start()
        publisher = make_client(settings.mqtt, "bench-pub")
        publisher.connect(settings.mqtt.host, settings.mqtt.port)
        publisher.loop_start()
        latencies = []
        try:
            for i in range(n):
                ev = _event(i)
                sent = time.perf_counter()
                publisher.publish(topic(ev.site, ev.area, ev.equipment, "event", "bench"), ev.encode(), qos=1)
                equipment, at = arrived.get(timeout=10)
                if equipment != ev.equipment:
                    raise RuntimeError(f"state of {equipment} arrived for the event of {ev.equipment}")
                latencies.append((at - sent) * 1000)
        finally:
            stop.set()
            runner.join(30)
            watcher.loop_stop()
            publisher.loop_stop()
        latencies.sort()
    finally:
        influxd.stop()
        broker.stop()
    return {"alerts_opened": n, "event_to_state_ms_p50": round(statistics.median(latencies), 2),
            "event_to_state_ms_p95": round(latencies[int(0.95 * (n - 1))], 2),
            "event_to_state_ms_max": round(latencies[-1], 2),
            "history_points_sent": service.dispatcher.stats["history"].sent}


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = _engine(args.engine_events)
    with tempfile.TemporaryDirectory(prefix="smartmine-alerts-bench-") as tmp:
        logging.getLogger("alerts").setLevel(logging.WARNING)  # one line per alert would drown the figures
        figures.update(_service(args.alerts, Path(tmp), tcp_nodelay=args.tcp_nodelay))
        figures["mosquitto_tcp_nodelay"] = args.tcp_nodelay
    return figures
