#!/usr/bin/env bash
# The GPU benchmark in one prepared run (about 5 minutes on one H200/H100): hardware floors, model
# prefill/decode against transformers, the adapter train step's MFU and communication time to first
# token, after a correctness check. Random weights at real shapes; no network, no checkpoints, no
# installs: lcf_jax is imported from this working tree. See bench/gpu.py for what each number means.
#
#   bash bench/gpu.sh                 # full size, results under $OUT (default ./gpu_out)
#   bash bench/gpu.sh --tiny          # tiny shapes: the whole path on a CPU in about a minute
#   bash bench/gpu.sh --budget-s 300 --only floors,models_jax
#
# Writes $OUT/gpu_bench.json (everything), $OUT/gpu_bench.md (the table), $OUT/gpu_bench.log (this
# script's whole output), $OUT/progress.log and $OUT/nvidia-smi.txt. Exit status: 0 when every
# section ran or was skipped for time, 1 when a section raised (recorded in the JSON), 3 when the
# watchdog stopped the run (results so far are written).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
# The interpreter: $PYTHON, else the first of python3, python, .venv/bin/python that has jax installed.
if [[ -z "${PYTHON:-}" ]]; then
  for candidate in python3 python .venv/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c "import importlib.metadata as m; m.version('jax')" >/dev/null 2>&1; then
      PYTHON="$candidate"
      break
    fi
  done
fi
if [[ -z "${PYTHON:-}" ]]; then
  echo "bench/gpu.sh: no python with jax installed (set PYTHON=...)" >&2
  exit 2
fi

{
  echo "== bench/gpu.sh $*"
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(hostname); cwd: $(pwd); out: $OUT"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || true
  else
    echo "nvidia-smi: not found"
  fi
  "$PYTHON" - <<'EOF' || true
import platform, sys
from importlib import metadata
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "torch", "transformers",
             "tqdm", "safetensors", "ml_collections", "tokenizers", "gguf", "orbax-checkpoint"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
} 2>&1 | tee "$OUT/gpu_bench.log"

# JAX takes a fixed share of GPU memory up front (fewer allocator calls while timing) and leaves the
# rest to PyTorch, which runs in the same process for the comparison. Anything set outside wins.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.70}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export TOKENIZERS_PARALLELISM=false
export TQDM_DISABLE=1
export PYTHONUNBUFFERED=1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export GPU_BENCH_COMMAND="bash bench/gpu.sh $*"
echo "XLA_FLAGS=${XLA_FLAGS:-} XLA_PYTHON_CLIENT_PREALLOCATE=$XLA_PYTHON_CLIENT_PREALLOCATE" \
  "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION" | tee -a "$OUT/gpu_bench.log"

set +e
"$PYTHON" -u bench/gpu.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/gpu_bench.log"
status=${PIPESTATUS[0]}
set -e
echo "== bench/gpu.sh: exit status $status; results in $OUT" | tee -a "$OUT/gpu_bench.log"
exit "$status"
