#!/usr/bin/env bash
# Train with torchrun: bash dist_train.sh NUM_PROCESSES OPTIONS.yml [train.py arguments, e.g. --auto_resume]
#
# CPU: the processes use gloo; CUDA: nccl, one GPU per process. Several machines: run this on each with
# NNODES (machines), NODE_RANK (0..NNODES-1), MASTER_ADDR and MASTER_PORT (of node 0) set alike.
# The options are checked (and missing sample data created) once, before any process starts; a run of the same
# name still running stops this one there, with one line naming it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash dist_train.sh NUM_PROCESSES OPTIONS.yml [--auto_resume] [--force_yml key:sub=value ...]" >&2
  exit 2
fi
NPROC=$1
OPT=$2
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
NNODES=${NNODES:-1}

# WORLD_SIZE: the check sees the process count torchrun will start, so a batch larger than a process's share of
# the training set is refused here, before any process starts
WORLD_SIZE=$((NPROC * NNODES)) "$PYTHON" "$ROOT/train.py" -opt "$OPT" --check-only "$@"

if [ "$NNODES" = 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  RDZV=(--standalone)          # one machine: torchrun picks a free port itself
else
  RDZV=(--nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
        --master_port="${MASTER_PORT:-29500}")
fi
# torchrun, ending in one line when stopped (SIGTERM/SIGINT: forwarded to the processes, which save a resumable
# state) or when a process fails, instead of torchrun's traceback: see vsrkit/engine/torchrun.py
exec "$PYTHON" -m vsrkit.engine.torchrun "${RDZV[@]}" --nproc_per_node="$NPROC" \
  "$ROOT/train.py" -opt "$OPT" --launcher pytorch "$@"
