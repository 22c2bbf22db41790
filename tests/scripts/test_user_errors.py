"""Bad input ends in one sentence and a non-zero exit, and nothing written before is lost.

One test (or one parametrised family) per kind of bad input: each runs a script's
`main(args)` through its `exit_on_user_error` wrapper (one runs `python -m tools.plots` as a subprocess) and
checks the exit status, that stderr is one line starting with "error: " (no traceback), what the sentence
names, and that the files already in the folders involved are byte-identical afterwards. Data are tiny: the
embedded `digits` set and files written here.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from helpers import (
    REPO,
    al_args,
    assert_kept,
    eval_args,
    fails,
    one_sentence,
    snapshot,
    train_args,
    write_amnist,
    write_cifar10,
    write_idx,
    write_mnist,
    write_svhn,
)

import active_learning
import data
import evaluate
import net
import train
from engine.training import LOSSES
from tools import plots
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")


# ----------------------------------------------------------------------------------------------------------
# Helpers


# ----------------------------------------------------------------------------------------------------------
# 1. Labels outside the class range: named with the file when the data set is loaded


def test_mnist_labels_outside_0_to_9_name_the_file(save_dir, tmp_path, capsys):
    root = tmp_path / "data"
    write_mnist(root, n_train=40)
    labels = np.arange(40) % 10
    labels[7] = 12
    write_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels, False)
    before = snapshot(save_dir, root)
    args = train_args(save_dir, seed=2)  # another run beside the earlier one, whose files must stay
    args.dataset, args.dataset_root = "mnist", str(root)
    err = fails(capsys, train.main, args)
    assert "train-labels-idx1-ubyte" in err and "outside 0..9" in err and "12 at position 7" in err
    assert_kept(before)


@pytest.mark.parametrize("dataset", ["cifar10", "svhn", "ambiguous_mnist"])
def test_labels_out_of_range_in_every_format_name_the_file(tmp_path, dataset):
    if dataset == "cifar10":
        write_cifar10(tmp_path)
        path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
        entry = pickle.loads(path.read_bytes())
        entry["labels"][2] = 10
        path.write_bytes(pickle.dumps(entry))
    elif dataset == "svhn":
        x, y = write_svhn(tmp_path, "train")
        y[4] = 11
        scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
        path = tmp_path / "train_32x32.mat"
    else:
        samples, labels = write_amnist(tmp_path, 20)
        labels[3, 1] = -1
        path = tmp_path / "amnist_labels.pt"
        torch.save(labels, path)
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*outside") as info:
        data.load_split(dataset, tmp_path, "train")
    one_sentence(f"error: {info.value}")


# ----------------------------------------------------------------------------------------------------------
# 2-4. Numeric flags and flag combinations of train.py, refused before anything is read or written


@pytest.mark.parametrize("coeff", ["0", "-1"])
def test_a_non_positive_coeff_is_refused(save_dir, capsys, coeff):
    before = snapshot(save_dir)
    err = fails(capsys, train.main, train_args(save_dir, "--model", "resnet18", "--base-width", "2", "-sn",
                                               "--coeff", coeff))  # fmt: skip
    assert f"--coeff must be a finite number greater than 0, got {float(coeff)}" in err
    assert_kept(before)  # in particular no resnet18_sn_-1.0_1_1.model


def test_a_negative_learning_rate_is_refused(save_dir, capsys):
    before = snapshot(save_dir)
    err = fails(capsys, train.main, train_args(save_dir, "--lr", "-0.1"))
    assert "--lr must be a finite number greater than 0, got -0.1" in err
    assert_kept(before)


def test_nesterov_with_adam_is_refused(save_dir, capsys):
    before = snapshot(save_dir)
    err = fails(capsys, train.main, train_args(save_dir, "--nesterov", "--opt", "adam"))
    assert "--nesterov applies to --opt sgd only" in err and "drop --nesterov" in err
    assert_kept(before)


# ----------------------------------------------------------------------------------------------------------
# 5-7. Checkpoints that do not fit the flags: the flag that differs is named


def _resnet_checkpoint(path: Path, **kwargs) -> None:
    torch.manual_seed(0)
    model = net.create_model("resnet18", num_classes=10, mnist=True, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def test_a_checkpoint_of_another_width_names_the_width_flag(tmp_path, capsys):
    _resnet_checkpoint(tmp_path / "runs" / "Run1" / "resnet18_1_1.model", base_width=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "res_earlier.json").write_text("{}")
    before = snapshot(tmp_path)
    args = eval_args(tmp_path / "runs", out, "--base-width", "2")
    args.model = "resnet18"
    err = fails(capsys, evaluate.main, args)
    assert "2 times as wide as these flags build: pass --base-width 4" in err
    assert "input" not in err and "--dataset" not in err
    assert_kept(before)


def test_an_sn_checkpoint_without_mod_names_mod_only(tmp_path, capsys):
    # The original's ensemble naming ignores -sn/-mod, so the file is found and only loading can tell.
    _resnet_checkpoint(tmp_path / "runs" / "Run1" / "resnet18_1_1.model", base_width=2, spectral_normalization=True,
                       mod=True)  # fmt: skip
    before = snapshot(tmp_path)
    args = eval_args(tmp_path / "runs", tmp_path / "out", "--base-width", "2", "-sn", "--ensemble", "1",
                     model_type="ensemble")  # fmt: skip
    args.model = "resnet18"
    err = fails(capsys, evaluate.main, args)
    assert "add -mod" in err and "drop -sn" not in err and "add -sn" not in err
    assert_kept(before)


@pytest.fixture(scope="module")
def sn_run(tmp_path_factory) -> Path:
    """A train.py run of a ResNet-18 (base width 2) with -sn -mod --coeff 6: its .model and resume file."""
    folder = tmp_path_factory.mktemp("sn_run")
    train.main(train_args(folder, "--model", "resnet18", "--base-width", "2", "-sn", "-mod", "--coeff", "6"))
    return folder


def test_a_checkpoint_loaded_with_another_coeff_names_coeff(sn_run, tmp_path, capsys):
    """The state dict of an SN network does not hold its coeff, so it loads silently with any --coeff; the
    run's resume file beside it records the flags, and they are compared."""
    folder = tmp_path / "pretrained"
    shutil.copytree(sn_run, folder)
    before = snapshot(folder)
    args = al_args(tmp_path / "no_data_needed", tmp_path / "out", "-ambiguous", "--trained-model", "resnet18",
                   "-tsn", "-tmod", "--trained-base-width", "2", "--saved-model-path", str(folder),
                   "--saved-model-name", "resnet18_sn_6.0_mod_1_1.model")  # fmt: skip
    err = fails(capsys, active_learning.main, args)
    assert "--tcoeff 6.0 there vs 3.0 here" in err and "resnet18_sn_6.0_mod_1_resume.pt" in err
    assert_kept(before)
    # The same through tools.plots (--coeff) and with the right value it loads.
    with pytest.raises(UserError, match="--coeff 6.0 there vs 3.0 here"):
        plots.load_model("resnet18", folder / "resnet18_sn_6.0_mod_1_1.model", "digits", sn=True, mod=True,
                         base_width=2)  # fmt: skip
    plots.load_model("resnet18", folder / "resnet18_sn_6.0_mod_1_1.model", "digits", sn=True, mod=True, coeff=6.0,
                     base_width=2)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# 8. After a non-finite loss: advice that works, and --lr may change on resume


def _poison_loss(monkeypatch, from_call: int, huge_before: bool = False) -> None:
    """The loss is NaN from call `from_call` on; with `huge_before`, earlier calls report a loss of 1e33 (with
    the gradient of the true loss, so the weights stay finite): a state whose loss had exploded."""
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = F.cross_entropy(logits, labels)
        if calls["n"] >= from_call:
            return loss * float("nan")
        return loss - loss.detach() + 1e33 if huge_before else loss

    monkeypatch.setitem(LOSSES, "cross_entropy", poisoned)


def test_a_nan_stop_advises_a_resume_with_a_lower_lr_and_that_resume_works(
    save_dir, capsys, monkeypatch, caplog
):
    other = (
        save_dir / "lenet_2"
    )  # the run resumes in its own folder; the earlier run's files stay as they are
    before = snapshot(save_dir)
    _poison_loss(monkeypatch, from_call=3)  # epoch 1 (2 steps) is fine, epoch 2 is not
    err = fails(
        capsys, train.main, train_args(other, "--log-interval", "1", "--first-milestone", "2", epochs=3)
    )
    assert "epoch 2" in err and "the state after epoch 1" in err and "--resume and a lower --lr" in err
    assert_kept(before, nothing_added=False)
    resume_file = other / "lenet_1_resume.pt"
    saved = resume_file.read_bytes()

    monkeypatch.setitem(LOSSES, "cross_entropy", F.cross_entropy)
    with caplog.at_level("WARNING"):
        result = train.main(train_args(other, "--resume", "--lr", "0.01", "--first-milestone", "2", epochs=3))
    assert "--lr changed on resume from 0.1 to 0.01" in caplog.text
    assert [h.lr for h in result["history"]] == pytest.approx(
        [0.1, 0.01, 0.001]
    )  # the schedule goes on from 0.01
    assert resume_file.read_bytes() != saved  # continued, and the earlier run's files are untouched
    assert_kept(before, nothing_added=False)


def test_a_diverged_state_is_not_offered_as_a_good_one(tmp_path, capsys, monkeypatch):
    # Epoch 1 ends with a huge but finite loss (the weights have exploded), epoch 2 with NaN.
    _poison_loss(monkeypatch, from_call=3, huge_before=True)
    err = fails(capsys, train.main, train_args(tmp_path, "--log-interval", "1", epochs=3))
    assert (
        "already diverged" in err
        and "do not resume" in err
        and "without --resume and with a lower --lr" in err
    )
    assert "last good state" not in err


# ----------------------------------------------------------------------------------------------------------
# 9. evaluate.py and a checkpoint with NaN weights: a failed run with its reason, final JSON, exit 1


def test_nan_weights_are_a_failed_run_with_a_reason(earlier_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "Run1").mkdir(parents=True)
    (runs / "Run2").mkdir()
    shutil.copy(earlier_run / "lenet_1_1.model", runs / "Run1")
    state = torch.load(earlier_run / "lenet_1_1.model", weights_only=True)
    state["fc1.weight"][0, 0] = float("nan")
    torch.save(state, runs / "Run2" / "lenet_2_1.model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "res_lenet_1_gmm_digits_digits_ood.json").write_text('{"earlier": true}')
    before = snapshot(runs, out)
    err = fails(capsys, evaluate.main, eval_args(runs, out, runs=2), code=1)
    assert "1 of 2 runs failed" in err and "failed_runs" in err
    assert_kept(before, nothing_added=False)
    result = json.loads((out / "res_lenet_1_softmax_digits_digits_ood.json").read_text())
    (failure,) = result["failed_runs"]
    assert failure["run"] == 2 and "lenet_2_1.model" in failure["reason"] and "NaN" in failure["reason"]
    assert result["values"]["accuracy"][0] is not None and result["values"]["accuracy"][1] is None
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["res_lenet_1_gmm_digits_digits_ood.json", "res_lenet_1_softmax_digits_digits_ood.json"]
    )  # no .partial left


def test_non_finite_outputs_are_a_failed_run_too(earlier_run, tmp_path, capsys):
    """Finite weights can still overflow: a huge last layer gives infinite logits."""
    (tmp_path / "runs" / "Run1").mkdir(parents=True)
    state = torch.load(earlier_run / "lenet_1_1.model", weights_only=True)
    state["fc3.weight"].fill_(3e38)  # finite, but the logits overflow
    torch.save(state, tmp_path / "runs" / "Run1" / "lenet_1_1.model")
    fails(capsys, evaluate.main, eval_args(tmp_path / "runs", tmp_path / "out"), code=1)
    (failure,) = json.loads((tmp_path / "out" / "res_lenet_1_softmax_digits_digits_ood.json").read_text())[
        "failed_runs"
    ]
    assert "NaN or infinite logits" in failure["reason"]


# ----------------------------------------------------------------------------------------------------------
# 10-11. active_learning.py: the labelled-set limit holds, and finished experiments are not replaced


def test_an_acquisition_batch_beyond_the_limit_is_refused(mnist_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_accs_other.json").write_text('{"0": [50.0]}')
    before = snapshot(out)
    args = al_args(mnist_root, out, "--acquisition-batch-size", "5000", max_samples=40)
    err = fails(capsys, active_learning.main, args)
    assert "--acquisition-batch-size 5000 is more than the 20 samples" in err and "at most 20" in err
    assert_kept(before)


def test_the_last_acquisition_is_cut_to_the_limit(mnist_root, tmp_path):
    state = active_learning.main(al_args(mnist_root, tmp_path, max_samples=27))
    sizes = [20, 25, 27]
    assert len(state["runs"]["0"]["labelled"]) == 27 and len(state["runs"]["0"]["test_accs"]) == len(sizes)


def test_rerunning_an_experiment_without_resume_is_refused(mnist_root, tmp_path, capsys):
    active_learning.main(al_args(mnist_root, tmp_path, max_samples=20))
    before = snapshot(tmp_path)
    err = fails(capsys, active_learning.main, al_args(mnist_root, tmp_path, max_samples=20))
    assert "earlier run of this experiment" in err and "--resume" in err and "--overwrite" in err
    assert_kept(before)
    # An interrupted one too (its state says the run is not done).
    state_file = tmp_path / "al_state_lenet_1_softmax_mnist.json"
    state = json.loads(state_file.read_text())
    state["runs"]["0"]["done"] = False
    state_file.write_text(json.dumps(state))
    before = snapshot(tmp_path)
    fails(capsys, active_learning.main, al_args(mnist_root, tmp_path, max_samples=20))
    assert_kept(before)
    # --overwrite starts over; --resume and --overwrite together are refused.
    fails(
        capsys, active_learning.main, al_args(mnist_root, tmp_path, "--resume", "--overwrite", max_samples=20)
    )
    active_learning.main(al_args(mnist_root, tmp_path, "--overwrite", max_samples=20))
    assert json.loads(state_file.read_text())["runs"]["0"]["done"] is True


# ----------------------------------------------------------------------------------------------------------
# 12. A garbage amnist_samples.pt: which file, and what it should hold


def test_a_garbage_ambiguous_mnist_file_is_named_in_one_sentence(
    save_dir, mnist_root, tmp_path, capsys, recwarn
):
    root = tmp_path / "data"
    shutil.copytree(mnist_root, root)
    write_amnist(root, 20)
    (root / "amnist_samples.pt").write_bytes(b"\x80\x04garbage that torch.load cannot read" * 10)
    before = snapshot(save_dir, root)
    args = train_args(save_dir, seed=2)  # another run beside the earlier one, whose files must stay
    args.dataset, args.dataset_root = "dirty_mnist", str(root)
    err = fails(capsys, train.main, args)
    assert "amnist_samples.pt" in err and "float tensor [N, 1, 28, 28]" in err
    assert "weights_only" not in err and "issue" not in err
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # nor torch's advice as a warning
    assert_kept(before)


# ----------------------------------------------------------------------------------------------------------
# 13. python -m tools.plots al and a bad or wrong JSON


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not valid JSON"),
        (
            '{"mean": {"accuracy": 0.9}, "std": {}}',
            "the key 'mean' is not a run index",
        ),  # an evaluate.py result
        ('{"0": {"0": [0.1, 0.2]}}', "run 0 is not a non-empty list of numbers"),  # an entropies file
        ("[]", "it holds a JSON list"),
    ],
)
def test_plots_al_with_a_wrong_json_names_the_file(tmp_path, capsys, content, expected):
    bad = tmp_path / "curve.json"
    bad.write_text(content)
    (tmp_path / "al.png").write_bytes(b"an earlier figure")
    before = snapshot(tmp_path)
    args = plots.get_args_parser().parse_args(
        ["al", "--curve", f"A={bad}", "--out", str(tmp_path / "al.png")]
    )
    err = fails(capsys, plots.main, args)
    assert str(bad) in err and expected in err and "run indices" in err
    assert_kept(before)


@pytest.mark.slow
def test_the_command_itself(tmp_path):
    bad = tmp_path / "curve.json"
    bad.write_text("{not json")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "tools.plots", "al", "--curve", f"A={bad}", "--out", str(tmp_path / "al.png")],
        cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace",
    )  # fmt: skip
    assert result.returncode == 2
    assert "not valid JSON" in one_sentence(result.stderr) and not (tmp_path / "al.png").exists()


# ----------------------------------------------------------------------------------------------------------
# 14. Every other flag: one place per script checks them all, before anything is read or written


TRAIN_BAD = [
    (["-b", "0"], "-b must be a whole number at least 1"),
    (["-tb", "0"], "-tb must"),
    (["-e", "0"], "-e must"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--mom", "1.5"], "--mom must be a finite number at least 0 and below 1"),
    (["--decay=-1e-4"], "--decay must"),
    (["--first-milestone", "0"], "--first-milestone must"),
    (["--first-milestone", "5", "--second-milestone", "5"], "--second-milestone 5 must come after"),
    (["--log-interval", "0"], "--log-interval must"),
    (["--save-interval", "0"], "--save-interval must"),
    (["--workers", "-1"], "--workers must be a whole number at least 0"),
    (["--validate-every", "-2"], "--validate-every must"),
    (["--steps-per-epoch", "-1"], "--steps-per-epoch must"),
    (["--seed", "-1"], "--seed must be a whole number between 0 and 4294967295"),
    (["--val-seed", str(2**32)], "--val-seed must"),
    (["--coeff", "inf"], "--coeff must"),
    (["--mom", "0", "--nesterov"], "--nesterov needs a momentum above 0"),
    (["--depth", "10"], "--depth does not apply to --model lenet"),
    (["--model", "resnet18", "--base-width", "0"], "--base-width must"),
    (["--dataset", "digits_ood"], "has no training split"),
    (["--dataset", "imagenet21k"], "unknown data set 'imagenet21k'"),
    (["--resume", "nowhere/x_resume.pt"], "'nowhere/x_resume.pt' given to --resume does not exist"),
]


@pytest.mark.parametrize("argv, expected", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_flags(save_dir, capsys, argv, expected):
    before = snapshot(save_dir)
    assert expected in fails(capsys, train.main, train_args(save_dir, *argv))
    assert_kept(before)


EVALUATE_BAD = [
    (["--runs", "0"], "--runs must"),
    (["--ensemble", "0"], "--ensemble must"),
    (["--epoch", "0"], "--epoch must"),
    (["-b", "0"], "-b must"),
    (["--coeff", "0"], "--coeff must"),
    (["--seed", "-5"], "--seed must"),
    (["--weight-by-class-frequency"], "--weight-by-class-frequency applies to --model-type gmm only"),
    (["--dataset", "digits_ood"], "--dataset digits_ood has no training split"),
    (["--ood-dataset", "nope"], "unknown data set 'nope'"),
    (["--base-width", "4"], "--base-width does not apply to --model lenet"),
]


@pytest.mark.parametrize("argv, expected", EVALUATE_BAD, ids=[" ".join(a) for a, _ in EVALUATE_BAD])
def test_evaluate_flags(earlier_run, tmp_path, capsys, argv, expected):
    (tmp_path / "runs" / "Run1").mkdir(parents=True)
    shutil.copy(earlier_run / "lenet_1_1.model", tmp_path / "runs" / "Run1")
    before = snapshot(tmp_path)
    assert expected in fails(capsys, evaluate.main, eval_args(tmp_path / "runs", tmp_path, *argv))
    assert_kept(before)


AL_BAD = [
    (["--epochs", "0"], "--epochs must"),
    (["-b", "0"], "-b must"),
    (["-sb", "0"], "-sb must"),
    (["--samples-per-epoch", "0"], "--samples-per-epoch must"),
    (["--max-pool", "0"], "--max-pool must"),
    (["--runs", "0"], "--runs must"),
    (["--num-ensemble", "0"], "--num-ensemble must"),
    (["-mi"], "-mi applies to --al-type ensemble only"),
    (["--coeff", "-3"], "--coeff must"),
    (["--num-initial-samples", "15"], "--num-initial-samples must be a positive multiple of 10"),
    (["-ambiguous", "--saved-model-name", "x.model", "--threshold", "-1"], "--threshold must"),
    (["-ambiguous", "--saved-model-name", "x.model", "--tcoeff", "0"], "--tcoeff must"),
    (["-ambiguous", "--saved-model-name", "x.model", "--trained-depth", "0"], "--trained-depth must"),
    (["-ambiguous"], "-ambiguous needs the pretrained Dirty-MNIST model"),
    (["-ambiguous", "--saved-model-name", "x.model"], "x.model' does not exist"),
]


@pytest.mark.parametrize("argv, expected", AL_BAD, ids=[" ".join(a) for a, _ in AL_BAD])
def test_active_learning_flags(mnist_root, tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_accs_other.json").write_text('{"0": [50.0]}')
    before = snapshot(out)
    assert expected in fails(capsys, active_learning.main, al_args(mnist_root, out, *argv, max_samples=30))
    assert_kept(before)


PLOTS_BAD = [
    (["al", "--curve", "A={curve}", "--batch", "0"], "--batch must"),
    (["al", "--curve", "A={curve}", "--initial", "-1"], "--initial must"),
    (["al", "--curve", "{curve}"], "should be LABEL=PATH"),
    (["fig1", "--checkpoint", "A=lenet::{curve}", "--coeff", "0"], "--coeff must"),
    (["fig1", "--checkpoint", "A=lenet::{curve}", "--base-width", "0"], "--base-width must"),
    (["fig1", "--checkpoint", "A=resnet9::{curve}"], "unknown MODEL in --checkpoint"),
    (["fig1", "--checkpoint", "A=lenet:depth=10:{curve}"], "depth= in --checkpoint 'A=lenet:depth=10:"),
    (["fig1", "--checkpoint", "A=lenet::{curve}.missing"], "does not exist"),
]


@pytest.mark.parametrize("argv, expected", PLOTS_BAD, ids=[" ".join(a) for a, _ in PLOTS_BAD])
def test_plots_flags(tmp_path, capsys, argv, expected):
    curve = tmp_path / "curve.json"
    curve.write_text('{"0": [50.0, 60.0]}')
    before = snapshot(tmp_path)
    args = plots.get_args_parser().parse_args([a.format(curve=curve) for a in argv])
    assert expected in fails(capsys, plots.main, args)
    assert_kept(before)


GENERATOR_BAD = [
    (["--vae-lr", "0"], "--vae-lr must be a finite number greater than 0"),
    (["--ensemble-size", "2"], "--ensemble-size must be a whole number at least 3"),
    (["--min-entropy=-0.1"], "--min-entropy must"),
    (["--max-mi", "nan"], "--max-mi must"),
    (["--num-threads", "-1"], "--num-threads must"),
    (["--max-mnist", "50"], "--max-mnist must be a whole number at least 100"),
    (["--classifier-model", "resnet9"], "unknown --classifier-model 'resnet9'"),
    (["--density-quantile", "1"], "--density-quantile must"),
]


@pytest.mark.parametrize("argv, expected", GENERATOR_BAD, ids=[" ".join(a) for a, _ in GENERATOR_BAD])
def test_ambiguous_mnist_generator_flags(mnist_root, tmp_path, capsys, argv, expected):
    import tools.ambiguous_mnist as am

    (tmp_path / "amnist_manifest.json").write_text('{"earlier": true}')
    before = snapshot(tmp_path)
    args = am.get_args_parser().parse_args(["--mnist-root", str(mnist_root), "--out", str(tmp_path), *argv])
    assert expected in fails(capsys, am.main, args)
    assert_kept(before)


def test_every_readme_command_passes_its_script_checks():
    """The checks refuse bad values only: every command the README shows passes them (paths aside)."""
    import importlib

    from test_readme import _module_and_args, readme_commands

    checked = 0
    for command in readme_commands():
        module_name, argv = _module_and_args(command)
        module = importlib.import_module(module_name)
        check = getattr(module, "check_args", None)
        if check is None:
            continue
        args = module.get_args_parser().parse_args(argv)
        try:
            check(args)
        except UserError as err:  # a path of the example that does not exist here is fine
            assert "does not exist" in str(err) or "it should be a folder" in str(err), (command, err)
        checked += 1
    assert checked >= 10


def test_check_number_refuses_non_finite_values():
    """`check_number` takes the values argparse makes (float('nan'), 1e309 as inf) as non-finite."""
    from utils.validation import check_number

    for value in (float("nan"), float("inf"), -math.inf, float("1e309")):
        with pytest.raises(UserError, match="finite"):
            check_number(value, "--x", above=0)
    check_number(1e-300, "--x", above=0)
