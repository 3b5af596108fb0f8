"""Self-monitoring of the ingest service: Prometheus metrics and a ``/healthz`` endpoint.

Metrics are per service instance (their own registry), so several instances in one process, as in the
tests, do not mix their counts. ``GET /metrics`` is the Prometheus text format; ``GET /healthz`` answers
200 with a small JSON body while the service is healthy (connected to the broker, and every received
message either written or safely spooled), 503 with the reason otherwise.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ingest.validate import REASONS

_NS = "smartmine_ingest"
MAX_SOURCE_LABELS = 200
OTHER_SOURCES = "_other"


class IngestMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter(f"{_NS}_messages", "MQTT messages received", ["result"], registry=r)
        self.readings = Counter(f"{_NS}_readings", "Readings accepted (a reading is one sensor value)",
                                registry=r)
        self.out_of_range = Counter(f"{_NS}_out_of_range_readings",
                                    "Readings outside the sensor's physical range, stored as out_of_range",
                                    registry=r)
        self.points_written = Counter(f"{_NS}_points_written", "Points written to InfluxDB", registry=r)
        self.batch_points = Histogram(f"{_NS}_batch_points", "Points per batch",
                                      buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000), registry=r)
        self.write_seconds = Histogram(f"{_NS}_write_seconds", "Duration of one InfluxDB write request",
                                       ["outcome"], registry=r,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.dead_letters = Counter(f"{_NS}_dead_letters", "Dead-letter records written", ["reason"], registry=r)
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.spool_batches = Gauge(f"{_NS}_spool_batches", "Batches in the on-disk spool", registry=r)
        self.spool_bytes = Gauge(f"{_NS}_spool_bytes", "Bytes in the on-disk spool", registry=r)
        self.spooled = Counter(f"{_NS}_spooled_batches", "Batches written to the spool", registry=r)
        self.unacked = Gauge(f"{_NS}_unacknowledged_messages",
                             "Messages received but not yet written or spooled (not acknowledged)", registry=r)
        self.lag = Gauge(f"{_NS}_lag_seconds",
                         "Age of the oldest sample of the last batch when it became durable", registry=r)
        self.connected = Gauge(f"{_NS}_mqtt_connected", "1 while connected to the broker", registry=r)
        # Integrity (ingest/sequence.py, the dead-letter sink): what never arrived, what was not written out.
        self.gap_messages = Counter(f"{_NS}_sequence_gap_messages",
                                    "Messages missing from a publisher's seq (gaps), by source (the first "
                                    f"{MAX_SOURCE_LABELS} sources; the rest as source=\"{OTHER_SOURCES}\")",
                                    ["source"], registry=r)
        self.gaps = Counter(f"{_NS}_sequence_gaps", "Gaps found in publishers' seq", registry=r)
        self.seq_duplicates = Counter(f"{_NS}_sequence_duplicate_messages",
                                      "Messages with a seq already seen (redeliveries)", registry=r)
        self.seq_late = Counter(f"{_NS}_sequence_late_messages",
                                "Messages that arrived after their gap had been reported", registry=r)
        self.seq_restarts = Counter(f"{_NS}_sequence_restarts", "Publishers whose seq began again", registry=r)
        self.broker_dropped = Counter(f"{_NS}_broker_dropped_messages",
                                      "Increase of the broker's $SYS/broker/publish/messages/dropped", registry=r)
        self.dead_letters_suppressed = Counter(f"{_NS}_dead_letters_suppressed",
                                               "Dead-letter and gap records over the rate limit: counted, "
                                               "not written out", ["reason"], registry=r)
        self.dead_letter_failures = Counter(f"{_NS}_dead_letter_write_failures",
                                            "Dead-letter or gap files that could not be written (full disk...)",
                                            registry=r)
        self.sessions_lost = Counter(f"{_NS}_mqtt_sessions_lost",
                                     "Reconnects on which the broker had lost the persistent session "
                                     "(messages published meanwhile may be lost)", registry=r)
        self.spool_quarantined = Counter(f"{_NS}_spool_quarantined_segments",
                                         "Unreadable spool segments moved aside to the spool's quarantine folder",
                                         registry=r)
        self.config_error = Gauge(f"{_NS}_influxdb_config_error",
                                  "1 while InfluxDB refuses writes because of a setting (credentials, "
                                  "retention policy)", registry=r)
        self.writer_alive = Gauge(f"{_NS}_writer_alive", "1 while the writer thread runs", registry=r)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a background thread. ``health()`` returns (ok, details)."""

    def __init__(self, metrics: IngestMetrics, health: Callable[[], tuple[bool, dict[str, Any]]],
                 host: str, port: int) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    ok, details = health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **details}).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingest-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def is_healthy(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the ingest service whose metrics server listens on ``port`` answers ``/healthz`` with 200
    (for whoever starts one and waits for it: the benchmarks, the soak, the tests)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False
