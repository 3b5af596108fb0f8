"""Real services for the tests: one Mosquitto broker and one influxd per session, on free loopback ports.

Tests isolate themselves with their own database (``influx_db``) and topic prefix (``topic_prefix``);
a test that restarts or kills a service starts its own instance with ``mosquitto_factory`` or
``influxd_factory``. Nothing here is a mock: these are the Debian ``mosquitto`` and ``influxdb`` binaries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smartmine.config import Settings, load_settings
from smartmine.influx import InfluxClient
from smartmine.services import Influxd, Mosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


def _started(service: Callable[..., Any], folder: Path) -> Iterator[Callable[..., Any]]:
    """A factory of services for one test (each in its own folder under ``folder``), all stopped after it."""
    started: list[Any] = []

    def make(**kwargs: Any) -> Any:
        server = service(folder / f"{service.__name__.lower()}{len(started)}", **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    yield from _started(Mosquitto, tmp_path)


@pytest.fixture
def influxd_factory(tmp_path: Path) -> Iterator[Callable[..., Influxd]]:
    yield from _started(Influxd, tmp_path)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def influx_db() -> str:
    return f"test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def influx(influxd: Influxd, influx_db: str) -> Iterator[InfluxClient]:
    """A client on a fresh database of the session's influxd, dropped afterwards."""
    client = InfluxClient(influxd.url, influx_db)
    client.create_database()
    yield client
    client.drop_database()
    client.close()


@pytest.fixture
def settings(mosquitto: Mosquitto, influxd: Influxd, influx_db: str, topic_prefix: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the session's services, with this test's database, prefix and data folder."""
    for key, value in {
        "SMARTMINE_MQTT_URL": mosquitto.url,
        "SMARTMINE_INFLUX_URL": influxd.url,
        "SMARTMINE_INFLUX_DB": influx_db,
        "SMARTMINE_TOPIC_PREFIX": topic_prefix,
        "SMARTMINE_DATA_DIR": str(tmp_path / "data"),
        "SMARTMINE_INGEST__METRICS_PORT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SMARTMINE_CONFIG", raising=False)
    return load_settings()
