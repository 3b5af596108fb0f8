"""The one grammar of times and spans on smartmine's command lines (docs/stack.md, "Times and spans").

A span (``--duration``, ``--window``, ``--for``...): ``90s``, ``500ms``, ``15m``, ``2h``, ``1h30m``, ``1d``,
``1w``, or a plain number of seconds. An instant (``--since``, ``--from``, ``--start``...): ``now``,
``now-1h`` / ``now+15m``, a span with its unit alone or after a minus (``1h`` and ``-1h`` both mean an
hour ago), or ISO 8601 (``2026-11-27T08:00:00Z``, ``2026-11-27T16:00+08:00``; without a zone it is UTC).
Every command parses through here, so ``report --since now-1h`` means what ``export --from now-1h`` means.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SPAN_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_RELATIVE = re.compile(r"(now)?\s*([+-])?\s*(.*)")
SPAN_EXAMPLES = "90s, 15m, 2h, 1h30m, 1d or 1w"
NOT_AN_INSTANT = ("is neither a duration ago (1h, 90s), a time from now (now, now-1h, now+15m) nor ISO 8601 "
                  "(2026-11-27T08:00:00Z)")


class TimeSpecError(ValueError, argparse.ArgumentTypeError):
    """A time or span that does not parse; the message quotes it and shows the forms that do.

    A ValueError (the scenario file's checks name the field), an ArgumentTypeError (argparse prints it as
    is when the parser is a ``type=``), and one of the user errors ``smartmine`` prints and exits 2 on. Not a
    UsageError: smartmine.errors imports half the package, and every command line imports this module.
    """


def parse_duration(text: str) -> float:
    """Seconds in a span: ``90``, ``90s``, ``500ms``, ``15m``, ``2h``, ``1h30m``, ``1d``, ``1w``."""
    s = str(text).strip().replace(" ", "").lower()
    if _NUMBER.fullmatch(s):
        return float(s)
    pos, seconds = 0, 0.0
    for m in _SPAN_PART.finditer(s):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _SPAN_UNIT_S[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise TimeSpecError(f"duration {text!r} is not understood; use e.g. {SPAN_EXAMPLES}")
    return seconds


def parse_instant(text: str, now: datetime | None = None, *, what: str = "time") -> datetime:
    """An aware UTC datetime for ``now``, ``now-1h``, ``now+15m``, ``1h`` / ``-1h`` (ago) or ISO 8601."""
    raw = str(text).strip()
    m = _RELATIVE.fullmatch(raw.lower())
    assert m is not None  # every part is optional
    anchor, sign, span = m.groups()
    if anchor or sign or _NUMBER.fullmatch(span) or _SPAN_PART.match(span):
        base = (now or datetime.now(UTC)).astimezone(UTC)
        if anchor and not sign and not span:
            return base
        if not anchor and sign == "+":
            raise TimeSpecError(f"{what} {text!r}: a time ahead is written from now, as in now+15m")
        if not anchor and _NUMBER.fullmatch(span):
            raise TimeSpecError(f"{what} {text!r} has no unit: write how long ago, e.g. {span}s, {span}m or {span}h")
        try:
            seconds = parse_duration(span) if sign or not anchor else None  # "now 1h": no direction
        except TimeSpecError:
            seconds = None
        if seconds is None:
            raise TimeSpecError(f"{what} {text!r} {NOT_AN_INSTANT}")
        return base + timedelta(seconds=seconds) if sign == "+" else base - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise TimeSpecError(f"{what} {text!r} {NOT_AN_INSTANT}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
