"""train.py and engine/training.py: the command line, output files, resume, NaN stop, DDP and user errors.

Runs use the embedded `digits` set (no files needed) with tiny networks, small batches and
`--steps-per-epoch 2`, so each run takes about a second on a CPU core.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import file_size_limit
from torch.utils.data import DataLoader, TensorDataset

import data
import net
import train
from engine.checkpointing import (
    capture_rng_state,
    check_resume_compatible,
    load_resume_state,
    restore_rng_state,
)
from engine.training import (
    LOSSES,
    TrainSettings,
    evaluate_accuracy,
    make_optimizer,
    make_scheduler,
    train_epochs,
    train_one_epoch,
)
from utils.errors import UserError

SMALL = {
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "resnet18": {"base_width": 2},
    "resnet50": {"base_width": 2},
    "vgg16": {"width_divisor": 16},
    "lenet": {},
}
SMALL_ARCH = {
    model: [item for key, value in kwargs.items() for item in ("--" + key.replace("_", "-"), str(value))]
    for model, kwargs in SMALL.items()
}


def parse(*argv: str) -> object:
    return train.get_args_parser().parse_args(list(argv))


def tiny_args(save: Path, *extra: str, model: str = "lenet", seed: int = 1, epochs: int = 1) -> object:
    """A run of `epochs` x 2 steps of batch 16 on the embedded digits, on the CPU."""
    return parse(
        "--seed", str(seed), "--dataset", "digits", "--model", model, "--no-gpu", "-e", str(epochs),
        "-b", "16", "-tb", "128", "--steps-per-epoch", "2", "--save-path", str(save),
        *SMALL_ARCH[model], *extra,
    )  # fmt: skip


def one_line_error(capsys, args) -> str:
    """Run main(args), expecting a user error: non-zero exit, one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as info:
        train.main(args)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------
# Command line


def test_original_readme_command_parses_with_original_defaults():
    args = parse(
        "--seed", "1", "--dataset", "cifar10", "--model", "wide_resnet", "-sn", "-mod", "--coeff", "3.0"
    )
    assert (args.seed, args.dataset, args.model, args.sn, args.mod, args.coeff) == (
        1,
        "cifar10",
        "wide_resnet",
        True,
        True,
        3.0,
    )
    assert (args.train_batch_size, args.test_batch_size, args.epoch) == (128, 128, 350)
    assert (args.learning_rate, args.momentum, args.weight_decay, args.nesterov) == (0.1, 0.9, 5e-4, False)
    assert (args.optimiser, args.loss_function, args.loss_mean) == ("sgd", "cross_entropy", False)
    assert (args.first_milestone, args.second_milestone, args.save_interval) == (150, 250, 25)
    assert args.data_aug and args.gpu and args.resume is None
    assert parse("--seed", "1").model == "resnet50"


def test_boolean_flags_switch_off_and_resume_takes_an_optional_path():
    args = parse("--seed", "2", "--no-data-aug", "--no-gpu", "--no-channels-last", "--resume")
    assert (
        not args.data_aug
        and not args.gpu
        and args.channels_last is False
        and args.resume == train.DEFAULT_RESUME
    )
    assert parse("--seed", "2", "--resume", "x.pt").resume == "x.pt"
    with pytest.raises(SystemExit):
        parse("--dataset", "cifar10")  # --seed is required, as in the original


# ----------------------------------------------------------------------------------------------------
# One epoch per model family: file names and contents


@pytest.mark.parametrize("model", list(SMALL_ARCH))
@pytest.mark.parametrize("sn_mod", [False, True], ids=["plain", "sn_mod"])
def test_one_epoch_writes_the_original_files(tmp_path, model, sn_mod):
    flags = ["-sn", "-mod"] if sn_mod else []
    result = train.main(tiny_args(tmp_path, *flags, model=model))
    name = f"{model}_sn_3.0_mod_1" if sn_mod else f"{model}_1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{name}_1.model", f"{name}_train_loss.json", f"{name}_log.jsonl", f"{name}_resume.pt"]
    )
    # The model file is a plain state dict that loads into a freshly built network with the same flags.
    state = torch.load(tmp_path / f"{name}_1.model", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    fresh = net.create_model(
        model, num_classes=10, spectral_normalization=sn_mod, mod=sn_mod, mnist=True, **SMALL[model]
    )
    net.load_state_dict(fresh, tmp_path / f"{name}_1.model")
    for key, value in result["model"].state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key

    losses = json.loads((tmp_path / f"{name}_train_loss.json").read_text())
    (line,) = read_jsonl(tmp_path / f"{name}_log.jsonl")
    assert list(losses) == ["0"] and losses["0"] == pytest.approx(line["original_loss"])
    assert line["epoch"] == 0 and line["images"] == 32 and line["lr"] == 0.1
    assert 0 < line["loss"] < 10 and line["images_per_s"] > 0
    assert line["accuracy"] * 32 == pytest.approx(round(line["accuracy"] * 32))  # a count out of 32 images
    # Validated after the last epoch: the accuracy of the final network on the 10% validation split.
    cpu = torch.device("cpu")
    _, valid = data.get_train_valid_loader(
        "digits", None, 16, val_seed=1, device=cpu, seed=1, test_batch_size=128
    )
    assert line["val_accuracy"] == evaluate_accuracy(
        result["model"], valid, TrainSettings(cpu, progress=False)
    )
    # The original's "average loss": the sum of the batch-mean losses over the sample count (= loss / B here).
    assert line["original_loss"] == pytest.approx(line["loss"] / 16)


def test_save_interval_milestones_and_log(tmp_path):
    args = tiny_args(
        tmp_path, "--save-interval", "2", "--first-milestone", "1", "--second-milestone", "2", epochs=3
    )
    result = train.main(args)
    models = sorted(p.name for p in tmp_path.glob("*.model"))
    assert models == ["lenet_1_2.model", "lenet_1_3.model"]  # every 2 epochs and at the end
    lines = read_jsonl(tmp_path / "lenet_1_log.jsonl")
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert [line["lr"] for line in lines] == pytest.approx([0.1, 0.01, 0.001])  # MultiStepLR, gamma 0.1
    assert [line["val_accuracy"] is None for line in lines] == [True, True, False]
    assert list(json.loads((tmp_path / "lenet_1_train_loss.json").read_text())) == ["0", "1", "2"]
    assert len(result["history"]) == 3


# ----------------------------------------------------------------------------------------------------
# Resume


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # Wide-ResNet with SN, -mod, batch norm and dropout: weights, SN vectors, BN statistics, momentum,
    # schedule and the dropout RNG all have to come back exactly.
    common = ("-sn", "-mod", "--deterministic", "--first-milestone", "1", "--save-interval", "1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(tiny_args(straight, *common, model="wide_resnet", epochs=2))
    train.main(tiny_args(split, *common, model="wide_resnet", epochs=1))
    resumed = train.main(tiny_args(split, *common, "--resume", model="wide_resnet", epochs=2))
    assert [h.epoch for h in resumed["history"]] == [0, 1]

    name = "wide_resnet_sn_3.0_mod_1"
    a, b = _state(straight / f"{name}_2.model"), _state(split / f"{name}_2.model")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _state(straight / f"{name}_1.model").keys() == a.keys()
    keep = ("epoch", "loss", "original_loss", "accuracy", "lr", "images")
    log_a, log_b = read_jsonl(straight / f"{name}_log.jsonl"), read_jsonl(split / f"{name}_log.jsonl")
    assert [{k: x[k] for k in keep} for x in log_a] == [{k: x[k] for k in keep} for x in log_b]
    assert (straight / f"{name}_train_loss.json").read_text() == (
        split / f"{name}_train_loss.json"
    ).read_text()


def test_resume_refuses_changed_flags_naming_them(tmp_path, capsys):
    train.main(tiny_args(tmp_path))
    err = one_line_error(
        capsys, tiny_args(tmp_path, "--resume", "--decay", "0.05", "--opt", "adam", epochs=2)
    )
    assert "--decay" in err and "--opt" in err and "0.05" in err and "--mom" not in err


def test_resume_with_a_missing_explicit_file_is_a_user_error(tmp_path, capsys):
    err = one_line_error(capsys, tiny_args(tmp_path, "--resume", str(tmp_path / "nope.pt")))
    assert "nope.pt" in err


def test_resume_without_a_file_starts_from_scratch_and_a_finished_run_does_nothing(tmp_path):
    first = train.main(tiny_args(tmp_path, "--resume"))
    assert len(first["history"]) == 1
    again = train.main(tiny_args(tmp_path, "--resume"))
    assert [h.epoch for h in again["history"]] == [0]  # restored, no epoch trained
    for key, value in _state(tmp_path / "lenet_1_1.model").items():
        assert torch.equal(value, first["model"].state_dict()[key])


# ----------------------------------------------------------------------------------------------------
# Non-finite loss


def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = F.cross_entropy(logits, labels)
        return loss * float("nan") if calls["n"] > 2 else loss  # epoch 1 (2 steps) is fine, epoch 2 is not

    monkeypatch.setitem(LOSSES, "cross_entropy", poisoned)
    err = one_line_error(capsys, tiny_args(tmp_path, "--save-interval", "1", "--log-interval", "1", epochs=3))
    assert "nan" in err and "epoch 2" in err and "lenet_1_resume.pt" in err and "--resume" in err
    assert sorted(p.name for p in tmp_path.glob("*.model")) == ["lenet_1_1.model"]
    assert len(read_jsonl(tmp_path / "lenet_1_log.jsonl")) == 1
    state = load_resume_state(tmp_path / "lenet_1_resume.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoints_are_written_in_the_background_and_complete_at_the_end(tmp_path):
    """Each epoch's files come from a snapshot: the resume file after epoch 1 holds epoch 1's weights, not
    the ones training went on to change while it was being written."""
    result = train.main(tiny_args(tmp_path, "--save-interval", "1", epochs=2))
    final = result["model"].state_dict()
    first, last = (torch.load(tmp_path / f"lenet_1_{e}.model", weights_only=True) for e in (1, 2))
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert not all(torch.equal(first[k], final[k]) for k in final)
    state = load_resume_state(tmp_path / "lenet_1_resume.pt")
    assert state["epoch"] == 2 and all(torch.equal(state["model"][k], final[k]) for k in final)
    assert [line["epoch"] for line in read_jsonl(tmp_path / "lenet_1_log.jsonl")] == [0, 1]


def test_a_checkpoint_that_cannot_be_written_ends_the_run_with_one_sentence(tmp_path, capsys):

    # The LeNet resume file (weights + momentum, about 360 kB) cannot be written; the run stops at the next
    # epoch's end, when the background write's error is collected.
    with file_size_limit(256 * 1024):
        err = one_line_error(capsys, tiny_args(tmp_path, epochs=3))
    assert "could not write" in err and "lenet_1_resume.pt" in err and os.strerror(errno.EFBIG) in err
    assert not (tmp_path / "lenet_1_resume.pt").exists()


def test_ctrl_c_ends_in_one_sentence_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}

    def interrupted_in_epoch_2(logits, labels):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 is 2 steps
            raise KeyboardInterrupt
        return F.cross_entropy(logits, labels)

    monkeypatch.setitem(LOSSES, "cross_entropy", interrupted_in_epoch_2)
    with pytest.raises(SystemExit) as info:
        train.main(tiny_args(tmp_path, epochs=3))
    assert info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interrupted during epoch 2;") and "\n" not in err and "Traceback" not in err
    assert "lenet_1_resume.pt" in err and "--resume" in err
    assert load_resume_state(tmp_path / "lenet_1_resume.pt")["epoch"] == 1
    monkeypatch.setitem(LOSSES, "cross_entropy", F.cross_entropy)
    result = train.main(tiny_args(tmp_path, "--resume", epochs=3))
    assert [s.epoch for s in result["history"]] == [0, 1, 2]


def test_exploding_learning_rate_is_caught(tmp_path, capsys):
    args = tiny_args(tmp_path, "--lr", "1e30", "--log-interval", "1")
    args.steps_per_epoch = 6
    err = one_line_error(capsys, args)
    assert ("nan" in err or "inf" in err) and "no checkpoint was written" in err and "lower --lr" in err
    assert not list(tmp_path.glob("*.model")) and not (tmp_path / "lenet_1_resume.pt").exists()


# ----------------------------------------------------------------------------------------------------
# User errors: one sentence, non-zero exit


def test_unknown_dataset(tmp_path, capsys):
    args = tiny_args(tmp_path)
    args.dataset = "imagenet22k"
    assert "imagenet22k" in one_line_error(capsys, args)


def test_unknown_model(tmp_path, capsys):
    args = tiny_args(tmp_path)
    args.model = "resnet1000"
    err = one_line_error(capsys, args)
    assert "resnet1000" in err and "wide_resnet" in err


def test_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")
    args = tiny_args(tmp_path / "out")
    args.dataset, args.dataset_root = "mnist", str(tmp_path / "empty")
    assert "mnist" in one_line_error(capsys, args).lower()


def test_unwritable_save_path(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = one_line_error(capsys, tiny_args(blocker / "runs"))
    assert "--save-path" in err


def test_test_only_dataset_and_foreign_architecture_flag(tmp_path, capsys):
    args = tiny_args(tmp_path)
    args.dataset = "digits_ood"
    assert "training split" in one_line_error(capsys, args)
    args = tiny_args(tmp_path, "--depth", "10")  # a wide_resnet option on lenet
    assert "--depth" in one_line_error(capsys, args)


# ----------------------------------------------------------------------------------------------------
# engine.training and engine.checkpointing as a library


def test_optimizer_and_schedule_as_the_original():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(params, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.1,
        0.9,
        5e-4,
        True,
    )
    adam = make_optimizer(params, "adam", lr=1e-3, weight_decay=1e-4)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(UserError, match="sgd"):
        make_optimizer(params, "lion")
    scheduler = make_scheduler(sgd, (2, 4))
    lrs = []
    for _ in range(5):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def _linear_setup(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(64, 5)
    y = (x @ torch.randn(5, 3)).argmax(dim=1)  # linearly separable: a linear model can learn it
    return nn.Linear(5, 3), DataLoader(TensorDataset(x, y), batch_size=16)


def test_loss_mean_divides_the_mean_loss_by_the_batch_size():
    # One SGD step at lr with --loss-mean equals one step at lr / B without it (the original's semantics).
    model, loader = _linear_setup()
    twin = nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    cpu = torch.device("cpu")
    for m, lr, loss_mean in ((model, 1.6, True), (twin, 0.1, False)):
        opt = make_optimizer(m.parameters(), "sgd", lr=lr, momentum=0.0, weight_decay=0.0)
        stats = train_one_epoch(
            m, loader, opt, TrainSettings(cpu, loss_mean=loss_mean, progress=False, max_steps=1)
        )
        assert stats.images == 16
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_train_epochs_on_a_plain_dataloader_learns_and_reports():
    model, loader = _linear_setup()
    opt = make_optimizer(model.parameters(), "sgd", lr=0.5, momentum=0.9, weight_decay=0.0)
    settings = TrainSettings(torch.device("cpu"), progress=False, log_interval=1)
    seen = []
    history = train_epochs(
        model, loader, opt, make_scheduler(opt, (100, 200)), settings, epochs=30,
        valid_loader=loader, validate_every=10, on_epoch_end=seen.append,
    )  # fmt: skip
    assert [h.epoch for h in history] == list(range(30)) and seen == history
    assert history[-1].loss < 0.5 * history[0].loss
    assert [h.val_accuracy is not None for h in history].count(True) == 3
    assert history[-1].val_accuracy == pytest.approx(evaluate_accuracy(model, loader, settings))
    assert all(h.images == 64 for h in history)


def test_rng_state_round_trip_and_resume_compatibility_message():
    import random

    import numpy as np

    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]

    check_resume_compatible({"seed": 1, "lr": 0.1}, {"seed": 1, "lr": 0.1}, keys=("seed", "lr"))
    with pytest.raises(UserError, match=r"--seed 1 .* vs 2 now; --lr"):
        check_resume_compatible({"seed": 1, "lr": 0.1}, {"seed": 2, "lr": 0.2}, keys=("seed", "lr"))


# ----------------------------------------------------------------------------------------------------
# DistributedDataParallel: two gloo processes on the CPU, as torchrun would start them


def _ddp_worker(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    save = Path(root) / f"rank{rank}"  # only rank 0 may create its folder or write anything
    result = train.main(tiny_args(save, "-sn", "-mod", model="resnet18", epochs=2))
    torch.save(
        {"state": result["model"].state_dict(), "history": [h.to_json() for h in result["history"]]},
        Path(root) / f"result{rank}.pt",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=True) for r in range(2)]
    # DDP keeps parameters (and the SN vectors computed from them) in sync; batch-norm running statistics
    # are broadcast from rank 0 before each forward and then updated locally, so they may differ.
    for key, value in results[0]["state"].items():
        if "running_" not in key:
            assert torch.equal(value, results[1]["state"][key]), f"{key} differs between ranks"
    name = "resnet18_sn_3.0_mod_1"
    assert (tmp_path / "rank0" / f"{name}_2.model").is_file()
    assert not (tmp_path / "rank1").exists()
    lines = read_jsonl(tmp_path / "rank0" / f"{name}_log.jsonl")
    # -b 16 stays the global batch: 8 per process, 2 steps, 2 processes.
    assert [line["images"] for line in lines] == [32, 32]
    # Statistics are summed over ranks, so both report the same numbers (and rank 0 logged them).
    same = ("loss", "original_loss", "accuracy", "lr", "images", "val_accuracy")
    for h0, h1, line in zip(results[0]["history"], results[1]["history"], lines, strict=True):
        assert {k: h0[k] for k in same} == {k: h1[k] for k in same} == {k: line[k] for k in same}


def test_torchvision_loader_trains_on_the_same_batches(tmp_path):
    # Both loaders draw an epoch's order from the same (seed, epoch) generator, so the original-style
    # pipeline (PIL, DataLoader) and the GPU-resident one train on the same batches.
    fast = train.main(tiny_args(tmp_path / "gpu", "--deterministic"))
    slow = train.main(
        tiny_args(tmp_path / "tv", "--deterministic", "--loader", "torchvision", "--workers", "0")
    )
    for a, b in zip(fast["history"], slow["history"], strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.accuracy == b.accuracy
    for key, value in fast["model"].state_dict().items():
        torch.testing.assert_close(value, slow["model"].state_dict()[key], rtol=1e-4, atol=1e-5)


def test_resume_beyond_the_requested_epochs_is_a_user_error(tmp_path, capsys):
    train.main(tiny_args(tmp_path, epochs=2))
    err = one_line_error(capsys, tiny_args(tmp_path, "--resume", epochs=1))
    assert "epoch 2" in err and "-e 1" in err


def test_a_deterministic_run_leaves_the_global_switches_as_they_were(tmp_path):
    """`--deterministic` holds for the run only: in-process callers (tests, the demo, the experiments) get
    torch's switches back as they were (left on, a later torch.compile'd step crashed with AVX2 kernels)."""
    assert not torch.are_deterministic_algorithms_enabled()
    train.main(tiny_args(tmp_path, "--deterministic"))
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
