#!/usr/bin/env bash
# Runs every GPU check of the project on a CUDA machine in one go, within BUDGET_S seconds (500): the most
# important check first, each stage with its own time limit cut to what is left, a failed stage not stopping
# the others. It reads the CIFAR-10 and Tiny-ImageNet archives and prepare.py from device_carry/ (git-ignored,
# filled by `bash experiments/gpu/carry.sh gpu_check`) and leaves its JSON results and one log (at most 8
# files) in $OUT; the log ends with the table of figures, date and hardware.
#     bash experiments/gpu/carry.sh gpu_check && PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
# benchmarks/GPU_EXPERIMENTS.md lists it with the other GPU runs and records what each found.
set -uo pipefail
OUT=${OUT:-gpu_out}
BUDGET_S=${BUDGET_S:-500}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
ROOT=/tmp/ddu_data
RUNS=/tmp/ddu_runs
PY=${PYTHON:-python3}
SUMMARY=()
step() { echo; echo "== $(date +%T) (${SECONDS}s) $*"; }
# limit N: N seconds, or what is left of the budget if that is less (at least 5 s).
limit() { local left=$((BUDGET_S - SECONDS)); ((left < 5)) && left=5; ((left < $1)) && echo "$left" || echo "$1"; }
record() { SUMMARY+=("$1: $2 (${SECONDS}s)"); }

step "environment"
$PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true

step "data: CIFAR-10 and Tiny-ImageNet in their official layouts"
timeout "$(limit 120)" $PY device_carry/prepare.py "$ROOT" --only cifar10,tiny_imagenet >/dev/null || {
    echo "data preparation failed; nothing else can run"
    exit 1
}

step "training loop, this project's default (and + compile) vs the original-style pipeline"
timeout "$(limit 240)" $PY -m benchmarks.train_throughput --dataset-root "$ROOT" --model wide_resnet -sn -mod \
    --compile --steps 60 --warmup 10 --json "$OUT/train_throughput.json"
record "train_throughput (WRN-28-10 + SN + mod, batch 128)" "exit $?"

step "a short real run (2 epochs of WRN-28-10 + SN + mod), then DDU against Tiny-ImageNet"
timeout "$(limit 120)" $PY train.py --seed 1 --dataset cifar10 --dataset-root "$ROOT" --model wide_resnet -sn -mod \
    -e 2 --save-interval 2 --validate-every 1 --save-path "$RUNS/Run1" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$"
record "train.py 2 epochs" "exit $?"
cp "$RUNS"/Run1/*_log.jsonl "$OUT/" 2>/dev/null
timeout "$(limit 90)" $PY evaluate.py --seed 1 --dataset cifar10 --ood_dataset tiny_imagenet --dataset-root "$ROOT" \
    --load-path "$RUNS" --model wide_resnet -sn -mod --runs 1 --epoch 2 --model-type gmm --output-dir "$RUNS/eval" \
    2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" | tail -20
record "evaluate.py gmm" "exit $?"
cp "$RUNS"/eval/*.json "$OUT/" 2>/dev/null

step "network throughput, fp32 vs bf16 + channels_last, SN on and off (batch 128)"
timeout "$(limit 90)" $PY -m benchmarks.throughput --model wide_resnet -mod --batch-size 128 --steps 30 --warmup 5 \
    --json "$OUT/throughput.json"
record "throughput" "exit $?"

step "loaders, one augmented CIFAR-10 epoch"
timeout "$(limit 60)" $PY -m benchmarks.loader --dataset-root "$ROOT" --device cuda
record "loader" "exit $?"

step "deep-ensemble members stacked (vmap) vs one after another, 5 members, batch 128 each, bf16"
timeout "$(limit 45)" $PY -m benchmarks.ensemble_modes --model lenet --members 5 --batch-size 128 --steps 30
record "ensemble LeNet" "exit $?"
timeout "$(limit 60)" $PY -m benchmarks.ensemble_modes --model resnet18 --members 5 --batch-size 128 --steps 20
record "ensemble ResNet-18 (28x28)" "exit $?"

step "summary"
printf '%s\n' "${SUMMARY[@]}"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
network = json.loads((out / "throughput.json").read_text()) if (out / "throughput.json").is_file() else []
gflop = network[0]["gflop_per_image"] if network else 31.29  # WRN-28-10, one training step per image
if (out / "train_throughput.json").is_file():
    record = json.loads((out / "train_throughput.json").read_text())
    for r in record["results"]:
        rate = r["images_per_s"]
        print(f"{r['name']:<16} {r['precision']} {r['loader']:<11} {rate:>9,.0f} images/s = {rate * gflop / 1e3:6.1f} TFLOP/s")
    ratios = ", ".join(f"{name} {value:.2f}x" for name, value in record["ratios"].items())
    print(f"{ratios} on {record['hardware']}, torch {record['torch']}, {record['date']}")
    best = max(r["images_per_s"] for r in record["results"][:-1])
    print(f"350 epochs of 45,000 images at {best:,.0f} images/s: {350 * 45000 / best / 60:.1f} min")
for path in sorted(out.glob("*_log.jsonl")):
    for line in path.read_text().splitlines():
        print(path.name, line)
for r in network:
    print(f"network sn={r['sn']!s:<5} {r['config']:<20} {r['images_per_s']:>9,.0f} images/s = {r['achieved_tflop_s']:6.1f} TFLOP/s")
print("H200 ceilings (measured): bf16 matrix product about 790 TFLOP/s, copy about 4.3 TB/s")
EOF
