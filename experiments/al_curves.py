"""Active learning on MNIST: DDU against softmax entropy and random acquisition (arXiv 2102.11582, Sec. 6.2).

Runs active_learning.py once per acquisition type (`gmm` = DDU's feature density, `softmax` = softmax
entropy, `random` = a uniformly random batch), each over several runs, and plots MNIST test accuracy against
the number of labelled samples (mean and standard error over runs). Every acquisition type uses the same
network, so only the acquisition function differs. At the `gpu` scale it first times a two-step run (one
acquisition) of every type, including the 5-member deep ensemble, projects the time of the paper's
experiment (5 runs of 57 steps, 20 to 300 labels), and then sizes the curves to the time left.

    python -m experiments.al_curves --scale cpu --dataset-root DATA     # about 30 min on 2 CPU cores
    python -m experiments.al_curves --scale gpu --dataset-root DATA     # timings + a short run, H200
    python -m experiments.al_curves --scale smoke --dataset-root DATA   # seconds: a pipeline test

DATA must hold MNIST. Writes `active_learning_SCALE.json` and `active_learning_SCALE.png` into --output-dir
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import active_learning
from engine import al_run
from engine.result_tables import curve_standard_errors, markdown_table
from experiments import common
from experiments.common import ModelSpec
from tools import plots
from utils.errors import exit_on_user_error

NAME = "active_learning"
LABELS = {
    "gmm": "DDU (feature density)",
    "softmax": "softmax entropy",
    "random": "random",
    "ensemble": "deep ensemble (PE)",
}
# The paper's experiment (the original script's defaults): 20 initial labels, +5 per step up to 300, 5 runs.
PAPER_INITIAL, PAPER_MAX, PAPER_BATCH, PAPER_RUNS = 20, 300, 5, 5
PAPER_STEPS = (PAPER_MAX - PAPER_INITIAL) // PAPER_BATCH + 1


@dataclass(frozen=True)
class Scale:
    """Everything that differs between scales (and from the paper's defaults of active_learning.py)."""

    model: ModelSpec
    al_types: tuple[str, ...]
    runs: int
    max_samples: int
    epochs: int = 20
    samples_per_epoch: int = 5056
    max_pool: int | None = None
    initial: int = PAPER_INITIAL
    acquisition: int = PAPER_BATCH
    num_ensemble: int = 5
    timing: tuple[str, ...] = ()  # acquisition types whose two-step run is timed first (gpu)
    budget_s: int = 0  # > 0: the curves are cut to the steps that fit in what is left of this
    subset: tuple[tuple[str, tuple[int, int]], ...] = ()  # smoke: (data set, (train, test)) copies
    seed: int = 1
    companion: "Scale | None" = None  # a second network's curves, run after these on the same data


SCALES = {
    "smoke": Scale(
        model=ModelSpec("LeNet", "lenet"),
        al_types=("gmm", "softmax", "random"),
        runs=2,
        max_samples=30,
        epochs=1,
        samples_per_epoch=64,
        max_pool=300,
        num_ensemble=2,
        timing=("random", "softmax", "gmm", "ensemble"),
        subset=(("mnist", (600, 200)),),
    ),
    # 20 to 100 labels (17 steps), 3 runs, a 10,000-image pool; sized by measurement on this VM (one
    # thread, beside the CIFAR-10 experiment): ResNet-18 at 1/8 width with SN and mod, 10 epochs of 1,024
    # samples, ~14 s a step (35% test accuracy at 20 labels; 20 epochs of 2,048 samples gave the same 35%
    # at 3.5x the time). LeNet (no SN, as in the original) reaches 59% at 20 labels in ~1.5 s a step, so
    # its curves, with the 5-ensemble, come after. Fixed before the measuring run.
    "cpu": Scale(
        model=ModelSpec("ResNet-18+SN+mod", "resnet18", sn=True, mod=True, arch=(("base_width", 8),)),
        al_types=("gmm", "softmax", "random"),
        runs=3,
        max_samples=100,
        epochs=10,
        samples_per_epoch=1024,
        max_pool=10000,
        companion=Scale(
            model=ModelSpec("LeNet", "lenet"),
            al_types=("gmm", "softmax", "random", "ensemble"),
            runs=3,
            max_samples=100,
            epochs=10,
            samples_per_epoch=2048,
            max_pool=10000,
        ),
    ),
    # The paper's per-step recipe at full width: timings first, then as many steps as fit (up to 300 labels).
    "gpu": Scale(
        model=ModelSpec("ResNet-18+SN+mod", "resnet18", sn=True, mod=True),
        al_types=("gmm", "softmax", "random"),
        runs=2,
        max_samples=PAPER_MAX,
        timing=("random", "softmax", "gmm", "ensemble"),
        budget_s=420,
    ),
}

PAPER = {
    "model": "ResNet-18 with SN (coeff 3) and mod, full width",
    "schedule": f"{PAPER_INITIAL} class-balanced initial labels, +{PAPER_BATCH} per step up to {PAPER_MAX} "
    f"({PAPER_STEPS} steps), {PAPER_RUNS} runs",
    "per step": "a fresh network trained 20 epochs with Adam on the labelled set resampled to 5,056 "
    "samples per epoch, best validation epoch kept; acquisition scored over the whole MNIST training pool "
    "(less 10%)",
    "acquisition": "DDU (feature density), softmax entropy, 5-ensemble predictive entropy / MI; "
    "no random baseline",
}


def differences(preset: Scale) -> list[str]:
    size = ", ".join(f"{k}={v}" for k, v in preset.model.arch) or "full width"
    steps = (preset.max_samples - preset.initial) // preset.acquisition + 1
    lines = [
        f"network: {preset.model.label} ({size}), the same for every acquisition type",
        f"{preset.runs} runs of up to {steps} steps ({preset.initial} to {preset.max_samples} labels)"
        + (" cut to the time left after the timings" if preset.budget_s else ""),
        "random acquisition added as a baseline (the original lacks it)",
    ]
    if (preset.epochs, preset.samples_per_epoch) != (20, 5056):
        lines.append(
            f"per step: {preset.epochs} epochs of {preset.samples_per_epoch} samples instead of 20 of 5,056"
        )
    if preset.max_pool:
        lines.append(f"pool: a random {preset.max_pool:,} of MNIST's training images instead of all")
    if preset.subset:
        lines.append(f"data: the first images only, {dict(preset.subset)} (train, test)")
    return lines


def steps_that_fit(seconds_left: float, seconds_per_step: float, curves: int, preset: Scale) -> int:
    """How many steps each of `curves` curves (types x runs) can take in `seconds_left`: at most the
    preset's, at least 0. Each step trains, tests and acquires once."""
    wanted = (preset.max_samples - preset.initial) // preset.acquisition + 1
    if seconds_per_step <= 0:
        return wanted
    return max(0, min(wanted, math.floor(seconds_left / (seconds_per_step * curves))))


def al_argv(
    preset: Scale,
    al_type: str,
    *,
    runs: int,
    max_samples: int,
    root: Path,
    out: Path,
    no_gpu: bool,
    epochs: int | None = None,
    samples_per_epoch: int | None = None,
    start: Sequence[str] = ("--overwrite",),
) -> list:
    """active_learning.py's flags; `start` says what to do with files of an earlier run in `out`: the
    timing runs start over (they are measurements), the curves continue (`common.continue_flags`)."""
    return [
        *("--seed", preset.seed, *preset.model.flags(), "--al-type", al_type),
        *(
            "--epochs",
            epochs or preset.epochs,
            "--samples-per-epoch",
            samples_per_epoch or preset.samples_per_epoch,
        ),
        *("--num-initial-samples", preset.initial, "--max-training-samples", max_samples),
        *(
            "--acquisition-batch-size",
            preset.acquisition,
            "--runs",
            runs,
            "--num-ensemble",
            preset.num_ensemble,
        ),
        *(("--max-pool", preset.max_pool) if preset.max_pool else ()),
        *("--dataset-root", root, "--output-dir", out),
        *(["--no-gpu"] if no_gpu else []),
        *start,
    ]


def curves_file(argv: list) -> Path:
    """The `test_accs_*.json` (run -> test accuracy (%) per step) active_learning.py writes for `argv`."""
    args = active_learning.get_args_parser().parse_args([str(a) for a in argv])
    return Path(args.output_dir) / al_run.output_names(args)["test_accs"]


def summarise_curves(runs: dict[str, list[float]], preset: Scale) -> dict:
    steps = min(len(v) for v in runs.values())
    values = np.array([v[:steps] for v in runs.values()], dtype=np.float64)
    sem = curve_standard_errors(values)
    return {
        "labels": [preset.initial + i * preset.acquisition for i in range(steps)],
        "mean": values.mean(0).round(3).tolist(),
        "sem": sem.round(3).tolist(),
        "runs": runs,
    }


def time_steps(preset: Scale, root: Path, work: Path, no_gpu: bool, started: float) -> dict:
    """A warm-up, then a two-step run (train, test, acquire, train, test) of every timed type; the ensemble
    only if its estimate fits in half of what is left of the budget."""
    timings: dict = {}
    warm_up = al_argv(
        preset,
        "random",
        runs=1,
        max_samples=preset.initial,
        root=root,
        out=work / "warm_up",
        no_gpu=no_gpu,
        epochs=1,
        samples_per_epoch=min(256, preset.samples_per_epoch),
    )
    _, seconds = common.timed(lambda: common.run_script(active_learning, warm_up))
    timings["warm_up_s"] = round(seconds, 2)
    per_step: dict[str, float] = {}
    for al_type in preset.timing:
        if preset.budget_s:
            left = preset.budget_s - (time.perf_counter() - started)
            estimate = (
                2
                * max(per_step.values(), default=0.0)
                * (preset.num_ensemble if al_type == "ensemble" else 1)
            )
            if estimate > left / 2:
                timings[al_type] = {
                    "skipped": f"estimated {estimate:.0f} s, more than half of the {left:.0f} s left"
                }
                continue
        argv = al_argv(
            preset,
            al_type,
            runs=1,
            max_samples=preset.initial + preset.acquisition,
            root=root,
            out=work / "timing" / al_type,
            no_gpu=no_gpu,
        )
        _, seconds = common.timed(lambda: common.run_script(active_learning, argv))
        per_step[al_type] = seconds / 2
        timings[al_type] = {
            "two_step_run_s": round(seconds, 2),
            "per_step_s": round(seconds / 2, 2),
            "projected_paper_hours": round(seconds / 2 * PAPER_STEPS * PAPER_RUNS / 3600, 2),
        }
    return timings


def draw_figure(files: dict[str, Path], preset: Scale, path: Path, title: str) -> None:
    """Through tools.plots' command line: accuracy per number of labels, mean and s.e. band over runs."""

    curves = []
    for al_type, json_path in files.items():
        curves += ["--curve", f"{LABELS[al_type]}={json_path}"]
    argv = [
        "al",
        *curves,
        "--initial",
        preset.initial,
        "--batch",
        preset.acquisition,
        "--title",
        title,
        "--out",
        path,
    ]
    common.run_script(plots, argv)


def table(results: dict) -> str:
    types = list(results)
    labels = results[types[0]]["labels"] if types else []
    rows = []
    for i, n in enumerate(labels):
        row = [n]
        for t in types:
            r = results[t]
            row.append(f"{r['mean'][i]:.2f} ± {r['sem'][i]:.2f}" if i < len(r["mean"]) else "-")
        rows.append(row)
    return markdown_table(["labelled samples", *(f"{LABELS[t]} acc. (%)" for t in types)], rows)


def timing_table(timings: dict) -> str:
    rows = [
        [LABELS[t], f"{v['per_step_s']:.1f}", f"{v['projected_paper_hours']:.2f}", ""]
        if "per_step_s" in v
        else [LABELS[t], "-", "-", v["skipped"]]
        for t, v in timings.items()
        if isinstance(v, dict)
    ]
    return markdown_table(
        [
            "acquisition",
            "s per step",
            f"projected h for the paper's {PAPER_RUNS} runs x {PAPER_STEPS} steps",
            "note",
        ],
        rows,
    )


def get_args_parser() -> argparse.ArgumentParser:
    return common.base_parser(NAME, __doc__)


@exit_on_user_error
@common.one_writer(NAME)
def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    preset = SCALES[args.scale]
    record, paths, device, root = common.start_record(args, NAME, preset, PAPER, differences(preset))

    max_samples = preset.max_samples
    earlier = common.earlier_record(paths, args)
    if preset.timing:
        if earlier is not None and "timing" in earlier and "timing_table" in earlier:
            # A rerun continues the curves found in the work folder, cut as the earlier run cut them.
            print("timings: those of the earlier run in the work folder (--overwrite measures again)")
            record["timing"], record["timing_table"] = earlier["timing"], earlier["timing_table"]
        else:
            record["timing"] = time_steps(preset, root, paths.work, args.no_gpu, started)
            record["timing_table"] = timing_table(record["timing"])
        common.write_stage(paths, record)
        print(record["timing_table"], flush=True)
        if preset.budget_s and earlier is not None and "curves_cut_to" in earlier and "timing" in earlier:
            record["curves_cut_to"] = earlier["curves_cut_to"]
            max_samples = (
                record["curves_cut_to"]["max_samples"] if record["curves_cut_to"]["steps"] >= 2 else 0
            )
        elif preset.budget_s:
            measured = [
                record["timing"][t]["per_step_s"]
                for t in preset.al_types
                if "per_step_s" in record["timing"].get(t, {})
            ]
            left = preset.budget_s - (time.perf_counter() - started)
            steps = steps_that_fit(
                left, max(measured, default=0.0), len(preset.al_types) * preset.runs, preset
            )
            max_samples = preset.initial + max(0, steps - 1) * preset.acquisition
            record["curves_cut_to"] = {
                "steps": steps,
                "max_samples": max_samples,
                "seconds_left": round(left, 1),
            }
            if steps < 2:
                print(f"no time left for the curves ({left:.0f} s)", flush=True)
                max_samples = 0

    if max_samples:
        run_curves(preset, record, record, max_samples, root, paths.work / "curves", paths, args, started)
    if preset.companion is not None:
        companion = record["companion"] = {
            "network": preset.companion.model.label,
            "preset": common.preset_record(preset.companion),
            "differences": differences(preset.companion),
            "results": {},
        }
        figure = paths.figure.with_name(f"{paths.figure.stem}_{preset.companion.model.model}.png")
        run_curves(
            preset.companion, record, companion, preset.companion.max_samples, root,
            paths.work / f"curves_{preset.companion.model.model}", paths, args, started, figure,
        )  # fmt: skip
    record["environment"] = common.finish_environment(record["environment"], started)
    common.write_final(paths, record)
    print()
    print(record.get("table", "no curves"))
    if preset.companion is not None:
        print(f"\n{preset.companion.model.label}:\n{record['companion']['table']}")
    print(f"\nwrote {paths.json} ({record['environment']['wall_time_s']} s)")
    return record


def run_curves(
    preset: Scale,
    record: dict,
    into: dict,
    max_samples: int,
    root: Path,
    work: Path,
    paths: common.Paths,
    args: argparse.Namespace,
    started: float,
    figure: Path | None = None,
) -> None:
    """Every acquisition type's curves of `preset`'s network into `into["results"]` (a part of `record`,
    which is rewritten after each type), then its figure and table."""
    files = {}
    for al_type in preset.al_types:
        argv = al_argv(
            preset,
            al_type,
            runs=preset.runs,
            max_samples=max_samples,
            root=root,
            out=work / al_type,
            no_gpu=args.no_gpu,
            start=common.continue_flags(args),
        )
        files[al_type] = curves_file(argv)
        _, seconds = common.timed(lambda: common.run_script(active_learning, argv, work))
        into["results"][al_type] = {
            **summarise_curves(json.loads(files[al_type].read_text()), preset),
            "seconds": round(seconds, 1),
        }
        record["environment"] = common.finish_environment(record["environment"], started)
        common.write_stage(paths, record)
    figure = figure or paths.figure
    title = f"active learning on MNIST, {preset.model.label}, scale '{args.scale}'"
    draw_figure(files, preset, figure, title)
    into["table"] = table(into["results"])
    into["figure"] = paths.relative(figure)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
