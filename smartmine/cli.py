"""The ``smartmine`` command line.

The shared commands (``catalog``, ``config``, ``wire``) live here; each stage adds its own commands
through a ``register(subparsers)`` function in its ``cli`` module, listed in :data:`STAGE_COMMANDS`.
Heavy imports happen inside the handlers, so ``smartmine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from smartmine import __version__, timespec

# Stage command modules, in the order data travels. Each exposes register(subparsers).
STAGE_COMMANDS: tuple[str, ...] = (
    "simulators.cli",   # smartmine simulate
    "ingest.cli",       # smartmine ingest
    "analytics.cli",    # smartmine analyze ...
    "alerts.cli",       # smartmine alerts ...
    "dashboards.cli",   # smartmine dashboards ...
    "replay.cli",       # smartmine record | export | replay | import-csv
    "smartmine.stack",  # smartmine up | down | report
    "smartmine.bench",  # smartmine bench ...
    "smartmine.bridge",  # smartmine deploy bridge | centre (a group of sites and its centre)
)

Handler = Callable[[argparse.Namespace], int | None]


# Spans keep their old name here: every stage's command line imports it as smartmine.cli.parse_duration.
parse_duration = timespec.parse_duration


def settings_from(args: argparse.Namespace) -> Any:
    """The effective settings for a command (``--config`` plus the environment)."""
    from smartmine.config import load_settings

    return load_settings(getattr(args, "config", None))


def catalog_from(args: argparse.Namespace) -> Any:
    from smartmine.catalog import load_catalog

    return load_catalog(settings_from(args).catalog_dir)


def _catalog_show(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    data = catalog.to_dict()
    if args.format == "json":
        json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    lang = settings_from(args).language
    table = Table(title=f"catalog ({catalog.source})")
    for col in ("site", "area", "equipment", "type", "sensors"):
        table.add_column(col)
    for eq in catalog.all_equipment():
        table.add_row(eq.site, eq.area, f"{eq.id}\n{eq.name.get(lang)}", eq.type, ", ".join(eq.sensors))
    Console().print(table)
    return 0


def _catalog_validate(args: argparse.Namespace) -> int:
    from smartmine.catalog import load_catalog

    catalog = load_catalog(args.directory)
    n_eq = sum(1 for _ in catalog.all_equipment())
    n_sensors = sum(len(e.sensors) for e in catalog.all_equipment())
    print(f"{args.directory}: ok, {len(catalog.sites)} sites, {n_eq} equipment, {n_sensors} sensors")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    json.dump(settings_from(args).masked(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _wire_schema(args: argparse.Namespace) -> int:
    from smartmine.wire import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _security_acl(args: argparse.Namespace) -> int:
    from smartmine.security import broker_acl

    settings = settings_from(args)
    text = broker_acl(catalog_from(args), args.prefix or settings.topic_prefix, args.ingest_workers)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{args.output}: written")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartmine",
        description="Industrial telemetry for coal mines and steel plants: simulate, ingest, analyse, alert, show.",
    )
    parser.add_argument("--version", action="version", version=f"smartmine {__version__}")
    parser.add_argument("--config", metavar="FILE", help="settings file (TOML); default $SMARTMINE_CONFIG or "
                                                         "./smartmine.toml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    catalog = sub.add_parser("catalog", help="show or validate the equipment catalog")
    csub = catalog.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    show = csub.add_parser("show", help="print the loaded catalog")
    show.add_argument("--format", choices=("table", "json"), default="table")
    show.set_defaults(func=_catalog_show)
    validate = csub.add_parser("validate", help="validate a catalog folder (units.yaml, equipment_types.yaml, sites/)")
    validate.add_argument("directory")
    validate.set_defaults(func=_catalog_validate)

    config = sub.add_parser("config", help="show the effective settings")
    cfsub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cfsub.add_parser("show", help="print the effective settings, secrets masked").set_defaults(func=_config_show)

    wire = sub.add_parser("wire", help="the wire format")
    wsub = wire.add_subparsers(dest="wire_command", metavar="ACTION", required=True)
    wsub.add_parser("schema", help="print the telemetry payload's JSON Schema").set_defaults(func=_wire_schema)

    security = sub.add_parser("security", help="broker access rules (see docs/security.md)")
    ssub = security.add_subparsers(dest="security_command", metavar="ACTION", required=True)
    acl = ssub.add_parser("acl", help="print the Mosquitto ACL generated from the catalog")
    acl.add_argument("--prefix", help="topic prefix (default: the configured one)")
    acl.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    acl.add_argument("--ingest-workers", type=int, default=1, metavar="N",
                     help="broker users for N ingest workers of one --group (ingest, ingest_2, ...)")
    acl.set_defaults(func=_security_acl)

    for module in STAGE_COMMANDS:
        # While a stage is being built its module may not exist yet; every shipped stage has one.
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "bench_args"):  # only a benchmark parses its own options (smartmine.bench)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.bench_args = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from smartmine.config import RedactUrlsFilter, redact_text

    for handler in logging.getLogger().handlers:  # no log line shows a URL's password or token
        handler.addFilter(RedactUrlsFilter())
    from smartmine.errors import USER_ERRORS, influx_exit_status
    from smartmine.influx import InfluxError

    user_errors: tuple[type[BaseException], ...] = (*USER_ERRORS, timespec.TimeSpecError)
    try:
        result = args.func(args)
    except user_errors as exc:
        print(f"smartmine: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except InfluxError as exc:  # a service that does not answer: exit 1, so that a supervisor retries
        print(f"smartmine: error: {redact_text(str(exc))}", file=sys.stderr)
        return influx_exit_status(exc)
    except KeyboardInterrupt:
        print("smartmine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
