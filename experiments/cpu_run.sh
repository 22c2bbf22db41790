#!/usr/bin/env bash
# The CPU measuring run of the CIFAR-10 and active-learning experiments at their fixed `cpu` presets: both
# at once, one torch thread each (one core each on a 2-core machine), each resuming what an earlier,
# interrupted call left in WORK. Logs, JSON records and figures go to OUT.
#     bash experiments/cpu_run.sh                      # DATA=/tmp/ddu_real_data WORK=runs/cpu OUT=results/cpu
#     DATA=/data WORK=/scratch/w OUT=docs/repro bash experiments/cpu_run.sh
# DATA holds CIFAR-10, Tiny-ImageNet (test), MNIST and Fashion-MNIST in their official layouts
# (docs/usage.md, "Data").
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/tmp/ddu_real_data}
WORK=${WORK:-runs/cpu}
OUT=${OUT:-results/cpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
status=0
for experiment in cifar10 active_learning; do
    echo "$(date -u +%FT%TZ) start $experiment (log: $OUT/${experiment}_cpu.log)"
    $PY -m "experiments.$experiment" --scale cpu --num-threads 1 --dataset-root "$DATA" \
        --work-dir "$WORK/$experiment" --output-dir "$OUT" >>"$OUT/${experiment}_cpu.log" 2>&1 &
done
for job in $(jobs -p); do
    wait "$job" || status=1
done
echo "$(date -u +%FT%TZ) done (status $status)"
exit $status
