#!/usr/bin/env bash
# The main job: installs what it needs, then runs the whole pipeline locally (smartmine up):
# Mosquitto, influxd, the coal-mine and steel-plant simulators, ingest, analytics and alerts.
# Extra arguments go to `smartmine up` (e.g. --headless, --data-dir DIR). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/smartmine up "$@"
