"""Progress bars (rate and ETA) and end-of-run summaries for the long record/replay commands, on stderr."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``48.2k msg/s``."""

    def __init__(self, unit: str = "msg") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"- {self.unit}/s", style="progress.data.speed")
        return Text(f"{human(speed)} {self.unit}/s", style="progress.data.speed")


def human(n: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}" if abs(n) >= 10 or n == int(n) else f"{n:.1f}"


def make_progress(quiet: bool = False, unit: str = "msg") -> Progress:
    """A progress display: what, bar, done/total, percent, rate, elapsed, ETA. ``quiet`` hides it."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=quiet, transient=False,
    )


def print_summary(title: str, rows: Iterable[tuple[str, Any]], quiet: bool = False) -> None:
    """A two-column summary table (always printed unless quiet: it is the answer to 'what happened')."""
    if quiet:
        return
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
