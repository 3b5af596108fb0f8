"""Writing one batch of line protocol to InfluxDB: retries, backoff with jitter, partial writes.

- A retryable failure (timeout, connection refused, 429, 5xx) is retried with exponential backoff and
  full jitter until the caller's deadline; then :class:`WriteUnavailable` tells the caller to spool.
- A 4xx that names the lines it refused (``unable to parse '<line>': <reason>``) is split: those lines
  are returned as rejected with the server's reason, the others are written again. Writing them again is
  safe: a point is identified by series and timestamp, so a second write overwrites the first.
- A 1.x partial write for a field type conflict (``input field "f" on measurement "m" is type float,
  already exists as type integer dropped=N``) has stored the other lines: the N refused ones are found by
  that measurement, field and type, one request in all. Otherwise a 4xx partial write that does not say
  which lines (several conflicts, ``points beyond retention policy``) is halved until each refused line is
  isolated; the good halves are written (a conflict costs O(log n) requests, not one per line).
- A refusal that only a person can fix (a wrong password or token: 401/403; a retention policy that does
  not exist) is :class:`WriteRefused`, naming the setting: spooling would only fill the disk for hours.
- Any other refusal (a missing database...) is not the data's fault: :class:`WriteUnavailable`, so the
  batch is spooled rather than thrown away.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence

from smartmine.influx import InfluxClient, InfluxError, PartialWriteError

log = logging.getLogger(__name__)

# How a 1.x server words a refusal that is about some lines of the batch, not about the request.
_LINE_LEVEL_MARKERS = ("partial write", "unable to parse", "field type conflict", "beyond retention policy")


# InfluxDB 1.x's wording of a field type conflict in a partial write, and the count of lines it dropped.
_FIELD_CONFLICT = re.compile(r'input field "((?:[^"\\]|\\.)*)" on measurement "((?:[^"\\]|\\.)*)" is type (\w+)')
_DROPPED = re.compile(r"dropped=(\d+)")
_MEASUREMENT = re.compile(r"(?:[^,\s\\]|\\.)+")


def _field_type(line: str, measurement: str, field: str) -> str | None:
    """The InfluxDB type of ``field`` in a line of ``measurement`` (integer, float, boolean, string), else None."""
    m = _MEASUREMENT.match(line)
    if m is None or m.group(0) != measurement:
        return None
    v = re.search(r"[ ,]" + re.escape(field) + r'=("|[tTfF]|-?[0-9.eE+-]+i\b|-?[0-9.eE+-]+u\b|-?[0-9.eE+-]+)', line)
    if v is None:
        return None
    token = v.group(1)
    if token == '"':
        return "string"
    if token in "tTfF":
        return "boolean"
    return "integer" if token.endswith("i") else "unsigned" if token.endswith("u") else "float"


def _conflicting_lines(error: InfluxError, idx: list[int], lines: Sequence[str]) -> list[int] | None:
    """The lines a 1.x field-type-conflict partial write dropped, when its message tells them apart; else None."""
    conflict, dropped = _FIELD_CONFLICT.search(error.body), _DROPPED.search(error.body)
    if conflict is None or dropped is None or "partial write" not in error.body:
        return None
    field, measurement, kind = conflict.group(1), conflict.group(2), conflict.group(3)
    refused = [i for i in idx if _field_type(lines[i], measurement, field) == kind]
    return refused if refused and len(refused) == int(dropped.group(1)) else None


class WriteUnavailable(RuntimeError):
    """InfluxDB did not take the batch and the data is not at fault: keep it (spool) and try later."""


class WriteRefused(WriteUnavailable):
    """InfluxDB refused the batch because of a setting (credentials, retention policy): a person must act."""


def configuration_problem(exc: InfluxError) -> str | None:
    """What is wrong with the settings when InfluxDB's answer says so, naming the setting; else None."""
    if exc.status in (401, 403):
        return (f"InfluxDB refused the credentials ({exc.status}: {exc.body.strip() or exc}); check "
                "SMARTMINE_INFLUX_TOKEN or SMARTMINE_INFLUX_USER/SMARTMINE_INFLUX_PASSWORD")
    if "retention policy not found" in exc.body or "retention policy not found" in str(exc):
        return (f"InfluxDB has no such retention policy ({exc.body.strip() or exc}); check SMARTMINE_INFLUX_RP "
                "(influx_rp in the settings file)")
    return None


def _unavailable(exc: InfluxError) -> WriteUnavailable:
    problem = configuration_problem(exc)
    return WriteRefused(problem) if problem else WriteUnavailable(str(exc))


def backoff_delays(initial_s: float, max_s: float, rng: random.Random | None = None) -> Callable[[], float]:
    """Exponential backoff with full jitter (AWS architecture blog): uniform in [0, min(max, initial·2^n)]."""
    rng = rng or random.Random()
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        ceiling = min(max_s, initial_s * (2 ** attempt))
        attempt = min(attempt + 1, 30)
        return rng.uniform(initial_s / 2, ceiling) if ceiling > initial_s / 2 else ceiling
    return next_delay


class BatchWriter:
    """Writes batches through one :class:`InfluxClient`. ``observe(seconds, points, ok)`` sees every request."""

    def __init__(self, client: InfluxClient, *, retry_initial_s: float, retry_max_s: float,
                 observe: Callable[[float, int, str], None] | None = None,
                 ensure_database: Callable[[], None] | None = None) -> None:
        self.client = client
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._observe = observe or (lambda seconds, points, outcome: None)
        self._ensure_database = ensure_database

    def write(self, lines: Sequence[str], deadline: float) -> list[tuple[int, str]]:
        """Write ``lines``; returns ``(index, server's reason)`` of each line InfluxDB refused.

        Retries until ``deadline`` (``time.monotonic()``); past it raises :class:`WriteUnavailable`.
        """
        rejected: list[tuple[int, str]] = []
        self._write(list(range(len(lines))), lines, deadline, rejected)
        rejected.sort()
        return rejected

    def _write(self, idx: list[int], lines: Sequence[str], deadline: float, rejected: list[tuple[int, str]]) -> None:
        if not idx:
            return
        body = "\n".join(lines[i] for i in idx).encode()
        try:
            self._post(body, len(idx), deadline)
            return
        except PartialWriteError as exc:
            error: InfluxError = exc
            named = exc.rejected
        except InfluxError as exc:
            if exc.status != 413:  # too large: halve it like a partial write
                raise _unavailable(exc) from exc
            error, named = exc, {}
        if named:
            refused = [i for i in idx if lines[i] in named]
            if refused:
                for i in refused:
                    rejected.append((i, named[lines[i]]))
                bad = set(refused)
                self._write([i for i in idx if i not in bad], lines, deadline, rejected)
                return
        if error.status != 413 and not any(m in error.body for m in _LINE_LEVEL_MARKERS):
            raise _unavailable(error) from error
        found = _conflicting_lines(error, idx, lines)
        if found is not None:  # the others are stored already: nothing to write again
            rejected.extend((i, error.body.strip()) for i in found)
            return
        if len(idx) == 1:
            rejected.append((idx[0], error.body.strip() or str(error)))
            return
        half = len(idx) // 2
        self._write(idx[:half], lines, deadline, rejected)
        self._write(idx[half:], lines, deadline, rejected)

    def _post(self, body: bytes, points: int, deadline: float) -> None:
        """One write, retried while the failure is retryable and the deadline allows."""
        delay = backoff_delays(self.retry_initial_s, self.retry_max_s)
        ensured = False
        while True:
            start = time.perf_counter()
            try:
                self.client.write_lines(body)
            except PartialWriteError:
                self._observe(time.perf_counter() - start, points, "partial")
                raise
            except InfluxError as exc:
                self._observe(time.perf_counter() - start, points, "error")
                missing_db = exc.status == 404 and "database not found" in exc.body
                if missing_db and self._ensure_database is not None and not ensured:
                    # Someone dropped the database under us (or it was never made): make it, once.
                    ensured = True
                    try:
                        self._ensure_database()
                        continue
                    except InfluxError as ensure_exc:
                        log.error("InfluxDB database is missing and could not be created: %s", ensure_exc)
                if not exc.retryable or configuration_problem(exc):
                    raise
                pause = delay()
                if time.monotonic() + pause > deadline:
                    raise WriteUnavailable(str(exc)) from exc
                log.warning("InfluxDB write failed (%s); retrying in %.2f s", exc, pause)
                time.sleep(pause)
                continue
            self._observe(time.perf_counter() - start, points, "ok")
            return
