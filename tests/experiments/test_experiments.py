"""experiments/: the reproduction experiments and their GPU scripts.

Each experiment runs end to end at its `smoke` scale through its GPU script's CPU setting
(`experiments/gpu/run.sh` with SCALE=smoke), on small copies of the real data sets: the same script, data
layout, experiment code, result JSON and figure as the GPU run, in seconds of compute. The rest checks the
pieces: the Dirty-MNIST scores against evaluate.py's, the subset copies against the loaders, the presets,
milestones and the time budget of the GPU active-learning run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from helpers import REPO

import data
import evaluate
import train
from engine.evaluation import dirty_scores
from engine.result_tables import markdown_table
from experiments import al_curves as al_experiment
from experiments import cifar10 as cifar_experiment
from experiments import common
from experiments import dirty_mnist as dirty_experiment
from experiments.subsets import write_subset_root

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")

EXPERIMENTS = {"dirty_mnist": dirty_experiment, "cifar10": cifar_experiment, "active_learning": al_experiment}


# ----------------------------------------------------------------------------------------------------
# Presets, milestones, budget


def test_milestones_keep_the_papers_fractions_of_the_schedule():
    assert common.scaled_milestones(350) == (150, 250)
    assert common.scaled_milestones(15) == (6, 11)
    assert common.scaled_milestones(4) == (2, 3)
    assert common.scaled_milestones(1) == (1, 2)  # never both at once: the drops stay in order


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_scale_has_a_preset_that_says_how_it_differs_from_the_paper(name):
    module = EXPERIMENTS[name]
    assert set(module.SCALES) == set(common.SCALE_NAMES)
    for preset in module.SCALES.values():
        json.dumps(common.preset_record(preset))  # stored in the result JSON
        assert module.differences(preset)
    assert module.PAPER


def test_gpu_presets_are_full_width_and_smoke_presets_use_data_subsets():
    gpu_models = [t.spec for t in dirty_experiment.SCALES["gpu"].trainings]
    gpu_models += list(cifar_experiment.SCALES["gpu"].models) + [al_experiment.SCALES["gpu"].model]
    assert all(spec.arch == () for spec in gpu_models)
    assert {spec.model for spec in cifar_experiment.SCALES["gpu"].models} == {"wide_resnet"}
    assert all(module.SCALES["smoke"].subset for module in EXPERIMENTS.values())
    assert not any(module.SCALES[s].subset for module in EXPERIMENTS.values() for s in ("cpu", "gpu"))


def test_model_spec_flags_parse_as_train_py_flags():
    spec = common.ModelSpec("x", "resnet18", sn=True, mod=True, arch=(("base_width", 8),))
    args = train.get_args_parser().parse_args(["--seed", "1", *spec.flags(3.0)])
    assert (args.model, args.sn, args.mod, args.coeff, args.base_width) == ("resnet18", True, True, 3.0, 8)
    assert spec.run_name(1) == "resnet18_sn_3.0_mod_1"


def test_active_learning_curves_are_cut_to_the_steps_that_fit():
    preset = al_experiment.SCALES["gpu"]  # 20 to 300 labels by 5: 57 steps wanted
    assert al_experiment.steps_that_fit(600.0, 10.0, curves=6, preset=preset) == 10
    assert al_experiment.steps_that_fit(59.0, 10.0, curves=6, preset=preset) == 0
    assert al_experiment.steps_that_fit(1e6, 10.0, curves=6, preset=preset) == 57
    assert al_experiment.steps_that_fit(-5.0, 10.0, curves=6, preset=preset) == 0


def test_markdown_table():
    text = markdown_table(["a", "b"], [["x", 0.123456], ["y", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 0.1235 |", "| y | - |"]


# ----------------------------------------------------------------------------------------------------
# Subset copies of the real data


def test_subset_root_holds_the_first_images_in_the_official_layouts(real_data_root, tmp_path):
    sizes = {"mnist": (50, 20), "fashion_mnist": (0, 30), "cifar10": (40, 10), "tiny_imagenet": (15,)}
    root = write_subset_root(real_data_root, tmp_path / "subset", sizes)
    for name, counts in sizes.items():
        for split, count in zip(("train", "test") if len(counts) == 2 else ("test",), counts):
            images, labels = data.load_split(name, root, split)
            full_images, full_labels = data.load_split(name, real_data_root, split)
            assert len(labels) == count
            assert torch.equal(images, full_images[:count]) and torch.equal(labels, full_labels[:count])


# ----------------------------------------------------------------------------------------------------
# Dirty-MNIST scores: the same numbers as evaluate.py


@pytest.mark.slow
def test_dirty_scores_equal_evaluate_py_numbers(tmp_path):
    """On the embedded digits set (clean + ambiguous) vs photo patches: one LeNet, scored both ways."""
    runs = tmp_path / "runs"
    common.run_script(
        train,
        [
            "--seed",
            "1",
            "--dataset",
            "digits",
            "--model",
            "lenet",
            "-e",
            "2",
            "-b",
            "64",
            "--no-gpu",
            "--save-path",
            runs / "Run1",
            "--save-interval",
            "2",
        ],
    )
    eval_argv = [
        "--seed",
        "1",
        "--dataset",
        "digits",
        "--ood_dataset",
        "digits_ood",
        "--load-path",
        runs,
        "--model",
        "lenet",
        "--runs",
        "1",
        "--epoch",
        "2",
        "--no-gpu",
        "--output-dir",
        tmp_path,
    ]
    gmm = common.run_script(evaluate, [*eval_argv, "--model-type", "gmm"])["mean"]
    softmax = common.run_script(evaluate, [*eval_argv, "--model-type", "softmax"])["mean"]

    training = dirty_experiment.Training(common.ModelSpec("LeNet", "lenet"), 2)
    preset = dirty_experiment.SCALES["smoke"]
    model = dirty_experiment.load_network(
        training, preset, runs / "Run1" / "lenet_1_2.model", torch.device("cpu")
    )
    result = dirty_scores(model, "digits", "digits_ood", tmp_path, torch.device("cpu"))
    numbers, scores = dirty_experiment.dirty_numbers(result), result.scores
    assert numbers["aleatoric_entropy_auroc"] == pytest.approx(gmm["aleatoric_entropy_auroc"], abs=1e-9)
    assert numbers["epistemic_density_auroc"] == pytest.approx(gmm["m1_auroc"], abs=1e-9)
    assert numbers["epistemic_entropy_auroc"] == pytest.approx(softmax["m2_auroc"], abs=1e-9)
    clean, ambiguous = (len(data.load_split(p, tmp_path, "test")[1]) for p in data.dirty_parts("digits"))
    assert numbers["samples"] == {"clean": clean, "ambiguous": ambiguous, "ood": 1000}
    assert set(scores) == {"clean", "ambiguous", "ood"}
    assert all(np.isfinite(scores[g]["entropy"]).all() for g in scores)


# ----------------------------------------------------------------------------------------------------
# Each experiment end to end, through its GPU script's CPU setting


def run_gpu_script(experiment: str, real_data_root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    env = dict(
        os.environ,
        SCALE="smoke",
        EXPERIMENT_FLAGS="--no-gpu",
        CARRY=str(SHARED / "data"),
        DATA_ROOT=str(real_data_root),
        OUT=str(out),
        WORK=str(tmp_path / "work"),
        PYTHON=sys.executable,
    )
    script = REPO / "experiments" / "gpu" / "run.sh"
    result = subprocess.run(["bash", str(script), experiment], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / f"{experiment}_smoke.log").is_file()
    assert (out / f"{experiment}_smoke.png").stat().st_size > 10_000
    return out


def read_record(out: Path, experiment: str) -> dict:
    record = json.loads((out / f"{experiment}_smoke.json").read_text())
    assert record["experiment"] == experiment and record["scale"] == "smoke"
    assert record["differences"] and record["paper"] and record["preset"]
    assert {"date_utc", "device", "cpu", "torch", "wall_time_s"} <= set(record["environment"])
    assert record["table"].startswith("| ")
    return record


def test_gpu_script_rejects_an_unknown_experiment():
    result = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu" / "run.sh"), "mnist"], capture_output=True
    )
    assert result.returncode == 2 and b"usage" in result.stderr


@pytest.mark.slow
def test_dirty_mnist_gpu_script_cpu_setting(real_data_root, tmp_path):
    out = run_gpu_script("dirty_mnist", real_data_root, tmp_path)
    record = read_record(out, "dirty_mnist")
    assert record["ambiguous_mnist"]["source"] == "generated"
    assert record["ambiguous_mnist"]["manifest"]["train_pairs"] == 200
    assert (out / "amnist_manifest.json").is_file() and (out / "amnist_grid.png").is_file()
    assert list(record["results"]) == [t.spec.label for t in dirty_experiment.SCALES["smoke"].trainings]
    for result in record["results"].values():
        for key in (
            "mnist_test_accuracy",
            "aleatoric_entropy_auroc",
            "epistemic_density_auroc",
            "epistemic_entropy_auroc",
            "ambiguous_density_auroc",
        ):
            assert 0.0 <= result[key] <= 1.0
        assert result["samples"] == {"clean": 300, "ambiguous": 200, "ood": 200}
        assert result["training"]["epochs"] == 1
    # A second run finds the generated files and says so.
    reused = dirty_experiment.ensure_ambiguous_mnist(
        tmp_path / "work" / "dirty_mnist_smoke" / "data", (), torch.device("cpu")
    )
    assert reused["source"] == "reused" and reused["manifest"]["train_pairs"] == 200


@pytest.mark.slow
def test_cifar10_gpu_script_cpu_setting(real_data_root, tmp_path):
    out = run_gpu_script("cifar10", real_data_root, tmp_path)
    record = read_record(out, "cifar10")
    assert list(record["results"]) == ["ResNet-18+SN+mod", "ResNet-18"]
    # run.sh leaves Fashion-MNIST behind (the device's carry limit): one row per network and OoD set.
    assert record["ood_sets"] == ["tiny_imagenet", "mnist"]
    assert record["table"].count("\n| ResNet-18") == 4
    for result in record["results"].values():
        assert set(result["summary"]) == set(result["evaluation"]) == {"tiny_imagenet", "mnist"}
        for ood, summary in result["summary"].items():
            evaluation = result["evaluation"][ood]
            assert set(evaluation) == {"softmax", "gmm"}
            assert summary["ddu_density_auroc"] == evaluation["gmm"]["m1_auroc"]
            assert summary["softmax_entropy_auroc"] == evaluation["softmax"]["m2_auroc"]
        # Accuracy and calibration are the test set's, whatever the OoD set.
        accuracies = {s["accuracy"] for s in result["summary"].values()}
        assert len(accuracies) == 1 and 0.0 < accuracies.pop() <= 1.0
    assert len(list(out.glob("*_log.jsonl"))) == 2  # the training logs come back too


@pytest.mark.slow
def test_active_learning_gpu_script_cpu_setting(real_data_root, tmp_path):
    out = run_gpu_script("active_learning", real_data_root, tmp_path)
    record = read_record(out, "active_learning")
    assert set(record["timing"]) == {"warm_up_s", "random", "softmax", "gmm", "ensemble"}
    for al_type in ("random", "softmax", "gmm", "ensemble"):
        assert record["timing"][al_type]["per_step_s"] > 0
    assert list(record["results"]) == ["gmm", "softmax", "random"]
    for result in record["results"].values():
        assert result["labels"] == [20, 25, 30]
        assert list(result["runs"]) == ["0", "1"] and len(result["mean"]) == 3
        assert all(0.0 <= a <= 100.0 for a in result["mean"])
    # Every type starts from the same seeded initial set and trains with the same seeds: equal first steps.
    firsts = {al_type: [run[0] for run in r["runs"].values()] for al_type, r in record["results"].items()}
    assert firsts["gmm"] == firsts["softmax"] == firsts["random"]


@pytest.mark.slow
def test_active_learning_companion_network_gets_its_own_curves_and_figure(
    real_data_root, tmp_path, monkeypatch
):
    smoke = al_experiment.SCALES["smoke"]
    tiny_resnet = common.ModelSpec("ResNet-18 (width 2)", "resnet18", arch=(("base_width", 2),))
    companion = dataclasses.replace(smoke, model=tiny_resnet, al_types=("random",), timing=(), subset=())
    monkeypatch.setitem(
        al_experiment.SCALES, "smoke", dataclasses.replace(smoke, timing=(), companion=companion)
    )
    argv = ["--scale", "smoke", "--dataset-root", str(real_data_root), "--work-dir", str(tmp_path / "work"),
            "--output-dir", str(tmp_path / "out"), "--no-gpu"]  # fmt: skip
    record = al_experiment.main(al_experiment.get_args_parser().parse_args(argv))
    assert list(record["results"]) == ["gmm", "softmax", "random"]
    second = record["companion"]
    assert second["network"] == "ResNet-18 (width 2)" and list(second["results"]) == ["random"]
    assert second["results"]["random"]["labels"] == [20, 25, 30]
    assert second["preset"]["model"]["model"] == "resnet18" and second["table"].startswith("| ")
    assert (tmp_path / "out" / "active_learning_smoke_resnet18.png").stat().st_size > 10_000
    assert (record["figure"], second["figure"]) == (
        "active_learning_smoke.png",
        "active_learning_smoke_resnet18.png",
    )
    saved = json.loads((tmp_path / "out" / "active_learning_smoke.json").read_text())
    assert saved["companion"]["results"]["random"]["mean"] == second["results"]["random"]["mean"]


def test_records_name_their_figures_relative_to_the_output_folder(tmp_path, monkeypatch):
    # A record committed with its figure (docs/repro) must not hold the folder the run happened to write to.
    out = tmp_path / "out"
    out.mkdir()
    paths = common.Paths(work=tmp_path / "work", json=out / "name_cpu.json", figure=out / "name_cpu.png")
    record = common.finish_record({"environment": {}}, paths, "| table |")
    assert record["figure"] == "name_cpu.png"
    assert json.loads(paths.json.read_text())["figure"] == "name_cpu.png"
    assert paths.relative(out / "figures" / "lenet.png") == "figures/lenet.png"
    monkeypatch.chdir(tmp_path)
    relative = common.Paths(
        work=Path("work"), json=Path("out/name_cpu.json"), figure=Path("out/name_cpu.png")
    )
    assert relative.relative(relative.figure) == "name_cpu.png"
