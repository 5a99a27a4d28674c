#!/usr/bin/env bash
# Set up, then run the whole test suite (tiny random models plus the bounded real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
