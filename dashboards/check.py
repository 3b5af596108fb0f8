"""Run every query of the boards against InfluxDB, with the variables filled in as Grafana would.

``smartmine dashboards check`` answers "would this board show data right now?" without a Grafana:
every panel target, template-variable query and InfluxDB annotation query is filled in (``$timeFilter``,
``$__interval``, ``$site``...) and sent to ``/query``; a query InfluxDB rejects, or one that returns no
rows, is reported with the board and panel it belongs to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.boards import Board
from dashboards.influxql import fill
from smartmine.influx import InfluxClient, InfluxError

ALL = "$__all"


@dataclass
class QueryCheck:
    board: str
    where: str
    query: str
    rows: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.rows > 0


def board_queries(board: Board) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) for every InfluxDB query of a board: variables, panels, annotations."""
    data = board.json
    for var in data.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield f"variable ${var['name']}", str(var["query"])
    for panel in data.get("panels", []):
        for target in panel.get("targets", []):
            if "query" in target:
                yield f"panel {panel.get('title')!r} ({target['refId']})", str(target["query"])
    for ann in data.get("annotations", {}).get("list", []):
        if ann.get("datasource", {}).get("type") == "influxdb":
            yield f"annotation {ann['name']!r}", str(ann["query"])


def board_variables(board: Board, overrides: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """Values for a board's variables: a fixed (custom) variable keeps its value, the others mean All."""
    values: dict[str, list[str]] = {}
    for var in board.json.get("templating", {}).get("list", []):
        values[var["name"]] = [str(var["query"])] if var.get("type") == "custom" else [ALL]
    values.update({k: list(v) for k, v in (overrides or {}).items() if k in values})
    return values


def check_board(client: InfluxClient, board: Board, overrides: Mapping[str, Sequence[str]] | None = None, *,
                time_range_s: int = 3600) -> list[QueryCheck]:
    variables = board_variables(board, overrides)
    results = []
    for where, query in board_queries(board):
        filled = fill(query, variables, time_range_s=time_range_s)
        check = QueryCheck(board.uid, where, filled)
        try:
            check.rows = _rows(client.query(filled))
        except InfluxError as exc:
            check.error = str(exc)
        results.append(check)
    return results


def _rows(results: list[dict[str, Any]]) -> int:
    return sum(len(series.get("values", [])) for r in results for series in r.get("series", []))
