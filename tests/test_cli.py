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
