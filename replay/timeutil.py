"""Instants on the command line (RFC 3339, ``now``, ``now-2h``) and in summaries."""

from __future__ import annotations

import re
import time
from argparse import ArgumentTypeError
from datetime import UTC, datetime

from smartmine.cli import parse_duration
from smartmine.errors import UsageError
from smartmine.schema import ts_ns

_RELATIVE = re.compile(r"^now(?:\s*-\s*(.+))?$")


def parse_instant(text: str) -> int:
    """Nanoseconds since the epoch for RFC 3339 (``2026-11-27T08:00:00Z``; no offset means UTC), ``now``
    or ``now-2h``."""
    raw = text.strip()
    m = _RELATIVE.match(raw.lower())
    if m:
        try:
            back = parse_duration(m.group(1)) if m.group(1) else 0.0
        except ArgumentTypeError as exc:
            raise UsageError(f"time {text!r}: {exc}") from None
        return time.time_ns() - int(back * 1e9)
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"time {text!r} is not RFC 3339 (e.g. 2026-11-27T08:00:00Z), 'now' or 'now-2h'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return ts_ns(dt)


def format_ns(ns: int | None) -> str:
    """RFC 3339 UTC with milliseconds for messages and summaries (``-`` for none)."""
    if ns is None:
        return "-"
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns // 1_000_000) % 1000:03d}Z"
