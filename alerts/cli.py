"""``smartmine alerts run | list | ack | silence | silences | unsilence | history``.

``run`` is the service; the other commands talk to it over MQTT (alerts/commands.py), except
``history``, which reads measurement ``alert_history`` from InfluxDB directly.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from smartmine.cli import parse_duration


def register(subparsers: Any) -> None:
    alerts = subparsers.add_parser("alerts", help="the alerts service and ops commands (list, ack, silence)")
    sub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run the alerts service (events in, alerts out to every channel)")
    run.add_argument("--duration", type=parse_duration, default=None, help="stop after this long (e.g. 10m)")
    run.set_defaults(func=_run)

    ls = sub.add_parser("list", help="open alerts, most severe first")
    ls.add_argument("--all", action="store_true", help="include recently resolved alerts")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=_list)

    ack = sub.add_parser("ack", help="acknowledge an alert (stops its escalation)")
    ack.add_argument("id")
    ack.add_argument("--by", help="who acknowledges (default user@host)")
    ack.set_defaults(func=_ack)

    sil = sub.add_parser("silence", help="hold back paging for matching alerts for a while "
                                         "(never for emergencies)")
    sil.add_argument("--site")
    sil.add_argument("--equipment")
    sil.add_argument("--rule", default="*", help="rule pattern, e.g. 'limit:*' (default: every rule)")
    sil.add_argument("--for", dest="duration", type=parse_duration, required=True, help="e.g. 30m, 2h")
    sil.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    sil.add_argument("--by", help="who silences (default user@host)")
    sil.set_defaults(func=_silence)

    sub.add_parser("silences", help="active silences").set_defaults(func=_silences)
    uns = sub.add_parser("unsilence", help="end a silence now")
    uns.add_argument("id")
    uns.set_defaults(func=_unsilence)

    hist = sub.add_parser("history", help="alert transitions from InfluxDB (measurement alert_history)")
    hist.add_argument("--since", type=parse_duration, default=86400.0, help="how far back (default 1d)")
    hist.add_argument("--site")
    hist.set_defaults(func=_history)


def _settings(args: argparse.Namespace) -> Any:
    from smartmine.cli import settings_from

    return settings_from(args)


def _run(args: argparse.Namespace) -> int:
    from alerts.service import AlertService

    settings = _settings(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # docker stop: finish deliveries, save the state
    service = AlertService(settings)
    try:
        summary = service.run(stop, duration_s=args.duration)
    except KeyboardInterrupt:
        stop.set()
        summary = service.summary
    channels = ", ".join(f"{name} {s['sent']} sent/{s['failed']} failed" for name, s in summary.channels.items())
    print(f"alerts: {summary.events} events ({summary.bad_events} bad, see {service.deadletter_path}), "
          f"{summary.commands} ops commands, transitions {summary.notifications or '{}'}, "
          f"{summary.open_alerts} open; channels: {channels}")
    return 0


def _command(args: argparse.Namespace, cmd: str, payload: dict[str, Any] | None = None) -> Any:
    from alerts.commands import send_command

    return send_command(_settings(args), cmd, payload, by=getattr(args, "by", None))


def _list(args: argparse.Namespace) -> int:
    alerts = _command(args, "list", {"all": args.all})
    if args.format == "json":
        json.dump(alerts, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(alerts)} alert(s)")
    for col in ("id", "severity", "state", "site / equipment", "rule", "fired (UTC)", "message"):
        table.add_column(col)
    styles = {"emergency": "bold white on red", "critical": "bold red", "warning": "yellow", "info": "cyan"}
    for a in alerts:
        state = a["state"] + (" (silenced)" if a.get("silenced_by") else "") + (" ↑" if a.get("escalated") else "")
        table.add_row(a["id"], f"[{styles[a['severity']]}]{a['severity']}[/]", state,
                      f"{a['site']} / {a['equipment']}", a["rule"], a["fired_at"][:19].replace("T", " "), a["message"])
    Console().print(table)
    return 0


def _ack(args: argparse.Namespace) -> int:
    alert = _command(args, "ack", {"id": args.id})
    print(f"acknowledged alert {alert['id']} ({alert['site']}/{alert['equipment']} {alert['rule']}) "
          f"as {alert['acknowledged_by']}")
    return 0


def _silence(args: argparse.Namespace) -> int:
    silence = _command(args, "silence", {"site": args.site, "equipment": args.equipment, "rule": args.rule,
                                         "duration_s": args.duration, "reason": args.reason})
    print(f"silence {silence['id']} until {silence['until']} (emergencies still page)")
    return 0


def _silences(args: argparse.Namespace) -> int:
    for s in _command(args, "silences"):
        print(f"{s['id']}: site={s['site'] or '*'} equipment={s['equipment'] or '*'} rule={s['rule']} "
              f"until {s['until']} by {s['created_by']}: {s['reason']}")
    return 0


def _unsilence(args: argparse.Namespace) -> int:
    _command(args, "unsilence", {"id": args.id})
    print(f"silence {args.id} removed")
    return 0


def _history(args: argparse.Namespace) -> int:
    from smartmine.influx import InfluxClient, quote_string

    settings = _settings(args)
    where = f"time > now() - {int(args.since)}s"
    if args.site:
        where += f" AND site = {quote_string(args.site)}"
    with_client = InfluxClient.from_settings(settings)
    try:
        frame = with_client.query_df("SELECT alert_id, transition, severity, state, message FROM alert_history "
                                     f"WHERE {where} GROUP BY site, equipment, rule")
    finally:
        with_client.close()
    if frame.empty:
        print("no alert transitions in that period")
        return 0
    frame = frame.sort_values("time")
    for row in frame.itertuples(index=False):
        print(f"{row.time:%Y-%m-%d %H:%M:%S} {row.alert_id:>5} {row.transition:<15} {row.severity:<9} "
              f"{row.site}/{row.equipment} {row.rule}: {row.message}")
    return 0
