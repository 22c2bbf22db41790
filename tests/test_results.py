"""utils/results.py: the original DDU result JSON (`mean`, `std` as standard error, `values`) over runs."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from utils.results import ORIGINAL_KEYS, aggregate, standard_error


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
