"""Training on ImageNet-shaped folders: one step under `torchrun --nproc_per_node 2` on the CPU (gloo), then a
resume, with ImageNet's network, data path and the torchvision recipe's flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

from data.imagenet import write_synthetic

NAME = "imagenet_resnet50_sn_3.0_mod_1"


def _torchrun(root: Path, save: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "train.py", "--seed", "1", "--dataset", "imagenet", "--dataset-root", str(root),
        "--model", "imagenet_resnet50", "--base-width", "4", "-sn", "-mod", "--no-gpu",
        "-b", "4", "-tb", "4", "--lr", "0.1", "--decay", "1e-4", "--first-milestone", "30",
        "--second-milestone", "60", "--steps-per-epoch", "1", "--workers", "0",
        "--save-path", str(save), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_one_torchrun_step_on_two_gloo_processes_then_a_resume(tmp_path):
    root = write_synthetic(tmp_path / "data", train_per_class=6)
    save = tmp_path / "run"
    first = _torchrun(root, save, "-e", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [json.loads(line) for line in (save / f"{NAME}_log.jsonl").read_text().splitlines()]
    # -b 4 is the global batch: 2 images on each of the 2 processes, one step.
    assert [line["images"] for line in lines] == [4]
    assert (save / f"{NAME}_1.model").is_file() and (save / f"{NAME}_resume.pt").is_file()
    second = _torchrun(root, save, "-e", "2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [json.loads(line) for line in (save / f"{NAME}_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1] and lines[1]["lr"] == pytest.approx(0.1)
    state = torch.load(save / f"{NAME}_2.model", weights_only=True)
    assert "conv1.weight_orig" in state and "fc.weight" in state and state["fc.weight"].shape[0] == 1000
