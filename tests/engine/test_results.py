"""engine/result_tables.py: the original DDU result JSON (`mean`, `std` as standard error, `values`) over runs."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from engine.result_tables import (
    ORIGINAL_KEYS,
    aggregate,
    format_table,
    read_results,
    standard_error,
    table_rows,
)


def original_stderr(values: list[float]) -> float:
    """The original evaluate.py's formula: `tensor.std() / sqrt(n)` (torch's std is unbiased)."""
    return (torch.tensor(values, dtype=torch.float64).std() / math.sqrt(len(values))).item()


def test_original_keys_are_the_original_evaluate_keys_in_order():
    assert ORIGINAL_KEYS == (
        "accuracy", "ece", "m1_auroc", "m1_auprc", "m2_auroc", "m2_auprc",
        "t_ece", "t_m1_auroc", "t_m1_auprc", "t_m2_auroc", "t_m2_auprc",
    )  # fmt: skip


@pytest.mark.parametrize(
    "values", [[1.0, 2.0, 3.0, 4.0], [0.9, 0.8, 0.7], [0.5, 0.5], [0.91, 0.93, 0.9, 0.95, 0.94]]
)
def test_standard_error_is_the_unbiased_std_over_sqrt_n(values):
    assert standard_error(values) == pytest.approx(original_stderr(values), rel=1e-12)


def test_standard_error_by_hand_and_of_one_value():
    # [1, 2, 3, 4]: mean 2.5, sum of squares 5, unbiased variance 5/3, stderr sqrt(5/3) / 2.
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    # The original gives NaN for a single run (the unbiased std of one value), which json.dump writes as
    # the invalid token NaN; null keeps the key and says "undefined" in valid JSON.
    with warnings.catch_warnings():  # torch warns that one value has no degrees of freedom
        warnings.simplefilter("ignore")
        assert math.isnan(original_stderr([0.7]))
    assert standard_error([0.7]) is None and standard_error([]) is None


def test_a_single_run_writes_a_null_std_that_is_valid_json():
    result = aggregate([{"accuracy": 0.9, "m1_auroc": 0.8}], {"runs": 1})
    assert list(result["std"]) == list(result["mean"])  # the keys stay
    assert all(value is None for value in result["std"].values())

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(json.dumps(result, allow_nan=False), parse_constant=refuse) == result


def test_aggregate_means_stderrs_values_and_info():
    runs = [{key: 0.1 * (i + 1) + j for j, key in enumerate(ORIGINAL_KEYS)} for i in range(3)]
    info = {"model_type": "gmm", "runs": 3}
    result = aggregate(runs, info)
    assert list(result) == ["mean", "std", "values", "info"]
    assert result["info"] == info
    for section in ("mean", "std", "values"):
        assert list(result[section]) == list(ORIGINAL_KEYS)
    for j, key in enumerate(ORIGINAL_KEYS):
        values = [0.1 + j, 0.2 + j, 0.3 + j]
        assert result["values"][key] == pytest.approx(values)
        assert result["mean"][key] == pytest.approx(0.2 + j)
        assert result["std"][key] == pytest.approx(original_stderr(values))


def test_aggregate_keeps_extra_keys_after_the_original_ones_in_first_seen_order():
    runs = [
        {"nll": 0.3, "accuracy": 0.9, "temperature": 1.5},
        {"accuracy": 0.8, "mahalanobis_auroc": 0.7, "nll": 0.5},  # extras may be missing from a run
    ]
    result = aggregate(runs, {})
    keys = list(result["mean"])
    assert keys == [*ORIGINAL_KEYS, "nll", "temperature", "mahalanobis_auroc"]
    assert result["values"]["accuracy"] == [0.9, 0.8]
    assert result["values"]["temperature"] == [1.5, None]
    assert result["values"]["mahalanobis_auroc"] == [None, 0.7]
    assert result["mean"]["temperature"] == 1.5 and result["std"]["temperature"] is None  # one value
    assert result["mean"]["nll"] == pytest.approx(0.4)
    # An original key no run produced is still there, as null.
    assert result["values"]["t_m2_auprc"] == [None, None]
    assert result["mean"]["t_m2_auprc"] is None and result["std"]["t_m2_auprc"] is None


def test_aggregate_records_a_failed_run_as_null_and_averages_the_others():
    runs = [{"accuracy": 0.9, "gmm_jitter": 0.0}, None, {"accuracy": 0.7, "gmm_jitter": 1e-6}]
    result = aggregate(runs, {"runs": 3})
    assert result["values"]["accuracy"] == [0.9, None, 0.7]
    assert result["values"]["gmm_jitter"] == [0.0, None, 1e-6]
    assert result["mean"]["accuracy"] == pytest.approx(0.8)
    assert result["std"]["accuracy"] == pytest.approx(original_stderr([0.9, 0.7]))
    assert all(len(values) == 3 for values in result["values"].values())


def test_aggregate_with_every_run_failed():
    result = aggregate([None, None], {})
    assert list(result["mean"]) == list(ORIGINAL_KEYS)
    assert all(v is None for v in result["mean"].values())
    assert all(v == [None, None] for v in result["values"].values())


# ----------------------------------------------------------------------------------------------------
# The paper's table from result files (python -m engine.result_tables table)


def result_file(folder, name, model_type, runs: list[dict | None], **info) -> str:
    """A result JSON as evaluate.py writes it, from per-run metrics (None: a failed run)."""
    info = {"model": "resnet18", "sn": True, "mod": True, "coeff": 3.0, "dataset": "cifar10",
            "ood_dataset": "svhn", "model_type": model_type, "ensemble": 5, **info}  # fmt: skip
    result = aggregate(runs, info)
    result["failed_runs"] = [{"run": i + 1} for i, r in enumerate(runs) if r is None]
    path = folder / name
    path.write_text(json.dumps(result))
    return str(path)


def run(accuracy, ece, m1, m2, **extra) -> dict:
    return {"accuracy": accuracy, "ece": ece, "m1_auroc": m1, "m1_auprc": m1 - 0.05, "m2_auroc": m2,
            "m2_auprc": m2 - 0.05, **extra}  # fmt: skip


def test_each_method_reads_its_keys_and_runs_are_pooled_and_failures_counted(tmp_path):
    extra = {"msp_auroc": 0.91, "msp_auprc": 0.9, "mahalanobis_auroc": 0.95, "mahalanobis_auprc": 0.94}
    softmax = [
        result_file(tmp_path, "res_a.json", "softmax", [run(0.9, 0.02, 0.8, 0.7, **extra)] * 2),
        result_file(tmp_path, "res_b.json", "softmax", [run(0.94, 0.04, 0.9, 0.9, **extra)] * 2, seed=3),
    ]
    gmm = result_file(tmp_path, "res_g.json", "gmm", [run(0.92, 0.03, 0.97, 0.6, **extra), None])
    ensemble_file = result_file(
        tmp_path, "res_e.json", "ensemble", [run(0.95, 0.01, 0.3, 0.93)], sn=False, mod=False
    )
    other = result_file(tmp_path, "res_o.json", "gmm", [run(0.8, 0.1, 0.85, 0.5, msp_auroc=0.7, msp_auprc=0.6)],
                        model="lenet", sn=False, mod=False)  # fmt: skip
    rows = table_rows(read_results([*softmax, gmm, ensemble_file, other]))
    by = {(r.method.name, r.network): r for r in rows}
    assert list(by) == [
        ("Softmax", "resnet18_sn_3.0_mod"), ("Energy", "resnet18_sn_3.0_mod"), ("Ensemble", "resnet18 x5"),
        ("Ensemble (MI)", "resnet18 x5"), ("DDU", "lenet"), ("DDU", "resnet18_sn_3.0_mod"), ("MSP", "lenet"),
        ("MSP", "resnet18_sn_3.0_mod"), ("Mahalanobis", "resnet18_sn_3.0_mod"),
    ]  # fmt: skip
    # softmax: m2 (softmax entropy) is Softmax, m1 (log-sum-exp) is Energy; both files pooled: 4 runs
    assert by["Softmax", "resnet18_sn_3.0_mod"].values["auroc"] == [0.7, 0.7, 0.9, 0.9]
    assert by["Energy", "resnet18_sn_3.0_mod"].values["auprc"] == pytest.approx([0.75, 0.75, 0.85, 0.85])
    assert by["Ensemble", "resnet18 x5"].values["auroc"] == [0.93]  # predictive entropy (m2)
    assert by["Ensemble (MI)", "resnet18 x5"].values["auroc"] == [0.3]  # mutual information (m1)
    ddu = by["DDU", "resnet18_sn_3.0_mod"]
    assert ddu.values["auroc"] == [0.97, None] and (ddu.runs, ddu.failed) == (2, 1)
    # MSP and Mahalanobis of a network with softmax files come from those only (the gmm file evaluates the
    # same checkpoints); a network with only a gmm file takes them from it.
    assert by["MSP", "resnet18_sn_3.0_mod"].runs == 4 and by["MSP", "lenet"].values["auroc"] == [0.7]
    assert ("Mahalanobis", "lenet") not in by  # that file has no Mahalanobis keys

    text = format_table(rows)
    assert "**cifar10 vs svhn**" in text
    mean, error = 100 * 0.8, 100 * standard_error([0.7, 0.7, 0.9, 0.9])
    assert (
        f"| Softmax | softmax entropy | resnet18_sn_3.0_mod | 92.00 ± 1.15 | 3.00 ± 0.58 | {mean:.2f} ± {error:.2f} |"
        in text
    )
    assert (
        "| DDU | feature density (GDA) | resnet18_sn_3.0_mod | 92.00 | 3.00 | 97.00 | 92.00 | 1 of 2 (1 failed) |"
        in text
    )
    scaled_run = run(0.9, 0.02, 0.8, 0.7, t_ece=0.01, t_m1_auroc=0.81, t_m1_auprc=0.8, t_m2_auroc=0.71,
                     t_m2_auprc=0.7, **extra)  # fmt: skip
    scaled = result_file(tmp_path, "res_t.json", "softmax", [scaled_run])
    by_scaled = {r.method.name: r for r in table_rows(read_results([scaled]), temperature_scaled=True)}
    assert by_scaled["Softmax"].values["auroc"] == [0.71] and by_scaled["Energy"].values["auroc"] == [0.81]
    assert by_scaled["Softmax"].values["ece"] == [0.01] and by_scaled["MSP"].values["auroc"] == [0.91]
    csv_lines = format_table(rows, "csv").splitlines()
    assert csv_lines[0].startswith(
        "dataset,ood_dataset,method,score,network,runs,failed,accuracy,accuracy_stderr"
    )
    assert csv_lines[1].startswith("cifar10,svhn,Softmax,softmax entropy,resnet18_sn_3.0_mod,4,0,0.92,")
    assert any(
        line.startswith("cifar10,svhn,DDU,feature density (GDA),resnet18_sn_3.0_mod,2,1,")
        for line in csv_lines
    )


def test_results_table_command_and_its_errors(tmp_path, capsys):
    from tools import results

    path = result_file(tmp_path, "res_s.json", "softmax", [run(0.9, 0.02, 0.8, 0.7)] * 3)
    out = tmp_path / "table.csv"
    results.main(results.get_args_parser().parse_args(["table", path, "--format", "csv", "--out", str(out)]))
    assert capsys.readouterr().out == out.read_text() and out.read_text().count("\n") == 3  # header + 2 rows
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "broken.json").write_text("{")
    for bad, words in (
        ("missing.json", "does not exist"),
        ("other.json", "not a result file"),
        ("broken.json", "not a JSON"),
    ):
        with pytest.raises(SystemExit):
            results.main(results.get_args_parser().parse_args(["table", str(tmp_path / bad)]))
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err
