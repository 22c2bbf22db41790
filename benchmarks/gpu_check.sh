#!/usr/bin/env bash
# Every GPU check of the issues in one prepared run, for the device machine (15 minutes of device time in all).
#
# Here, first (the data archives do not travel with the tree; device_carry/ is git-ignored):
#     mkdir -p device_carry && cp ../shared/data/{prepare.py,cifar10-jpeg.tar.xz,tiny-imagenet-test.tar.xz} device_carry/
# then call the device tool's run with:
#     command="PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh", carry=["device_carry"], timeout_s=540
# Results (JSON and logs) land in $OUT; copy the figures into the README with the date and hardware.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
ROOT=/tmp/ddu_data
RUNS=/tmp/ddu_runs
PY=${PYTHON:-python3}
step() { echo; echo "== $(date +%T) $*"; }

step "environment"
$PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
step "data"
$PY device_carry/prepare.py "$ROOT" --only cifar10,tiny_imagenet >/dev/null || exit 1

step "network throughput: WRN-28-10 + SN + mod, batch 128 (issue 2)"
timeout 200 $PY -m benchmarks.throughput --model wide_resnet -mod --batch-size 128 --steps 40 --warmup 10 \
    --compile --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log"

step "loaders: one augmented CIFAR-10 epoch (issue 3)"
timeout 90 $PY -m benchmarks.loader --dataset-root "$ROOT" --device cuda 2>&1 | tee "$OUT/loader.log"

step "training loop: this project's default vs the original-style pipeline (issue 5)"
timeout 200 $PY -m benchmarks.train_throughput --dataset-root "$ROOT" --model wide_resnet -sn -mod --compile \
    --json "$OUT/train_throughput.json" 2>&1 | tee "$OUT/train_throughput.log"

step "a short real run: 2 epochs of WRN-28-10 + SN + mod, then DDU evaluation against Tiny-ImageNet (issues 5, 6)"
timeout 150 $PY train.py --seed 1 --dataset cifar10 --dataset-root "$ROOT" --model wide_resnet -sn -mod -e 2 \
    --save-interval 2 --save-path "$RUNS/Run1" 2>&1 | grep -v "^[a-z_]*: " | tee "$OUT/train.log"
timeout 90 $PY evaluate.py --seed 1 --dataset cifar10 --ood_dataset tiny_imagenet --dataset-root "$ROOT" \
    --load-path "$RUNS" --model wide_resnet -sn -mod --runs 1 --epoch 2 --model-type gmm --output-dir "$OUT" \
    2>&1 | tail -3 | tee "$OUT/evaluate.log"
step "done"
