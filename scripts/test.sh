#!/usr/bin/env bash
# The test command: installs what it needs, then runs ruff, mypy and the pytest suite against a real
# Mosquitto broker and a real influxd started by the fixtures. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
