#!/usr/bin/env bash
# Submit training to a SLURM GPU cluster (run from the repository root, after scripts/setup.sh with
# the cuda extra: .venv/bin/pip install -e '.[cuda]').
#
#   launch/slurm/submit.sh --nodes 4 --partition gpu --config configs/paper_lcf.py \
#       --workdir /shared/lcf/run1 [--time 12:00:00] [--dry-run] [--config.train.steps=300]
set -euo pipefail
source "$(dirname "$0")/../common.sh"
NODES=1 PARTITION= TIME=12:00:00 CONFIG= WORKDIR=
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) EXTRA+=("$1"); shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
for v in PARTITION CONFIG WORKDIR; do [ -n "${!v}" ] || die "--${v,,} is required"; done
run sbatch --nodes="$NODES" --partition="$PARTITION" --time="$TIME" \
  --export=ALL,LCF_CONFIG="$CONFIG",LCF_WORKDIR="$WORKDIR",LCF_EXTRA="${EXTRA[*]:-}" \
  "$(dirname "$0")/train.sbatch"
