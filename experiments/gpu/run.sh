#!/usr/bin/env bash
# One reproduction experiment at full width as ONE command of about 8 minutes on one H200 (the list of GPU
# experiments, their order and what has run is benchmarks/GPU_EXPERIMENTS.md).
#
# Here, first (the archives do not travel with the tree; device_carry/ is git-ignored, 64 MiB at most):
#     bash experiments/gpu/carry.sh EXPERIMENT
# then call the device tool's run with:
#     command="PYTHONUNBUFFERED=1 bash experiments/gpu/run.sh EXPERIMENT", carry=["device_carry"], timeout_s=570
# EXPERIMENT is cifar10, dirty_mnist or active_learning. The script lays the carried archives out on the
# machine's local disk and runs `python -m experiments.EXPERIMENT --scale gpu`, whose preset is sized to
# about 7 minutes, within what is left of BUDGET_S (550 s). The experiment writes its JSON after every
# stage, so a run cut off at the limit still returns what it finished. $OUT receives only small files (at
# most 8): EXPERIMENT_gpu.json, EXPERIMENT_gpu.png, EXPERIMENT_gpu.log, plus the training logs (cifar10)
# or the Ambiguous-MNIST manifest and sample grid (dirty_mnist). The log ends with the table to copy into
# the README's Reproduction section, with the date and hardware.
#
# CPU setting (what the test suite runs, so the script cannot fail on the GPU for a reason a CPU shows):
#     SCALE=smoke EXPERIMENT_FLAGS=--no-gpu CARRY=../shared/data DATA_ROOT=/tmp/data OUT=/tmp/out \
#         bash experiments/gpu/run.sh EXPERIMENT
set -uo pipefail
EXPERIMENT=${1:-}
case "$EXPERIMENT" in
cifar10) # Fashion-MNIST stays behind: with it the carry would be 68 MB, over the device's 64 MiB
    DATASETS=cifar10,tiny_imagenet,mnist
    EXPERIMENT_FLAGS="--ood-sets tiny_imagenet,mnist ${EXPERIMENT_FLAGS:-}"
    ;;
dirty_mnist) DATASETS=mnist,fashion_mnist ;;
active_learning) DATASETS=mnist ;;
*)
    echo "usage: bash experiments/gpu/run.sh cifar10|dirty_mnist|active_learning" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
SCALE=${SCALE:-gpu}
CARRY=${CARRY:-device_carry}
DATA_ROOT=${DATA_ROOT:-/tmp/ddu_data}
WORK=${WORK:-/tmp/ddu_repro}
BUDGET_S=${BUDGET_S:-550} # the whole script; the device run's timeout_s (570) leaves 20 s to spare
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/${EXPERIMENT}_${SCALE}.log") 2>&1

echo "== $(date -u +%FT%TZ) $(hostname) (Python, torch and the device are in the JSON)"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null || true

echo "== (${SECONDS}s) data: $DATASETS from $CARRY into $DATA_ROOT"
$PY "$CARRY/prepare.py" "$DATA_ROOT" --only "$DATASETS" >/dev/null || {
    echo "data preparation failed; run 'bash experiments/gpu/carry.sh $EXPERIMENT' here before the device run"
    exit 1
}

limit=$((BUDGET_S - SECONDS - 10)) # 10 s for copying the files back into $OUT
((limit < 30)) && limit=30
echo "== (${SECONDS}s) python -m experiments.$EXPERIMENT --scale $SCALE, at most ${limit}s"
# shellcheck disable=SC2086  # EXPERIMENT_FLAGS is a list of flags
timeout "$limit" $PY -m "experiments.$EXPERIMENT" --scale "$SCALE" --dataset-root "$DATA_ROOT" \
    --work-dir "$WORK/${EXPERIMENT}_$SCALE" --output-dir "$OUT" ${EXPERIMENT_FLAGS:-} 2>&1 |
    tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"
status=${PIPESTATUS[0]}

case "$EXPERIMENT" in
cifar10) cp "$WORK/${EXPERIMENT}_$SCALE"/Run1/*_log.jsonl "$OUT/" 2>/dev/null ;;
dirty_mnist)
    amnist=$DATA_ROOT
    [ -f "$amnist/amnist_manifest.json" ] || amnist=$WORK/${EXPERIMENT}_$SCALE/data
    cp "$amnist/amnist_manifest.json" "$amnist/amnist_grid.png" "$OUT/" 2>/dev/null
    ;;
esac
echo "== (${SECONDS}s) exit status $status; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
