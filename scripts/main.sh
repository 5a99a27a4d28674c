#!/usr/bin/env bash
# The main job on the embedded default: set up, then `lcf demo`: train LCF-X on SmolLM2-135M-Instruct
# (sharer and receiver) on this CPU and compare it with text communication on 300 held-out
# split-context questions. Extra arguments go to `lcf demo` (e.g. --workdir DIR, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lcf demo "$@"
