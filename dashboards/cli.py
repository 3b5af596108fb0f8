"""``smartmine dashboards build | push | check``: Grafana boards generated from the catalog."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smartmine.cli import parse_duration
from smartmine.config import redact_url


def register(subparsers: Any) -> None:
    dash = subparsers.add_parser("dashboards", help="Grafana boards generated from the catalog")
    sub = dash.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="write the boards as JSON plus Grafana provisioning files")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--grafana-path", help="where Grafana reads the JSON files (default: OUT/dashboards)")
    build.set_defaults(func=_build)

    push = sub.add_parser("push", help="upsert the boards into Grafana (SMARTMINE_GRAFANA_URL/TOKEN) and "
                                       "annotate recent anomalies")
    push.add_argument("--anomalies-since", type=parse_duration, default=86400.0,
                      help="annotate anomalies of this period (default 1d; 0 for none)")
    push.set_defaults(func=_push)

    check = sub.add_parser("check", help="run every board query against InfluxDB and report those without data")
    check.add_argument("--range", type=parse_duration, default=3600.0, help="time range for $timeFilter (default 1h)")
    check.set_defaults(func=_check)


def _boards(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from dashboards.boards import BoardFactory
    from smartmine.catalog import load_catalog
    from smartmine.cli import settings_from

    settings = settings_from(args)
    factory = BoardFactory(load_catalog(settings.catalog_dir), language=settings.language,
                           datasource_uid=settings.dashboards.datasource_uid)
    return settings, factory.all()


def _build(args: argparse.Namespace) -> int:
    from dashboards.provisioning import write_all

    settings, boards = _boards(args)
    result = write_all(boards, settings, args.out, grafana_path=args.grafana_path)
    print(f"wrote {len(result.dashboards)} dashboards to {args.out / 'dashboards'}, "
          f"{result.datasource_file} and {result.provider_file}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from dashboards.push import push

    settings, boards = _boards(args)
    summary = push(settings, boards, anomalies_since_s=args.anomalies_since)
    where = redact_url(settings.grafana_url)
    print(f"pushed {summary.dashboards} dashboards to folder {settings.dashboards.folder_uid!r}"
          f"{' (created)' if summary.folder_created else ''} at {where}; anomaly annotations: "
          f"{summary.annotations_added} added, {summary.annotations_skipped} already there")
    return 0


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dashboards.check import check_board
    from smartmine.influx import InfluxClient

    settings, boards = _boards(args)
    client = InfluxClient.from_settings(settings)
    console = Console()
    failed = total = 0
    try:
        for board in boards:
            for check in check_board(client, board, time_range_s=int(args.range)):
                total += 1
                if not check.ok:
                    failed += 1
                    console.print(f"[yellow]{board.uid}[/] {check.where}: "
                                  f"{check.error or 'no data'}\n    {check.query}", markup=True, highlight=False)
    finally:
        client.close()
    print(f"{total - failed} of {total} queries on {len(boards)} boards return data")
    return 1 if failed else 0
