#!/usr/bin/env bash
# The main job on the embedded default: set up, then chat with SmolLM2-135M-Instruct through `lcf`.
# Extra arguments go to `lcf chat` (e.g. --prompt "..." or nothing extra for the default question).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- --prompt "What is the capital of France?" --prompt "Name three primary colours."
fi
exec .venv/bin/lcf chat "$@"
