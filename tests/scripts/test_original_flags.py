"""Every flag of the original DDU code's parsers parses in the matching script here, with its defaults.

The tables are written from the original's `utils/args.py` (`training_args`, `eval_args`, `al_args`) and
the one flag its `train_ensemble.py` adds: each row is `(flag, a value to pass or None for a switch, the
destination here, the original's default)`. A default of `SKIP` is one this project documents as not
assumed (a required path, a model name the original cannot load).
"""

from __future__ import annotations

import json

import pytest

import active_learning
import evaluate
import train
from engine import evaluation_run
from utils.errors import UserError

SKIP = object()

# utils/args.py training_args() (train.py), plus train_ensemble.py's --ensemble.
TRAINING_FLAGS = [
    ("--seed", "3", "seed", SKIP),  # required in both
    ("--dataset", "cifar10", "dataset", "cifar10"),
    ("--dataset-root", "./", "dataset_root", "./"),
    ("--data-aug", None, "data_aug", True),
    ("-b", "64", "train_batch_size", 128),
    ("-tb", "64", "test_batch_size", 128),
    ("--no-gpu", None, "gpu", True),
    ("--model", "resnet50", "model", "resnet50"),
    ("-sn", None, "sn", False),
    ("--coeff", "3.0", "coeff", 3.0),
    ("-mod", None, "mod", False),
    ("-e", "350", "epoch", 350),
    ("--lr", "0.1", "learning_rate", 0.1),
    ("--mom", "0.9", "momentum", 0.9),
    ("--nesterov", None, "nesterov", False),
    ("--decay", "5e-4", "weight_decay", 5e-4),
    ("--opt", "sgd", "optimiser", "sgd"),
    ("--loss", "cross_entropy", "loss_function", "cross_entropy"),
    ("--loss-mean", None, "loss_mean", False),
    ("--log-interval", "50", "log_interval", 50),
    ("--save-interval", "25", "save_interval", 25),
    ("--saved_model_name", "resnet50_350.model", "saved_model_name", "resnet50_350.model"),
    ("--save-path", "./", "save_loc", "./"),
    ("--first-milestone", "150", "first_milestone", 150),
    ("--second-milestone", "250", "second_milestone", 250),
    ("--ensemble", "5", "ensemble", SKIP),  # train_ensemble.py's (default 5 there; train.py trains one model)
]

# utils/args.py eval_args() (evaluate.py).
EVAL_FLAGS = [
    ("--seed", "1", "seed", SKIP),  # required in the original, default 1 here
    ("--dataset", "cifar10", "dataset", "cifar10"),
    ("--ood_dataset", "svhn", "ood_dataset", "svhn"),
    ("--data-aug", None, "data_aug", False),
    ("--no-gpu", None, "no_gpu", False),  # the original's dest is `gpu` (True); here `no_gpu`
    ("-b", "128", "batch_size", 128),
    ("--load-path", "runs/", "load_path", SKIP),  # required here
    ("--model", "resnet50", "model", "resnet50"),
    ("--runs", "5", "runs", 5),
    ("-sn", None, "sn", False),
    ("--coeff", "3.0", "coeff", 3.0),
    ("-mod", None, "mod", False),
    ("--ensemble", "5", "ensemble", 5),
    ("--model-type", "gmm", "model_type", "softmax"),
]

# utils/args.py al_args() (active_learning_script.py, here active_learning.py).
AL_FLAGS = [
    ("--seed", "1", "seed", SKIP),  # required in both
    ("--model", "resnet18", "model", "resnet18"),
    ("-ambiguous", None, "ambiguous", False),
    ("--dataset-root", "./", "dataset_root", "./"),
    ("--trained-model", "resnet18", "trained_model", SKIP),  # the original's default resnet18_sn is no model
    ("-tsn", None, "tsn", False),
    ("--tcoeff", "3.0", "tcoeff", 3.0),
    ("-tmod", None, "tmod", False),
    ("--saved-model-path", "./", "saved_model_path", "./"),
    ("--saved-model-name", "m.model", "saved_model_name", SKIP),  # resnet18_sn_3.0_50.model: not assumed
    ("--threshold", "1.0", "threshold", 1.0),
    ("--subsample", "1000", "subsample", 1000),
    ("--num-ensemble", "5", "num_ensemble", 5),
    ("-sn", None, "sn", False),
    ("--coeff", "3.0", "coeff", 3.0),
    ("-mod", None, "mod", False),
    ("--al-type", "gmm", "al_type", "softmax"),
    ("-mi", None, "mi", False),
    ("--num-initial-samples", "20", "num_initial_samples", 20),
    ("--max-training-samples", "300", "max_training_samples", 300),
    ("--acquisition-batch-size", "5", "acquisition_batch_size", 5),
    ("-e", "20", "epochs", 20),
    ("-b", "64", "train_batch_size", 64),
    ("-tb", "512", "test_batch_size", 512),
    ("-sb", "128", "scoring_batch_size", 128),
]

SCRIPTS = {
    "train": (train.get_args_parser, TRAINING_FLAGS, ["--seed", "1"]),
    "evaluate": (evaluate.get_args_parser, EVAL_FLAGS, ["--load-path", "runs/"]),
    "active_learning": (active_learning.get_args_parser, AL_FLAGS, ["--seed", "1"]),
}


def _argv(flags) -> list[str]:
    argv = []
    for flag, value, _, _ in flags:
        argv += [flag] if value is None else [flag, value]
    return argv


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_original_flag_parses_together_in_the_matching_script(script):
    get_parser, flags, _ = SCRIPTS[script]
    args = get_parser().parse_args(_argv(flags))
    for flag, value, dest, _ in flags:
        assert hasattr(args, dest), flag
    if script == "active_learning":
        assert args.epochs == 20 and args.ambiguous and args.mi
    if script == "evaluate":
        assert args.data_aug is True and args.model_type == "gmm"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_original_flags_have_the_original_defaults(script):
    get_parser, flags, required = SCRIPTS[script]
    args = get_parser().parse_args(required)
    for flag, _, dest, default in flags:
        if default is not SKIP:
            assert getattr(args, dest) == default, flag


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_original_flag_parses_alone(script):
    get_parser, flags, required = SCRIPTS[script]
    for row in flags:
        get_parser().parse_args(required + _argv([row]))


def test_evaluate_without_load_path_ends_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(evaluate.get_args_parser().parse_args([]))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "--load-path" in err and err.count("\n") == 0 and "Traceback" not in err
    with pytest.raises(UserError, match="needs --load-path"):
        evaluate.check_args(evaluate.get_args_parser().parse_args([]))


def test_the_result_info_keeps_the_original_keys(tmp_path, monkeypatch):
    # The original writes `info = vars(args)`: its keys for --load-path, --no-gpu and --data-aug are
    # load_loc, gpu and data_aug. Here they stand next to this project's names. main is stopped where it
    # first aggregates (in engine.evaluation_run), with the checkpoint check and the network runs replaced by
    # empty ones.
    (tmp_path / "runs").mkdir()
    args = evaluate.get_args_parser().parse_args(
        ["--load-path", str(tmp_path / "runs"), "--output-dir", str(tmp_path), "--dataset", "digits",
         "--ood_dataset", "digits_ood", "--model", "lenet", "--data-aug", "--no-gpu"]
    )  # fmt: skip
    captured = {}

    class Stop(Exception):
        pass

    def fake_aggregate(per_run, info):
        captured.update(info)
        raise Stop

    monkeypatch.setattr(evaluation_run, "check_checkpoints", lambda args: None)
    monkeypatch.setattr(evaluation_run, "checkpoint_fingerprints", lambda args: {})
    monkeypatch.setattr(evaluation_run, "Evaluator", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluation_run, "evaluate_run", lambda *args, **kwargs: {"digits_ood": {}})
    monkeypatch.setattr(evaluation_run, "aggregate", fake_aggregate)
    with pytest.raises(Stop):
        evaluate.main(args)
    info = json.loads(json.dumps(captured))
    assert info["load_loc"] == info["load_path"] == str(tmp_path / "runs")
    assert info["gpu"] is False and info["no_gpu"] is True and info["data_aug"] is True
