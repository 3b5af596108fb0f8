"""``smartmine record | export | replay | import-csv | inspect``: the developer's record/replay commands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smartmine.cli import parse_duration
from smartmine.errors import UsageError

SINKS = ("mqtt", "influx")
log = logging.getLogger(__name__)


def _user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A bad recording or an unreachable broker is the user's to fix: one clear line, not a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from replay.format import RecordingError

        try:
            return handler(args)
        except (RecordingError, ConnectionError) as exc:
            raise UsageError(str(exc)) from None
        except PermissionError as exc:
            raise UsageError(f"{exc.filename}: {exc.strerror}") from None
    return run


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the running job to stop cleanly (flush, close) instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}
    previous = {sig: signal.signal(sig, lambda s, _f: stop(names[signal.Signals(s)])) for sig in names}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _settings(args: argparse.Namespace) -> Any:
    from smartmine.cli import settings_from

    return settings_from(args)


def _size(n: int) -> str:
    from replay.progress import human

    return f"{human(n)}B"


# ------------------------------------------------------------------------------------------------ record
@_user_errors
def _record(args: argparse.Namespace) -> int:
    from replay.progress import make_progress, print_summary
    from replay.recorder import Recorder
    from replay.timeutil import format_ns
    from smartmine.wire import subscription

    settings = _settings(args)
    duration = args.duration
    if args.count is not None and args.count <= 0:
        raise UsageError("--count must be a positive number of messages")
    topics = args.topics or [subscription("telemetry", settings.topic_prefix)]
    recorder = Recorder(settings, Path(args.out), topics, client_id=args.client_id)
    progress = make_progress(args.quiet)
    with progress, _stop_on_signals(recorder.stop):
        what = "recording" if args.count or duration else "recording (Ctrl-C stops)"
        task = progress.add_task(what, total=args.count)
        ends = time.monotonic() + duration if duration is not None else None

        def tick(n: int) -> None:
            if ends is None:
                progress.update(task, completed=n)
                return
            # The end is a time, not a count: say how much of it is left.
            left = max(0, int(ends - time.monotonic()))
            progress.update(task, completed=n, description=f"recording, {left // 60}:{left % 60:02d} left")
        result = recorder.run(duration_s=duration, count=args.count, on_tick=tick)
    m = result.manifest
    rate = m.messages / result.elapsed_s if result.elapsed_s > 0 else 0.0
    print_summary(f"recorded {result.path}", [
        ("stopped", result.stop_reason),
        ("messages", f"{m.messages} ({m.telemetry} telemetry, {m.invalid} invalid, "
                     f"{m.messages - m.telemetry - m.invalid} other)"),
        ("readings", m.readings),
        ("topics", len(m.topics)),
        ("time range", f"{format_ns(m.first_ns)} .. {format_ns(m.last_ns)}"),
        ("rate", f"{rate:,.0f} msg/s over {result.elapsed_s:.1f} s"),
        ("broker disconnects", result.disconnects),
        ("file", f"{_size(Path(result.path).stat().st_size)} in {len(m.chunks)} chunks, sha256 {m.sha256[:16]}…"),
    ], args.quiet)
    return 0


# ------------------------------------------------------------------------------------------------ export
@_user_errors
def _export(args: argparse.Namespace) -> int:
    from replay.export import export
    from replay.progress import make_progress, print_summary
    from replay.timeutil import format_ns, parse_instant
    from smartmine.catalog import load_catalog
    from smartmine.influx import InfluxClient

    settings = _settings(args)
    start, end = parse_instant(args.start), parse_instant(args.end)
    if end <= start:
        raise UsageError(f"--to {args.end} is not after --from {args.start}")
    catalog = load_catalog(settings.catalog_dir)
    for site in args.site or ():
        if site not in catalog.sites:
            raise UsageError(f"--site {site!r} is not in the catalog (known: {', '.join(catalog.sites)})")
    client = InfluxClient.from_settings(settings, timeout_s=120)
    started = time.perf_counter()
    progress = make_progress(args.quiet, unit="s")
    with progress:
        task = progress.add_task("exporting", total=(end - start) / 1e9)
        result = export(client, catalog, Path(args.out), start, end, sites=args.site or (),
                        prefix=args.prefix or settings.topic_prefix, window_s=args.window,
                        retention_policy=args.rp, on_progress=lambda ns: progress.advance(task, ns / 1e9))
    elapsed = time.perf_counter() - started
    m = result.manifest
    rows = [
        ("points", f"{result.points} ({m.readings} readings) in {elapsed:.1f} s"),
        ("equipment", len(m.topics)),
        ("time range", f"{format_ns(m.first_ns)} .. {format_ns(m.last_ns)}"),
        ("file", f"{_size(Path(args.out).stat().st_size)} in {len(m.chunks)} chunks"),
    ]
    if result.skipped_fields:
        rows.append(("qualities not in the wire format", f"{result.skipped_fields} (exported as plain values)"))
    if result.invalid:
        rows.append(("points not exported", f"{result.invalid}, e.g. {result.examples[0]}"))
    print_summary(f"exported {args.out} from {settings.influx_db}", rows, args.quiet)
    return 0


# ------------------------------------------------------------------------------------------------ replay
def _replay_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--to`` carries both the sink (mqtt|influx) and, as the issue spells it, the end of the time window."""
    sinks = [v for v in args.to if v in SINKS]
    times = [v for v in args.to if v not in SINKS]
    if args.into:
        sinks.append(args.into)
    if args.until:
        times.append(args.until)
    if len(sinks) != 1:
        raise UsageError("say where to replay: --to mqtt or --to influx (once)")
    if len(times) > 1:
        raise UsageError(f"more than one end time given: {', '.join(times)}")
    return sinks[0], times[0] if times else None


@_user_errors
def _replay(args: argparse.Namespace) -> int:
    from replay.player import InfluxSink, MqttSink, Selection, Sink, replay
    from replay.progress import make_progress, print_summary
    from replay.sources import open_source
    from replay.timeutil import format_ns, parse_instant
    from smartmine.catalog import load_catalog
    from smartmine.wire import check_prefix

    target, until = _replay_target(args)
    speed_text = args.speed or ("1" if target == "mqtt" else "max")
    if speed_text == "max":
        speed: float | None = None
    else:
        try:
            speed = float(speed_text)
        except ValueError:
            raise UsageError(f"--speed {speed_text!r}: give a factor like 1, 10, 0.5, or max") from None
        if not speed > 0:
            raise UsageError(f"--speed {speed_text!r} must be positive")
    if args.prefix:
        check_prefix(args.prefix)
    selection = Selection(frozenset(args.site or ()), frozenset(args.equipment or ()),
                          parse_instant(args.start) if args.start else None,
                          parse_instant(until) if until else None)
    loops = 1 if args.loop is None else (None if args.loop == 0 else args.loop)
    settings = _settings(args)
    source = open_source(args.file, skip_bad=args.skip_bad)
    stop = threading.Event()
    stop_reason: list[str] = []

    def request_stop(reason: str) -> None:
        stop_reason.append(reason)
        stop.set()

    sink: Sink
    def cleanup() -> None:
        return None

    if target == "influx":
        from replay.lines import LineEncoder
        from smartmine.influx import InfluxClient

        client = InfluxClient.from_settings(settings, timeout_s=120, pool_size=args.writers + 1)
        client.ping()
        catalog = load_catalog(settings.catalog_dir)
        _prepare_database(client, catalog, settings)
        _check_retention(client, settings.influx_rp, source, selection, args.file, args.rebase_time, speed)
        encoder = LineEncoder(catalog)
        encoder.trust_fields = encoder.trusts(source.meta)
        influx_sink = InfluxSink(client, encoder, batch_lines=args.batch_lines, writers=args.writers)
        sink = influx_sink
        cleanup = client.close
    else:
        client_mqtt = _connect_mqtt(settings, args.client_id)
        sink = MqttSink(client_mqtt, prefix=args.prefix, qos=args.qos)

        def cleanup() -> None:
            client_mqtt.disconnect()
            client_mqtt.loop_stop()

    total = source.total_messages
    progress = make_progress(args.quiet)
    try:
        with progress, _stop_on_signals(request_stop):
            task = progress.add_task(f"replay → {target}",
                                     total=total * loops if total is not None and loops is not None else None)
            stats = replay(source, sink, speed=speed, rebase_to_ns=time.time_ns() if args.rebase_time else None,
                           selection=selection, loops=loops, on_progress=lambda n: progress.advance(task, n),
                           should_stop=stop.is_set)
        rollup_minutes = 0
        if isinstance(sink, InfluxSink) and sink.lines and not args.no_rollups:
            span = sink.encoder.first_ns, sink.encoder.last_ns
            if span[0] is not None and span[1] is not None:
                rollup_minutes = _backfill_rollups(client, catalog, (span[0], span[1]), args.quiet)
    finally:
        cleanup()
    rows: list[tuple[str, Any]] = [
        ("source", f"{args.file} ({source.kind})"),
        ("stopped", stop_reason[0] if stop_reason else "end of input"),
        ("messages", f"{stats.messages} in {stats.elapsed_s:.2f} s "
                     f"({stats.messages / max(stats.elapsed_s, 1e-9):,.0f} msg/s), {stats.loops} pass(es)"),
        ("recorded time range", f"{format_ns(stats.first_ns)} .. {format_ns(stats.last_ns)}"),
        ("speed", "max" if speed is None else f"{speed:g}×"),
    ]
    if args.rebase_time:
        rows.append(("time shifted by", f"{stats.shift_ns / 1e9:+,.3f} s"))
    refused = ""
    if target == "influx":
        assert isinstance(sink, InfluxSink)
        # Written means stored: what InfluxDB refused is counted apart, never as written.
        rows.append(("readings written", f"{sink.readings_written} in {sink.lines} points "
                                          f"({sink.readings_written / max(stats.elapsed_s, 1e-9):,.0f} readings/s)"))
        rejected = sink.encoder.rejected
        for reason, n in sorted(rejected.counts.items()):
            rows.append((f"not written: {reason}", f"{n}, e.g. {rejected.examples[reason]}"))
        if sink.rejected_lines:
            about = "about " if sink.readings_refused_estimated else ""
            refused = (f"InfluxDB refused {about}{sink.readings_refused:,} of the {sink.readings:,} readings sent "
                       f"({sink.rejected_lines:,} points)")
            rows.append(("readings refused by InfluxDB", f"{about}{sink.readings_refused} in {sink.rejected_lines} "
                                                         "points"))
            for reason, n in sorted(sink.refused_by_reason.items(), key=lambda item: -item[1]):
                rows.append(("  refused because", f"{n} points: {reason}"))
        if rollup_minutes:
            rows.append(("1-minute rollups", f"computed for the {rollup_minutes:,} minutes replayed"))
    else:
        assert isinstance(sink, MqttSink)
        rows.append(("published", f"{sink.published} to {args.prefix or 'the recorded topics'}"))
        if speed is not None:
            rows.append(("most late", f"{stats.max_lateness_s * 1000:.1f} ms behind the recorded timing"))
    if stats.bad_regions:
        rows.append(("skipped (--skip-bad)", f"{len(stats.bad_regions)} bad region(s), {stats.bad_messages} "
                                             f"messages lost; first: {stats.bad_regions[0]}"))
    print_summary(f"replayed {args.file}", rows, args.quiet)
    if refused:
        print(f"smartmine: error: {refused}; see the reasons above", file=sys.stderr)
        return 1
    return 0


# InfluxQL durations as SHOW RETENTION POLICIES gives them: "720h0m0s", "1h0m0s", "0s" (infinite).
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _duration_ns(text: str) -> int:
    return int(sum(float(n) * _DURATION_NS[unit] for n, unit in _GO_DURATION.findall(text)))


def _check_retention(client: Any, rp_name: str | None, source: Any, selection: Any, file: Path,
                     rebase_time: bool, speed: float | None) -> None:
    """Refuse, before writing anything, a replay whose samples are older than the target retention policy
    keeps: InfluxDB would drop them ("points beyond retention policy") and store nothing of them."""
    from replay.player import rebase_shift
    from replay.timeutil import format_ns
    from smartmine.influx import InfluxError, quote_ident

    bounds = source.sample_bounds(selection.start_ns, selection.end_ns)
    if bounds is None:
        return
    now = time.time_ns()
    shift = rebase_shift(now, bounds[0], bounds[1], speed) if rebase_time else 0
    first, last = bounds[0] + shift, bounds[1] + shift
    try:
        results = client.query(f"SHOW RETENTION POLICIES ON {quote_ident(client.database)}", epoch=None)
    except InfluxError as exc:  # a server that does not list its policies: the write's answer still counts
        log.warning("could not read the retention policies of %r (%s); not checking the recording's age",
                    client.database, exc)
        return
    policies = [dict(zip(s["columns"], row, strict=False)) for r in results for s in r.get("series", [])
                for row in s.get("values", [])]
    policy = next((p for p in policies if (p.get("name") == rp_name if rp_name else p.get("default"))), None)
    if policy is None:
        return  # no such policy: the write names the problem
    keep_ns = _duration_ns(str(policy.get("duration", "0s")))
    if keep_ns == 0 or first >= now - keep_ns:
        return
    cutoff = now - keep_ns
    which = "every sample" if last < cutoff else "the samples before " + format_ns(cutoff)
    hint = (f"replay with --rebase-time to move the recording to now, or --from {format_ns(cutoff)} to replay "
            "only what the policy keeps" if not rebase_time and last - first <= keep_ns else
            f"replay only a part of it that fits (--from / --to, at most {policy['duration']} long)")
    raise UsageError(f"{file}: the samples span {format_ns(first)} .. {format_ns(last)}"
                     f"{' (rebased)' if rebase_time else ''}, but retention policy {policy['name']!r} of database "
                     f"{client.database!r} keeps only {policy['duration']}: InfluxDB would refuse {which}; {hint}")


def _prepare_database(client: Any, catalog: Any, settings: Any) -> None:
    """The database as ingest makes it (retention policies, rollups), so a replay lands where ingest's would."""
    from smartmine.influx import InfluxError
    from smartmine.schema import ensure_database

    try:
        if settings.ingest.ensure_database:
            ensure_database(client, catalog, retention=settings.ingest.retention,
                            rollup_retention=settings.ingest.rollup_retention)
        else:
            client.create_database()
    except InfluxError as exc:
        # 2.x/3.x map databases to buckets and refuse CREATE DATABASE: the write then says what is wrong.
        if exc.status not in (400, 401, 403, 404, 405):
            raise
        log.warning("could not create the database and its retention policies (%s); writing anyway", exc)


def _backfill_rollups(client: Any, catalog: Any, span_ns: tuple[int, int], quiet: bool) -> int:
    """The 1-minute rollups of the replayed span, a day at a time: the continuous queries only look back
    minutes, so history written now would otherwise have no rollups (the dashboards' long ranges use them)."""
    from datetime import UTC, datetime, timedelta

    from replay.progress import make_progress
    from smartmine.schema import backfill_rollups

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    minute = 60 * 10**9
    start = span_ns[0] // minute * minute
    end = (span_ns[1] // minute + 1) * minute
    day = 86_400 * 10**9
    progress = make_progress(quiet, unit="day")
    with progress:
        task = progress.add_task("1-minute rollups", total=-(-(end - start) // day))
        for lo in range(start, end, day):
            hi = min(lo + day, end)
            backfill_rollups(client, catalog, epoch + timedelta(microseconds=lo // 1000),
                             epoch + timedelta(microseconds=hi // 1000))
            progress.advance(task)
    return (end - start) // minute


def _connect_mqtt(settings: Any, client_id: str | None) -> Any:
    import uuid

    from smartmine.mqtt import make_client

    url = settings.mqtt
    client = make_client(url, client_id or f"smartmine-replay-{uuid.uuid4().hex[:8]}",
                         ca_file=settings.mqtt_ca_file)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.max_inflight_messages_set(1000)
    try:
        client.connect(url.host, url.port)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the MQTT broker at {url.masked()}: {exc}") from None
    client.loop_start()
    if not connected.wait(15):
        client.loop_stop()
        raise ConnectionError(f"the MQTT broker at {url.masked()} did not accept the connection within 15 s")
    return client


# ------------------------------------------------------------------------------------------------ import-csv
@_user_errors
def _import_csv(args: argparse.Namespace) -> int:
    from replay.csv_import import import_csv, parse_sensor_map
    from replay.progress import make_progress, print_summary
    from replay.timeutil import format_ns
    from smartmine.catalog import load_catalog

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    out = Path(args.out) if args.out else path.with_suffix(".smrec")
    progress = make_progress(args.quiet, unit="row")
    with progress:
        task = progress.add_task("importing", total=None)
        result = import_csv(path, out, load_catalog(settings.catalog_dir), time_col=args.time_col, site=args.site,
                            equipment=args.equipment, sensor_map=parse_sensor_map(args.sensor_map),
                            prefix=args.prefix or settings.topic_prefix, timezone=args.tz, skip_bad=args.skip_bad,
                            on_progress=lambda n: progress.advance(task, n),
                            on_total=lambda n: progress.update(task, total=n))
    m = result.manifest
    rows: list[tuple[str, Any]] = [
        ("samples", f"{result.rows} ({m.readings} readings) for {args.site}/{args.equipment}"),
        ("time range", f"{format_ns(m.first_ns)} .. {format_ns(m.last_ns)}"),
        ("empty cells", result.empty_cells),
        ("rows left out", result.skipped_rows),
    ]
    for sensor, n in sorted(result.out_of_range.items()):
        rows.append((f"{sensor} outside its physical range", f"{n} (stored with quality out_of_range on ingest)"))
    print_summary(f"imported {path} → {out}", rows, args.quiet)
    return 0


# ------------------------------------------------------------------------------------------------ inspect
@_user_errors
def _inspect(args: argparse.Namespace) -> int:
    import json
    import sys

    from replay.format import RecordingReader
    from replay.progress import print_summary
    from replay.timeutil import format_ns

    reader = RecordingReader(args.file, skip_bad=args.skip_bad)
    digest = reader.verify() if args.verify else None
    m = reader.manifest
    if args.json:
        data = json.loads(m.to_json()) if m else {"manifest": None}
        data["bad"] = [{"offset": b.offset, "problem": b.problem} for b in reader.bad]
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if m is None:
        rows: list[tuple[str, Any]] = [("manifest", "missing (recovered by scanning)"),
                                       ("chunks", len(reader.chunks)),
                                       ("messages", sum(c.count for c in reader.chunks))]
    else:
        rows = [
            ("source", f"{m.source}, created {m.created}"),
            ("messages", f"{m.messages} ({m.telemetry} telemetry, {m.invalid} invalid)"),
            ("readings", m.readings),
            ("time range", f"{format_ns(m.first_ns)} .. {format_ns(m.last_ns)}"),
            ("topics", len(m.topics)),
            ("chunks", len(m.chunks)),
            ("sha256", m.sha256),
        ]
        rows += [(f"meta.{k}", v) for k, v in m.meta.items()]
    if digest:
        rows.append(("verified", "every chunk checksum and the SHA-256 match"))
    for bad in reader.bad:
        rows.append(("bad", f"offset {bad.offset}: {bad.problem}"))
    print_summary(str(args.file), rows)
    return 0


# ------------------------------------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record telemetry from the broker into a recording file",
                       description="Subscribe with QoS 1 and write a chunked, compressed recording with a manifest. "
                                   "Stops on --duration, --count or Ctrl-C (the recording is always closed).")
    p.add_argument("--out", required=True, metavar="FILE", help="recording to write (e.g. night.smrec)")
    p.add_argument("--topics", nargs="+", metavar="FILTER",
                   help="MQTT topic filters (default: every telemetry topic under the configured prefix)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", metavar="D", type=parse_duration, help="stop after this long (90s, 15m, 2h)")
    stop.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    p.add_argument("--client-id", help="MQTT client id (default: a fresh one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_record)

    p = sub.add_parser("export", help="make a recording from what InfluxDB stored",
                       description="Read a time range from InfluxDB in chunks and turn the points back into "
                                   "telemetry messages, so it replays like a recording.")
    p.add_argument("--from", dest="start", required=True, metavar="T", help="start (RFC 3339, now, now-2h)")
    p.add_argument("--to", dest="end", default="now", metavar="T", help="end, exclusive (default: now)")
    p.add_argument("--site", action="append", help="only this site (repeat for several)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--prefix", help="topic prefix of the exported messages (default: the configured one)")
    p.add_argument("--window", default=600.0, type=parse_duration, metavar="D",
                   help="time read per query (bounds memory; default 10m)")
    p.add_argument("--rp", help="retention policy to read (default: the database's default)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_export)

    p = sub.add_parser("replay", help="replay a recording or simulator JSON Lines into MQTT or InfluxDB",
                       description="Replay into the broker or straight into InfluxDB, keeping the recorded timing "
                                   "scaled by --speed or as fast as possible. --to takes the target (mqtt|influx) "
                                   "and, given a second time, the end of the time window (or use --into/--until).")
    p.add_argument("file", metavar="FILE", help="a recording, or JSON Lines {topic, payload} (plain or .gz)")
    p.add_argument("--to", action="append", default=[], metavar="mqtt|influx|T",
                   help="where to replay (mqtt or influx); a time here ends the window")
    p.add_argument("--into", choices=SINKS, help=argparse.SUPPRESS)
    p.add_argument("--until", metavar="T", help="end of the time window (same as a time given to --to)")
    p.add_argument("--from", dest="start", metavar="T", help="start of the time window (recording time)")
    p.add_argument("--speed", metavar="X|max",
                   help="timing factor (2 = twice as fast) or max (default: 1 to mqtt, max to influx)")
    p.add_argument("--rebase-time", action="store_true", help="shift timestamps so the replay starts now")
    p.add_argument("--site", action="append", help="only this site (repeatable)")
    p.add_argument("--equipment", action="append", help="only this equipment id (repeatable)")
    p.add_argument("--loop", nargs="?", type=int, const=0, metavar="N",
                   help="replay N times (no N: until Ctrl-C); each pass continues the timeline of the last")
    p.add_argument("--prefix", metavar="NEW", help="publish under this topic prefix instead of the recorded one")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), help="publish QoS (default: as recorded)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt chunks or lines, count them, go on")
    p.add_argument("--batch-lines", type=int, default=20_000, help="points per InfluxDB write")
    p.add_argument("--writers", type=int, default=2, help="concurrent InfluxDB writes")
    p.add_argument("--no-rollups", action="store_true",
                   help="do not compute the 1-minute rollups of the replayed span afterwards")
    p.add_argument("--client-id", help="MQTT client id (default: a fresh one)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_replay)

    p = sub.add_parser("import-csv", help="turn a CSV export into a recording of one equipment",
                       description="One time column and one column per sensor, checked against the catalog.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--time-col", required=True, help="the timestamp column")
    p.add_argument("--site", required=True)
    p.add_argument("--equipment", required=True)
    p.add_argument("--sensor-map", required=True, metavar="COL=SENSOR,...", help="CSV column to catalog sensor")
    p.add_argument("--out", metavar="FILE", help="recording to write (default: FILE with .smrec)")
    p.add_argument("--tz", default="UTC", help="time zone of timestamps without an offset (default UTC)")
    p.add_argument("--prefix", help="topic prefix (default: the configured one)")
    p.add_argument("--skip-bad", action="store_true", help="leave out bad rows and cells instead of stopping")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_import_csv)

    p = sub.add_parser("inspect", help="show a recording's manifest and verify its checksums")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--verify", action="store_true", help="re-read every chunk and check the SHA-256")
    p.add_argument("--skip-bad", action="store_true", help="report damage instead of stopping at it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_inspect)
