#!/usr/bin/env bash
# Runs one reproduction experiment (cifar10, dirty_mnist or active_learning) at its `gpu` preset on a CUDA
# machine within BUDGET_S seconds (550): lays the data archives found in $CARRY (default device_carry/, which
# experiments/gpu/carry.sh fills) out in $DATA_ROOT, runs `python -m experiments.MODULE --scale $SCALE`
# (MODULE is the experiment's name; al_curves for active_learning) and leaves the experiment's JSON record, figure and log in $OUT (at most 8 small files: also the training
# logs for cifar10, the Ambiguous-MNIST manifest and sample grid for dirty_mnist). The experiment writes its
# record after every stage, so a run cut off at the limit keeps what it finished; the log ends with the
# table, date and hardware. benchmarks/GPU_EXPERIMENTS.md lists the runs in order and what each found.
#     bash experiments/gpu/carry.sh cifar10 && PYTHONUNBUFFERED=1 bash experiments/gpu/run.sh cifar10
# On a CPU, in seconds (the test suite runs it so; DATA is a folder with the archives and prepare.py):
#     SCALE=smoke EXPERIMENT_FLAGS=--no-gpu CARRY=DATA DATA_ROOT=/tmp/data OUT=/tmp/out \
#         bash experiments/gpu/run.sh EXPERIMENT
set -uo pipefail
EXPERIMENT=${1:-}
case "$EXPERIMENT" in
cifar10) # Fashion-MNIST stays behind: with it the carry would be 68 MB, over the device's 64 MiB
    DATASETS=cifar10,tiny_imagenet,mnist
    EXPERIMENT_FLAGS="--ood-sets tiny_imagenet,mnist ${EXPERIMENT_FLAGS:-}"
    ;;
dirty_mnist) DATASETS=mnist,fashion_mnist ;;
active_learning) DATASETS=mnist MODULE=al_curves ;; # the module's name; its records keep the experiment's
*)
    echo "usage: bash experiments/gpu/run.sh cifar10|dirty_mnist|active_learning" >&2
    exit 2
    ;;
esac
MODULE=${MODULE:-$EXPERIMENT}
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
echo "== (${SECONDS}s) python -m experiments.$MODULE --scale $SCALE, at most ${limit}s"
# shellcheck disable=SC2086  # EXPERIMENT_FLAGS is a list of flags
timeout "$limit" $PY -m "experiments.$MODULE" --scale "$SCALE" --dataset-root "$DATA_ROOT" \
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
