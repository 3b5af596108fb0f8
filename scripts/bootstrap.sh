#!/usr/bin/env bash
# Installs what smartmine needs on a Debian machine: the mosquitto and influxdb packages (apt-get)
# and a virtualenv in .venv with smartmine and its dev tools. Safe to run again; does nothing twice.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# docker-compose (Debian) lets the tests run `docker-compose config` on our compose file; no engine needed.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services where systemd runs; smartmine runs its own on free ports instead.

if [ ! -x .venv/bin/python ]; then
  echo "== creating virtualenv .venv"
  python3 -m venv .venv || { $SUDO apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv; }
fi
stamp=.venv/.smartmine-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing smartmine into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
# The dashboards' type check (tests/test_dashboards.py): Grafana's @grafana/schema and tsc, pinned in
# dashboards/schema-check/package-lock.json; needs Node.js 20 and npm.
if [ ! -x dashboards/schema-check/node_modules/.bin/tsc ] \
   || [ dashboards/schema-check/package-lock.json -nt dashboards/schema-check/node_modules/.package-lock.json ]; then
  command -v npm >/dev/null 2>&1 || need_npm=1
  if [ -n "${need_npm:-}" ]; then
    echo "== installing Debian packages: nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "== installing the dashboards' type check (npm ci in dashboards/schema-check)"
  (cd dashboards/schema-check && npm ci --no-audit --no-fund --loglevel=error)
fi
