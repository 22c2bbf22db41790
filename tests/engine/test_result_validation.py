"""engine/result_tables.py reading result files that were edited by hand: every value the table reads is checked
(a list per metric, one number per run, fractions within [0, 1], as many runs as the file records), and a
file that breaks a rule is one sentence naming the file and the key, never a traceback or a wrong table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import eval_args, fails

import evaluate
from engine.result_tables import format_table, read_results, table_rows
from tools import results as results_tool
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")


def write_result(path: Path, runs: int = 2, **changes) -> Path:
    """A result file as evaluate.py writes it for `runs` runs of a softmax LeNet, with `changes` applied:
    `values__KEY=...` replaces one metric's list, `info__KEY=...` one setting, `KEY=...` a top-level entry."""
    info = {"model": "lenet", "sn": False, "mod": False, "coeff": 3.0, "model_type": "softmax",
            "dataset": "digits", "ood_dataset": "digits_ood", "seed": 1, "runs": runs}  # fmt: skip
    per_run = {"accuracy": 0.9, "ece": 0.05, "m1_auroc": 0.8, "m1_auprc": 0.7, "m2_auroc": 0.85, "nll": 0.4}
    result = {"values": {k: [v] * runs for k, v in per_run.items()}, "info": info}
    for name, value in changes.items():
        section, _, key = name.partition("__")
        if key:
            result[section][key] = value
        else:
            result[section] = value
    path.write_text(json.dumps(result))
    return path


def refused(path: Path) -> str:
    with pytest.raises(UserError) as info:
        read_results([path])
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_a_file_as_evaluate_writes_it_is_read(tmp_path):
    rows = table_rows(read_results([write_result(tmp_path / "res.json")]))
    assert rows and all(row.runs == 2 for row in rows)


def test_a_failed_run_is_null_and_accepted(tmp_path):
    path = write_result(tmp_path / "res.json", values__m1_auroc=[0.8, None])
    assert read_results([path])


def test_a_string_value_names_the_file_and_key(tmp_path):
    message = refused(write_result(tmp_path / "res.json", values__m2_auroc="0.85"))
    assert "values.m2_auroc is a str" in message and "list" in message


def test_a_string_inside_the_list_names_the_run(tmp_path):
    message = refused(write_result(tmp_path / "res.json", values__m2_auroc=[0.85, "0.85"]))
    assert "values.m2_auroc[1]" in message and "not a finite number" in message


@pytest.mark.parametrize("value", [0.9, {"run1": 0.9}, None], ids=["number", "mapping", "null"])
def test_a_value_that_is_not_a_list_names_the_file_and_key(tmp_path, value):
    message = refused(write_result(tmp_path / "res.json", values__accuracy=value))
    assert "values.accuracy is a" in message


@pytest.mark.parametrize("value", [True, [0.8], float("nan")], ids=["bool", "nested", "nan"])
def test_a_run_value_that_is_not_a_number_is_refused(tmp_path, value):
    message = refused(write_result(tmp_path / "res.json", values__m1_auroc=[0.8, value]))
    assert "values.m1_auroc[1]" in message


def test_an_auroc_above_one_is_refused_not_printed_as_170(tmp_path):
    path = write_result(tmp_path / "res.json", values__m1_auroc=[0.8, 1.7])
    message = refused(path)
    assert "values.m1_auroc[1] is 1.7" in message and "[0, 1]" in message


@pytest.mark.parametrize("key", ["accuracy", "ece", "m1_auprc"])
def test_every_fraction_is_range_checked(tmp_path, key):
    assert f"values.{key}[0]" in refused(
        write_result(tmp_path / "res.json", **{f"values__{key}": [-0.1, 0.5]})
    )


def test_a_value_that_is_no_fraction_may_exceed_one(tmp_path):
    assert read_results([write_result(tmp_path / "res.json", values__nll=[2.5, 3.0])])


def test_three_values_for_one_run_are_refused(tmp_path):
    path = write_result(tmp_path / "res.json", runs=1, values__m1_auroc=[0.8, 0.9, 0.7])
    message = refused(path)
    assert "values.m1_auroc holds 3 values" in message and "1 run " in message and "info.runs" in message


def test_lists_of_different_lengths_are_refused_without_a_run_count(tmp_path):
    path = write_result(tmp_path / "res.json", info__runs=None, values__m1_auroc=[0.8, 0.9, 0.7])
    assert "different lengths" in refused(path)


@pytest.mark.parametrize(
    "runs", ["2", 0, 1.5, True, float("inf")], ids=["str", "zero", "fraction", "bool", "infinite"]
)
def test_a_run_count_that_is_no_count_is_refused(tmp_path, runs):
    assert "info.runs" in refused(write_result(tmp_path / "res.json", info__runs=runs))


def test_info_must_be_a_mapping_of_names(tmp_path):
    assert "'info' is a list" in refused(write_result(tmp_path / "res.json", info=[1, 2]))
    assert "info.model_type" in refused(write_result(tmp_path / "res2.json", info__model_type=["softmax"]))


def test_a_partial_file_counts_the_runs_done(tmp_path):
    """A `.partial` side file holds the runs done so far of the runs asked for."""
    partial = write_result(tmp_path / "res.json.partial", runs=2, info__runs=5, runs_done=2)
    assert read_results([partial])
    wrong = write_result(tmp_path / "other.json.partial", runs=2, info__runs=5, runs_done=3)
    assert "runs_done" in refused(wrong)


def test_the_table_command_says_it_in_one_sentence(tmp_path, capsys):
    path = write_result(tmp_path / "res.json", values__m1_auroc=[0.8, 1.7])
    args = results_tool.get_args_parser().parse_args(["table", str(path)])
    err = fails(capsys, results_tool.main, args)
    assert str(path) in err and "values.m1_auroc[1]" in err


def test_a_real_evaluation_passes_the_checks(earlier_run, tmp_path):
    (tmp_path / "Run1").mkdir()
    (tmp_path / "Run1" / "lenet_1_1.model").write_bytes((earlier_run / "lenet_1_1.model").read_bytes())
    evaluate.main(eval_args(tmp_path, tmp_path / "out"))
    files = sorted((tmp_path / "out").glob("res_*.json"))
    assert files and "digits vs digits_ood" in format_table(table_rows(read_results(files)))
