"""Writing one batch of line protocol to InfluxDB: retries, backoff with jitter, partial writes.

- A retryable failure (timeout, connection refused, 429, 5xx) is retried with exponential backoff and
  full jitter until the caller's deadline; then :class:`WriteUnavailable` tells the caller to spool.
- A 4xx that names the lines it refused (``unable to parse '<line>': <reason>``) is split: those lines
  are returned as rejected with the server's reason, the others are written again. Writing them again is
  safe: a point is identified by series and timestamp, so a second write overwrites the first.
- A 4xx partial write that does not say which lines (``field type conflict``, ``points beyond retention
  policy``) is bisected until each refused line is isolated; the good halves are written.
- A refusal that only a person can fix (a wrong password or token: 401/403; a retention policy that does
  not exist) is :class:`WriteRefused`, naming the setting: spooling would only fill the disk for hours.
- Any other refusal (a missing database...) is not the data's fault: :class:`WriteUnavailable`, so the
  batch is spooled rather than thrown away.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

from smartmine.influx import InfluxClient, InfluxError, PartialWriteError

log = logging.getLogger(__name__)

# How a 1.x server words a refusal that is about some lines of the batch, not about the request.
_LINE_LEVEL_MARKERS = ("partial write", "unable to parse")


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
