#!/usr/bin/env bash
# The full CIFAR-10 comparison on one CUDA GPU: six blocks, 30 epochs each, `full` preset
# (batch 512, SGD-Nesterov one-cycle to lr 0.4, label smoothing 0.1, bf16 autocast,
# channels_last), then the results table. Budget: under 8 minutes on one H200.
#
#   benchmarks/gpu_compare.sh [OUT] [extra `cnnlab cifar compare` flags, e.g. --compile]
#
# Data: $CNNLAB_DATA (a folder holding cifar10-jpg/ or cifar-10-batches-py/), default
# ../shared/data. On the project's GPU machine ../shared does not travel: copy
# ../shared/data/cifar10-jpg into a git-ignored folder of the checkout (e.g. data/), carry
# it, and run with CNNLAB_DATA=data. Rerunning with the same OUT reuses finished blocks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export CNNLAB_DATA=${CNNLAB_DATA:-../shared/data}
OUT=${1:-runs/gpu_full}
shift || true
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
start=$(date +%s)
"$PY" -m cnnlab cifar compare --preset full --blocks A B C D D-dw E --epochs 30 --device cuda \
    --out "$OUT" "$@"
echo "total wall time: $(( $(date +%s) - start )) s (results in $OUT/results.md)"
