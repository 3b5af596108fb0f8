#!/bin/sh
# One-shot after InfluxDB 2.7's set-up (docker-compose.yml, service influxdb-tokens, in the influxdb:2.7 image,
# whose influx CLI reads INFLUX_HOST, INFLUX_ORG and the admin INFLUX_TOKEN from the environment): the scoped
# tokens that the containers use instead of the all-access admin token.
#   /tokens/write/token  read + write on the bucket: ingest, analytics (queries and its anomalies), alerts
#                        (its history); owned by the smartmine image's user (uid 10001)
#   /tokens/read/token   read on the bucket: Grafana (uid 472)
# A token already written is kept, so a re-run (every `docker compose up`) creates nothing new. To replace one,
# delete it in InfluxDB (`influx auth delete`), remove the volume (`docker volume rm <project>_influx-token-write`)
# and run `docker compose up -d` again.
set -eu
umask 077
bucket="${INFLUXDB_BUCKET:?}"
bucket_id=$(influx bucket list --name "$bucket" --hide-headers | awk 'NR == 1 { print $1 }')
if [ -z "$bucket_id" ]; then
  echo "tokens: InfluxDB has no bucket named $bucket" >&2
  exit 1
fi

issue() {  # issue FILE OWNER DESCRIPTION PERMISSION-FLAGS...
  file=$1 owner=$2 description=$3
  shift 3
  if [ -s "$file" ]; then
    echo "tokens: $file exists, kept"
    return 0
  fi
  token=$(influx auth create --description "$description" "$@" --json |
          sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p')
  if [ -z "$token" ]; then
    echo "tokens: influx auth create gave no token for '$description'" >&2
    exit 1
  fi
  printf '%s' "$token" > "$file.tmp"
  chown "$owner" "$file.tmp"
  chmod 0400 "$file.tmp"
  mv "$file.tmp" "$file"
  echo "tokens: wrote $file ($description)"
}

issue /tokens/write/token 10001 "smartmine stages: read and write $bucket" \
  --read-bucket "$bucket_id" --write-bucket "$bucket_id"
issue /tokens/read/token 472 "smartmine Grafana: read $bucket" --read-bucket "$bucket_id"
