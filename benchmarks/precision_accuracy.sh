#!/usr/bin/env bash
# Does bf16 autocast train the full-width network as well as fp32? Issue 21's accuracy check:
# full-width BlockNet, `full` preset recipe shortened to 10 epochs on a 10,000-image stratified
# subset (batch 256, peak lr 0.2), three training seeds per precision, the same data split for
# all (the data seed stays 0, so only initialisation, augmentation and order change with
# --seed). Runs are interleaved seed by seed (fp32 then bf16), so a stopped check still holds
# matched pairs; rerunning the same command skips finished runs and resumes a stopped one.
#
#   benchmarks/precision_accuracy.sh [OUT] [BLOCK] [SEEDS...]      (default runs/precision-check A 0 1 2)
#   RECIPE=quick benchmarks/precision_accuracy.sh runs/precision-quick B 0 1 2   (the `quick` preset as is)
#   benchmarks/precision_summary.py OUT                             (the table for BENCHMARKS.md)
#
# About 20 minutes per seed on the 2-core AMX machine (fp32 ~15, bf16 ~6): run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export CNNLAB_DATA=${CNNLAB_DATA:-../shared/data}
OUT=${1:-runs/precision-check}
BLOCK=${2:-A}
shift 2 || shift $#
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2)
PRECISIONS=(${PRECISIONS:-fp32 bf16})
for seed in "${SEEDS[@]}"; do
    for precision in "${PRECISIONS[@]}"; do
        run="$OUT/$BLOCK-$precision-s$seed"
        if [ -f "$run/final.json" ] && grep -q '"test_acc"' "$run/final.json"; then
            echo "== $run: done, kept"
            continue
        fi
        resume=()
        [ -f "$run/checkpoint.pt" ] && resume=(--resume)
        echo "== $run ($(date -u +%H:%M:%S))"
        if [ "${RECIPE:-full10}" = quick ]; then
            recipe=(--preset quick)
        else
            recipe=(--preset full --epochs 10 --train-subset 10000 --val-size 2000 --batch-size 256 --lr 0.2)
        fi
        "$PY" -m cnnlab cifar train --block "$BLOCK" "${recipe[@]}" --seed "$seed" --precision "$precision" \
            --device cpu --no-progress --out "$run" "${resume[@]}"
    done
done
"$PY" "$(dirname "$0")/precision_summary.py" "$OUT"
