"""CIFAR-10 vs Tiny-ImageNet: DDU against softmax and energy (Mukhoti et al., arXiv 2102.11582, Sec. 6.1).

Trains a residual network with SN and mod, and the same network without SN and mod, on CIFAR-10 with
train.py (the paper's recipe: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, crop and flip, the
learning rate cut tenfold at 150/350 and 250/350 of the epochs), then evaluates each with evaluate.py
against Tiny-ImageNet (its 10,000 test images at 32x32):

- `--model-type softmax`: `m2_auroc` is the AUROC of softmax entropy, `m1_auroc` that of the log-sum-exp of
  the logits (the energy score, negated free energy); accuracy, ECE, and `t_ece` after temperature scaling
  (temperature fitted on the 10% validation split);
- `--model-type gmm`: `m1_auroc` is the AUROC of DDU's feature density (log-sum-exp of the class-conditional
  Gaussian log-densities); its `m2_auroc` (entropy over those densities) is not the softmax entropy.

    python -m experiments.cifar10 --scale cpu --dataset-root DATA     # about 30 min on 2 CPU cores
    python -m experiments.cifar10 --scale gpu --dataset-root DATA     # WRN-28-10, one ~8 min H200 run
    python -m experiments.cifar10 --scale smoke --dataset-root DATA   # seconds: a test of the pipeline

DATA must hold `cifar-10-batches-py/` and `tiny-imagenet-200/test/images/`. Writes `cifar10_SCALE.json`
and `cifar10_SCALE.png` (the AUROCs and calibration as bars) into --output-dir and prints the table. A rerun
continues the trainings found in --work-dir.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import evaluate
from experiments import common
from experiments.common import ModelSpec
from experiments.subsets import write_subset_root
from utils.errors import exit_on_user_error

NAME = "cifar10"
DATASET, OOD = "cifar10", "tiny_imagenet"


@dataclass(frozen=True)
class Scale:
    """Everything that differs between scales; both networks get the same schedule."""

    models: tuple[ModelSpec, ...]
    epochs: int
    steps_per_epoch: int = 0  # 0: whole epochs of the 45,000 training images
    batch_size: int = 128
    learning_rate: float = 0.1
    coeff: float = 3.0
    seed: int = 1
    subset: tuple[tuple[str, tuple[int, ...]], ...] = ()  # smoke: (data set, sizes) copies


def _pair(model: str, sn_label: str, plain_label: str, **arch: int) -> tuple[ModelSpec, ModelSpec]:
    sizes = tuple(arch.items())
    return (
        ModelSpec(sn_label, model, sn=True, mod=True, arch=sizes),
        ModelSpec(plain_label, model, arch=sizes),
    )


SCALES = {
    "smoke": Scale(
        models=_pair("resnet18", "ResNet-18+SN+mod", "ResNet-18", base_width=4),
        epochs=1,
        steps_per_epoch=3,
        batch_size=32,
        subset=(("cifar10", (1000, 300)), ("tiny_imagenet", (300,))),
    ),
    # ResNet-18 at 1/8 width (0.17M parameters, 64 features), 4 epochs: what 2 busy CPU cores allow.
    "cpu": Scale(models=_pair("resnet18", "ResNet-18+SN+mod", "ResNet-18", base_width=8), epochs=4),
    # The paper's network at full width; 15 epochs of each fit one ~8 min H200 command with evaluation.
    "gpu": Scale(models=_pair("wide_resnet", "WRN-28-10+SN+mod", "WRN-28-10"), epochs=15),
}

PAPER = {
    "models": "WRN-28-10 with SN (coeff 3) and mod, and WRN-28-10 without; 5 runs each",
    "training": "SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, crop+flip, 350 epochs, "
    "milestones 150/250",
    "evaluation": "softmax entropy and energy of the softmax network; DDU's feature density (GDA on the "
    "training features) of the SN+mod network; OoD sets SVHN, CIFAR-100, Tiny-ImageNet",
}


def differences(preset: Scale) -> list[str]:
    first, second = common.scaled_milestones(preset.epochs)
    amount = f"{preset.epochs} epochs" + (
        f" of {preset.steps_per_epoch} batches of {preset.batch_size}" if preset.steps_per_epoch else ""
    )
    size = ", ".join(f"{k}={v}" for k, v in preset.models[0].arch) or "full width"
    lines = [
        f"networks: {' and '.join(m.label for m in preset.models)} ({size})",
        f"{amount} instead of 350; milestones {first}/{second} instead of 150/250",
        "one run (seed 1) per network instead of 5",
        "CIFAR-10 is the offline copy decoded from JPEG (quality ~75), not the official pixels",
    ]
    if preset.subset:
        lines.append(f"data: the first images only, {dict(preset.subset)}")
    return lines


def train_network(spec: ModelSpec, preset: Scale, root: Path, work: Path, no_gpu: bool) -> dict:
    return common.train_with_script(
        spec, dataset=DATASET, root=root, work=work, seed=preset.seed, coeff=preset.coeff, epochs=preset.epochs,
        batch_size=preset.batch_size, learning_rate=preset.learning_rate,
        steps_per_epoch=preset.steps_per_epoch, no_gpu=no_gpu,
    )  # fmt: skip


def evaluate_network(
    spec: ModelSpec, preset: Scale, root: Path, work: Path, model_type: str, no_gpu: bool
) -> dict:
    """evaluate.py for one run; returns its result's `mean` (one run: the values themselves)."""
    argv = [
        *("--seed", preset.seed, "--dataset", DATASET, "--ood_dataset", OOD, "--dataset-root", root),
        *("--load-path", work, "--runs", 1, "--epoch", preset.epochs, "--model-type", model_type),
        *("--output-dir", work / "eval"),
        *spec.flags(preset.coeff),
        *(["--no-gpu"] if no_gpu else []),
    ]
    return common.run_script(evaluate, argv)["mean"]


def summarise(softmax: dict, gmm: dict) -> dict:
    """The table's numbers from evaluate.py's two result JSONs (keys as documented in utils/evaluation.py)."""
    return {
        "accuracy": softmax["accuracy"],
        "ece": softmax["ece"],
        "ece_after_temperature_scaling": softmax["t_ece"],
        "temperature": softmax["temperature"],
        "softmax_entropy_auroc": softmax["m2_auroc"],
        "energy_auroc": softmax["m1_auroc"],
        "ddu_density_auroc": gmm["m1_auroc"],
        "softmax_entropy_auroc_after_ts": softmax["t_m2_auroc"],
        "energy_auroc_after_ts": softmax["t_m1_auroc"],
        "msp_auroc": softmax.get("msp_auroc"),
        "gmm_jitter": gmm.get("gmm_jitter"),
    }


TABLE_HEADERS = (
    "model",
    "accuracy",
    "ECE",
    "ECE after TS",
    "AUROC softmax entropy",
    "AUROC energy",
    "AUROC DDU density",
)


def table(results: dict) -> str:
    keys = (
        "accuracy",
        "ece",
        "ece_after_temperature_scaling",
        "softmax_entropy_auroc",
        "energy_auroc",
        "ddu_density_auroc",
    )
    rows = [[label, *(r["summary"][k] for k in keys)] for label, r in results.items() if "summary" in r]
    return common.markdown_table(TABLE_HEADERS, rows)


def draw_figure(results: dict, path: Path, title: str) -> None:
    """Two panels: OoD AUROC per score, and accuracy / ECE before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {label: r["summary"] for label, r in results.items() if "summary" in r}
    auroc = (
        ("softmax entropy", "softmax_entropy_auroc"),
        ("energy", "energy_auroc"),
        ("DDU density", "ddu_density_auroc"),
    )
    calibration = (
        ("accuracy", "accuracy"),
        ("ECE x10", "ece"),
        ("ECE x10 after TS", "ece_after_temperature_scaling"),
    )
    panels = (("AUROC vs Tiny-ImageNet", auroc, (0.4, 1.0)), ("calibration", calibration, (0.0, 1.0)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(1, len(done))
    for ax, (panel_title, bars, limits) in zip(axes, panels):
        x = np.arange(len(bars))
        for i, (label, summary) in enumerate(done.items()):
            values = [summary[key] * (10 if name.startswith("ECE") else 1) for name, key in bars]
            ax.bar(x + (i - (len(done) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x, [name for name, _ in bars])
        ax.set_ylim(*limits)
        ax.set_title(panel_title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    return common.base_parser(NAME, __doc__)


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    preset = SCALES[args.scale]
    record, paths, device = common.start_record(args, NAME, preset, PAPER, differences(preset))
    record["milestones"] = common.scaled_milestones(preset.epochs)
    root = Path(args.dataset_root)
    if preset.subset:
        root = write_subset_root(root, paths.work / "data", dict(preset.subset))
    for spec in preset.models:
        entry = record["results"][spec.label] = {
            "training": train_network(spec, preset, root, paths.work, args.no_gpu)
        }
        common.write_record(paths.json, record)
        evaluation, seconds = common.timed(
            lambda: {
                t: evaluate_network(spec, preset, root, paths.work, t, args.no_gpu)
                for t in ("softmax", "gmm")
            }
        )
        entry.update(
            evaluation=evaluation, summary=summarise(**evaluation), evaluate_seconds=round(seconds, 1)
        )
        record["environment"] = common.finish_environment(record["environment"], started)
        common.write_record(paths.json, record)
        draw_figure(record["results"], paths.figure, f"CIFAR-10 vs Tiny-ImageNet, scale '{args.scale}'")
    return common.finish_record(record, paths, table(record["results"]))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
