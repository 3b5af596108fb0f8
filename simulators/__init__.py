"""Simulators: coal-mine and steel-plant equipment models publishing telemetry over MQTT, with labelled faults."""
