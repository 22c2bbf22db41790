"""experiments/imagenet.py: the GPU node's plan (commands, expected time, the paper's table) and the smoke
preset on a synthetic ImageNet-shaped folder with all 1,000 classes."""

from __future__ import annotations

import json

import pytest

import train
from data import imagenet
from experiments import imagenet as experiment


def test_the_gpu_plan_holds_the_recipe_and_its_commands_parse(capsys):
    plan = experiment.main(
        experiment.get_args_parser().parse_args(["--dataset-root", "DATA", "--nproc", "8"])
    )
    assert set(plan) == set(experiment.PAPER)
    command = plan["imagenet_resnet50"]["train"]
    assert command[:2] == ["torchrun", "--nproc_per_node=8"]
    args = train.get_args_parser().parse_args(command[3:])
    assert (args.learning_rate, args.momentum, args.weight_decay, args.epoch) == (0.1, 0.9, 1e-4, 90)
    assert (args.first_milestone, args.second_milestone, args.train_batch_size) == (30, 60, 256)
    assert args.sn and args.mod and args.dataset == "imagenet"
    assert "--ensemble" in plan["imagenet_resnet50"]["train_ensemble"]
    kinds = [c[c.index("--model-type") + 1] for c in plan["imagenet_vgg16_bn"]["evaluate"]]
    assert kinds == ["softmax", "gmm", "ensemble"]
    out = capsys.readouterr().out
    assert "71.29 ± 0.08" in out and "Expected total" in out


def test_expected_time_is_the_slower_of_compute_and_decoding():
    preset = experiment.GpuPreset()
    fast_decode = experiment.expected_hours("imagenet_resnet50", preset, 8, 250.0, 1e9)
    slow_decode = experiment.expected_hours("imagenet_resnet50", preset, 8, 250.0, 1000.0)
    assert fast_decode["single_h"] == fast_decode["compute_bound_h"] < slow_decode["single_h"]
    assert (
        slow_decode["single_h"]
        == slow_decode["decode_bound_h"]
        == pytest.approx(1_281_167 * 90 / 8000 / 3600, abs=0.1)
    )
    assert slow_decode["with_ensemble_h"] == pytest.approx(4 * slow_decode["single_h"], abs=0.2)


@pytest.mark.slow
def test_the_smoke_preset_trains_and_evaluates_on_a_synthetic_folder(tmp_path):
    root = tmp_path / "tiny"
    classes = [f"n{index:08d}" for index in range(imagenet.IMAGENET_CLASSES)]
    imagenet.write_synthetic(root, classes, train_per_class=3, val_per_class=1, ood=20)
    args = experiment.get_args_parser().parse_args(
        ["--scale", "smoke", "--dataset-root", str(root), "--work-dir", str(tmp_path / "work"),
         "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    record = experiment.main(args)
    assert set(record["ours"]) == {"accuracy", "ece", "softmax_entropy", "energy", "ddu"}
    assert all(0 <= value <= 100 for value in record["ours"].values())
    saved = json.loads((tmp_path / "out" / "imagenet_smoke.json").read_text())
    assert saved["paper"]["ddu"] == [71.29, 0.08]
    # One evaluation against two OoD sets: ImageNet-O and the same files as a plain folder, each its own file.
    assert saved["ood_sets"][0] == "imagenet_o" and saved["ood_sets"][1].startswith("folder:")
    for kind in ("softmax", "gmm"):
        names = sorted(p.name for p in (tmp_path / "out").glob(f"res_*_{kind}_imagenet_*.json"))
        assert len(names) == 2 and any(n.endswith("_imagenet_o.json") for n in names), names
    assert 0 <= saved["ddu_on_the_folder_copy"] <= 100


def test_a_torchvision_weights_file_loads_as_a_run_checkpoint(tmp_path):
    """The post-hoc path of docs/reproduction.md: torchvision's ResNet-50 weights (a plain state dict) are what
    evaluate.py loads as `{load-path}/Run1/imagenet_resnet50_1_{epoch}.model` for `--model imagenet_resnet50`."""
    import torch
    import torchvision

    import net
    from engine.networks import load_checkpoint

    path = tmp_path / "Run1" / "imagenet_resnet50_1_90.model"
    path.parent.mkdir()
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = net.create_model("imagenet_resnet50", num_classes=1000)
    load_checkpoint(model, path)
    assert torch.equal(model.fc.weight, torch.load(path, weights_only=True)["fc.weight"])


def test_first_per_class_keeps_the_first_samples_of_each_class_in_order():
    import torch

    from engine.evaluation import first_per_class

    labels = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4]
    assert first_per_class(labels, 1).tolist() == [0, 1, 3]
    assert first_per_class(labels, None) is None
