#!/usr/bin/env bash
# LCF-X at the paper's scale on the embedded SmolLM2 pair, then the evaluation with every control
# (configs/smollm2_lcfx_scale.py): sized for one H100/H200, about 10 minutes.
#
#   bash scripts/lcfx_scale.sh [WORKDIR] [RECIPE] [QUESTIONS] [TIMED]
#     RECIPE: fixed (default) or paper; append ",tiny" for a CPU check of the path (not a result)
#     QUESTIONS: held-out questions to evaluate (default 300); TIMED: of them, timed one by one (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:-lcfx-scale}
recipe=${2:-fixed}
count=${3:-300}
timed=${4:-4}
lcf=".venv/bin/lcf"
[ -x "$lcf" ] || lcf="lcf"
"$lcf" train --config "configs/smollm2_lcfx_scale.py:$recipe" --workdir "$workdir" --no-progress
"$lcf" eval --checkpoint "$workdir" --workdir "$workdir/eval" --count "$count" --latency-questions "$timed" --no-progress
