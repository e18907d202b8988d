#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv="${SQFX_VENV:-.venv}"
exec "$venv/bin/python" examples/minilm_demo.py "$@"
