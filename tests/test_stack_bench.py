"""``smartmine bench all`` runs every registered benchmark and rewrites only its block of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pytest

from smartmine import bench

HAND_WRITTEN = """\
# Benchmarks

Intro written by a person.

## ingest

How the ingest benchmark works (hand-written, must survive every run).
"""


@pytest.fixture
def fake_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two benchmark modules, one that measures and one that crashes, registered in place of the real ones."""
    (tmp_path / "fake_fast_bench.py").write_text(textwrap.dedent('''
        """A benchmark that measures."""
        def add_arguments(parser):
            parser.add_argument("--messages", type=int, default=1000)
        def run(args):
            print("progress on stdout before the figures")
            return {"readings_per_s": 123456.7, "readings_per_s_ratio": 0.81, "messages": args.messages}
    '''))
    (tmp_path / "fake_broken_bench.py").write_text(textwrap.dedent('''
        """A benchmark that fails."""
        def add_arguments(parser):
            pass
        def run(args):
            raise SystemExit(3)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(p for p in sys.path if p)}")
    monkeypatch.setattr(bench, "BENCHMARKS", {"fast": "fake_fast_bench", "broken": "fake_broken_bench",
                                              "unbuilt": "no_such_stage.bench"})


def _run_all(out: Path, *extra: str) -> int:
    args = argparse.Namespace(skip=[], only=[], args=list(extra), out=out, timeout=60.0)
    return bench._bench_all(args)


def test_bench_all_writes_machine_versions_and_figures_keeping_hand_written_notes(
        fake_benchmarks: None, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(HAND_WRITTEN)
    assert _run_all(doc, "fast=--messages 42") == 1  # one benchmark failed: say so in the exit code
    text = doc.read_text()
    assert "Intro written by a person." in text
    assert "How the ingest benchmark works (hand-written, must survive every run)." in text
    assert text.index(bench.BEGIN) < text.index("## ingest")  # the generated block comes before the sections
    assert "| readings_per_s | 123,457 | 0.81 |" in text  # the ratio sits beside its absolute figure
    assert "| messages | 42 |" in text  # --args reached the benchmark
    assert "| broken | failed: exited with code 3 |" in text
    assert "| cores |" in text and "| mosquitto | 2." in text and "| influxd | 1." in text

    # A second run replaces the block instead of adding another one.
    _run_all(doc)
    text = doc.read_text()
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    assert "| messages | 1,000 |" in text and "| messages | 42 |" not in text
    assert text.count("How the ingest benchmark works") == 1


def test_bench_all_refuses_an_unknown_benchmark(fake_benchmarks: None, tmp_path: Path) -> None:
    from smartmine.errors import UsageError

    with pytest.raises(UsageError, match="unknown benchmark 'nope'"):
        bench._bench_all(argparse.Namespace(skip=["nope"], only=[], args=[], out=tmp_path / "b.md", timeout=5.0))
