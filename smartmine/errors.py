"""The errors a user can cause and fix; the CLI prints them as one clear line instead of a traceback."""

from __future__ import annotations

from smartmine.catalog import CatalogError
from smartmine.config import ConfigError
from smartmine.influx import InfluxError
from smartmine.services import ServiceError
from smartmine.wire import WireError


class UsageError(RuntimeError):
    """A command was given input it cannot use (a missing file, a bad duration...)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    CatalogError, ConfigError, InfluxError, ServiceError, WireError, UsageError, FileNotFoundError,
)
