"""Accuracy, ECE and NLL against hand-computed answers and a line-by-line port of the DDU binning."""

import math

import pytest
import torch
from helpers import DEVICES

from metrics import accuracy, calibration_bins, expected_calibration_error, negative_log_likelihood

# Worked example with 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]:
#   bin 2: conf .50 (wrong), .46 (right)  -> acc 1/2, conf .48,  gap .02
#   bin 3: conf .70 (right), .65 (wrong)  -> acc 1/2, conf .675, gap .175
#   bin 4: conf .90 (right), .85 (right)  -> acc 1,   conf .875, gap .125
#   ECE = 2/6 * (.02 + .175 + .125) = .32 / 3
WORKED_PROBS = [
    [0.70, 0.20, 0.10],
    [0.30, 0.65, 0.05],
    [0.90, 0.05, 0.05],
    [0.10, 0.05, 0.85],
    [0.50, 0.25, 0.25],
    [0.44, 0.46, 0.10],
]
WORKED_LABELS = [0, 0, 0, 2, 1, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_ece_worked_example(device):
    probs = torch.tensor(WORKED_PROBS, dtype=torch.float64, device=device)
    labels = torch.tensor(WORKED_LABELS, device=device)
    assert expected_calibration_error(probs, labels, num_bins=5) == pytest.approx(0.32 / 3, abs=1e-12)
    bins = calibration_bins(probs, labels, num_bins=5)
    assert bins["count"].tolist() == [0, 0, 2, 2, 2]
    assert bins["accuracy"].tolist() == pytest.approx([0, 0, 0.5, 0.5, 1.0])
    assert bins["confidence"].tolist() == pytest.approx([0, 0, 0.48, 0.675, 0.875])


def test_accuracy_worked_example_and_logits():
    probs = torch.tensor(WORKED_PROBS)
    labels = torch.tensor(WORKED_LABELS)
    assert accuracy(probs, labels) == pytest.approx(4 / 6)
    assert accuracy(probs.log() * 3.0, labels) == pytest.approx(4 / 6)  # logits give the same arg-max
    # predictions are [0, 1, 0, 2, 0, 1]: right at positions 1 and 4
    assert accuracy(probs, torch.tensor([1, 1, 1, 1, 0, 0])) == pytest.approx(2 / 6)


def test_ece_perfectly_calibrated_and_overconfident():
    # Confidence 1 and always right: ECE 0. Confidence 1 and always wrong: ECE 1.
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == 0.0
    assert expected_calibration_error(probs, torch.tensor([1, 0])) == 1.0


def _ddu_ece_reference(confidences, predictions, labels, num_bins):
    """Pure-Python port of the DDU code's `_populate_bins`/`expected_calibration_error`."""
    counts, correct, conf_sum = [0] * num_bins, [0] * num_bins, [0.0] * num_bins
    for conf, pred, label in zip(confidences, predictions, labels):
        b = max(int(math.ceil(num_bins * conf - 1)), 0)
        counts[b] += 1
        conf_sum[b] += conf
        correct[b] += int(pred == label)
    ece = 0.0
    for b in range(num_bins):
        if counts[b]:
            ece += counts[b] / len(labels) * abs(correct[b] / counts[b] - conf_sum[b] / counts[b])
    return ece


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_matches_ddu_binning_on_random_data(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2000, 10, generator=gen)
    probs = torch.softmax(logits, dim=1).to(dtype)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    conf, pred = probs.max(dim=1)
    expected = _ddu_ece_reference(conf.double().tolist(), pred.tolist(), labels.tolist(), 15)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_ece_bin_edges_follow_ceil_rule():
    # conf exactly 1/3 = 5/15 belongs to bin 4 ((4/15, 5/15]); conf 1 to bin 14; conf 0.5 to bin 7.
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    counts = calibration_bins(probs, torch.tensor([0, 0, 0]))["count"]
    assert torch.nonzero(counts).squeeze(1).tolist() == [4, 7, 14]


def test_ece_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


@pytest.mark.parametrize("device", DEVICES)
def test_nll_hand_values(device):
    # softmax([0, ln 3]) = [1/4, 3/4]: NLL of label 1 is ln(4/3), of label 0 is ln 4.
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]], device=device)
    assert negative_log_likelihood(logits, torch.tensor([1, 0], device=device)) == pytest.approx(
        (math.log(4 / 3) + math.log(4)) / 2, abs=1e-7
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="labels"):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        negative_log_likelihood(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
