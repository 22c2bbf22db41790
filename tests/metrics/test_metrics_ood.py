"""AUROC / AUPRC / FPR95 against hand values and scikit-learn: ties, infinite scores and orientation.

The metrics are scikit-learn's on float64 scores; hand values hold to `TOLERANCE` (its average precision sums
float64 steps, so a perfect detector's 1.0 may come out one rounding below).
"""

import numpy as np
import pytest
import torch
from helpers import DEVICES
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from metrics import detection_metrics, fpr_at_95_tpr, ood_metrics

TOLERANCE = 1e-12


def _sklearn(pos, neg):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return roc_auc_score(y, s), average_precision_score(y, s), fpr[np.argmax(tpr >= 0.95)]


@pytest.mark.parametrize("device", DEVICES)
def test_perfect_and_reversed_separation(device):
    high = torch.tensor([3.0, 4.0, 5.0], device=device)
    low = torch.tensor([0.0, 1.0, 2.0], device=device)
    assert detection_metrics(high, low) == pytest.approx(
        {"auroc": 1.0, "auprc": 1.0, "fpr95": 0.0}, abs=TOLERANCE
    )
    reversed_ = detection_metrics(low, high)
    assert reversed_["auroc"] == 0.0
    assert reversed_["fpr95"] == 1.0
    # Ranked last, the positives reach precision 1/4, 2/5, 3/6 at recall 1/3, 2/3, 1.
    assert reversed_["auprc"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
    assert reversed_["auprc"] == pytest.approx(_sklearn([0, 1, 2], [3, 4, 5])[1])


def test_all_tied_scores():
    result = detection_metrics(torch.ones(3), torch.ones(5))
    assert result["auroc"] == 0.5
    assert result["auprc"] == pytest.approx(3 / 8)  # one threshold: precision = prevalence
    assert result["fpr95"] == 1.0


def test_hand_auroc_with_a_tie():
    # Pairs (pos, neg): (1,0) win, (1,2) loss, (2,0) win, (2,2) tie -> (1 + 0 + 1 + 0.5) / 4.
    result = detection_metrics(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]))
    assert result["auroc"] == pytest.approx(0.625)
    assert result["auprc"] == pytest.approx(_sklearn([1, 2], [0, 2])[1])


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_scores_with_ties(seed):
    gen = np.random.default_rng(seed)
    pos = np.round(gen.normal(0.7, 1.0, size=gen.integers(5, 300)), 1)  # rounding creates many ties
    neg = np.round(gen.normal(0.0, 1.0, size=gen.integers(5, 300)), 1)
    result = detection_metrics(torch.from_numpy(pos).float(), torch.from_numpy(neg))
    auroc, auprc, fpr95 = _sklearn(torch.from_numpy(pos).float().double().numpy(), neg)
    assert result["auroc"] == pytest.approx(auroc, abs=TOLERANCE)
    assert result["auprc"] == pytest.approx(auprc, abs=TOLERANCE)
    assert result["fpr95"] == pytest.approx(fpr95, abs=TOLERANCE)


def test_fpr95_hand_cases():
    positives = torch.arange(1.0, 21.0)  # 20 positives; 95% = 19 of them, reached at threshold 2
    assert fpr_at_95_tpr(positives, torch.tensor([0.5, 1.5, 2.5, 30.0])) == 0.5
    # A negative tied with the 19th positive enters with it.
    assert fpr_at_95_tpr(positives, torch.tensor([0.0, 2.0, 30.0])) == pytest.approx(2 / 3)
    # Ties across the 95% point: all positives tie with one negative, so TPR jumps from 0 to 1 at once.
    assert fpr_at_95_tpr(torch.ones(20), torch.tensor([1.0, 0.0])) == 0.5
    # Exactly 95% at 19/20 counts as reached (no float rounding): the 20th positive is never needed.
    assert fpr_at_95_tpr(torch.arange(1.0, 21.0), torch.tensor([1.0])) == 0.0


def test_ood_orientation_follows_ddu():
    gen = np.random.default_rng(7)
    in_conf = gen.normal(1.0, 1.0, 400)  # a confidence score: in-distribution higher
    out_conf = gen.normal(0.0, 1.5, 150)
    # Confidence scores: in-distribution is label 1, raw scores (DDU `confidence=True`).
    y_conf = np.r_[np.ones(400), np.zeros(150)]
    conf = ood_metrics(torch.from_numpy(in_conf), torch.from_numpy(out_conf), higher_is_in_distribution=True)
    assert conf["auroc"] == pytest.approx(roc_auc_score(y_conf, np.r_[in_conf, out_conf]))
    assert conf["auprc"] == pytest.approx(average_precision_score(y_conf, np.r_[in_conf, out_conf]))
    # Uncertainty scores (here the negated confidence): OoD is label 1, raw scores.
    in_unc, out_unc = -in_conf, -out_conf
    y_unc = 1 - y_conf
    unc = ood_metrics(torch.from_numpy(in_unc), torch.from_numpy(out_unc), higher_is_in_distribution=False)
    assert unc["auroc"] == pytest.approx(roc_auc_score(y_unc, np.r_[in_unc, out_unc]))
    assert unc["auprc"] == pytest.approx(average_precision_score(y_unc, np.r_[in_unc, out_unc]))
    # AUROC is orientation-free, AUPRC is not (400 vs 150 positives).
    assert unc["auroc"] == pytest.approx(conf["auroc"])
    assert abs(unc["auprc"] - conf["auprc"]) > 0.05
    # FPR95 uses one convention (OoD accepted at 95% in-distribution TPR), so it agrees for both.
    assert unc["fpr95"] == pytest.approx(conf["fpr95"])
    assert conf["fpr95"] == pytest.approx(_sklearn(in_conf, out_conf)[2])


def test_infinite_scores_rank_as_their_finite_stand_ins():
    # A float32 log-density that underflows is -inf (--original-quirks): it ranks below every finite score,
    # ties with the other -inf, and gives the metrics of any finite scores in the same order.
    inf = float("inf")
    positives = torch.tensor([3.0, inf, 1.0, -inf, 2.0])
    negatives = torch.tensor([-inf, 0.0, 1.0, -inf, 5.0, inf])
    finite = detection_metrics(
        torch.tensor([3.0, 100.0, 1.0, -100.0, 2.0]), torch.tensor([-100.0, 0.0, 1.0, -100.0, 5.0, 100.0])
    )
    assert detection_metrics(positives, negatives) == finite


def test_input_errors():
    with pytest.raises(ValueError, match="non-empty"):
        detection_metrics(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        detection_metrics(torch.ones(2, 2), torch.ones(2))
