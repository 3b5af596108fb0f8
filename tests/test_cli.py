"""The smartmine command line answers --help and --version and reports errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

from smartmine import __version__


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartmine.cli", *args], capture_output=True, text=True)


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"smartmine {__version__}"


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("catalog", "config"):
        assert command in proc.stdout


def test_missing_config_file_is_a_clear_error(tmp_path: object) -> None:
    proc = run("--config", "/nonexistent/smartmine.toml", "config", "show")
    assert proc.returncode == 2
    assert "/nonexistent/smartmine.toml: cannot read config file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_command_loads_no_stage_machinery_it_does_not_use() -> None:
    # Ops type `smartmine alerts ack` at a terminal: building the command line must not pull in numpy, pandas
    # or the benchmarks (each stage imports its heavy libraries inside its handlers).
    code = ("import sys; from smartmine.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'influxdb_client') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_benchmark_options_are_its_own() -> None:
    helped = run("bench", "alerts", "--help")
    assert helped.returncode == 0 and "--engine-events" in helped.stdout
    bad = run("bench", "alerts", "--bogus")
    assert bad.returncode == 2 and "smartmine bench alerts: error: unrecognized arguments: --bogus" in bad.stderr
    other = run("catalog", "show", "--bogus")
    assert other.returncode == 2 and "unrecognized arguments: --bogus" in other.stderr
