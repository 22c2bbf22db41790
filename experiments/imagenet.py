"""ImageNet against ImageNet-O: the CVPR 2023 paper's table (ResNet-50, Wide-ResNet-50-2, VGG-16).

The paper reports, per network, accuracy, ECE and the AUROC against ImageNet-O of softmax entropy, energy
and DDU, and of a 3-member deep ensemble's predictive entropy (PE) and mutual information (MI). Its
numbers are in `PAPER`; what it leaves open (SN coefficient, VGG's batch norm, the members' seeds) is
decided in docs/reproduction.md ("ImageNet").

    python -m experiments.imagenet --scale gpu --dataset-root DATA      # prints the node's commands and
                                                                         # their expected wall time
    python -m experiments.imagenet --scale gpu --dataset-root DATA --run --nproc 8   # ... and runs them
    python -m experiments.imagenet --scale smoke --dataset-root TINY    # a minute on a CPU: the pipeline

DATA holds `imagenet/{train,val}/nXXXXXXXX/*.JPEG` and `imagenet-o/nXXXXXXXX/*.jpg` (data/imagenet.py).
The smoke scale needs an ImageNet-shaped folder with all 1,000 classes (`--make-tiny` writes a synthetic
one into TINY first: 1,000 classes of 5 small training images): it trains ResNet-50 at 1/16 width with SN
and mod on 64x64 crops (`--image-size 64`) for one epoch with the recipe's flags, and evaluates softmax
(entropy, energy) and DDU (fitted on 2 training images per class, `--gmm-samples-per-class`) against the
folder's imagenet-o, read both as `imagenet_o` and as a plain image folder in one multi-OoD evaluation.
It writes `imagenet_smoke.json` into --output-dir and prints the table beside the paper's numbers.

The gpu scale is torchvision's ResNet-50 recipe (the paper gives none): SGD with momentum 0.9, lr 0.1 for
a batch of 256, weight decay 1e-4, 90 epochs with tenfold drops at 30 and 60, random-resized crops and
flips, bf16 and channels_last; every network trained with `-sn -mod --coeff 3.0` (VGG has no shortcuts, so
-mod only makes its activations leaky), then 3-member ensembles (`--ensemble 3`, seeds 1..3).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import evaluate
import train
from data import imagenet
from engine.result_tables import markdown_table
from experiments import common
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_json

NAME = "imagenet"

# The paper's table (project page of the original repository, static/images/results.png): mean +- standard
# error in percent; the ensemble entry is (PE, MI).
PAPER = {
    "imagenet_resnet50": {
        "label": "ResNet-50",
        "accuracy": (74.8, 0.05),
        "ece": (2.08, 0.11),
        "softmax_entropy": (51.42, 0.61),
        "energy": (55.76, 0.81),
        "ddu": (71.29, 0.08),
        "ensemble": (60.3, 62.43),
    },
    "imagenet_wide_resnet50_2": {
        "label": "Wide-ResNet-50-2",
        "accuracy": (76.75, 0.11),
        "ece": (1.18, 0.07),
        "softmax_entropy": (52.71, 0.23),
        "energy": (57.13, 0.4),
        "ddu": (73.12, 0.19),
        "ensemble": (60.45, 64.81),
    },
    "imagenet_vgg16_bn": {
        "label": "VGG-16",
        "accuracy": (72.48, 0.02),
        "ece": (2.62, 0.11),
        "softmax_entropy": (50.67, 0.22),
        "energy": (52.04, 0.23),
        "ddu": (54.32, 0.14),
        "ensemble": (58.74, 60.56),
    },
}
# Forward multiply-adds per 224x224 image (torchvision's model cards), for the expected wall time.
GMACS = {"imagenet_resnet50": 4.09, "imagenet_wide_resnet50_2": 11.4, "imagenet_vgg16_bn": 15.47}
TRAIN_IMAGES, VAL_IMAGES, OOD_IMAGES = 1_281_167, 50_000, 2_000
SMOKE_SIZE = 64  # the smoke run's crops (--image-size): the pipeline at a sixteenth of the pixels


@dataclass(frozen=True)
class GpuPreset:
    epochs: int = 90
    batch_size: int = 256
    learning_rate: float = 0.1  # per 256 images
    weight_decay: float = 1e-4
    milestones: tuple[int, int] = (30, 60)
    coeff: float = 3.0
    ensemble: int = 3
    workers: int = 16


def train_command(
    model: str, preset: GpuPreset, root: str, save: str, nproc: int, ensemble: bool
) -> list[str]:
    """The torchrun command that trains `model` (or its ensemble) with the recipe on `nproc` GPUs."""
    command = ["torchrun", f"--nproc_per_node={nproc}", "train.py", "--seed", "1"]
    command += ["--dataset", "imagenet", "--dataset-root", root, "--model", model, "-sn", "-mod"]
    command += ["--coeff", str(preset.coeff), "-e", str(preset.epochs), "-b", str(preset.batch_size)]
    command += [
        "--lr",
        str(preset.learning_rate * preset.batch_size / 256),
        "--decay",
        str(preset.weight_decay),
    ]
    command += [
        "--first-milestone",
        str(preset.milestones[0]),
        "--second-milestone",
        str(preset.milestones[1]),
    ]
    command += ["--workers", str(preset.workers), "--save-interval", "10", "--save-path", save]
    return command + (["--ensemble", str(preset.ensemble)] if ensemble else [])


def evaluate_commands(model: str, preset: GpuPreset, root: str, load: str, out: str) -> list[list[str]]:
    """evaluate.py for softmax (entropy, energy), DDU (gmm) and the ensemble (PE, MI) against ImageNet-O."""
    common_flags = [
        "--seed",
        "1",
        "--dataset",
        "imagenet",
        "--ood_dataset",
        "imagenet_o",
        "--dataset-root",
        root,
    ]
    common_flags += ["--model", model, "-sn", "-mod", "--coeff", str(preset.coeff), "--runs", "1"]
    common_flags += ["--epoch", str(preset.epochs), "--output-dir", out, "-b", "256"]
    return [
        ["python", "evaluate.py", *common_flags, "--load-path", load, "--model-type", kind]
        for kind in ("softmax", "gmm")
    ] + [
        [
            "python", "evaluate.py", *common_flags, "--load-path", load + "_ensemble", "--model-type", "ensemble",
            "--ensemble", str(preset.ensemble),
        ]
    ]  # fmt: skip


def expected_hours(model: str, preset: GpuPreset, nproc: int, gpu_tflops: float, decode_per_s: float) -> dict:
    """Wall time of one training from the work and two rates: the GPUs' sustained bf16 rate (`gpu_tflops`
    per GPU, forward + backward = 3 x forward) and the JPEG decoding rate (`decode_per_s` images/s per GPU:
    each rank decodes its own share); the slower bounds the time. Members of the ensemble each take as long again."""
    images = TRAIN_IMAGES * preset.epochs
    compute_s = images * 3 * 2 * GMACS[model] * 1e9 / (gpu_tflops * 1e12 * nproc)
    decode_s = images / (decode_per_s * nproc)
    single = max(compute_s, decode_s)
    return {
        "compute_bound_h": round(compute_s / 3600, 1),
        "decode_bound_h": round(decode_s / 3600, 1),
        "single_h": round(single / 3600, 1),
        "with_ensemble_h": round(single * (1 + preset.ensemble) / 3600, 1),
    }


def gpu_plan(args: argparse.Namespace) -> dict:
    preset, plan = GpuPreset(), {}
    for model in PAPER:
        save = f"{args.work_dir or 'runs/imagenet'}/{model}/Run1"
        plan[model] = {
            "train": train_command(model, preset, args.dataset_root, save, args.nproc, ensemble=False),
            "train_ensemble": train_command(
                model, preset, args.dataset_root, save.replace("/Run1", "_ensemble/Run1"), args.nproc, True
            ),
            "evaluate": evaluate_commands(
                model, preset, args.dataset_root, save.rsplit("/Run1", 1)[0], args.output_dir
            ),
            "expected": expected_hours(model, preset, args.nproc, args.gpu_tflops, args.decode_per_s),
        }
    return plan


def paper_table() -> str:
    headers = ("network", "accuracy", "ECE", "AUROC entropy", "AUROC energy", "AUROC DDU", "ensemble PE / MI")
    rows = []
    for entry in PAPER.values():
        cells = [
            f"{entry[k][0]} ± {entry[k][1]}" for k in ("accuracy", "ece", "softmax_entropy", "energy", "ddu")
        ]
        rows.append([entry["label"], *cells, f"{entry['ensemble'][0]} / {entry['ensemble'][1]}"])
    return markdown_table(headers, rows)


def _result(out: Path, model: str, kind: str, ood: str = "imagenet_o") -> dict:
    path = out / f"res_{model}_sn_3.0_mod_{kind}_imagenet_{ood}.json"
    if not path.is_file():
        matches = sorted(out.glob(f"res_*{kind}_imagenet_{ood}.json"))
        if not matches:
            raise UserError(f"evaluate.py wrote no {kind} result into '{out}'; see its messages above")
        path = matches[0]
    return json.loads(path.read_text())


def run_smoke(args: argparse.Namespace) -> dict:
    """Train the 1/16-width ResNet-50 with SN and mod for one epoch on the folder, then evaluate it."""
    root = Path(args.dataset_root)
    work = Path(args.work_dir or "runs/experiments/imagenet_smoke")
    out = Path(args.output_dir)
    model, seed = "imagenet_resnet50", 1
    flags = [
        "--model",
        model,
        "--base-width",
        "4",
        "-sn",
        "-mod",
        "--coeff",
        "3.0",
        "--image-size",
        SMOKE_SIZE,
    ]
    started = time.perf_counter()
    common.run_script(
        train,
        [
            *("--seed", seed, "--dataset", "imagenet", "--dataset-root", root, *flags),
            *("-e", 1, "-b", 64, "-tb", 64, "--lr", 0.025, "--decay", 1e-4),
            *("--first-milestone", 30, "--second-milestone", 60, "--workers", 0, "--save-interval", 1),
            *("--save-path", work / "Run1", "--no-gpu", "--overwrite"),
        ],
    )
    trained = time.perf_counter() - started
    # Two OoD sets in one evaluation: ImageNet-O, and the same files read as a plain image folder.
    ood_sets = f"imagenet_o,folder:{root / imagenet.IMAGENET_O_DIR}"
    results, copies = {}, {}
    for kind in ("softmax", "gmm"):
        common.run_script(
            evaluate,
            [
                *("--seed", seed, "--dataset", "imagenet", "--ood_dataset", ood_sets, *flags),
                *("--dataset-root", root, "--load-path", work, "--runs", 1, "--epoch", 1, "-b", 64),
                *("--model-type", kind, "--output-dir", out, "--no-gpu", "--overwrite"),
                *(["--gmm-samples-per-class", 2] if kind == "gmm" else []),
            ],
        )
        results[kind] = _result(out, model, kind)
        copies[kind] = _result(out, model, kind, ood="folder-imagenet-o")
    softmax, gmm = results["softmax"]["mean"], results["gmm"]["mean"]
    ours = {
        "accuracy": 100 * softmax["accuracy"],
        "ece": 100 * softmax["ece"],
        "softmax_entropy": 100 * softmax["m2_auroc"],
        "energy": 100 * softmax["m1_auroc"],
        "ddu": 100 * gmm["m1_auroc"],
    }
    record = {
        "scale": "smoke",
        "network": f"imagenet_resnet50 --base-width 4 -sn -mod, {SMOKE_SIZE}x{SMOKE_SIZE} crops, 1 epoch",
        "train_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "ours": ours,
        "ood_sets": ood_sets.split(","),
        "ddu_on_the_folder_copy": 100 * copies["gmm"]["mean"]["m1_auroc"],
        "paper": PAPER[model],
    }
    atomic_write_json(out / f"{NAME}_smoke.json", record)
    rows = [[key, f"{ours[key]:.2f}", f"{PAPER[model][key][0]} ± {PAPER[model][key][1]}"] for key in ours]
    print(markdown_table(("ResNet-50", "smoke run (1/16 width, 1 epoch)", "paper"), rows))
    return record


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.imagenet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale", choices=("smoke", "gpu"), default="gpu", help="smoke: a CPU test; gpu: the table"
    )
    parser.add_argument("--dataset-root", default="./", help="folder holding imagenet/ and imagenet-o/")
    parser.add_argument("--work-dir", default=None, help="checkpoints (default runs/imagenet or the smoke's)")
    parser.add_argument("--output-dir", default="results/repro", help="where the result JSON files go")
    parser.add_argument(
        "--make-tiny", action="store_true", help="smoke: first write a synthetic folder there"
    )
    parser.add_argument("--run", action="store_true", help="gpu: run the commands (default: print them)")
    parser.add_argument("--nproc", type=int, default=8, help="gpu: GPUs of the node (torchrun processes)")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=250.0,
        help="gpu: sustained bf16 TFLOP/s per GPU for the expected time (about 25%% of an H100/H200's dense peak)",
    )
    parser.add_argument(
        "--decode-per-s",
        type=float,
        default=2500.0,
        help="gpu: JPEG decoding rate per GPU in images/s (nvJPEG batches; an assumption until row 7 of "
        "benchmarks/GPU_EXPERIMENTS.md measures it)",
    )
    return parser


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    if args.nproc < 1 or args.gpu_tflops <= 0 or args.decode_per_s <= 0:
        raise UserError("--nproc, --gpu-tflops and --decode-per-s must be positive.")
    if args.scale == "smoke":
        if args.make_tiny:
            classes = [f"n{index:08d}" for index in range(imagenet.IMAGENET_CLASSES)]
            imagenet.write_synthetic(args.dataset_root, classes, train_per_class=5, val_per_class=1, ood=20)
        return run_smoke(args)
    plan = gpu_plan(args)
    print("The paper's table (ImageNet vs ImageNet-O):\n" + paper_table() + "\n")
    for model, steps in plan.items():
        print(f"# {PAPER[model]['label']}: expected {steps['expected']}")
        for command in (steps["train"], steps["train_ensemble"], *steps["evaluate"]):
            print(shlex.join(command))
            if args.run:
                done = subprocess.run([sys.executable if c == "python" else c for c in command])
                if done.returncode != 0:
                    raise UserError(
                        f"'{shlex.join(command)}' failed (exit {done.returncode}); fix it and rerun"
                    )
        print()
    total = sum(steps["expected"]["with_ensemble_h"] for steps in plan.values())
    print(f"Expected total: {total:.0f} h on {args.nproc} GPUs ({math.ceil(total / 24)} days)")
    return plan


if __name__ == "__main__":
    main(get_args_parser().parse_args())
