"""``smartmine ingest``: run the ingest service (MQTT telemetry -> InfluxDB) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse


def _ingest(args: argparse.Namespace) -> int:
    from ingest.service import IngestService
    from smartmine.cli import settings_from

    settings = settings_from(args)
    overrides = {k: v for k, v in (("group", args.group), ("client_id", args.client_id),
                                   ("metrics_port", args.metrics_port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update=overrides)})
    return IngestService(settings).run()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="write MQTT telemetry to InfluxDB (validated, batched, nothing lost)",
                       description="Subscribe to every equipment's telemetry (QoS 1, persistent session, shared "
                                   "subscription), validate it against the catalog and write it to InfluxDB. "
                                   "Invalid messages go to the dead letter. SIGTERM/SIGINT flush and exit.")
    p.add_argument("--group", help="shared-subscription group (default: settings ingest.group)")
    p.add_argument("--client-id", help="MQTT client id; one per instance (default: settings ingest.client_id)")
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port, 0 disables "
                                                    "(default: settings ingest.metrics_port)")
    p.set_defaults(func=_ingest)
