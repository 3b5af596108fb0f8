"""Record and replay: capture telemetry to a recording and play it back into MQTT or InfluxDB."""
