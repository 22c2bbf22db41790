"""Deep ensembles: train.py --ensemble (files, seeds, splits, stacked vs one after another, resume, stops),
engine/stacked_ensemble.py (stacked members equal members trained alone), the round trip to evaluate.py and the
results table, and TensorBoard logs.

Runs use the embedded `digits` set with tiny networks, batch 16 and 2 steps per epoch on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

import evaluate
import net
import train
from engine import stacked_ensemble, training_run
from engine.checkpointing import load_resume_state
from engine.network_flags import model_config
from engine.networks import build_model
from engine.result_tables import read_results, table_rows
from engine.training import LOSSES
from utils.seed import seed_everything

SMALL = {"lenet": (), "resnet18": ("--base-width", "2"), "vgg16": ("--width-divisor", "16")}


def ensemble_args(
    save: Path, *extra: str, model: str = "lenet", seed: int = 1, epochs: int = 2, members: int = 3
):
    return train.get_args_parser().parse_args(
        ["--seed", str(seed), "--dataset", "digits", "--model", model, "--no-gpu", "-e", str(epochs),
         "-b", "16", "-tb", "128", "--steps-per-epoch", "2", "--lr", "0.01", "--save-path", str(save),
         "--ensemble", str(members), *SMALL[model], *extra]
    )  # fmt: skip


def alone_args(save: Path, seed: int, *extra: str, model: str = "lenet", epochs: int = 2):
    args = ensemble_args(save, *extra, model=model, seed=seed, epochs=epochs)
    args.ensemble = None
    return args


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(capsys, args, code=None) -> str:
    with pytest.raises(SystemExit) as info:
        train.main(args)
    assert info.value.code not in (0, None) and (code is None or info.value.code == code)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------------
# Choosing the path


def test_stacking_obstacles_and_mode_choice():
    assert stacked_ensemble.stacking_obstacle(net.create_model("lenet", num_classes=10, mnist=True)) is None
    assert (
        stacked_ensemble.stacking_obstacle(
            net.create_model("resnet18", num_classes=10, base_width=2, mod=True)
        )
        is None
    )
    sn = stacked_ensemble.stacking_obstacle(
        net.create_model("resnet18", num_classes=10, base_width=2, spectral_normalization=True)
    )
    assert "spectral normalisation" in sn
    assert "dropout" in stacked_ensemble.stacking_obstacle(
        net.create_model("wide_resnet", num_classes=10, depth=10, widen_factor=1)
    )
    assert "compile" in stacked_ensemble.stacking_obstacle(
        net.create_model("lenet", num_classes=10), compile=True
    )
    assert stacked_ensemble.choose_mode("auto", None, "cuda")[0] == "stacked"
    assert stacked_ensemble.choose_mode("auto", None, "cpu")[0] == "sequential"  # measured slower on the CPU
    assert stacked_ensemble.choose_mode("auto", sn, "cuda") == ("sequential", sn)
    assert stacked_ensemble.choose_mode("stacked", None, "cpu")[0] == "stacked"
    assert stacked_ensemble.choose_mode("sequential", None, "cuda")[0] == "sequential"
    with pytest.raises(ValueError, match="spectral"):
        stacked_ensemble.choose_mode("stacked", sn, "cuda")


def test_member_seeds_and_validation_splits_follow_the_original():
    args = argparse.Namespace(seed=6, val_seed=6, ensemble=5)
    assert [(m.seed, m.val_seed) for m in (training_run.member_args(args, k) for k in range(5))] == [
        (6, 6), (7, 7), (8, 8), (9, 9), (10, 10)
    ]  # fmt: skip
    args.val_seed = 100  # an explicit --val-seed shifts the same way
    assert [training_run.member_args(args, k).val_seed for k in range(3)] == [100, 101, 102]


# ----------------------------------------------------------------------------------------------------
# Files, seeds and equality with members trained alone


@pytest.mark.parametrize("mode", ["sequential", "stacked"])
def test_each_member_is_written_under_its_own_training_name(tmp_path, mode):
    result = train.main(ensemble_args(tmp_path, "--ensemble-mode", mode, "--save-interval", "1"))
    assert result["mode"] == mode and len(result["members"]) == 3
    for k, seed in enumerate((1, 2, 3)):
        name = f"lenet_{seed}"
        assert {p.name for p in tmp_path.glob(f"{name}_*")} == {
            f"{name}_1.model", f"{name}_2.model", f"{name}_log.jsonl", f"{name}_train_loss.json",
            f"{name}_resume.pt",
        }  # fmt: skip
        saved = load_resume_state(tmp_path / f"{name}_resume.pt")
        assert (saved["args"]["seed"], saved["args"]["val_seed"], saved["epoch"]) == (seed, seed, 2)
        assert [line["epoch"] for line in read_jsonl(tmp_path / f"{name}_log.jsonl")] == [0, 1]
        final = result["members"][k]["model"].state_dict()
        assert all(torch.equal(state(tmp_path / f"{name}_2.model")[key], final[key]) for key in final)
    # Different seeds: different members.
    assert not torch.equal(
        state(tmp_path / "lenet_1_2.model")["fc3.weight"], state(tmp_path / "lenet_2_2.model")["fc3.weight"]
    )


def test_a_member_trained_one_after_another_is_bit_identical_to_it_trained_alone(tmp_path):
    train.main(ensemble_args(tmp_path / "ens", "--ensemble-mode", "sequential", "--deterministic"))
    train.main(alone_args(tmp_path / "alone", 2, "--deterministic"))
    a, b = state(tmp_path / "ens" / "lenet_2_2.model"), state(tmp_path / "alone" / "lenet_2_2.model")
    assert all(torch.equal(a[key], b[key]) for key in a)
    logs = [read_jsonl(tmp_path / d / "lenet_2_log.jsonl") for d in ("ens", "alone")]
    keep = ("loss", "accuracy", "val_accuracy")
    assert [[line[k] for k in keep] for line in logs[0]] == [[line[k] for k in keep] for line in logs[1]]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lenet", "resnet18"])
def test_a_member_trained_stacked_equals_it_trained_alone(tmp_path, model):
    """Stacking is exact: member 2 of a stacked ensemble is the network `train.py --seed 2` trains, up to
    the order of floating-point sums (vmap's grouped convolutions and batched matrix products). After 4
    SGD steps each tensor agrees to 1e-4 of its largest entry, or of 0.01 where that is smaller: BatchNorm's
    biases start at 0 and move by ~1e-3, which is what a member mixed up with another would be off by,
    while their round-off in float32 sums reaches 1e-7 on some BLAS builds (7e-8 measured on torch 2.11).
    BatchNorm's step counters agree exactly."""
    extra = ("-mod",) if model == "resnet18" else ()  # resnet18: also the average-pool shortcuts
    result = train.main(ensemble_args(tmp_path / "ens", "--ensemble-mode", "stacked", *extra, model=model))
    assert result["mode"] == "stacked"
    train.main(alone_args(tmp_path / "alone", 2, *extra, model=model))
    name = f"{model}_mod_2" if extra else f"{model}_2"
    together, alone = (
        state(tmp_path / "ens" / f"{name}_2.model"),
        state(tmp_path / "alone" / f"{name}_2.model"),
    )
    seed_everything(2)  # member 2's initial weights, as train.py draws them
    initial = build_model(model_config(ensemble_args(tmp_path, *extra, model=model)))
    moved = 0.0
    for key in alone:
        if alone[key].is_floating_point():
            scale = alone[key].abs().max().clamp_min(1e-2)
            torch.testing.assert_close(together[key], alone[key], rtol=0, atol=1e-4 * float(scale), msg=key)
            moved = max(moved, float((alone[key] - initial.state_dict()[key]).abs().max()))
        else:
            assert torch.equal(together[key], alone[key]), key
    assert moved > 1e-3  # training changed the weights: the comparison means something
    losses = [
        [line["loss"] for line in read_jsonl(tmp_path / d / f"{name}_log.jsonl")] for d in ("ens", "alone")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b if b[k].is_floating_point())


@pytest.mark.parametrize("model", ["lenet", "resnet18", "vgg16"])
def test_stacked_training_is_as_exact_as_floating_point_allows(model):
    """Some networks amplify rounding: VGG-16 at 1/16 width has channels that die (all zeros) after a step,
    and BatchNorm divides whatever is left in them by sqrt(eps). For such a network no comparison to a
    fixed tolerance can hold, so the yardstick is the network itself: after 4 SGD steps member 1 of the
    stack may differ from it trained alone by no more than (10x) the same network alone differs from
    itself when its initial weights change in the 7th significant digit."""
    sizes = {"lenet": {}, "resnet18": {"base_width": 2, "mod": True}, "vgg16": {"width_divisor": 16}}[model]
    torch.manual_seed(0)
    members = [net.create_model(model, num_classes=10, mnist=True, **sizes) for _ in range(3)]
    alone, perturbed = copy.deepcopy(members[1]), copy.deepcopy(members[1])
    with torch.no_grad():
        for p in perturbed.parameters():
            p.mul_(1 + 1e-7 * torch.randn_like(p))
    stack = stacked_ensemble.StackedEnsemble(members)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    optimizers = [sgd(stack.parameters()), sgd(alone.parameters()), sgd(perturbed.parameters())]
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = (
            torch.randn(3, 16, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (3, 16), generator=generator),
        )
        losses = torch.func.vmap(F.cross_entropy)(stack(x), y)
        for optimizer in optimizers:
            optimizer.zero_grad()
        losses.sum().backward()
        F.cross_entropy(alone(x[1]), y[1]).backward()
        F.cross_entropy(perturbed(x[1]), y[1]).backward()
        for optimizer in optimizers:
            optimizer.step()
    stacked_vs_alone = _max_difference(stack.member_state_dict(1), alone.state_dict())
    rounding_effect = _max_difference(perturbed.state_dict(), alone.state_dict())
    assert stacked_vs_alone <= 10 * rounding_effect + 1e-6, (stacked_vs_alone, rounding_effect)
    # The stack did train member 1 on its own batches: it moved away from its initial weights.
    assert _max_difference(stack.member_state_dict(1), members[1].state_dict()) > 1e-3


def test_stacked_forward_matches_each_member_and_reads_them_back():
    torch.manual_seed(0)
    members = [
        net.create_model("resnet18", num_classes=10, base_width=2, mnist=True).eval() for _ in range(3)
    ]
    stack = stacked_ensemble.StackedEnsemble(copy.deepcopy(members)).eval()
    x = torch.randn(3, 4, 1, 28, 28)
    with torch.no_grad():
        out = stack(x)
        shared = stack(x[0], shared_input=True)
    for k, member in enumerate(members):
        with torch.no_grad():
            torch.testing.assert_close(out[k], member(x[k]), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(shared[k], member(x[0]), rtol=1e-5, atol=1e-5)
    for k, member in enumerate(members):
        back = stack.member_state_dict(k)
        assert list(back) == list(member.state_dict())  # the member's own key order
        assert all(torch.equal(back[name], value) for name, value in member.state_dict().items())


def test_optimizer_state_round_trips_between_members_and_the_stack():
    torch.manual_seed(0)
    members = [net.create_model("lenet", num_classes=10, mnist=True) for _ in range(2)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in members]
    for member, optimizer in zip(members, optimizers):
        F.cross_entropy(member(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    stacked = stacked_ensemble.stack_optimizer_states([o.state_dict() for o in optimizers])
    for k, optimizer in enumerate(optimizers):
        own, back = optimizer.state_dict(), stacked_ensemble.member_optimizer_state(stacked, k)
        assert back["param_groups"] == own["param_groups"]
        for index, entry in own["state"].items():
            assert entry.keys() == back["state"][index].keys()
            assert all(torch.equal(entry[key], back["state"][index][key]) for key in entry)


# ----------------------------------------------------------------------------------------------------
# Resume, stops and errors


def test_stacked_resume_is_bit_identical_and_members_out_of_step_catch_up(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    stacked = ("--ensemble-mode", "stacked", "--deterministic")
    train.main(ensemble_args(straight, *stacked, epochs=3))
    train.main(ensemble_args(split, *stacked, epochs=1))
    # Member 1 alone one epoch further: the members are out of step, as after a stop between two members'
    # end-of-epoch writes; members 2 and 3 catch up alone, then all continue stacked.
    train.main(alone_args(split, 1, "--deterministic", "--resume", epochs=2))
    result = train.main(ensemble_args(split, *stacked, "--resume", epochs=3))
    for k, seed in enumerate((1, 2, 3)):
        assert [s.epoch for s in result["members"][k]["history"]] == [0, 1, 2]
        assert len(read_jsonl(split / f"lenet_{seed}_log.jsonl")) == 3
    # Member 3 resumed from epoch 1, caught up alone to 2, then stacked: as the straight run up to
    # rounding; with nothing out of step a stacked resume repeats the straight run bit for bit.
    a, b = state(straight / "lenet_3_3.model"), state(split / "lenet_3_3.model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5 * float(a[key].abs().max()))
    again = tmp_path / "again"
    train.main(ensemble_args(again, *stacked, epochs=2))
    train.main(ensemble_args(again, *stacked, "--resume", epochs=3))
    for seed in (1, 2, 3):
        a, b = state(straight / f"lenet_{seed}_3.model"), state(again / f"lenet_{seed}_3.model")
        assert all(torch.equal(a[key], b[key]) for key in a), seed


@pytest.mark.parametrize("mode", ["sequential", "stacked"])
def test_nan_loss_names_the_member_and_keeps_every_last_good_state(tmp_path, capsys, monkeypatch, mode):
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = F.cross_entropy(logits, labels)
        # stacked: one call per step for all members; sequential: one per step of member 1 first
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setitem(LOSSES, "cross_entropy", poisoned)
    args = ensemble_args(
        tmp_path, "--ensemble-mode", mode, "--log-interval", "1", "--save-interval", "1", epochs=3
    )
    err = one_line_error(capsys, args)
    assert "nan" in err and "epoch 2" in err and "--resume" in err and "lenet_1" in err
    kept = [1, 2, 3] if mode == "stacked" else [1]
    for seed in kept:
        assert load_resume_state(tmp_path / f"lenet_{seed}_resume.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.glob("*.model")) == [f"lenet_{s}_1.model" for s in kept]


def test_ctrl_c_while_stacked_ends_in_one_sentence_and_resumes(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}

    def interrupted_in_epoch_2(logits, labels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return F.cross_entropy(logits, labels)

    monkeypatch.setitem(LOSSES, "cross_entropy", interrupted_in_epoch_2)
    err = one_line_error(capsys, ensemble_args(tmp_path, "--ensemble-mode", "stacked", epochs=3), code=130)
    assert (
        err.startswith("error: interrupted during epoch 2;") and "after epoch 1" in err and "--resume" in err
    )
    assert "lenet_1, lenet_2, lenet_3" in err
    monkeypatch.setitem(LOSSES, "cross_entropy", F.cross_entropy)
    result = train.main(ensemble_args(tmp_path, "--ensemble-mode", "stacked", "--resume", epochs=3))
    assert all([s.epoch for s in m["history"]] == [0, 1, 2] for m in result["members"])


def test_ensemble_user_errors(tmp_path, capsys):
    err = one_line_error(
        capsys, ensemble_args(tmp_path, "-sn", "--ensemble-mode", "stacked", model="resnet18")
    )
    assert "spectral normalisation" in err and "--ensemble-mode" in err
    err = one_line_error(capsys, ensemble_args(tmp_path, "--resume", str(tmp_path / "x.pt")))
    assert "--resume" in err and "--ensemble" in err
    err = one_line_error(capsys, ensemble_args(tmp_path, members=0))
    assert "--ensemble must be a whole number at least 1" in err


def test_spectral_norm_members_fall_back_to_one_after_another(tmp_path):
    result = train.main(ensemble_args(tmp_path, "-sn", "-mod", model="resnet18", epochs=1, members=2))
    assert result["mode"] == "sequential"
    assert {p.name for p in tmp_path.glob("*.model")} == {
        "resnet18_sn_3.0_mod_1_1.model",
        "resnet18_sn_3.0_mod_2_1.model",
    }


# ----------------------------------------------------------------------------------------------------
# The round trip: train --ensemble -> evaluate --model-type ensemble -> the results table


@pytest.mark.slow
def test_round_trip_train_evaluate_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    train.main(ensemble_args(runs / "Run1", members=3, seed=1))
    train.main(ensemble_args(runs / "Run2", members=3, seed=4))  # Run2 holds seeds 4..6
    out = tmp_path / "results"
    eval_args = evaluate.get_args_parser().parse_args(
        ["--seed", "1", "--dataset", "digits", "--ood_dataset", "digits_ood", "--model", "lenet",
         "--model-type", "ensemble", "--ensemble", "3", "--runs", "2", "--epoch", "2", "--load-path", str(runs),
         "--no-gpu", "--output-dir", str(out)]
    )  # fmt: skip
    capsys.readouterr()
    result = evaluate.main(eval_args)
    printed = capsys.readouterr().out
    assert len(result["values"]["m2_auroc"]) == 2 and not result["failed_runs"]
    assert "| Ensemble | predictive entropy | lenet x3 |" in printed
    rows = table_rows(read_results([out / "res_lenet_1_ensemble_digits_digits_ood.json"]))
    assert [row.method.name for row in rows] == ["Ensemble", "Ensemble (MI)"]
    assert rows[0].values["auroc"] == result["values"]["m2_auroc"]
    assert rows[1].values["auroc"] == result["values"]["m1_auroc"]


USAGE = REPO / "docs" / "usage.md"


@pytest.mark.slow
def test_the_readme_round_trip_runs_as_written(tmp_path, monkeypatch, capsys):
    """The three commands at the top of the ensemble section of docs/usage.md (the user guide the README
    links), run as written (in a fresh folder)."""
    from tools import results

    heading = "## Deep ensembles, TensorBoard and the results table"
    section = USAGE.read_text(encoding="utf-8").split(heading)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]
    assert [c[1] for c in commands] == ["train.py", "evaluate.py", "-m"]
    monkeypatch.chdir(tmp_path)
    train_words, evaluate_words, table_words = commands
    train.main(train.get_args_parser().parse_args(train_words[2:]))
    result = evaluate.main(evaluate.get_args_parser().parse_args(evaluate_words[2:]))
    capsys.readouterr()
    text = results.main(results.get_args_parser().parse_args(table_words[3:]))
    assert capsys.readouterr().out == text
    assert "| Ensemble | predictive entropy | lenet x5 |" in text
    assert sorted(p.name for p in (tmp_path / "runs" / "Run1").glob("*.model")) == [
        f"lenet_{seed}_5.model" for seed in range(1, 6)
    ]
    # Five LeNets after 5 epochs tell photo patches from digits by their predictive entropy.
    assert result["mean"]["m2_auroc"] > 0.75


# ----------------------------------------------------------------------------------------------------
# TensorBoard


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("mode", ["sequential", "stacked"])
def test_tensorboard_scalars_are_the_json_log(tmp_path, mode):
    pytest.importorskip("tensorboard")
    train.main(
        ensemble_args(tmp_path, "--ensemble-mode", mode, "--tensorboard", "--validate-every", "1", members=2)
    )
    for seed in (1, 2):
        log = read_jsonl(tmp_path / f"lenet_{seed}_log.jsonl")
        scalars = read_events(tmp_path / "stats_logging" / f"lenet_{seed}")
        original_tag = f"lenet_{seed}_train_loss"  # the original's own scalar, next to this project's
        assert set(scalars) == {"loss", "accuracy", "lr", "val_accuracy", "images_per_s", original_tag}
        for tag, series in scalars.items():
            key = "original_loss" if tag == original_tag else tag
            assert [step for step, _ in series] == [1, 2]
            assert [value for _, value in series] == pytest.approx([line[key] for line in log], rel=1e-6)


@pytest.mark.parametrize("loss_mean", [False, True])
def test_tensorboard_writes_the_originals_train_loss_with_its_formula(tmp_path, loss_mean):
    # The original's train.py: `writer.add_scalar(save_name + "_train_loss", train_loss, epoch + 1)` with
    # train_loss = sum over batches of the batch-mean loss (over B once more with --loss-mean) / samples.
    # Two batches of 16 per epoch: that is the mean per-sample loss / 16 (/ 16 again with --loss-mean).
    pytest.importorskip("tensorboard")
    extra = ("--loss-mean",) if loss_mean else ()
    train.main(alone_args(tmp_path, 3, "--tensorboard", *extra, epochs=2))
    log = read_jsonl(tmp_path / "lenet_3_log.jsonl")
    scalars = read_events(tmp_path / "stats_logging" / "lenet_3")
    divisor = 16 * 16 if loss_mean else 16
    assert [step for step, _ in scalars["lenet_3_train_loss"]] == [1, 2]
    values = [value for _, value in scalars["lenet_3_train_loss"]]
    assert values == pytest.approx([line["loss"] / divisor for line in log], rel=1e-5)
    assert [value for _, value in scalars["loss"]] == pytest.approx([line["loss"] for line in log], rel=1e-6)


def test_tensorboard_into_a_chosen_folder_and_continued_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    board = tmp_path / "board"
    args = alone_args(tmp_path, 1, "--tensorboard", str(board), epochs=1)
    train.main(args)
    args = alone_args(tmp_path, 1, "--tensorboard", str(board), "--resume", epochs=2)
    train.main(args)
    assert [step for step, _ in read_events(board / "lenet_1")["loss"]] == [1, 2]


def test_tensorboard_without_the_package_is_one_sentence(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    err = one_line_error(capsys, alone_args(tmp_path, 1, "--tensorboard"))
    assert "--tensorboard needs the tensorboard package" in err and "pip install tensorboard" in err
    assert not list(tmp_path.glob("*.model"))
