"""evaluate.py against several OoD sets in one command (`--ood_dataset a,b,c`): for each set the same result
file as a single-OoD command on the same checkpoints (to 1e-6), the in-distribution work done once per run,
one table with a column per set and group means, per-set failures, folder names and reruns.

Tiny LeNets (1 epoch of 2 steps on the embedded digits, trained once per module) against `digits_ood`, a tiny
MNIST written here, and the Ambiguous-digits test part, on the CPU.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers import train_args, write_mnist

import evaluate
import metrics
import train
from engine import evaluation_run
from engine.evaluation_run import ood_names, parse_ood_groups, result_label
from engine.networks import RunFailedError
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")  # the tiny MNIST here

OODS = ("digits_ood", "mnist", "digits_ambiguous")
TOLERANCE = 1e-6  # the bound; on one CPU the numbers are in fact identical


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """`single`: Run1 (seed 1), Run2 (seed 2); `ensemble`: Run1 with seeds 1, 2 (`--ensemble 2`); `root`:
    the data root with the tiny MNIST."""
    base = tmp_path_factory.mktemp("multi")
    for seed in (1, 2):
        train.main(train_args(base / "ensemble" / "Run1", seed=seed))
        (base / "single" / f"Run{seed}").mkdir(parents=True)
        shutil.copy(base / "ensemble" / "Run1" / f"lenet_{seed}_1.model", base / "single" / f"Run{seed}")
    write_mnist(base / "data", n_train=40, n_test=40)
    return {"single": base / "single", "ensemble": base / "ensemble", "root": base / "data"}


def eval_args(runs: dict[str, Path], out: Path, oods: str, model_type: str, *extra: str):
    ensemble = model_type == "ensemble"
    argv = [
        "--dataset", "digits", "--ood_dataset", oods, "--dataset-root", str(runs["root"]),
        "--load-path", str(runs["ensemble" if ensemble else "single"]), "--output-dir", str(out),
        "--no-gpu", "--epoch", "1", "--runs", "1" if ensemble else "2", "--model", "lenet",
        "--model-type", model_type, "-b", "256", *(["--ensemble", "2"] if ensemble else []), *extra,
    ]  # fmt: skip
    return evaluate.get_args_parser().parse_args(argv)


def result_file(out: Path, model_type: str, ood: str) -> dict:
    return json.loads((out / f"res_lenet_1_{model_type}_digits_{ood}.json").read_text())


def assert_same_numbers(multi: dict, single: dict) -> None:
    assert multi["failed_runs"] == single["failed_runs"]
    for section in ("values", "mean", "std"):
        assert list(multi[section]) == list(single[section]), section  # the same keys in the same order
        for key, value in single[section].items():
            got = multi[section][key]
            if value is None or got is None or isinstance(value, list) and None in value:
                assert got == value, (section, key)
            else:
                assert got == pytest.approx(value, abs=TOLERANCE, rel=0), (section, key)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["softmax", "gmm", "ensemble"])
def test_each_ood_set_gets_the_numbers_of_a_single_ood_command(runs, tmp_path, model_type, capsys):
    multi = evaluate.main(eval_args(runs, tmp_path / "multi", ",".join(OODS), model_type))
    assert list(multi) == list(OODS)
    for ood in OODS:
        single = evaluate.main(eval_args(runs, tmp_path / ood, ood, model_type))
        saved = result_file(tmp_path / "multi", model_type, ood)
        assert saved == json.loads(json.dumps(multi[ood]))
        assert_same_numbers(saved, result_file(tmp_path / ood, model_type, ood))
        assert_same_numbers(multi[ood], single)
        info = {k: v for k, v in saved["info"].items() if k != "output_dir"}
        assert info == {k: v for k, v in single["info"].items() if k != "output_dir"}  # ood_dataset: one set
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == sorted(
        f"res_lenet_1_{model_type}_digits_{ood}.json" for ood in OODS
    )  # one file per set, no side files left
    # The sets differ, so a mix-up of their results would show.
    assert (
        len({result_file(tmp_path / "multi", model_type, ood)["values"]["m2_auroc"][0] for ood in OODS}) == 3
    )


def test_the_in_distribution_work_is_done_once_per_run(runs, tmp_path, monkeypatch):
    passes, fits, temperatures = [], [], []
    real_collect, real_fit = evaluation_run.collect_outputs, metrics.DDUScorer.fit_features.__func__
    real_temperature = metrics.fit_temperature

    def collect(model, loader, *args, **kwargs):
        passes.append(loader)
        return real_collect(model, loader, *args, **kwargs)

    def fit(cls, *args, **kwargs):
        fits.append(1)
        return real_fit(cls, *args, **kwargs)

    def temperature(*args, **kwargs):
        temperatures.append(1)
        return real_temperature(*args, **kwargs)

    monkeypatch.setattr(evaluation_run, "collect_outputs", collect)
    monkeypatch.setattr(metrics.DDUScorer, "fit_features", classmethod(fit))
    monkeypatch.setattr(metrics, "fit_temperature", temperature)
    evaluate.main(eval_args(runs, tmp_path, ",".join(OODS), "gmm"))
    # Per run: test, validation and training split once, and each of the 3 OoD sets once.
    assert len(passes) == 2 * (3 + len(OODS)) and len(set(map(id, passes))) == 1 + len(OODS) + 2 * 2
    assert len(fits) == 2 and len(temperatures) == 2


def test_one_table_with_a_column_per_ood_set_and_group_means(runs, tmp_path, capsys):
    groups = ["near=digits_ambiguous", "far=digits_ood,mnist"]
    result = evaluate.main(eval_args(runs, tmp_path, ",".join(OODS), "softmax", "--ood-groups", *groups))
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert (
        header
        == "| method | score | network | accuracy | ECE | " + " | ".join(OODS) + " | near | far | runs |"
    )
    softmax_row = next(line for line in out.splitlines() if line.startswith("| Softmax |"))
    cells = [c.strip() for c in softmax_row.strip("|").split("|")]
    aurocs = {ood: result[ood]["mean"]["m2_auroc"] for ood in OODS}
    for i, ood in enumerate(OODS):
        assert cells[5 + i].startswith(f"{100 * aurocs[ood]:.2f} ± ")
    assert cells[8] == f"{100 * aurocs['digits_ambiguous']:.2f}"
    assert cells[9] == f"{100 * (aurocs['digits_ood'] + aurocs['mnist']) / 2:.2f}"
    assert out.count("| method") == 1  # one table
    for ood in OODS:  # AUPRC and FPR95 are in the files
        assert {"m2_auprc", "m2_fpr95"} <= set(result[ood]["mean"])


def test_a_failure_on_one_ood_set_leaves_the_others(runs, tmp_path, monkeypatch, capsys):
    real = evaluation_run.check_finite_outputs

    def check(outputs, source):
        if "OoD mnist" in outputs:
            raise RunFailedError(f"the network of {source} gives NaN or infinite logits on mnist (test)")
        return real(outputs, source)

    monkeypatch.setattr(evaluation_run, "check_finite_outputs", check)
    with pytest.raises(SystemExit) as info:
        evaluate.main(eval_args(runs, tmp_path, ",".join(OODS), "softmax"))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 2 of 2 runs failed against mnist") and "digits_ood" not in err
    assert [f["run"] for f in result_file(tmp_path, "softmax", "mnist")["failed_runs"]] == [1, 2]
    for ood in ("digits_ood", "digits_ambiguous"):
        saved = result_file(tmp_path, "softmax", ood)
        assert saved["failed_runs"] == [] and all(math.isfinite(v) for v in saved["values"]["m2_auroc"])


def test_a_rerun_continues_every_ood_set_from_its_side_file(runs, tmp_path, monkeypatch, capsys):
    real_run = evaluation_run.evaluate_run

    def interrupt_on_run_two(evaluator, args, run):
        if run == 2:
            raise KeyboardInterrupt
        return real_run(evaluator, args, run)

    with monkeypatch.context() as patch:
        patch.setattr(evaluation_run, "evaluate_run", interrupt_on_run_two)
        with pytest.raises(SystemExit) as info:
            evaluate.main(eval_args(runs, tmp_path, ",".join(OODS), "softmax"))
    assert info.value.code == 130 and "the 3 .partial files" in capsys.readouterr().err
    loads, real_load = [], evaluation_run.Evaluator.load
    monkeypatch.setattr(
        evaluation_run.Evaluator, "load", lambda self, path: loads.append(path) or real_load(self, path)
    )
    result = evaluate.main(eval_args(runs, tmp_path, ",".join(OODS), "softmax"))
    assert [Path(p).name for p in loads] == ["lenet_2_1.model"]
    assert all(len(result[ood]["values"]["accuracy"]) == 2 for ood in OODS)
    assert not list(tmp_path.glob("*.partial"))


def test_ood_lists_groups_and_folder_names():
    assert ood_names(" svhn, tiny-imagenet ,") == ["svhn", "tiny-imagenet"]
    assert result_label("Tiny-ImageNet") == "tiny_imagenet"
    assert result_label("folder:/data/my scans/") == "folder-my_scans"
    assert result_label("folder:relative/x.y-z") == "folder-x.y-z"
    with pytest.raises(UserError, match="both write the result of 'svhn'"):
        ood_names("svhn,SVHN")
    with pytest.raises(UserError, match="folder sets are told apart by their folder's name"):
        ood_names("folder:/a/scans,folder:/b/scans")
    with pytest.raises(UserError, match="names no data set"):
        ood_names(" , ")
    oods = ["svhn", "tiny_imagenet", "mnist"]
    assert parse_ood_groups(["near=tiny-imagenet", "far=svhn,mnist"], oods) == {
        "near": ["tiny_imagenet"],
        "far": ["svhn", "mnist"],
    }
    with pytest.raises(UserError, match="which --ood_dataset does not evaluate"):
        parse_ood_groups(["near=cifar100"], oods)
    with pytest.raises(UserError, match="GROUP=SET"):
        parse_ood_groups(["near"], oods)


def test_a_folder_ood_set_writes_a_safe_file_name(tmp_path):
    args = evaluate.get_args_parser().parse_args(
        ["--load-path", str(tmp_path), "--ood_dataset", "svhn,folder:/data/odd name!", "--dataset", "cifar10",
         "--output-dir", str(tmp_path), "--model", "resnet18"]
    )  # fmt: skip
    names = ood_names(args.ood_dataset)
    assert (
        evaluation_run.result_path(args, names[1]).name
        == "res_resnet18_1_softmax_cifar10_folder-odd_name_.json"
    )
    with pytest.raises(ValueError):
        evaluation_run.result_path(args)  # several sets: say which


def test_ood_group_errors_are_one_sentence(runs, tmp_path, capsys):
    args = eval_args(runs, tmp_path, ",".join(OODS), "softmax", "--ood-groups", "near=svhn")
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--ood-groups near holds svhn" in err


@pytest.mark.slow
def test_the_benchmark_runs_on_the_embedded_digits(tmp_path, capsys):
    from benchmarks import multi_ood

    out = tmp_path / "multi_ood.json"
    args = multi_ood.get_args_parser().parse_args(["--no-gpu", "--repeats", "1", "--json", str(out)])
    record = multi_ood.main(args)
    assert json.loads(out.read_text()) == record
    assert len(record["multi_wall_s"]) == len(record["three_singles_cpu_s"]) == 1
    assert record["wall_ratio_of_medians"] > 0 and record["cpu_ratio_of_medians"] > 0
    assert {"date_utc", "cpu", "threads", "load_1min_before_after"} <= set(record)
