#!/bin/sh
# The smartmine image's entrypoint: runs `smartmine ARGS...`. With SMARTMINE_INFLUX_TOKEN_FILE set (the compose
# stack mounts the scoped token that influxdb-tokens wrote), that file's token becomes SMARTMINE_INFLUX_TOKEN:
# smartmine reads secrets from the environment only. `docker compose exec` bypasses the entrypoint; run
# `docker compose exec alerts smartmine-entrypoint alerts history` for a command that needs InfluxDB.
set -eu
if [ -n "${SMARTMINE_INFLUX_TOKEN_FILE:-}" ]; then
  if ! SMARTMINE_INFLUX_TOKEN=$(cat "$SMARTMINE_INFLUX_TOKEN_FILE"); then
    echo "smartmine: cannot read the InfluxDB token from SMARTMINE_INFLUX_TOKEN_FILE=$SMARTMINE_INFLUX_TOKEN_FILE" >&2
    exit 1
  fi
  export SMARTMINE_INFLUX_TOKEN
  unset SMARTMINE_INFLUX_TOKEN_FILE
fi
exec smartmine "$@"
