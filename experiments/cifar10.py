"""CIFAR-10 against near and far OoD sets: DDU against softmax and energy (arXiv 2102.11582, Sec. 6.1).

Trains a residual network with SN and mod, and the same network without SN and mod, on CIFAR-10 with
train.py (the paper's recipe: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, crop and flip, the
learning rate cut tenfold at 150/350 and 250/350 of the epochs), then evaluates each with one evaluate.py
command per method against every OoD set at once (training features, GMM and temperature computed once):
Tiny-ImageNet (near OoD, its 10,000 test images at 32x32), MNIST and Fashion-MNIST (far OoD, as OpenOOD uses
MNIST for CIFAR-10: brought to 3x32x32 with CIFAR-10's normalisation), and SVHN (far OoD, the paper's) when
`test_32x32.mat` is in DATA:

- `--model-type softmax`: `m2_auroc` is the AUROC of softmax entropy, `m1_auroc` that of the log-sum-exp of
  the logits (the energy score, negated free energy); accuracy, ECE, and `t_ece` after temperature scaling
  (temperature fitted on the 10% validation split);
- `--model-type gmm`: `m1_auroc` is the AUROC of DDU's feature density (log-sum-exp of the class-conditional
  Gaussian log-densities); its `m2_auroc` (entropy over those densities) is not the softmax entropy.

    python -m experiments.cifar10 --scale cpu --dataset-root DATA     # about 30 min on 2 CPU cores
    python -m experiments.cifar10 --scale gpu --dataset-root DATA     # WRN-28-10, one ~8 min H200 run
    python -m experiments.cifar10 --scale smoke --dataset-root DATA   # seconds: a test of the pipeline

DATA must hold `cifar-10-batches-py/`, `tiny-imagenet-200/test/images/`, `MNIST/` and `FashionMNIST/`.
Writes `cifar10_SCALE.json` and `cifar10_SCALE.png` (the AUROCs per OoD set and calibration as bars) into
--output-dir and prints the table, one row per network and OoD set. A rerun continues the trainings found
in --work-dir.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import data
import evaluate
from engine.result_tables import markdown_table
from experiments import common
from experiments.common import ModelSpec
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_savefig

NAME = "cifar10"
DATASET = "cifar10"
# Near OoD first, then far OoD; SVHN joins when its test file is present (it cannot be downloaded here).
OOD_SETS = ("tiny_imagenet", "mnist", "fashion_mnist")
OOD_NAMES = {
    "tiny_imagenet": "Tiny-ImageNet",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "svhn": "SVHN",
}


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
        subset=(
            ("cifar10", (1000, 300)),
            ("tiny_imagenet", (300,)),
            ("mnist", (0, 200)),
            ("fashion_mnist", (0, 200)),
        ),
    ),
    # ResNet-18 at 1/4 width (0.70M parameters, 128 features), 20 epochs of the whole training split, sized
    # by measurement (benchmarks/train_throughput.py, one thread, bf16 + channels_last on this VM's AMD EPYC:
    # 478 images/s with SN and mod) to about 65 minutes on one core, beside the active-learning experiment on
    # the other; fixed before the measuring run.
    "cpu": Scale(models=_pair("resnet18", "ResNet-18+SN+mod", "ResNet-18", base_width=16), epochs=20),
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


def train_network(
    spec: ModelSpec, preset: Scale, root: Path, work: Path, no_gpu: bool, overwrite: bool = False
) -> dict:
    return common.train_with_script(
        spec, dataset=DATASET, root=root, work=work, seed=preset.seed, coeff=preset.coeff, epochs=preset.epochs,
        batch_size=preset.batch_size, learning_rate=preset.learning_rate,
        steps_per_epoch=preset.steps_per_epoch, no_gpu=no_gpu, overwrite=overwrite,
    )  # fmt: skip


def ood_sets(root: Path, chosen: str | None = None) -> tuple[str, ...]:
    """`--ood-sets` when given; else `OOD_SETS`, and SVHN where its test file is present in `root`."""
    if chosen:
        names = tuple(data.canonical_name(n.strip()) for n in chosen.split(",") if n.strip())
        unknown = [n for n in names if n not in OOD_NAMES]
        if unknown or not names:
            raise UserError(
                f"--ood-sets takes a comma-separated list of {', '.join(OOD_NAMES)}, not '{chosen}'"
            )
        return names
    return OOD_SETS + (("svhn",) if data.svhn_file(root, "test").is_file() else ())


def evaluate_network(
    spec: ModelSpec,
    preset: Scale,
    root: Path,
    work: Path,
    model_type: str,
    oods: tuple[str, ...],
    no_gpu: bool,
    overwrite: bool = False,
) -> dict[str, dict]:
    """evaluate.py for one run against every OoD set at once (its training features, GMM and temperature
    computed once); returns `{ood: the result's mean}` (one run: the values themselves)."""
    argv = [
        *(
            "--seed",
            preset.seed,
            "--dataset",
            DATASET,
            "--ood_dataset",
            ",".join(oods),
            "--dataset-root",
            root,
        ),
        *("--load-path", work, "--runs", 1, "--epoch", preset.epochs, "--model-type", model_type),
        *("--output-dir", work / "eval"),
        *spec.flags(preset.coeff),
        *(["--no-gpu"] if no_gpu else []),
        *(["--overwrite"] if overwrite else []),
    ]
    results = common.run_script(evaluate, argv, work)
    if len(oods) == 1:  # evaluate.py returns the one result itself
        results = {oods[0]: results}
    return {ood: results[ood]["mean"] for ood in oods}


def summarise(softmax: dict, gmm: dict) -> dict:
    """The table's numbers from evaluate.py's two result JSONs (keys as documented in engine/evaluation.py)."""
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
    "OoD set",
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
    rows = [
        [label, OOD_NAMES[ood], *(summary[k] for k in keys)]
        for label, r in results.items()
        for ood, summary in r.get("summary", {}).items()
    ]
    return markdown_table(TABLE_HEADERS, rows)


SCORES = (
    ("softmax entropy", "softmax_entropy_auroc"),
    ("energy", "energy_auroc"),
    ("DDU density", "ddu_density_auroc"),
)


def draw_figure(results: dict, path: Path, title: str) -> None:
    """One panel of OoD AUROCs per OoD set (every score of every network), and one of accuracy / ECE
    before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {label: r["summary"] for label, r in results.items() if r.get("summary")}
    oods = list(dict.fromkeys(ood for summaries in done.values() for ood in summaries))
    calibration = (
        ("accuracy", "accuracy"),
        ("ECE x10", "ece"),
        ("ECE x10 after TS", "ece_after_temperature_scaling"),
    )
    fig, axes = plt.subplots(1, len(oods) + 1, figsize=(4.2 * (len(oods) + 1), 3.8), squeeze=False)
    axes = axes[0]
    bars = [(f"{label}\n{score}", label, key) for label in done for score, key in SCORES]
    for ax, ood in zip(axes, oods):
        values = [done[label].get(ood, {}).get(key, np.nan) for _, label, key in bars]
        ax.bar(np.arange(len(bars)), values, color=[f"C{i % len(SCORES)}" for i in range(len(bars))])
        ax.set_xticks(
            np.arange(len(bars)), [name for name, _, _ in bars], rotation=60, fontsize=7, ha="right"
        )
        ax.set_ylim(0.4, 1.0)
        ax.set_title(f"AUROC vs {OOD_NAMES[ood]}")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[-1]
    width = 0.8 / max(1, len(done))
    x = np.arange(len(calibration))
    for i, (label, summaries) in enumerate(done.items()):
        summary = next(iter(summaries.values()))  # accuracy and ECE do not depend on the OoD set
        values = [summary[key] * (10 if name.startswith("ECE") else 1) for name, key in calibration]
        ax.bar(x + (i - (len(done) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [name for name, _ in calibration])
    ax.set_ylim(0.0, 1.0)
    ax.set_title("calibration")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)  # a failed write keeps the previous figure
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(NAME, __doc__)
    parser.add_argument(
        "--ood-sets",
        default=None,
        help=f"comma-separated OoD sets (default: {','.join(OOD_SETS)}, and svhn when its files are present)",
    )
    return parser


@exit_on_user_error
@common.one_writer(NAME)
def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    preset = SCALES[args.scale]
    record, paths, device, root = common.start_record(args, NAME, preset, PAPER, differences(preset))
    record["milestones"] = common.scaled_milestones(preset.epochs)
    oods = ood_sets(Path(args.dataset_root), args.ood_sets)
    record["ood_sets"] = list(oods)
    for spec in preset.models:
        entry = record["results"][spec.label] = {
            "training": train_network(spec, preset, root, paths.work, args.no_gpu, args.overwrite),
            "evaluation": {},
            "summary": {},
        }
        common.write_stage(paths, record)
        evaluation, seconds = common.timed(
            lambda: {
                t: evaluate_network(spec, preset, root, paths.work, t, oods, args.no_gpu, args.overwrite)
                for t in ("softmax", "gmm")
            }
        )
        for ood in oods:
            entry["evaluation"][ood] = {t: evaluation[t][ood] for t in ("softmax", "gmm")}
            entry["summary"][ood] = summarise(**entry["evaluation"][ood])
        entry["evaluate_seconds"] = round(seconds, 1)  # both model types against every OoD set
        record["environment"] = common.finish_environment(record["environment"], started)
        common.write_stage(paths, record)
        draw_figure(
            record["results"],
            paths.figure,
            f"CIFAR-10 against near and far OoD sets, scale '{args.scale}'",
        )
    return common.finish_record(record, paths, table(record["results"]))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
