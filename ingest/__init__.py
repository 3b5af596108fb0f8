"""Ingest: MQTT telemetry validated against the catalog and written to InfluxDB, with nothing lost."""
