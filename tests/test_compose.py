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
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")) and not key.endswith("_FILE"):
                assert str(value).startswith("${"), f"{key} is a literal in docker-compose.yml"


def test_stages_run_from_one_image_with_commands_smartmine_knows(compose: dict[str, Any]) -> None:
    services = compose["services"]
    parser = build_parser()
    registered = {a for action in parser._actions if hasattr(action, "choices") and action.choices
                  for a in action.choices}
    for name in OUR_SERVICES:
        service = services[name]
        assert service["image"] == "smartmine:latest", name
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
    # No init script that could fail the set-up: 2.7 maps the bucket to database <bucket>, policy autogen
    # (a "virtual" DBRP mapping), which is the database the stages name.
    assert not any("docker-entrypoint-initdb.d" in v for v in influx["volumes"])
    assert influx["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"] == services["ingest"]["environment"][
        "SMARTMINE_INFLUX_DB"]


def test_the_image_is_built_once_and_reused(compose: dict[str, Any]) -> None:
    """Seven builds of one tag in parallel fail on the containerd image store ("image already exists")."""
    services = compose["services"]
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["dashboards"]
    for name in OUR_SERVICES:
        if name != "dashboards":
            assert services[name]["pull_policy"] == "never", name
            assert services[name]["depends_on"]["dashboards"]["condition"] == "service_completed_successfully"


def _published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    """Docker's port publishing bypasses the host firewall: plaintext MQTT and InfluxDB stay on this machine
    unless PUBLISH_ADDRESS says otherwise."""
    published = {name: _published(s) for name, s in compose["services"].items() if _published(s)}
    assert set(published) == {"mosquitto", "influxdb", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port}"
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["PUBLISH_ADDRESS"] == "127.0.0.1"


def test_no_stage_container_gets_the_admin_token(compose: dict[str, Any]) -> None:
    services = compose["services"]
    admin = "${INFLUXDB_ADMIN_TOKEN"
    holders = {name for name, s in services.items()
               if any(admin in str(v) for v in (s.get("environment") or {}).values())}
    assert holders == {"influxdb", "influxdb-tokens"}
    writers = {"ingest", "analytics", "alerts"}
    for name in OUR_SERVICES:
        env = services[name].get("environment", {})
        volumes = [str(v) for v in services[name].get("volumes", [])]
        has_token = "SMARTMINE_INFLUX_TOKEN_FILE" in env or any("influx-token" in v for v in volumes)
        assert has_token == (name in writers), name
        if name in writers:
            assert "influx-token-write:/run/smartmine-influx:ro" in volumes
            assert env["SMARTMINE_INFLUX_TOKEN_FILE"] == "/run/smartmine-influx/token"
            assert services[name]["depends_on"]["influxdb-tokens"]["condition"] == "service_completed_successfully"
    grafana = services["grafana"]
    assert "influx-token-read:/run/smartmine-influx:ro" in grafana["volumes"]
    assert "cat /run/smartmine-influx/token" in " ".join(grafana["entrypoint"])
    # The token step issues exactly those two scopes with the documented CLI, and the image reads the file.
    script = (ROOT / "deploy/influxdb/tokens.sh").read_text()
    assert "--read-bucket \"$bucket_id\" --write-bucket \"$bucket_id\"" in script
    assert script.count("influx auth create --description") == 1 and "--all-access" not in script
    assert "smartmine-entrypoint" in (ROOT / "Dockerfile").read_text()
    assert "SMARTMINE_INFLUX_TOKEN_FILE" in (ROOT / "deploy/smartmine/entrypoint.sh").read_text()


def test_ingest_is_checked_on_healthz_and_may_finish_its_flush(compose: dict[str, Any]) -> None:
    import inspect

    from ingest.service import IngestService

    ingest = compose["services"]["ingest"]
    check = " ".join(ingest["healthcheck"]["test"])
    assert "/healthz" in check and "/metrics" not in check
    grace = ingest["stop_grace_period"]
    seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))  # type: ignore[union-attr]
    flush_s = inspect.signature(IngestService.stop).parameters["timeout_s"].default
    assert seconds > flush_s, f"stop_grace_period {grace} is shorter than ingest's flush of up to {flush_s} s"


def test_the_build_context_leaves_out_secrets_and_history() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".git", ".venv"} <= ignored


def test_shell_scripts_keep_lf_line_endings() -> None:
    """On a Windows checkout CRLF scripts fail in the Linux containers; .gitattributes pins LF."""
    rules = (ROOT / ".gitattributes").read_text()
    assert re.search(r"^\*\.sh\s+text\s+eol=lf", rules, flags=re.M)
    for script in (ROOT / "deploy").rglob("*.sh"):
        assert b"\r\n" not in script.read_bytes(), script


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
    # (SMARTMINE_INFLUX_TOKEN is set by its entrypoint from the read-only token: test_no_stage_container_...)
    assert {"SMARTMINE_INFLUX_URL", "SMARTMINE_INFLUX_DB"} <= set(grafana["environment"])
    assert "export SMARTMINE_INFLUX_TOKEN" in " ".join(grafana["entrypoint"])


def test_mosquitto_has_users_and_an_acl_for_every_stage(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    users = set(re.findall(r"^user (\w+)$", acl, flags=re.M))
    used = {s["environment"].get("SMARTMINE_MQTT_USERNAME") for s in compose["services"].values()
            if isinstance(s.get("environment"), dict)} - {None}
    assert used <= users and "ops" in users
    assert "topic write smartmine/_ops/alerts/request" in acl  # ops can acknowledge through the service
    # alerts' healthcheck logs in as a user of its own, never as alerts (that would take the service's session)
    check = " ".join(compose["services"]["alerts"]["healthcheck"]["test"])
    assert "SMARTMINE_MQTT_USERNAME=alerts_health" in check and "alerts_health" in users
    broker_env = compose["services"]["mosquitto"]["environment"]
    assert "MQTT_PASSWORD_ALERTS_HEALTH" in broker_env


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
