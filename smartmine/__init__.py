"""smartmine's shared package: what every stage agrees on.

The catalog (``smartmine.catalog``), the wire format (``smartmine.wire``), the configuration
(``smartmine.config``), InfluxDB access (``smartmine.influx``), MQTT clients (``smartmine.mqtt``),
local services (``smartmine.services``) and the ``smartmine`` command line (``smartmine.cli``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smartmine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
