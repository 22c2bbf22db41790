"""Threshold-free detection metrics: AUROC, AUPRC and FPR at 95% TPR, for any score.

One pair of functions serves every score (log-density, entropy, mutual information, MSP, Mahalanobis...).
`detection_metrics` takes the scores of the positive and of the negative class, positives scoring higher;
`ood_metrics` picks the positive class the way the DDU code does (`get_roc_auc_logits`):

- confidence scores (higher = in-distribution: log-sum-exp, feature density, MSP): in-distribution
  samples are the positives;
- uncertainty scores (higher = OoD: entropy, mutual information): OoD samples are the positives.

AUROC is the same either way; AUPRC is not, so the orientation matters for reproducing the paper.
Everything is computed with torch on the scores' device, from one sort, and equals scikit-learn's
`roc_auc_score` and `average_precision_score` (ties included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metrics._checks import check_scores


def _curve_at_distinct_thresholds(positive_scores: Tensor, negative_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative true and false positive counts `(K,)` when thresholding at each distinct score.

    Scores are sorted in decreasing order; threshold `k` flags every sample scoring at least the `k`-th
    largest distinct value, so tied samples always enter together (as in sklearn's `_binary_clf_curve`).
    Counts are exact integers (int64 cumsum, deterministic on CUDA) returned as float64.
    """
    scores = torch.cat([positive_scores.double(), negative_scores.double().to(positive_scores.device)])
    is_positive = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    is_positive[: positive_scores.shape[0]] = 1
    sorted_scores, order = torch.sort(scores, descending=True, stable=True)
    true_positives = torch.cumsum(is_positive[order], dim=0)
    # The last index of each run of equal scores closes a threshold.
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    ends = torch.nonzero(last_of_run).squeeze(1)
    tps = true_positives[ends]
    fps = ends + 1 - tps
    return tps.double(), fps.double()


def _fpr_at_95_tpr(tps: Tensor, fps: Tensor, num_pos: int, num_neg: int) -> float:
    # Integer comparison TP_k * 100 >= 95 * P avoids float rounding at exactly 95%.
    reached = torch.nonzero(tps * 100 >= 95 * num_pos)[0, 0]
    return (fps[reached] / num_neg).item()


def fpr_at_95_tpr(positive_scores: Tensor, negative_scores: Tensor) -> float:
    """False-positive rate `FP_k / Q` at the first distinct threshold `k` where `TP_k / P >= 0.95`.

    Tied scores enter together, so a tie straddling the 95% point counts all its negatives.

    Args:
        positive_scores: `(P,)` scores of the positive class (expected to be higher).
        negative_scores: `(Q,)` scores of the negative class.
    """
    check_scores(positive_scores, "positive_scores")
    check_scores(negative_scores, "negative_scores")
    tps, fps = _curve_at_distinct_thresholds(positive_scores, negative_scores)
    return _fpr_at_95_tpr(tps, fps, positive_scores.shape[0], negative_scores.shape[0])


def detection_metrics(positive_scores: Tensor, negative_scores: Tensor) -> dict[str, float]:
    """AUROC, AUPRC (average precision) and FPR95 of separating positives from negatives by score.

    With `TP_k`, `FP_k` the counts above the `k`-th distinct threshold (`TP_0 = FP_0 = 0`), `P` positives
    and `Q` negatives:

    - `auroc = sum_k (FP_k - FP_{k-1}) (TP_k + TP_{k-1}) / (2 P Q)`, the trapezoidal ROC area, which is
      the Mann-Whitney probability that a positive outscores a negative, ties counting one half;
    - `auprc = sum_k (TP_k - TP_{k-1}) / P * TP_k / (TP_k + FP_k)`, the step-wise average precision of
      sklearn's `average_precision_score`;
    - `fpr95 = FP_k / Q` at the first threshold where `TP_k / P >= 0.95` (see `fpr_at_95_tpr`).

    Args:
        positive_scores: `(P,)` scores of the positive class (expected to be higher).
        negative_scores: `(Q,)` scores of the negative class.

    Returns:
        `{"auroc": float, "auprc": float, "fpr95": float}`.
    """
    check_scores(positive_scores, "positive_scores")
    check_scores(negative_scores, "negative_scores")
    num_pos, num_neg = positive_scores.shape[0], negative_scores.shape[0]
    tps, fps = _curve_at_distinct_thresholds(positive_scores, negative_scores)
    zero = tps.new_zeros(1)
    tps_prev, fps_prev = torch.cat([zero, tps[:-1]]), torch.cat([zero, fps[:-1]])
    auroc = ((fps - fps_prev) * (tps + tps_prev)).sum() / (2.0 * num_pos * num_neg)
    auprc = ((tps - tps_prev) * tps / (tps + fps)).sum() / num_pos
    fpr95 = _fpr_at_95_tpr(tps, fps, num_pos, num_neg)
    return {"auroc": auroc.item(), "auprc": auprc.item(), "fpr95": fpr95}


def ood_metrics(
    in_scores: Tensor, out_scores: Tensor, *, higher_is_in_distribution: bool
) -> dict[str, float]:
    """AUROC/AUPRC/FPR95 of telling in-distribution from OoD samples, oriented as in the DDU code.

    AUROC and AUPRC use the DDU code's positive class (see the module docstring); scores are never
    negated for them. FPR95 is not in the DDU code; it uses one convention for every score so detectors
    stay comparable: the fraction of OoD samples still accepted as in-distribution when 95% of the
    in-distribution samples are (Liang et al. 2018). For an uncertainty score that means thresholding
    its negation.

    Args:
        in_scores: `(N_in,)` scores of the in-distribution test set.
        out_scores: `(N_out,)` scores of the OoD set.
        higher_is_in_distribution: True for confidence scores (log-density, log-sum-exp, MSP), whose
            AUPRC positives are the in-distribution samples; False for uncertainty scores (entropy, mutual
            information), whose AUPRC positives are the OoD samples.

    Returns:
        `{"auroc": float, "auprc": float, "fpr95": float}`.
    """
    if higher_is_in_distribution:
        return detection_metrics(in_scores, out_scores)
    result = detection_metrics(out_scores, in_scores)
    result["fpr95"] = fpr_at_95_tpr(-in_scores, -out_scores)
    return result
