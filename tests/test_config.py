"""Settings from a file plus SMARTMINE_* variables; secrets only from the environment, masked when shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smartmine.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SMARTMINE_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.influx_db == "smartmine" and s.topic_prefix == "smartmine"
    assert s.mqtt.port == 1883 and not s.mqtt.tls


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "smartmine.toml"
    cfg.write_text('influx_db = "from_file"\ntopic_prefix = "plant"\n[ingest]\nbatch_size = 100\n')
    monkeypatch.setenv("SMARTMINE_INFLUX_DB", "from_env")
    monkeypatch.setenv("SMARTMINE_INGEST__FLUSH_INTERVAL_S", "0.1")
    s = load_settings(cfg)
    assert s.influx_db == "from_env"
    assert s.topic_prefix == "plant"
    assert s.ingest.batch_size == 100 and s.ingest.flush_interval_s == 0.1


def test_mqtts_url_with_credentials() -> None:
    import os

    os.environ["SMARTMINE_MQTT_URL"] = "mqtts://ingest:s3cr%40t@broker.local"
    try:
        m = load_settings().mqtt
    finally:
        del os.environ["SMARTMINE_MQTT_URL"]
    assert (m.host, m.port, m.tls, m.username, m.password) == ("broker.local", 8883, True, "ingest", "s3cr@t")


@pytest.mark.parametrize("line", ['influx_password = "x"', 'influx_token = "x"',
                                  'mqtt_url = "mqtt://u:p@localhost:1883"'])
def test_secrets_in_the_file_are_refused(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "smartmine.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(ConfigError, match="environment"):
        load_settings(cfg)


@pytest.mark.parametrize(("var", "value", "problem"), [
    ("SMARTMINE_MQTT_URL", "http://broker", "mqtt:// or mqtts://"),
    ("SMARTMINE_INFLUX_URL", "localhost:8086", "not an http"),
    ("SMARTMINE_TOPIC_PREFIX", "bad prefix/#", "topic prefix"),
    ("SMARTMINE_INGEST__BATCH_SIZE", "0", "greater than or equal to 1"),
])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, problem: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value) and problem in str(info.value)


def test_config_show_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SMARTMINE_MQTT_URL": "mqtt://sim:hunter2@localhost:1883", "SMARTMINE_INFLUX_PASSWORD": "pa55word",
           "SMARTMINE_INFLUX_TOKEN": "tok-abcdef", "SMARTMINE_INFLUX_USER": "admin",
           "SMARTMINE_MQTT_PASSWORD": "mqttpass"}
    import os

    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "config", "show"], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    for secret in ("hunter2", "pa55word", "tok-abcdef", "mqttpass"):
        assert secret not in proc.stdout
    shown = json.loads(proc.stdout)
    assert shown["mqtt_url"] == "mqtt://sim:****@localhost:1883"
    assert shown["influx_password"] == "****" and shown["influx_user"] == "admin"
