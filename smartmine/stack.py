"""``smartmine up | down | report``: the whole pipeline on one machine, watched live, stopped cleanly.

``up`` starts Mosquitto and influxd (unless ``SMARTMINE_MQTT_URL`` / ``SMARTMINE_INFLUX_URL`` name services
that already run), creates the database with its retention policy and rollups, then runs each stage as a
child process with ``SMARTMINE_*`` settings pointing at those services: ingest, the streaming analytics and
alerts first (so they hear the very first samples), the simulators of both sites last. It shows the pipeline
live (or, ``--headless``, as log lines) until Ctrl-C or ``smartmine down``, then stops everything in reverse
order: simulators, alerts, analytics, ingest (which flushes), influxd, Mosquitto. Each stage only speaks the
shared contracts (MQTT topics, InfluxDB schema); this module runs them as commands and never imports one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from smartmine.config import Settings, redact_url
from smartmine.errors import UsageError
from smartmine.services import Influxd, Mosquitto, find_binary, free_port, port_in_use
from smartmine.supervisor import Child, ServiceChild, StageChild, UpLock, process_start_ticks, stop_pids

__all__ = ["STAGES", "StageSpec", "register"]


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage as ``up`` runs it: a ``smartmine`` command line and what it does."""

    name: str
    command: tuple[str, ...]
    role: str


def pipeline_stages(scenario: str, speed: str) -> tuple[StageSpec, ...]:
    """The stages in start order: consumers first, so the simulators' first samples (and faults) are heard."""
    return (
        StageSpec("ingest", ("ingest",), "MQTT telemetry → InfluxDB"),
        StageSpec("analytics", ("analyze", "stream"), "streaming detectors → anomalies, events"),
        StageSpec("alerts", ("alerts", "run"), "events → alerts (MQTT, history)"),
        StageSpec("simulate", ("simulate", "--site", "all", "--scenario", scenario, "--speed", speed),
                  f"coal mine + steel plant, scenario {scenario}"),
    )


STAGES = pipeline_stages("demo", "1")


# ---------------------------------------------------------------------------------------------------- roles
# `up --role edge|centre` (docs/multisite.md): a site's own stack with the bridge to the group centre, or the
# centre with several ingest workers on one shared subscription. The default role, all, is the one-machine
# pipeline above, unchanged.
ROLES = ("all", "edge", "centre")
CENTRE_INGEST_GROUP = "centre"


def role_stages(args: argparse.Namespace, scenario: str, speed: str) -> tuple[StageSpec, ...]:
    """The stages of ``args.role``: edge = the pipeline of one site; centre = N ingest workers, analytics, alerts."""
    role = getattr(args, "role", "all") or "all"
    if role == "all":
        return pipeline_stages(scenario, speed)
    if role == "edge":
        site = args.site
        return (
            StageSpec("ingest", ("ingest",), f"{site} telemetry → local InfluxDB"),
            StageSpec("analytics", ("analyze", "stream", "--site", site), "streaming detectors of this site"),
            StageSpec("alerts", ("alerts", "run"), "this site's alerts, whatever the uplink does"),
            # QoS 1 into the edge broker: a QoS 0 message is never queued for the bridge while the uplink is down.
            StageSpec("simulate", ("simulate", "--site", site, "--scenario", scenario, "--speed", speed, "--qos", "1"),
                      f"{site}, scenario {scenario}"),
        )
    workers = []
    for i in range(max(1, args.workers)):
        # Worker 0 serves the metrics port up watches (SMARTMINE_INGEST__METRICS_PORT); the others their own.
        port = () if i == 0 else ("--metrics-port", str(free_port()))
        workers.append(StageSpec(f"ingest-{i + 1}", ("ingest", "--group", CENTRE_INGEST_GROUP, "--client-id",
                                                     f"smartmine-ingest-centre-{i + 1}", *port),
                                 f"every site's telemetry → InfluxDB (shared subscription, worker {i + 1})"))
    return (*workers,
            StageSpec("analytics", ("analyze", "stream"), "streaming detectors, every site"),
            StageSpec("alerts", ("alerts", "run"), "alerts of every site"))


def role_broker(args: argparse.Namespace, settings: Settings, data_dir: Path, port: int) -> Mosquitto:
    """The broker of ``args.role``: plain (all), with the bridge to the centre (edge), with the site listener."""
    role = getattr(args, "role", "all") or "all"
    if role == "all":
        return Mosquitto(data_dir, port=port)
    from smartmine.bridge import (
        BridgeTls,
        CentreBroker,
        EdgeBroker,
        SiteListener,
        bridge_section,
        queue_plan,
        site_load,
    )
    from smartmine.catalog import load_catalog

    catalog = load_catalog(settings.catalog_dir)
    files = (args.cafile, args.certfile, args.keyfile)
    if any(files) and not all(files):
        raise UsageError("--cafile, --certfile and --keyfile go together")
    if role == "edge":
        if not args.site or not args.centre:
            raise UsageError("--role edge needs --site SITE and --centre URL (the centre's site listener)")
        load = site_load(catalog, args.site, settings.topic_prefix)
        plan = queue_plan(load, args.outage)
        tls = BridgeTls(*(Path(f).resolve() for f in files)) if all(files) else None
        print(plan.describe(load), flush=True)
        return EdgeBroker(data_dir, port=port, max_queued_messages=plan.max_queued_messages,
                          bridge=bridge_section(args.site, args.centre, tls, plan, settings.topic_prefix))
    if not all(files):
        raise UsageError("--role centre needs --cafile (the group CA), --certfile and --keyfile (the centre's "
                         "certificate) for the sites' TLS listener")
    host, _, listen_port = args.site_listener.rpartition(":")
    listener = SiteListener(host or "0.0.0.0", int(listen_port or 8883), Path(args.cafile).resolve(),
                            Path(args.certfile).resolve(), Path(args.keyfile).resolve(), data_dir / "centre.acl")
    data_dir.mkdir(parents=True, exist_ok=True)
    return CentreBroker(data_dir, port=port, site_listener=listener, catalog=catalog, prefix=settings.topic_prefix)


def add_role_arguments(up: argparse.ArgumentParser) -> None:
    from smartmine.cli import parse_duration

    up.add_argument("--role", choices=ROLES, default="all", help="all: the whole pipeline on this machine (default); "
                    "edge: one site with its bridge to the centre; centre: the group centre (docs/multisite.md)")
    up.add_argument("--site", help="--role edge: the catalog site this edge runs")
    up.add_argument("--centre", metavar="URL", help="--role edge: the centre's site listener, mqtts://host:8883")
    up.add_argument("--outage", type=parse_duration, default=86_400.0, metavar="D",
                    help="--role edge: the uplink outage the bridge queue rides out (default 24h)")
    up.add_argument("--workers", type=int, default=2, help="--role centre: ingest workers (default 2)")
    up.add_argument("--site-listener", default="0.0.0.0:8883", metavar="HOST:PORT",
                    help="--role centre: where the sites' bridges connect (TLS, default 0.0.0.0:8883)")
    up.add_argument("--cafile", help="the group CA certificate (edge: verifies the centre; centre: the sites)")
    up.add_argument("--certfile", help="this host's certificate (edge: CN bridge_<site>; centre: its server name)")
    up.add_argument("--keyfile", help="its private key")


def command_available(command: Sequence[str]) -> bool:
    """Whether ``smartmine <command...>`` exists in this installation (a stage may not be built yet)."""
    from smartmine.cli import build_parser

    parser: argparse.ArgumentParser = build_parser()
    for word in command:
        if word.startswith("-"):
            break
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return True


# ---------------------------------------------------------------------------------------------------- checks
def check_free_disk(path: Path, min_free_mb: int) -> float:
    """Free MB on the file system holding ``path``; a clear error below ``min_free_mb``."""
    free_mb = shutil.disk_usage(path).free / 1e6
    if free_mb < min_free_mb:
        raise UsageError(f"only {free_mb:.0f} MB free on the disk holding {path} (smartmine up needs at least "
                         f"{min_free_mb} MB for InfluxDB, the broker's persistence and ingest's spool); free some "
                         "space, or pass --data-dir on a larger disk (SMARTMINE_STACK__MIN_FREE_DISK_MB sets the "
                         "minimum)")
    return free_mb


def check_port(port: int, what: str, option: str, env: str) -> None:
    if port_in_use(port):
        raise UsageError(f"port {port} ({what}) is already in use on this machine: another {what} (the Debian "
                         f"service? `sudo systemctl stop ...`) or another smartmine up (`smartmine down "
                         f"--data-dir ...`). Choose a free port with {option} N, or use the running service "
                         f"with {env}=...")


# ---------------------------------------------------------------------------------------------------- up
class StopRequest:
    """SIGINT/SIGTERM set the stop flag; a second one while stopping means: do not wait, kill."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.hurry = False
        self.reason = ""

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            self.hurry = True
            return
        self.reason = signal.Signals(signum).name
        self.event.set()


@dataclass
class Endpoint:
    mqtt_url: str
    influx_url: str
    mqtt_external: bool
    influx_external: bool


class Stack:
    """The running stack: the services, the stages, the state file, the monitor and the view."""

    def __init__(self, settings: Settings, data_dir: Path, args: argparse.Namespace,
                 say: Callable[[str], None]) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.args = args
        self.say = say
        self.lock = UpLock(data_dir)
        self.children: list[Child] = []
        self.external: dict[str, str] = {}
        self.missing: list[StageSpec] = []
        self.stages: list[tuple[StageSpec, StageChild | None]] = []
        self.metrics_url: str | None = None
        self.grafana_links: list[str] = []
        self.started = datetime.now(UTC)

    # ------------------------------------------------------------ state file
    def save_state(self, ready: bool = False) -> None:
        self.lock.write_state({
            "pid": os.getpid(),
            "start_ticks": process_start_ticks(os.getpid()),
            "started": self.started.isoformat(),
            "ready": ready,
            "mqtt_url": redact_url(self.settings.mqtt_url),
            "influx_url": redact_url(self.settings.influx_url),
            "ingest_metrics_url": self.metrics_url,
            "children": [rec for c in self.children if (rec := c.record()) is not None],
        })

    # ------------------------------------------------------------ services
    def start_services(self) -> Endpoint:
        env = os.environ
        mqtt_external = bool(env.get("SMARTMINE_MQTT_URL"))
        influx_external = bool(env.get("SMARTMINE_INFLUX_URL"))
        stack_cfg = self.settings.stack
        mqtt_port = self.args.mqtt_port or stack_cfg.mqtt_port
        influx_port = self.args.influx_port or stack_cfg.influx_port
        # Check everything before starting anything: a missing binary or a taken port is said up front.
        if not mqtt_external:
            find_binary("mosquitto", "mosquitto")
            check_port(mqtt_port, "MQTT broker", "--mqtt-port", "SMARTMINE_MQTT_URL")
        if not influx_external:
            find_binary("influxd", "influxdb")
            check_port(influx_port, "InfluxDB", "--influx-port", "SMARTMINE_INFLUX_URL")
        updates: dict[str, Any] = {}
        if mqtt_external:
            self.external["mosquitto"] = self.settings.mqtt.masked()
            self._check_external_broker()
        else:
            broker = role_broker(self.args, self.settings, self.data_dir / "mosquitto", mqtt_port)
            self._start_child(ServiceChild("mosquitto", restart_limit=stack_cfg.restart_limit, service=broker))
            updates["mqtt_url"] = broker.url
        if influx_external:
            self.external["influxd"] = redact_url(self.settings.influx_url)
        else:
            server = Influxd(self.data_dir / "influxd", port=influx_port, cq_run_interval="10s")
            self._start_child(ServiceChild("influxd", restart_limit=stack_cfg.restart_limit, service=server))
            updates["influx_url"] = server.url
        if updates:
            self.settings = self.settings.model_copy(update=updates)
        self._prepare_database()
        return Endpoint(self.settings.mqtt_url, self.settings.influx_url, mqtt_external, influx_external)

    def _start_child(self, child: Child) -> None:
        self.say(f"starting {child.name}")
        child.start()
        self.children.append(child)
        self.save_state()

    def _check_external_broker(self) -> None:
        url = self.settings.mqtt
        if not port_in_use(url.port, url.host):
            raise UsageError(f"the MQTT broker {url.masked()} (SMARTMINE_MQTT_URL) does not answer; start it, or "
                             "unset SMARTMINE_MQTT_URL to let smartmine up run its own")

    def _prepare_database(self) -> None:
        from smartmine import schema
        from smartmine.catalog import load_catalog
        from smartmine.influx import InfluxClient, InfluxError

        client = InfluxClient.from_settings(self.settings)
        try:
            try:
                version = client.ping()
            except InfluxError as exc:
                raise UsageError(f"InfluxDB at {client.url} does not answer ({exc}); start it, or "
                                 "unset SMARTMINE_INFLUX_URL to let smartmine up run its own") from None
            schema.ensure_database(client, load_catalog(self.settings.catalog_dir))
            self.say(f"database {self.settings.influx_db!r} with its retention policies and 1-minute rollups ready "
                     f"on InfluxDB {version}")
        finally:
            client.close()

    # ------------------------------------------------------------ stages
    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SMARTMINE_MQTT_URL": self.settings.mqtt_url,
            "SMARTMINE_INFLUX_URL": self.settings.influx_url,
            "SMARTMINE_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",  # a stage's log shows its lines as they happen
        })
        if getattr(self.args, "config", None):
            env["SMARTMINE_CONFIG"] = str(Path(self.args.config).resolve())
        port = self._ingest_metrics_port()
        env["SMARTMINE_INGEST__METRICS_PORT"] = str(port)
        self.metrics_url = f"http://127.0.0.1:{port}/metrics" if port else None
        return env

    def _ingest_metrics_port(self) -> int:
        if "SMARTMINE_INGEST__METRICS_PORT" in os.environ:
            return self.settings.ingest.metrics_port  # the user chose it (0: off)
        port = self.settings.ingest.metrics_port
        return port if port and not port_in_use(port) else free_port()

    def start_stages(self) -> None:
        cfg = self.settings.stack
        specs = role_stages(self.args, self.args.scenario or cfg.scenario, self.args.speed or cfg.speed)
        env = self.child_env()
        for spec in specs:
            if not command_available(spec.command):
                self.missing.append(spec)
                self.stages.append((spec, None))
                words = " ".join(w for w in spec.command[:2] if not w.startswith("-"))
                self.say(f"stage {spec.name} not started: `smartmine {words}` is not part of this installation "
                         "(that stage is not built yet); the rest of the pipeline runs without it")
                continue
            child = StageChild(spec.name, restart_limit=cfg.restart_limit,
                               argv=[sys.executable, "-m", "smartmine.cli", *spec.command], env=env,
                               log_file=self.data_dir / "logs" / f"{spec.name}.log")
            self._start_child(child)
            self.stages.append((spec, child))

    def push_dashboards(self) -> None:
        """With Grafana configured, upsert the dashboards once and list their links (from Grafana's own search)."""
        url, token = self.settings.grafana_url, self.settings.grafana_token
        if not url or not token:
            return
        if not command_available(("dashboards", "push")):
            self.say("Grafana is configured but `smartmine dashboards push` is not part of this installation")
            return
        self.say(f"pushing dashboards to Grafana at {url}")
        try:
            proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "dashboards", "push"], env=self.child_env(),
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            self.say("dashboards push did not finish in 120 s; the pipeline runs on without it")
            return
        if proc.returncode != 0:
            self.say(f"dashboards push failed (the pipeline runs on): {(proc.stderr or proc.stdout).strip()[-500:]}")
            return
        self.say(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "dashboards pushed")
        self.grafana_links = grafana_links(url, token.get_secret_value(), self.settings.dashboards.folder_uid)
        for link in self.grafana_links:
            self.say(f"grafana: {link}")

    # ------------------------------------------------------------ watching
    def check_children(self) -> list[str]:
        events = [e for c in self.children if (e := c.check()) is not None]
        if events:
            self.save_state(ready=True)
        return events

    def stop_all(self, stop: StopRequest) -> None:
        """Reverse start order: simulators, alerts, analytics, ingest (flushes), influxd, Mosquitto."""
        timeout = self.settings.stack.stop_timeout_s
        for child in reversed(self.children):
            if child.pid is None:
                continue
            self.say(f"stopping {child.name} (pid {child.pid})")
            result = child.stop(timeout, hurry=lambda: stop.hurry)
            self.say(f"{child.name} {result}")
            self.save_state()


def grafana_links(url: str, token: str, folder_uid: str) -> list[str]:
    """``title: link`` of every dashboard in the folder, as Grafana's search API lists them."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"type": "dash-db", "folderUIDs": folder_uid})
    request = urllib.request.Request(f"{url.rstrip('/')}/api/search?{query}",
                                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            boards = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return [f"{url.rstrip('/')}/dashboards/f/{folder_uid}"]
    return [f"{b.get('title', '?')}: {url.rstrip('/')}{b.get('url', '')}" for b in boards if isinstance(b, dict)]


def _resolve_data_dir(args: argparse.Namespace, settings: Settings) -> Path:
    data_dir = Path(args.data_dir or settings.data_dir).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the data folder {data_dir}: {exc.strerror or exc}; choose another with "
                         "--data-dir") from None
    return data_dir


def _up(args: argparse.Namespace) -> int:
    from smartmine.cli import settings_from

    settings: Settings = settings_from(args)
    data_dir = _resolve_data_dir(args, settings)
    headless = bool(args.headless or not sys.stdout.isatty())
    log = _Log()
    check_free_disk(data_dir, settings.stack.min_free_disk_mb)
    stack = Stack(settings, data_dir, args, log.say)
    if not stack.lock.try_acquire():
        state = stack.lock.read_state()
        raise UsageError(f"smartmine up is already running on {data_dir} (pid {state.get('pid', '?')}, started "
                         f"{state.get('started', '?')}); stop it with `smartmine down --data-dir {data_dir}`")
    leftovers = stack.lock.leftovers()
    if leftovers:
        stop_pids(leftovers, settings.stack.stop_timeout_s, log.say)

    stop = StopRequest()
    # SIGHUP too: closing the terminal must stop the stack in order, not orphan it.
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monitor = None
    try:
        log.say(f"smartmine up: data in {data_dir}")
        stack.start_services()
        stack.start_stages()
        stack.push_dashboards()
        stack.save_state(ready=True)
        from smartmine.monitor import PipelineMonitor

        monitor = PipelineMonitor(stack.settings, stack.metrics_url)
        monitor.start()
        log.say(_ready_message(stack))
        if headless:
            log.say(f"next: `smartmine alerts list`, `smartmine report --since 1h --out report`, "
                    f"`smartmine down --data-dir {data_dir}` to stop")
            _run_headless(stack, monitor, stop, log)
        else:
            _run_live(stack, monitor, stop)
        log.say(f"stopping ({stop.reason or 'requested'}); press Ctrl-C again to kill at once")
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise UsageError(f"the disk holding {data_dir} is full ({exc}); free space or use --data-dir on a "
                             "larger disk") from None
        raise
    finally:
        if monitor is not None:
            monitor.stop()
        stack.stop_all(stop)
        stack.lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.say(f"smartmine up stopped; data kept in {data_dir} (run `smartmine up` again to resume, "
            f"`smartmine report --since 1h --out report` for plots)")
    return 0


class _Log:
    """Timestamped lines on stdout: all of a headless run, and what comes before and after the live screen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        with self._lock:
            print(f"{stamp} {line}", flush=True)


def _ready_message(stack: Stack) -> str:
    running = [spec.name for spec, child in stack.stages if child is not None]
    missing = [spec.name for spec in stack.missing]
    text = (f"ready: MQTT {stack.settings.mqtt.masked()}, InfluxDB {redact_url(stack.settings.influx_url)} "
            f"(db {stack.settings.influx_db}), stages {', '.join(running) or 'none'}")
    if missing:
        text += f"; not available: {', '.join(missing)}"
    return text + f"; logs in {stack.data_dir / 'logs'}"


def _rows(stack: Stack) -> list[Any]:
    from smartmine.liveview import Row

    # In the order data travels: simulators, ingest, analytics, alerts; then the services.
    order = {name: i for i, name in enumerate(("simulate", "ingest", "analytics", "alerts"))}
    rows = [Row(spec.name, spec.role, child, None if child is not None else "missing") for spec, child in
            sorted(stack.stages, key=lambda sc: order.get(sc[0].name, len(order)))]
    for child in stack.children:
        if isinstance(child, ServiceChild):
            url = child.service.url if child.service is not None else ""  # type: ignore[attr-defined]
            rows.append(Row(child.name, url, child))
    for name, url in stack.external.items():
        rows.append(Row(name, url, None, "external"))
    return rows


def _disk_warning(stack: Stack, last: list[float]) -> str | None:
    """Warn (once a minute at most) when the data folder's disk runs low while the stack runs."""
    free_mb = shutil.disk_usage(stack.data_dir).free / 1e6
    if free_mb < stack.settings.stack.min_free_disk_mb and time.monotonic() - last[0] > 60:
        last[0] = time.monotonic()
        return (f"WARNING only {free_mb:.0f} MB free on the disk holding {stack.data_dir}: InfluxDB will refuse "
                "writes when it is full and ingest will spool; free space soon")
    return None


def _run_headless(stack: Stack, monitor: Any, stop: StopRequest, log: _Log) -> None:
    from smartmine.liveview import status_line

    interval = stack.args.interval or stack.settings.stack.status_interval_s
    next_status = time.monotonic() + interval
    disk_last = [0.0]
    while not stop.event.wait(0.5):
        for line in stack.check_children():
            log.say(line)
        for line in monitor.news():
            log.say(line)
        if time.monotonic() >= next_status:
            next_status += interval
            monitor.scrape()
            log.say(status_line(_rows(stack), monitor.snapshot()))
            if (warning := _disk_warning(stack, disk_last)) is not None:
                log.say(warning)


def _run_live(stack: Stack, monitor: Any, stop: StopRequest) -> None:
    from rich.console import Console
    from rich.live import Live

    from smartmine.liveview import render

    console = Console()
    header = (f"smartmine up · data {stack.data_dir} · MQTT {stack.settings.mqtt.masked()} · "
              f"InfluxDB {redact_url(stack.settings.influx_url)} db {stack.settings.influx_db}")
    footer_lines = ["Ctrl-C (or `smartmine down` elsewhere) stops everything · logs: "
                    f"{stack.data_dir / 'logs'} · next: `smartmine report --since 1h --out report`, "
                    "`smartmine alerts list`"]
    footer_lines += [f"Grafana: {link}" for link in stack.grafana_links]
    events: list[str] = []
    disk_last = [0.0]
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while not stop.event.wait(1.0):
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            events += [f"{stamp} {e}" for e in stack.check_children()]
            if (warning := _disk_warning(stack, disk_last)) is not None:
                events.append(f"{stamp} {warning}")
            monitor.news()  # the screen shows the state; the change log is for headless runs
            monitor.scrape()
            footer = "\n".join(events[-4:] + footer_lines)
            uptime = datetime.now(UTC) - stack.started
            live.update(render(_rows(stack), monitor.snapshot(), f"{header} · up {str(uptime).split('.')[0]}",
                               footer))


# ---------------------------------------------------------------------------------------------------- down
def _down(args: argparse.Namespace) -> int:
    from smartmine.cli import settings_from

    settings: Settings = settings_from(args)
    data_dir = Path(args.data_dir or settings.data_dir).expanduser().resolve()
    lock = UpLock(data_dir)
    if not lock.lock_path.exists() and not lock.state_path.exists():
        print(f"smartmine up is not running on {data_dir}")
        return 0
    state = lock.read_state()
    # up stops its children one after the other, each allowed stop_timeout_s: wait for all of them.
    timeout = args.timeout or settings.stack.stop_timeout_s * max(1, len(state.get("children", []))) + 15
    if lock.try_acquire():
        # Nobody holds the lock: an up that died without cleaning up. Stop what it left running.
        n = stop_pids(lock.leftovers(), settings.stack.stop_timeout_s, print)
        lock.release()
        print(f"no smartmine up was running on {data_dir}; removed its stale lock"
              + (f" and stopped {n} processes it left behind" if n else ""))
        return 0
    pid = int(state.get("pid", 0))
    if not pid or process_start_ticks(pid) != state.get("start_ticks"):
        raise UsageError(f"{lock.lock_path} is locked but {lock.state_path} does not name a live smartmine up; "
                         "is an up still starting? try again in a few seconds")
    print(f"stopping smartmine up (pid {pid}) on {data_dir} ...", flush=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.try_acquire():
            lock.release()
            print("stopped: no smartmine process left running")
            return 0
        time.sleep(0.2)
    # up did not finish in time: kill it, then its children (recorded in the state file).
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    n = stop_pids(lock.leftovers(), 5.0, print)
    if lock.try_acquire():
        lock.release()
    print(f"smartmine up did not stop within {timeout:.0f} s: killed it and {n} of its processes")
    return 1


# ---------------------------------------------------------------------------------------------------- report
def _report(args: argparse.Namespace) -> int:
    from dashboards.report import run_report

    return run_report(args)


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run the whole pipeline locally with a live view (Ctrl-C stops it)",
                        description="Start Mosquitto and influxd (unless SMARTMINE_MQTT_URL / SMARTMINE_INFLUX_URL "
                                    "name running ones), then ingest, analytics, alerts and the simulators of both "
                                    "sites, and watch them live. Ctrl-C or `smartmine down` stops everything.")
    up.add_argument("--data-dir", type=Path, help="where the broker, InfluxDB, spool and logs keep their data "
                                                  "(default: SMARTMINE_DATA_DIR or ~/.local/share/smartmine)")
    up.add_argument("--mqtt-port", type=int, help="port for the broker up starts (default 1883)")
    up.add_argument("--influx-port", type=int, help="HTTP port for the influxd up starts (default 8086)")
    up.add_argument("--scenario", help="simulator scenario, a name or a YAML file (default demo)")
    up.add_argument("--speed", help="simulation speed: X times real time (default 1)")
    up.add_argument("--headless", action="store_true", help="log lines instead of the live screen (scripts, CI); "
                                                            "automatic when stdout is not a terminal")
    up.add_argument("--interval", type=float, help="seconds between headless status lines (default 5)")
    add_role_arguments(up)
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop a running `smartmine up` and everything it started")
    down.add_argument("--data-dir", type=Path, help="the data folder of that up (default as for up)")
    down.add_argument("--timeout", type=float, help="seconds to wait for a clean stop before killing")
    down.set_defaults(func=_down)

    report = sub.add_parser("report", help="PNG plots and an HTML summary of a period: signals, alerts, anomalies",
                            description="Plot the key signals with their limits and the anomaly spans shaded, and "
                                        "summarise alerts, anomalies and data completeness per equipment.")
    report.add_argument("--since", default="1h", help="start: a duration back from now (30m, 1h, 2d) or an ISO "
                                                      "8601 time (default 1h)")
    report.add_argument("--until", default="now", help="end: now (default), a duration back from now, or an ISO "
                                                       "8601 time")
    report.add_argument("--out", type=Path, default=Path("report"), help="output folder (default ./report)")
    report.add_argument("--site", action="append", help="only this site (repeatable; default all)")
    report.set_defaults(func=_report)
