#!/usr/bin/env bash
# Run training as an xpk workload on a GKE cluster with TPU slices.
#
#   launch/xpk/run.sh --cluster my-cluster --workload lcf-run1 --type v5p-32 --slices 1 \
#       --docker-image gcr.io/PROJECT/lcf_jax:latest \
#       --config configs/paper_lcf.py --workdir gs://BUCKET/lcf/run1 [--dry-run]
set -euo pipefail
source "$(dirname "$0")/../common.sh"
CLUSTER= WORKLOAD= TYPE= SLICES=1 IMAGE= CONFIG= WORKDIR=
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) CLUSTER=$2; shift 2 ;;
    --workload) WORKLOAD=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --slices) SLICES=$2; shift 2 ;;
    --docker-image) IMAGE=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) EXTRA+=("$1"); shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
for v in CLUSTER WORKLOAD TYPE IMAGE CONFIG WORKDIR; do [ -n "${!v}" ] || die "--${v,,} is required"; done
COMMAND="lcf train --distributed --no-progress --config $CONFIG --workdir $WORKDIR ${EXTRA[*]:-}"
COMMAND="${COMMAND% }"
run xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --tpu-type "$TYPE" --num-slices "$SLICES" \
  --docker-image "$IMAGE" --command "$COMMAND"
