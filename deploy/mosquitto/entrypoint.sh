#!/bin/sh
# Builds the password file from the environment at every start, so no password (hashed or not) is
# committed or baked into an image, then runs the broker.
set -eu
passwd=/mosquitto/data/passwd
rm -f "$passwd"
touch "$passwd"
chmod 0700 "$passwd"
for pair in "simulator:$MQTT_SIMULATOR_PASSWORD" "pipeline:$MQTT_PIPELINE_PASSWORD" \
            "alerts:$MQTT_ALERTS_PASSWORD" "ops:$MQTT_OPS_PASSWORD"; do
  mosquitto_passwd -b "$passwd" "${pair%%:*}" "${pair#*:}"
done
chown mosquitto:mosquitto "$passwd" 2>/dev/null || true
exec mosquitto -c /mosquitto/config/mosquitto.conf
