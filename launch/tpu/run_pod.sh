#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice, install lcf_jax on every worker, and train on all of them.
#
#   launch/tpu/run_pod.sh --name lcf-v5p --zone us-east5-a --type v5p-32 \
#       --config configs/paper_lcf.py --workdir gs://BUCKET/lcf/run1 [--repo URL] [--ref main] [--dry-run]
#
# --repo defaults to this checkout's `origin` remote; --ref to main.
#
# Every worker runs `lcf train --distributed` (jax.distributed finds the pod's coordinator itself);
# only process 0 logs. Re-running with the same --workdir resumes from the last checkpoint.
set -euo pipefail
source "$(dirname "$0")/../common.sh"
NAME= ZONE= TYPE= CONFIG= WORKDIR= VERSION=v2-alpha-tpuv5 REPO= REF=main
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --repo) REPO=$2; shift 2 ;;
    --ref) REF=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) EXTRA+=("$1"); shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[ -n "$REPO" ] || REPO=$(git -C "$(dirname "$0")" remote get-url origin 2>/dev/null || true)
for v in NAME ZONE TYPE CONFIG WORKDIR REPO; do [ -n "${!v}" ] || die "--${v,,} is required"; done

run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION"
SETUP="git clone --branch $REF $REPO lcf_jax && cd lcf_jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$SETUP"
TRAIN="cd lcf_jax && .venv/bin/lcf train --distributed --no-progress --config $CONFIG --workdir $WORKDIR ${EXTRA[*]:-}"
TRAIN="${TRAIN% }"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$TRAIN"
