"""Durations (``90s``, ``2h``, ``1h30m``) and instants (RFC 3339, ``now``, ``now-2h``) on the command line."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from smartmine.errors import UsageError
from smartmine.schema import ts_ns

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_RELATIVE = re.compile(r"^now(?:\s*-\s*(.+))?$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds or parts like ``1h30m``, ``90s``, ``250ms``."""
    raw = text.strip().lower()
    try:
        value = float(raw)
    except ValueError:
        pos = 0
        value = 0.0
        for m in _PART.finditer(raw):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(raw) or not raw:
            raise UsageError(f"duration {text!r} is not understood (examples: 90s, 15m, 2h, 1h30m)") from None
    if value <= 0:
        raise UsageError(f"duration {text!r} must be positive")
    return value


def parse_instant(text: str) -> int:
    """Nanoseconds since the epoch for RFC 3339 (``2026-11-27T08:00:00Z``; no offset means UTC), ``now``
    or ``now-2h``."""
    raw = text.strip()
    m = _RELATIVE.match(raw.lower())
    if m:
        back = parse_duration(m.group(1)) if m.group(1) else 0.0
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
