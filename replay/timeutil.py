"""Instants on the command line (RFC 3339, ``now``, ``now-2h``) and in summaries."""

from __future__ import annotations

from datetime import UTC, datetime

from smartmine import timespec
from smartmine.schema import ts_ns


def parse_instant(text: str) -> int:
    """Nanoseconds since the epoch of a time in the shared grammar (``now-2h``, RFC 3339...; smartmine.timespec)."""
    return ts_ns(timespec.parse_instant(text))


def format_ns(ns: int | None) -> str:
    """RFC 3339 UTC with milliseconds for messages and summaries (``-`` for none)."""
    if ns is None:
        return "-"
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns // 1_000_000) % 1000:03d}Z"
