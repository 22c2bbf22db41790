"""Per-sample uncertainty and confidence scores from logits or probabilities.

Every function maps an `(N, C)` input (or `(M, N, C)` for ensembles) to an `(N,)` float64 score on the
input's device. Confidence scores (log-sum-exp, maximum softmax probability) are higher for
in-distribution inputs; uncertainty scores (entropy, mutual information) are higher for OoD inputs.
Entropies use the natural logarithm and the convention `0 log 0 = 0`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metrics._checks import check_matrix


def _check_members(member_probs: Tensor) -> None:
    if member_probs.dim() != 3 or 0 in member_probs.shape:
        raise ValueError(
            f"member_probs must be a non-empty (M, N, C) tensor of member probabilities, "
            f"got shape {tuple(member_probs.shape)}"
        )


def entropy_of_probs(probs: Tensor) -> Tensor:
    """Shannon entropy `H[p] = -sum_c p_c log p_c` of each row of `probs` `(..., C)` -> `(...)` float64."""
    if probs.dim() < 1 or probs.shape[-1] == 0:
        raise ValueError(f"probs must have a non-empty class dimension, got shape {tuple(probs.shape)}")
    p = probs.double()
    return -torch.special.xlogy(p, p).sum(dim=-1)


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy of `softmax(logits)` for `(N, C)` logits -> `(N,)`: the DDU code's softmax m2 score.

    Uses `log_softmax` rather than `log(softmax)` so large logits do not lose precision, and treats
    classes with zero probability (e.g. `-inf` logits) as contributing 0 rather than NaN.
    """
    check_matrix(logits, "logits")
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=1)


def logsumexp_score(logits: Tensor) -> Tensor:
    """`log sum_c exp(logits_c)` for `(N, C)` logits -> `(N,)`: the negative free energy.

    The DDU code's softmax m1 score (the paper's "energy" rows, Liu et al. 2020); applied to GMM class
    log-densities it is the log feature density. Higher means in-distribution.
    """
    check_matrix(logits, "logits")
    return torch.logsumexp(logits.double(), dim=1)


def max_softmax_probability(logits: Tensor) -> Tensor:
    """`max_c softmax(logits)_c` for `(N, C)` logits -> `(N,)` (Hendrycks & Gimpel 2017); higher = in-dist."""
    check_matrix(logits, "logits")
    return torch.softmax(logits.double(), dim=1).max(dim=1).values


def ensemble_predictive_entropy(member_probs: Tensor) -> Tensor:
    """Entropy of the ensemble mean, `H[1/M sum_m p_m]`, for `(M, N, C)` member probabilities -> `(N,)`.

    The total predictive uncertainty of a deep ensemble (Lakshminarayanan et al. 2017).
    """
    _check_members(member_probs)
    return entropy_of_probs(member_probs.double().mean(dim=0))


def ensemble_mutual_information(member_probs: Tensor) -> Tensor:
    """Mutual information `H[1/M sum_m p_m] - 1/M sum_m H[p_m]` for `(M, N, C)` probabilities -> `(N,)`.

    The epistemic part of an ensemble's uncertainty (DDU Sec. 3; Depeweg et al. 2018): zero when all
    members agree. It is non-negative by Jensen's inequality, so round-off below zero is clamped to 0.
    """
    _check_members(member_probs)
    p = member_probs.double()
    mutual_information = entropy_of_probs(p.mean(dim=0)) - entropy_of_probs(p).mean(dim=0)
    return mutual_information.clamp(min=0)
