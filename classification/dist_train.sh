#!/usr/bin/env bash
# Multi-process training on one machine: classification/dist_train.sh NUM_PROCS [train.py options]
# (NCCL on GPUs, GLOO on CPUs). Example:
#   classification/dist_train.sh 8 --data /data/imagenet --config classification/configs/SOFT_Tiny_norm.yaml
# Python: $PYTHON, else the repository's .venv/bin/python (found from this script's folder); the
# processes are started by that interpreter's torch.distributed.run (what torchrun runs).
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCS [train.py options...]" >&2
  exit 2
fi
NUM_PROC=$1
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=${PYTHON:-$ROOT/.venv/bin/python}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "$0: no Python '$PY': create $ROOT/.venv (bash tools/install.sh) or set PYTHON=/path/to/python" >&2
  exit 2
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The trainer as a module of the installed package (pip install -e .; or run from the repository root).
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NUM_PROC" -m classification.train "$@"
