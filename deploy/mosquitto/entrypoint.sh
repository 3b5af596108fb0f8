#!/bin/sh
# Builds the password file from the environment at every start, so no password (hashed or not) is
# committed or baked into an image, then runs the broker. One variable per broker user:
# MQTT_PASSWORD_<USER> (e.g. MQTT_PASSWORD_INGEST for user ingest, MQTT_PASSWORD_SIM_YANSHAN_MINE for
# sim_yanshan_mine); the users and their rights are in the ACL (deploy/mosquitto/acl, from the catalog).
set -eu
passwd=${MOSQUITTO_PASSWORD_FILE:-/mosquitto/data/passwd}
rm -f "$passwd"
touch "$passwd"
chmod 0700 "$passwd"
users=0
for var in $(env | sed -n 's/^MQTT_PASSWORD_\([A-Z][A-Z0-9_]*\)=.*/\1/p'); do
  eval "password=\${MQTT_PASSWORD_$var}"
  mosquitto_passwd -b "$passwd" "$(echo "$var" | tr 'A-Z' 'a-z')" "$password"
  users=$((users + 1))
done
if [ "$users" -eq 0 ]; then
  echo "no MQTT_PASSWORD_<USER> variable set: nobody could log in" >&2
  exit 1
fi
chown mosquitto:mosquitto "$passwd" 2>/dev/null || true
exec mosquitto -c "${MOSQUITTO_CONFIG_FILE:-/mosquitto/config/mosquitto.conf}"
