"""docker-compose.yml: valid against the Compose Specification, wired the way the README says.

No Docker engine runs here: the file is validated against the Compose Specification's JSON schema (as
vendored by check-jsonschema), with `docker-compose config` as a second opinion where that client is
installed, and its wiring is checked against the code (stage commands, settings, provisioning paths).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from smartmine.cli import build_parser
from smartmine.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
OUR_SERVICES = ("dashboards", "ingest", "analytics", "alerts", "sim-yanshan-mine", "sim-jinggang-steel")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert errors == []


def test_every_variable_has_an_example_and_no_secret_is_committed(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), f"missing from .env.example: {sorted(used - set(example))}"
    for name, value in example.items():
        if any(word in name for word in ("PASSWORD", "TOKEN", "SECRET")) and value:
            assert value.startswith("change-me"), f"{name} in .env.example looks like a real secret"
    # Secrets reach services only as ${VAR} from .env, never as literals in the file.
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
                assert str(value).startswith("${"), f"{key} is a literal in docker-compose.yml"


def test_stages_run_from_one_image_with_commands_smartmine_knows(compose: dict[str, Any]) -> None:
    services = compose["services"]
    parser = build_parser()
    registered = {a for action in parser._actions if hasattr(action, "choices") and action.choices
                  for a in action.choices}
    for name in OUR_SERVICES:
        service = services[name]
        assert service["build"] == "." and service["image"] == "smartmine:latest", name
        command = service["command"]
        if command[0] in registered:  # a stage still being built elsewhere is checked once it lands
            parser.parse_args(command)  # exits (fails the test) on an unknown command or option
    assert {"dashboards", "alerts"} <= registered


def test_services_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("mosquitto", "influxdb", "grafana", "ingest", "alerts"):
        assert services[name]["healthcheck"]["test"], name
    assert services["ingest"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["dashboards"]["condition"] == "service_completed_successfully"
    influx = services["influxdb"]
    assert influx["image"].startswith("influxdb:2.7")
    assert influx["environment"]["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert any(v.endswith("/docker-entrypoint-initdb.d/10-dbrp.sh:ro") for v in influx["volumes"])
    assert "v1 dbrp create" in (ROOT / "deploy/influxdb/dbrp.sh").read_text()


def test_grafana_reads_what_dashboards_build_writes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["dashboards"]["command"]
    out = command[command.index("--out") + 1]
    grafana_path = command[command.index("--grafana-path") + 1]
    assert grafana_path == f"{out}/dashboards"
    grafana = services["grafana"]
    assert grafana["environment"]["GF_PATHS_PROVISIONING"] == f"{out}/provisioning"
    assert any(v.split(":")[1] == out for v in grafana["volumes"])
    # The data source file refers to these; Grafana expands them from its environment.
    assert {"SMARTMINE_INFLUX_URL", "SMARTMINE_INFLUX_DB", "SMARTMINE_INFLUX_TOKEN"} <= set(grafana["environment"])


def test_mosquitto_has_users_and_an_acl_for_every_stage(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    users = set(re.findall(r"^user (\w+)$", acl, flags=re.M))
    used = {s["environment"].get("SMARTMINE_MQTT_USERNAME") for s in compose["services"].values()
            if isinstance(s.get("environment"), dict)} - {None}
    assert used <= users and "ops" in users
    assert "topic write smartmine/_ops/alerts/request" in acl  # ops can acknowledge through the service


def test_env_example_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The alerts settings .env.example passes (empty channels, a JSON list of recipients) are valid."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("SMARTMINE_"):
            key, value = line.split("=", 1)
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.alerts.smtp_to == [] and not settings.alerts.webhook_url


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose client not installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    result = subprocess.run(["docker-compose", "--project-directory", str(ROOT), "--env-file", str(tmp_path / ".env"),
                             "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
