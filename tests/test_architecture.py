"""The import rule of README.md ("a stage imports `smartmine`, never another stage"), enforced on every module.

Each module's imports are read with ast (also those inside functions and under TYPE_CHECKING), so a new
import of one stage by another fails here naming the file and line. The shared package `smartmine/` is
held to the same rule: it holds the contracts every stage agrees on. Today it also holds a stage of its own
(stack, supervisor, services, monitor, liveview, bench), which issue 17 moves to its own folder; until then
its imports of stages are listed below, one by one, so that no new one can land. The command line
(`smartmine/cli.py` STAGE_COMMANDS) and `smartmine bench` (BENCHMARKS) load stages by module name with
importlib: that is their job, and it is not an import this test sees.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("simulators", "ingest", "analytics", "alerts", "dashboards", "replay")
SHARED = "smartmine"
# (importing file, imported module): the shared package's own stage, to move out with issue 17. Remove an
# entry when its import goes; do not add one.
ALLOWED = {
    ("smartmine/stack.py", "dashboards.report"),  # `smartmine report` draws the plots of dashboards/report.py
}


def cross_stage_imports(root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, module) for every import of a stage from outside that stage, in stages and `smartmine/`."""
    found = []
    for top in (*STAGES, SHARED):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    stage = module.split(".")[0]
                    if stage in STAGES and stage != top:
                        found.append((rel, node.lineno, module))
    return found


def test_no_stage_imports_another_stage() -> None:
    offending = [f"{file}:{line} imports {module}" for file, line, module in cross_stage_imports()
                 if (file, module) not in ALLOWED]
    assert offending == [], "a stage imports only the shared package `smartmine`, never another stage (README.md)"


def test_the_allow_list_holds_only_imports_that_still_exist() -> None:
    present = {(file, module) for file, _, module in cross_stage_imports()}
    assert present >= ALLOWED, f"gone, remove from ALLOWED: {sorted(ALLOWED - present)}"


def test_the_check_names_the_file_and_line_of_a_new_import(tmp_path: Path) -> None:
    """A new cross-stage import is seen wherever it is put: at the top, inside a function, as `import x.y`."""
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "service.py").write_text(
        "from smartmine.wire import parse_telemetry\n\n\ndef f():\n    from analytics.engine import PlantScorer\n"
        "    import replay.player\n    return PlantScorer, replay.player, parse_telemetry\n", encoding="utf-8")
    (tmp_path / "analytics").mkdir()
    (tmp_path / "analytics" / "jobs.py").write_text("from analytics.engine import PlantScorer\n", encoding="utf-8")
    assert cross_stage_imports(tmp_path) == [("ingest/service.py", 5, "analytics.engine"),
                                             ("ingest/service.py", 6, "replay.player")]


# ------------------------------------------------------------------ private APIs behind a pin
HOSTILE = ["plain", "with space", "a,b", "k=v", 'say "hi"', "back\\slash", "line\nbreak", "tab\there", "煤矿 1203",
           "x\\"]


def test_the_private_influxdb_escapers_analytics_uses_write_what_the_public_point_writes() -> None:
    """analytics/store.py builds anomaly lines with influxdb_client's private _escape_* (pinned in pyproject):
    they must give the bytes its public Point gives, or a version bump would write other lines."""
    from influxdb_client import Point
    from influxdb_client.client.write.point import _ESCAPE_MEASUREMENT, _escape_key, _escape_string, _escape_tag_value

    for text in HOSTILE:
        public = Point("anomalies").tag("site", text).field(text, text).time(1_700_000_000_000_000_000)
        private = (f"{_escape_key('anomalies', _ESCAPE_MEASUREMENT)},site={_escape_tag_value(text)} "
                   f'{_escape_key(text)}="{_escape_string(text)}" 1700000000000000000')
        assert private == public.to_line_protocol(), text
