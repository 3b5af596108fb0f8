"""The errors a user can cause and fix; the CLI prints them as one clear line instead of a traceback.

They exit with status 2, which the supervisor of ``smartmine up`` reads as "a person must fix this" and does
not restart. A service that does not answer is not one of them: :class:`~smartmine.influx.InfluxError`
exits 1 (retried by a restart) unless InfluxDB refused the settings (see :func:`exit_status`).
"""

from __future__ import annotations

from smartmine.catalog import CatalogError
from smartmine.config import ConfigError
from smartmine.influx import InfluxError
from smartmine.services import ServiceError
from smartmine.wire import WireError


class UsageError(RuntimeError):
    """A command was given input it cannot use (a missing file, a bad duration...)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    CatalogError, ConfigError, ServiceError, WireError, UsageError,
)
# What a person must fix: exit 2. Anything else that ends a command with a clear line: exit 1.
USAGE_EXIT = 2
FAILURE_EXIT = 1


def influx_exit_status(exc: InfluxError) -> int:
    """2 when InfluxDB refused the credentials (401/403), else 1: unreachable or failing is worth a retry."""
    return USAGE_EXIT if exc.status in (401, 403) else FAILURE_EXIT
