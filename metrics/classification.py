"""Classification quality: accuracy, expected calibration error and negative log-likelihood.

ECE follows Guo et al. 2017 ("On Calibration of Modern Neural Networks") with the binning of the DDU code
(Mukhoti et al. 2021): 15 equal-width bins over the top-class confidence, sample with confidence `c` in
bin `ceil(num_bins * c) - 1`, so bin `k` holds `c` in `(k / num_bins, (k + 1) / num_bins]` (and `c == 0`
goes to bin 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics._checks import check_labels, check_matrix

# Probabilities are accepted with this much rounding slack (float16/bfloat16 softmax outputs included).
_PROB_TOLERANCE = 1e-3


def accuracy(logits_or_probs: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose arg-max class equals the label, in [0, 1].

    Args:
        logits_or_probs: `(N, C)` logits or probabilities (the arg-max is the same for both).
        labels: `(N,)` integer labels.
    """
    check_matrix(logits_or_probs, "logits_or_probs")
    check_labels(labels, logits_or_probs.shape[0])
    predictions = logits_or_probs.argmax(dim=1)
    return (predictions == labels.to(predictions.device)).double().mean().item()


def _check_probabilities(probs: Tensor) -> None:
    low, high = float(probs.min()), float(probs.max())
    row_sums = probs.double().sum(dim=1)
    worst_sum = float((row_sums - 1).abs().max())
    if low < -_PROB_TOLERANCE or high > 1 + _PROB_TOLERANCE or worst_sum > _PROB_TOLERANCE:
        raise ValueError(
            "probs must be probabilities (entries in [0, 1], rows summing to 1), got entries in "
            f"[{low:.4g}, {high:.4g}] and a row sum off by {worst_sum:.3g}; apply softmax to logits first"
        )


def calibration_bins(probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict[str, Tensor]:
    """Per-bin statistics of a reliability diagram (the ingredients of ECE).

    Bin `k` holds the samples whose top-class confidence `c` lies in `(k / B, (k + 1) / B]`, i.e. the bin
    index is `ceil(B * c) - 1` computed in float64 as the DDU code does; `c == 0` is put in bin 0.

    Args:
        probs: `(N, C)` predicted class probabilities.
        labels: `(N,)` integer labels.
        num_bins: number `B` of equal-width confidence bins.

    Returns:
        `count`, `accuracy` and `confidence`, each `(B,)` float64 on the device of `probs`; the accuracy and
        mean confidence of an empty bin are 0.
    """
    check_matrix(probs, "probs")
    check_labels(labels, probs.shape[0])
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    _check_probabilities(probs)
    predictions = probs.argmax(dim=1)
    confidences = probs.gather(1, predictions[:, None]).squeeze(1).double()
    correct = (predictions == labels.to(probs.device)).double()
    bin_index = (torch.ceil(num_bins * confidences) - 1).clamp(0, num_bins - 1).long()
    # One-hot sums instead of scatter/bincount: deterministic on CUDA as well.
    membership = F.one_hot(bin_index, num_bins).double()  # (N, B)
    count = membership.sum(dim=0)
    occupied = count.clamp(min=1)
    return {
        "count": count,
        "accuracy": (correct @ membership) / occupied,
        "confidence": (confidences @ membership) / occupied,
    }


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """Expected calibration error, `sum_b |B_b| / N * |acc(B_b) - conf(B_b)|` (Guo et al. 2017, Eq. 3).

    Bins are as in `calibration_bins` (DDU's `ceil(B * c) - 1` rule, 15 bins by default).

    Args:
        probs: `(N, C)` predicted class probabilities (apply softmax to logits first).
        labels: `(N,)` integer labels.
        num_bins: number of equal-width confidence bins.
    """
    bins = calibration_bins(probs, labels, num_bins)
    num_samples = bins["count"].sum()
    gaps = (bins["accuracy"] - bins["confidence"]).abs()
    return (bins["count"] / num_samples * gaps).sum().item()


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy `-1/N sum_i log softmax(logits_i)[y_i]`, computed in float64.

    Args:
        logits: `(N, C)` unnormalised scores.
        labels: `(N,)` integer labels.
    """
    check_matrix(logits, "logits")
    check_labels(labels, logits.shape[0], logits.shape[1])
    return F.cross_entropy(logits.double(), labels.to(logits.device).long()).item()
