#!/usr/bin/env bash
# What does `faces calibrate` buy on a population the model never trained on? Issue 24's check:
# for each seed, calibrate on N people of an identity folder (drawn with the seed) and score the
# others at that threshold (`faces score --calibrate-people N`), with the accuracy objective and
# with the false-accept-rate objective at 1e-2 and 1e-3 (every different-person pair of the N
# people: --negatives ALL_NEGATIVES, so the tail the FAR is read from is as large as it can be).
# Reruns skip finished seeds; the table for BENCHMARKS.md comes from calibration_summary.py.
#
#   benchmarks/calibration_check.sh MODEL [FOLDER] [OUT] [N] [SEEDS...]
#   (default FOLDER $CNNLAB_DATA/att-faces, OUT runs/calibration-check, N 10, seeds 0-9;
#    ALL_NEGATIVES=4500 is every different-person pair of 10 AT&T people: 45 x 10 x 10)
#
# About 15 s per run on 2 idle cores (each run embeds the folder again).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export CNNLAB_DATA=${CNNLAB_DATA:-../shared/data}
MODEL=${1:?usage: calibration_check.sh MODEL [FOLDER] [OUT] [N] [SEEDS...]}
FOLDER=${2:-$CNNLAB_DATA/att-faces}
OUT=${3:-runs/calibration-check}
N=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(0 1 2 3 4 5 6 7 8 9)
NEG=${ALL_NEGATIVES:-4500}
mkdir -p "$OUT"
score() {  # score NAME ARGS...
    local name=$1; shift
    [ -f "$OUT/$name.json" ] && return 0
    "$PY" -m cnnlab faces score "$FOLDER" --model "$MODEL" --no-progress --calibrate-people "$N" "$@" \
        --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
}
for seed in "${SEEDS[@]}"; do
    score "accuracy-s$seed" --objective accuracy --seed "$seed"
    for far in 1e-2 1e-3; do
        score "far$far-s$seed" --objective far --far "$far" --negatives "$NEG" --seed "$seed"
    done
done
"$PY" "$(dirname "$0")/calibration_summary.py" "$OUT"
