"""Typed settings: a TOML file plus ``SMARTMINE_*`` environment variables (the environment wins).

Secrets (passwords, tokens) come only from the environment: a config file that holds one is refused,
so nothing secret ends up committed next to the file. ``smartmine config show`` prints the effective
settings with every secret masked.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from smartmine.wire import DEFAULT_PREFIX, check_prefix

ENV_PREFIX = "SMARTMINE_"
CONFIG_ENV = "SMARTMINE_CONFIG"
DEFAULT_CONFIG_FILE = Path("smartmine.toml")
SECRET_FIELDS = ("influx_token", "influx_password", "mqtt_password", "grafana_token")
# Secrets inside a section: (section, field). Refused in a file like the top-level ones.
SECTION_SECRET_FIELDS = (("alerts", "webhook_secret"), ("alerts", "smtp_password"))


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file or variable and the problem."""


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """A parsed ``mqtt://`` or ``mqtts://`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    def masked(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        auth = f"{self.username}:****@" if self.password else (f"{self.username}@" if self.username else "")
        return f"{scheme}://{auth}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttUrl:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"MQTT URL {redact_url(url)!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {redact_url(url)!r} has no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {redact_url(url)!r}: {exc}") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return MqttUrl(parts.hostname, port, tls, user, password)


# The one masking rule for every URL smartmine shows (log lines, errors, /healthz, config show, manifests):
# the password of the userinfo and the value of every query or fragment parameter named like a credential
# (webhook ``?token=``, ``sig=``, ``key=``, pre-signed ``X-Amz-Signature``, InfluxDB 1.x's ``p=``...).
# A token inside the path (Slack's /services/T/B/XXXX) cannot be told from a path: keep such a URL out of logs
# by giving it only through the environment, like every secret.
_SECRET_WORDS = frozenset({"token", "accesstoken", "sig", "signature", "key", "apikey", "secret", "password",
                           "passwd", "pass", "pwd", "auth", "authorization", "credential", "credentials", "session",
                           "sessionid"})
_SECRET_NAMES = frozenset({"p", "code"})  # InfluxDB 1.x's password, an OAuth code: only as the whole name
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
MASK = "****"


def _is_secret_param(name: str) -> bool:
    """``token``, ``api_key``, ``X-Amz-Signature``, ``access_token``...: a word of the name is a credential's."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(w in _SECRET_WORDS for w in re.split(r"[-_.\[\]]", lowered))


def _redact_params(text: str) -> str:
    out = []
    for part in re.split(r"([&;])", text):
        name, eq, value = part.partition("=")
        out.append(f"{name}={MASK}" if eq and value and _is_secret_param(unquote(name)) else part)
    return "".join(out)


def redact_url(url: str | None) -> str:
    """``url`` fit to print: a password in it and every credential-like query parameter replaced by ``****``.
    Unchanged when it holds no secret (so ``redact_url(u) != u`` tells that ``u`` carries one); None: ""."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:  # not a URL we can take apart (a bad port...): show nothing of what follows the scheme
        return url.split("://", 1)[0] + "://" + MASK if "://" in url else MASK
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    redacted = urlunsplit((parts.scheme, netloc, parts.path, _redact_params(parts.query),
                           _redact_params(parts.fragment)))
    # urlunsplit drops an empty "?" or "#": hand back the original when nothing was masked.
    return url if redacted == urlunsplit(parts) else redacted


def redact_text(text: str) -> str:
    """``text`` (a log line, an error message) with :func:`redact_url` applied to every URL in it."""
    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        core = url.rstrip(".,;:!?)]}")  # the sentence's punctuation after a URL is not part of it
        return redact_url(core) + url[len(core):]

    return _URL_IN_TEXT.sub(one, text) if "://" in text else text


class RedactUrlsFilter(logging.Filter):
    """A logging filter that applies :func:`redact_text` to every record: no log line shows a URL's secret,
    whichever library wrote the URL into the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        if record.exc_info and record.exc_info[1] is not None and "://" in str(record.exc_info[1]):
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


class IngestSettings(BaseModel):
    """Settings of the ingest service (``SMARTMINE_INGEST__<NAME>``); docs/ingest.md explains each."""

    group: str = Field(default="", description="MQTT 5 shared-subscription group to split the load between "
                       "instances; empty: a plain subscription, which survives a Mosquitto restart")
    client_id: str = Field(default="smartmine-ingest", description="MQTT client id (persistent session)")
    session_expiry_s: int = Field(default=86_400, ge=0, description="How long the broker keeps the session "
                                  "(and queues telemetry) while ingest is down")
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535,
                                 description="MQTT 5 receive maximum: unacknowledged messages in flight to ingest")
    batch_size: int = Field(default=5000, ge=1, description="Points per InfluxDB write")
    batch_max_bytes: int = Field(default=4_000_000, ge=1024, description="Line protocol bytes per write")
    flush_interval_s: float = Field(default=0.25, gt=0, description="Longest a point waits before a write")
    write_concurrency: int = Field(default=2, ge=1, le=8, description="InfluxDB writes in flight at once; "
                                   "batches are still acknowledged in arrival order")
    write_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one InfluxDB write")
    retry_initial_s: float = Field(default=0.2, gt=0, description="First retry delay (doubles, with jitter)")
    retry_max_s: float = Field(default=10.0, gt=0, description="Longest retry delay")
    spool_after_s: float = Field(default=5.0, ge=0, description="Retry a write this long before spooling it")
    spool_dir: Path | None = Field(default=None, description="On-disk spool (default: <data_dir>/spool)")
    spool_max_mb: float = Field(default=1024, gt=0, description="Spool size limit; when full, ingest "
                                "stops taking messages and the broker keeps them")
    deadletter_file: Path | None = Field(default=None, description="Default: <data_dir>/deadletter.jsonl")
    deadletter_topic: str | None = Field(default=None, description="Default: <prefix>/deadletter/ingest")
    deadletter_max_mb: int = Field(default=64, ge=1, description="The dead-letter file rotates at this size "
                                   "(and gaps.jsonl beside it); three older files are kept")
    deadletter_rate_per_s: float = Field(default=200.0, gt=0, description="Dead letters written out per second "
                                         "(bursts of 10 s of it); the rest are only counted")
    sequence_gaps: bool | None = Field(default=None, description="Track each publisher's seq and report gaps; "
                                       "default: on without a group (each worker of a group sees a share)")
    sequence_reorder_window: int = Field(default=100, ge=0, description="A hole in a publisher's seq is a gap "
                                         "once it is this many messages behind, or open sequence_reorder_s")
    sequence_reorder_s: float = Field(default=5.0, gt=0, description="How long a hole may wait to be filled")
    max_payload_bytes: int = Field(default=262_144, ge=1024, description="Larger messages are dead-lettered "
                                   "unparsed (a sample of 1024 readings is about 50 kB)")
    max_sample_age_s: float = Field(default=7 * 86_400, gt=0,
                                    description="Older samples are dead-lettered (keep below the retention)")
    max_clock_skew_s: float = Field(default=300.0, ge=0, description="Samples further in the future are "
                                    "dead-lettered")
    retention: str = Field(default="30d", description="Duration of the raw retention policy (InfluxQL)")
    rollup_retention: str = Field(default="400d", description="Duration of the 1-minute rollups (InfluxQL)")
    ensure_database: bool = Field(default=True, description="Create the database, policies and rollups at start")
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics endpoint")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="Prometheus metrics; 0 disables")


class StackSettings(BaseModel):
    """Settings of ``smartmine up`` (``SMARTMINE_STACK__<NAME>``): the local stack and its live view."""

    mqtt_port: int = Field(default=1883, ge=1, le=65535, description="Port of the Mosquitto that up starts")
    influx_port: int = Field(default=8086, ge=1, le=65535, description="HTTP port of the influxd that up starts")
    scenario: str = Field(default="demo", min_length=1, description="Simulator scenario (name or YAML file)")
    speed: str = Field(default="1", pattern=r"^(max|[0-9]+(\.[0-9]+)?)$", description="Simulator speed: X times "
                                                                                        "real time, or max")
    status_interval_s: float = Field(default=5.0, gt=0, description="Seconds between --headless status lines")
    stop_timeout_s: float = Field(default=30.0, gt=0, description="How long a process may take to stop on "
                                                                  "SIGTERM (ingest flushing) before SIGKILL")
    restart_limit: int = Field(default=5, ge=0, description="Restarts of a crashing stage before up gives up on it")
    min_free_disk_mb: int = Field(default=512, ge=0, description="Refuse to start (and warn while running) "
                                                                 "below this much free space in the data folder")


class AlertsSettings(BaseModel):
    """Settings of the alerts service (``SMARTMINE_ALERTS__<NAME>``). A channel is on when its target is set."""

    client_id: str = Field(default="smartmine-alerts", description="MQTT client id of the service")
    clear_hold_s: float = Field(default=30.0, ge=0, description="A cleared alert resolves only after this long "
                                                               "without a new firing event (no flapping)")
    cooldown_s: float = Field(default=300.0, ge=0, description="A resolved alert firing again within this long "
                                                             "reopens the same alert without paging again")
    escalate_after_s: float = Field(default=600.0, gt=0, description="Re-notify, escalated, when an alert at or "
                                                                   "above escalate_min_severity stays unacknowledged")
    escalate_min_severity: Literal["info", "warning", "critical", "emergency"] = "critical"
    state_file: Path | None = Field(default=None, description="Alerts and silences (default: "
                                                              "<data_dir>/alerts/state.json)")
    command_timeout_s: float = Field(default=5.0, gt=0, description="How long the CLI waits for the service")
    retry_max: int = Field(default=5, ge=0, description="Retries of a failed notification (webhook, e-mail...)")
    retry_backoff_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles each retry")
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key of the signature header")
    webhook_min_severity: Literal["info", "warning", "critical", "emergency"] = "warning"
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "smartmine-alerts@localhost"
    smtp_to: list[str] = Field(default_factory=list, description="Recipients (env: a JSON list)")
    email_min_severity: Literal["info", "warning", "critical", "emergency"] = "critical"
    grafana_annotations: bool = Field(default=True, description="Annotate alerts in Grafana when grafana_url "
                                                                "is set")


class DashboardsSettings(BaseModel):
    """Settings of the Grafana dashboards (``SMARTMINE_DASHBOARDS__<NAME>``)."""

    folder_uid: str = Field(default="smartmine", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    folder_title: str = "smartmine"
    datasource_uid: str = Field(default="smartmine-influxdb", pattern=r"^[A-Za-z0-9_-]{1,40}$",
                                description="uid of the InfluxDB (InfluxQL) data source the panels query")


class AnalyticsSettings(BaseModel):
    """Settings of the analytics jobs (``SMARTMINE_ANALYTICS__<NAME>``). Windows are in seconds and are
    turned into samples with each sensor's catalog sample period; thresholds are in each detector's
    own statistic (robust sigmas, CUSUM units). Limits and ranges are never here: they are catalog data."""

    client_id: str = Field(default="smartmine-analytics", description="MQTT client id of the streaming job")
    window_s: float = Field(default=900.0, gt=0, description="Robust reference window (median, MAD)")
    hop_s: float = Field(default=60.0, gt=0, description="How often the reference is refitted")
    mad_threshold: float = Field(default=8.0, gt=0, description="Robust z (|x - median| / sigma) that flags")
    ewma_threshold: float = Field(default=8.0, gt=0, description="EWMA chart limit, in EWMA sigmas")
    ewma_smoothing: float = Field(default=0.1, gt=0, le=1, description="EWMA weight of the newest sample")
    cusum_threshold: float = Field(default=10.0, gt=0, description="CUSUM decision interval h, in sigmas")
    cusum_memory_s: float = Field(default=120.0, gt=0, description="How far back the CUSUM looks")
    cusum_enabled: bool = Field(default=False, description="Run the CUSUM on plant gauges (off: plant signals "
                                "wander, and the CUSUM's independence assumption makes it cry wolf there)")
    novelty_s: float = Field(default=3600.0, ge=0, description="A statistical flag must beat everything "
                             "the detector saw this long back (0: threshold only)")
    seasonal_slot_s: int = Field(default=3600, gt=0, description="Time-of-day slot of the seasonal baseline "
                                 "(divides a day; local site time)")
    seasonal_days: float = Field(default=3.0, gt=0, description="How many days the seasonal baseline remembers")
    seasonal_threshold: float = Field(default=5.0, gt=0, description="Sigmas from the slot's usual value that flag")
    early_window_s: float = Field(default=300.0, gt=0, description="Trend window of the early warning")
    early_long_window_s: float = Field(default=900.0, ge=0, description="A second, longer trend window (0: none); "
                                       "each line is extrapolated at most twice its span, so this one sees a slow "
                                       "rise (CO from a heating seam) up to the horizon ahead")
    early_hop_s: float = Field(default=5.0, gt=0, description="How often the trend is refitted")
    early_horizon_s: float = Field(default=1800.0, gt=0, description="Warn when a limit is this close in time")
    early_min_t: float = Field(default=10.0, gt=0, description="Slope must exceed this many standard errors")
    stuck_after_s: float = Field(default=600.0, gt=0, description="Identical readings for this long: stuck")
    spike_jump: float = Field(default=0.5, gt=0, description="A reading this share of the normal range off both "
                              "its neighbours, out and straight back, is a spike")
    silence_after_s: float = Field(default=60.0, ge=0, description="Streaming: an equipment that published "
                                   "and then sends nothing for this long raises health:silent (0: off)")
    dropout_factor: float = Field(default=10.0, gt=1, description="Gap of this many sample periods: dropout")
    missing_window_s: float = Field(default=600.0, gt=0, description="Window over which missing readings "
                                    "are counted (thinning data)")
    missing_share: float = Field(default=0.2, gt=0, lt=1, description="Share of the expected readings missing "
                                 "in that window that flags thinning data")
    drift_threshold: float = Field(default=0.1, gt=0,
                                   description="Redundant pair: how far the median difference may move, as a share "
                                   "of the normal range, for a sensor whose permitted error the catalog lacks")
    pca_enabled: bool = Field(default=False, description="PCA T²/Q over each equipment's gauges (off: on the "
                              "simulated plant it cried wolf, docs/benchmarks.md)")
    pca_window_s: float = Field(default=600.0, gt=0, description="PCA warm-up / refit window")
    pca_refit_s: float = Field(default=300.0, gt=0, description="How often the PCA model is refitted")
    clear_after_s: float = Field(default=30.0, ge=0,
                                 description="A statistical anomaly clears after this long without a flag")
    confirm_s: float = Field(default=60.0, ge=0,
                             description="A level statistic's anomaly (mad, ewma, cusum, seasonal, pca) is info "
                                         "(shown, not paged) until it has lasted this long; then its severity")
    micro_batch_s: float = Field(default=0.2, ge=0, le=5, description="Streaming: the detectors other than the "
                                 "limit rules score an equipment's samples of up to this long together (the "
                                 "same answers, up to this much later); limit rules judge every sample at once. "
                                 "0: every sample at once")
    micro_batch_max: int = Field(default=2000, ge=1, description="Streaming: an equipment's micro-batch is "
                                 "scored as soon as this many samples wait, however young")
    false_pages_per_day: float = Field(default=1.0, gt=0, description="False-alarm budget of the statistical "
                                       "detectors: expected false pages per equipment per day, shared by all its "
                                       "sensors and detectors (analytics/evidence.py, docs/analytics.md); limit "
                                       "rules are outside it")
    file_false_share: float = Field(default=0.003, gt=0, lt=1, description="score-file's budget: the share of "
                                    "normal rows whose combined evidence may reach is_anomaly")
    combine_method: Literal["cauchy", "sidak", "bonferroni"] = Field(
        default="cauchy", description="How an equipment's (a file's) detectors' p-values become one")
    limit_alarm_severity: Literal["info", "warning", "critical", "emergency"] = "critical"
    limit_power_off_severity: Literal["info", "warning", "critical", "emergency"] = "emergency"
    statistical_severity: Literal["info", "warning", "critical", "emergency"] = "warning"


class SimulatorSettings(BaseModel):
    """Settings of the simulators' MQTT publishing (``SMARTMINE_SIMULATOR__<NAME>``)."""

    buffer_messages: int = Field(default=100_000, ge=1, description="Messages kept while the broker is away; "
                                                                    "the oldest are dropped beyond this")
    reconnect_max_s: int = Field(default=30, ge=1, description="Longest wait between reconnect attempts")
    max_inflight: int = Field(default=20, ge=1, description="QoS 1 messages awaiting PUBACK; at most the broker's "
                                                            "max_inflight_messages (Mosquitto's default is 20)")


class Settings(BaseSettings):
    """Effective settings. Environment: ``SMARTMINE_<FIELD>`` and ``SMARTMINE_<SECTION>__<FIELD>``."""

    # env_ignore_empty: compose's ``${WEBHOOK_SECRET:-}`` sets a variable to "" when .env lacks it; an empty
    # value must read as unset (no secret), or guards like "refuse an unsigned webhook" are skipped.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      validate_default=True, env_ignore_empty=True)

    mqtt_url: str = "mqtt://localhost:1883"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker (mqtts://)")
    influx_url: str = "http://localhost:8086"
    influx_db: str = "smartmine"
    influx_rp: str | None = Field(default=None, description="Retention policy to write to (default: the db's)")
    influx_token: SecretStr | None = None
    influx_user: str | None = None
    influx_password: SecretStr | None = None
    topic_prefix: str = DEFAULT_PREFIX
    catalog_dir: Path | None = Field(default=None, description="Catalog folder (default: the built-in one)")
    data_dir: Path = Field(default_factory=lambda: _default_data_dir())
    language: Literal["en", "zh"] = "en"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    grafana_url: str | None = Field(default=None, description="Grafana base URL for push and annotations")
    grafana_token: SecretStr | None = Field(default=None, description="Grafana service-account token")
    ingest: IngestSettings = IngestSettings()
    stack: StackSettings = StackSettings()
    alerts: AlertsSettings = AlertsSettings()
    dashboards: DashboardsSettings = DashboardsSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    simulator: SimulatorSettings = SimulatorSettings()

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt(cls, v: str) -> str:
        parse_mqtt_url(v)
        return v

    @field_validator("influx_url")
    @classmethod
    def _influx(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url(v)!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment:
            # /write and /query are appended to it; credentials go in the userinfo or SMARTMINE_INFLUX_*.
            raise ValueError(f"{redact_url(v)!r}: an InfluxDB base URL takes no ?query or #fragment")
        if parts.username is not None and parts.password is None:
            raise ValueError(f"{redact_url(v)!r} names user {unquote(parts.username)!r} without a password "
                             "(http://user:{password}@host, or SMARTMINE_INFLUX_USER and SMARTMINE_INFLUX_PASSWORD)")
        return v.rstrip("/")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_prefix(v)

    @property
    def mqtt(self) -> MqttUrl:
        """The broker URL with credentials from the URL or from ``SMARTMINE_MQTT_USERNAME/PASSWORD``."""
        url = parse_mqtt_url(self.mqtt_url)
        user = self.mqtt_username or url.username
        password = self.mqtt_password.get_secret_value() if self.mqtt_password else url.password
        return MqttUrl(url.host, url.port, url.tls, user, password)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret replaced by ``****``."""
        data = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if data.get(name):
                data[name] = "****"
        for section, name in SECTION_SECRET_FIELDS:
            if data.get(section, {}).get(name):
                data[section][name] = "****"
        return _redact_urls(data)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the file, passed in by load_settings) < environment: the environment wins.
        return (env_settings, init_settings)


def _redact_urls(data: Any) -> Any:
    """Every URL anywhere in plain settings data through :func:`redact_url`."""
    if isinstance(data, dict):
        return {k: _redact_urls(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact_urls(v) for v in data]
    return redact_url(data) if isinstance(data, str) and "://" in data else data


def _urls_with_secrets(data: Any, where: str = "") -> Iterator[str]:
    """The dotted names of the URLs in a config file's data that carry a password or a token."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _urls_with_secrets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _urls_with_secrets(value, f"{where}[{i}]")
    elif isinstance(data, str) and "://" in data and redact_url(data) != data:
        yield where


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "smartmine"


def load_settings(file: Path | str | None = None) -> Settings:
    """Settings from ``file`` (or ``$SMARTMINE_CONFIG``, or ./smartmine.toml if present) plus the environment."""
    path = Path(file) if file else (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        for name in SECRET_FIELDS:
            if name in data:
                raise ConfigError(f"{path}: {name} is a secret; set it only in the environment as "
                                  f"{ENV_PREFIX}{name.upper()}")
        for section, name in SECTION_SECRET_FIELDS:
            if isinstance(data.get(section), dict) and name in data[section]:
                raise ConfigError(f"{path}: {section}.{name} is a secret; set it only in the environment as "
                                  f"{ENV_PREFIX}{section.upper()}__{name.upper()}")
        for name in _urls_with_secrets(data):
            env = ENV_PREFIX + name.upper().replace(".", "__")
            raise ConfigError(f"{path}: {name} holds a password or a token; set that URL only in the environment "
                              f"as {env}")
    try:
        return Settings(**data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        if not field:  # a check across settings: its message names the variables
            raise ConfigError(err["msg"].removeprefix("Value error, ")) from None
        env = ENV_PREFIX + field.upper().replace(".", "__")
        origin = f"{path} or {env}" if path else env
        raise ConfigError(f"setting {field} ({origin}): {err['msg'].removeprefix('Value error, ')}") from None
