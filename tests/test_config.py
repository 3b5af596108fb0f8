"""Settings from a file plus SMARTMINE_* variables; secrets only from the environment, masked when shown."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------ secrets in URLs, empty variables
@pytest.mark.parametrize(("url", "shown"), [
    ("http://ingest:pw-123@influx:8086", "http://ingest:****@influx:8086"),
    ("https://hooks.example.com/alert?token=tok-9&site=yanshan", "https://hooks.example.com/alert?token=****&site=yanshan"),
    ("https://h/x?sig=a&api_key=b&X-Amz-Signature=c&u=me&p=d", "https://h/x?sig=****&api_key=****&X-Amz-Signature=****&u=me&p=****"),
    ("http://influx:8086", "http://influx:8086"),
])
def test_redact_url_masks_passwords_and_tokens(url: str, shown: str) -> None:
    from smartmine.config import redact_text, redact_url

    assert redact_url(url) == shown
    assert redact_text(f"POST {url}: HTTP 500") == f"POST {shown}: HTTP 500"


def test_config_show_masks_grafana_and_webhook_urls(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update(SMARTMINE_GRAFANA_URL="https://admin:graf-pass-1@grafana:3000",
               SMARTMINE_ALERTS__WEBHOOK_URL="https://hooks.example.com/x?token=hook-token-2",
               SMARTMINE_ALERTS__WEBHOOK_SECRET="hmac-key-3",
               SMARTMINE_INFLUX_URL="http://ingest:influx-pass-4@influx:8086", SMARTMINE_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "smartmine.cli", "config", "show"], capture_output=True, text=True,
                          env=env, check=True)
    for secret in ("graf-pass-1", "hook-token-2", "hmac-key-3", "influx-pass-4"):
        assert secret not in proc.stdout + proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["grafana_url"] == "https://admin:****@grafana:3000"
    assert shown["alerts"]["webhook_url"] == "https://hooks.example.com/x?token=****"
    assert shown["influx_url"] == "http://ingest:****@influx:8086"


@pytest.mark.parametrize(("text", "variable"), [
    ('grafana_url = "https://admin:pw@grafana:3000"', "SMARTMINE_GRAFANA_URL"),
    ('influx_url = "http://ingest:pw@influx:8086"', "SMARTMINE_INFLUX_URL"),
    ('[alerts]\nwebhook_url = "https://hooks.example.com/x?token=abc"', "SMARTMINE_ALERTS__WEBHOOK_URL"),
])
def test_a_file_holding_a_url_with_a_secret_is_refused(tmp_path: Path, text: str, variable: str) -> None:
    cfg = tmp_path / "smartmine.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert variable in str(info.value) and "pw" not in str(info.value) and "abc" not in str(info.value)


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose's ``${WEBHOOK_SECRET:-}`` sets "" when .env lacks it: that is no secret, so an unsigned webhook
    is refused instead of being signed with an empty key."""
    import paho.mqtt.client as mqtt

    from alerts.channels import build_notifiers
    from smartmine.errors import UsageError

    monkeypatch.setenv("SMARTMINE_ALERTS__WEBHOOK_URL", "https://hooks.example.com/alert")
    monkeypatch.setenv("SMARTMINE_ALERTS__WEBHOOK_SECRET", "")
    monkeypatch.setenv("SMARTMINE_INFLUX_TOKEN", "")
    monkeypatch.setenv("SMARTMINE_INFLUX_RP", "")
    settings = load_settings()
    assert settings.alerts.webhook_secret is None and settings.influx_token is None and settings.influx_rp is None
    with pytest.raises(UsageError, match="WEBHOOK_SECRET is not"):
        build_notifiers(settings, mqtt.Client(mqtt.CallbackAPIVersion.VERSION2))


def _health(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_influx_url_userinfo_authenticates_and_never_shows(mosquitto: Any, influxd_factory: Any,
                                                            tmp_path: Path) -> None:
    """Ingest with ``SMARTMINE_INFLUX_URL=http://ingest:PASSWORD@host`` writes as that user on an influxd with
    auth on, and neither its /healthz answer nor its log shows the password, also when InfluxDB is down."""
    import os
    import secrets

    from ingest_helpers import Publisher, samples, stored_count, wait_until

    from smartmine.catalog import load_catalog
    from smartmine.influx import Auth, InfluxClient
    from smartmine.services import free_port, terminate

    admin_password, writer_password = "adm-" + secrets.token_hex(8), "wr-" + secrets.token_hex(8)
    server = influxd_factory(admin=("admin", admin_password))
    admin = InfluxClient(server.url, "plant", auth=Auth(username="admin", password=admin_password))
    admin.create_database()
    server.create_user("ingest", writer_password, "plant", "WRITE")
    port = free_port()
    host_port = server.url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTMINE_")}
    env.update({"SMARTMINE_MQTT_URL": mosquitto.url, "SMARTMINE_INFLUX_URL": f"http://ingest:{writer_password}@"
                f"{host_port}", "SMARTMINE_INFLUX_DB": "plant", "SMARTMINE_TOPIC_PREFIX": "urlsecret",
                "SMARTMINE_DATA_DIR": str(tmp_path / "data"), "SMARTMINE_INGEST__ENSURE_DATABASE": "false",
                "SMARTMINE_INGEST__CLIENT_ID": "ingest-urlsecret", "SMARTMINE_INGEST__METRICS_PORT": str(port),
                "SMARTMINE_INGEST__FLUSH_INTERVAL_S": "0.1", "SMARTMINE_INGEST__SPOOL_AFTER_S": "0"})
    log = tmp_path / "ingest.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smartmine.cli", "-v", "ingest"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    publisher = None
    try:
        wait_until(lambda: _health(port)[0] == 200, 30, "ingest healthy")
        settings = load_settings().model_copy(update={"mqtt_url": mosquitto.url, "topic_prefix": "urlsecret"})
        publisher = Publisher(settings, "urlsecret-publisher")
        catalog = load_catalog(None)
        publisher.publish_samples(samples(catalog, 40, seed=3))
        wait_until(lambda: stored_count(admin) == 40, 30, "ingest stored 40 points as user 'ingest'")

        server.stop()  # now every answer and log line speaks of the unreachable InfluxDB
        # a minute later than the first ones: samples at the stored timestamps would be refused as
        # same-timestamp conflicts before any write was tried
        later = datetime.now(UTC) - timedelta(minutes=4)
        publisher.publish_samples(samples(catalog, 10, seed=4, start=later))
        wait_until(lambda: "unreachable" in _health(port)[1], 30, "/healthz reports InfluxDB unreachable")
        _, body = _health(port)
        assert writer_password not in body and host_port in body
    finally:
        if publisher is not None:
            publisher.close()
        terminate(proc, 30)
    text = log.read_text()
    assert "unreachable" in text and writer_password not in text
