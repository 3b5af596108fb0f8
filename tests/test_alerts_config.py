"""Alert channel secrets come only from the environment, and `config show` never prints them."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartmine.config import ConfigError, load_settings


def test_a_webhook_secret_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "smartmine.toml"
    config.write_text('[alerts]\nwebhook_url = "https://ops.example/hook"\nwebhook_secret = "s3cret"\n')
    with pytest.raises(ConfigError, match="SMARTMINE_ALERTS__WEBHOOK_SECRET"):
        load_settings(config)


def test_alert_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTMINE_ALERTS__WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("SMARTMINE_ALERTS__SMTP_PASSWORD", "mailpw")
    monkeypatch.setenv("SMARTMINE_GRAFANA_TOKEN", "glsa_x")
    monkeypatch.setenv("SMARTMINE_ALERTS__SMTP_TO", '["duty@yanshan.example"]')
    settings = load_settings()
    shown = str(settings.masked())
    assert "s3cret" not in shown and "mailpw" not in shown and "glsa_x" not in shown
    assert settings.alerts.webhook_secret is not None and settings.alerts.webhook_secret.get_secret_value() == "s3cret"
    assert settings.alerts.smtp_to == ["duty@yanshan.example"]
