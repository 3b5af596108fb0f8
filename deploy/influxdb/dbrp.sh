#!/bin/bash
# Runs once, after InfluxDB 2.7's DOCKER_INFLUXDB_INIT_* set-up (the image runs the scripts in
# /docker-entrypoint-initdb.d with the new admin token configured). smartmine speaks only the
# v1-compatible API (/write, /query), which finds a bucket through a DBRP mapping: database
# "$SMARTMINE_INFLUX_DB", retention policy "autogen" -> the bucket the set-up created.
set -euo pipefail
influx v1 dbrp create \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${SMARTMINE_INFLUX_DB}" \
  --rp autogen \
  --default \
  --org "${DOCKER_INFLUXDB_INIT_ORG}"
