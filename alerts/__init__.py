"""Alerts: one alert per real problem, routed to ops on call (MQTT, webhook, e-mail, Grafana annotations)."""
