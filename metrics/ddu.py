"""DDU's feature-density scorer: fit on training features, score any features.

DDU (Mukhoti et al. 2021, Alg. 1) fits one Gaussian per class to the penultimate features of the training
set and scores a feature vector `z` by

* `log_density = log sum_c q(z | c) [q(c)]`, the log feature density (the paper's epistemic score;
  higher = in-distribution), and
* `entropy = H[softmax_c log q(z | c) [+ log q(c)]]`, the entropy over the class densities (the DDU code's
  second score; higher = more uncertain).

`DDUScorer` has the shape of pytorch-ood's detectors, so fitting never needs the network:

    scorer = DDUScorer.fit_features(train_features, train_labels, num_classes)   # (N, D), (N,)
    scores = scorer.predict_features(test_features)   # {"log_density": (M,), "entropy": (M,)} float64

It composes `metrics.gmm` (`fit_class_gaussians`, `class_log_densities`, `ddu_scores`), which does the
numerical work; see that module for the covariance estimate and the jitter search.

Two functions reproduce what the original DDU code computes where it departs from the paper, for
`--original-quirks`: it stores the class log-densities in float32 before exponentiating
(`original_float32_density`, its active-learning acquisition) and before taking the entropy
(`original_float32_entropy`, its evaluation's m2). Both underflow: log-densities of 512-d features lie
hundreds of nats apart, beyond float32's range for `exp`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metrics.gmm import ClassGaussians, class_log_densities, ddu_scores, fit_class_gaussians


@dataclass(frozen=True)
class DDUScorer:
    """DDU's class-conditional Gaussians, fitted once, ready to score features.

    Attributes:
        gaussians: the fitted `ClassGaussians` (float64, on the training features' device).
    """

    gaussians: ClassGaussians

    @classmethod
    def fit_features(
        cls,
        features: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        jitter_search: str = "project",
        **options: Any,
    ) -> DDUScorer:
        """Fit one Gaussian per class to `features` `(N, D)` with integer `labels` `(N,)` in `[0, C)`.

        `jitter_search="original"` chooses the covariance jitter as the DDU code does (`--original-quirks`:
        the first absolute jitter from 0 up that `torch.linalg.cholesky` accepts, see `metrics.gmm`); the
        default `"project"` is the scale-free search that rejects round-off pivots. `options` are
        `fit_class_gaussians`'s other keywords: `weight_by_class_frequency` adds the prior `log(n_c / N)` to
        every class log-density (the DDU code uses none; its active learning does); `jitter_start` and
        `max_tries` steer the project's search.

        Raises:
            GaussianFitError: with the reason, if a class is empty, features are not finite, or no jitter
                makes the covariances positive definite.
        """
        return cls(fit_class_gaussians(features, labels, num_classes, jitter_search=jitter_search, **options))

    @property
    def jitter(self) -> float:
        """The value added to every covariance diagonal before factoring (0.0 if none was needed)."""
        return float(self.gaussians.jitter)

    @property
    def jitter_search(self) -> str:
        """Which search chose the jitter: `"project"` or `"original"` (the DDU code's)."""
        return self.gaussians.jitter_search

    def class_log_densities(self, features: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """`log q(z | c)` (plus `log q(c)` when weighted) of `features` `(M, D)` -> `(M, C)` float64."""
        return class_log_densities(self.gaussians, features, chunk_size=chunk_size)

    def predict_features(
        self, features: Tensor, *, chunk_size: int | None = None, original_quirks: bool = False
    ) -> dict[str, Tensor]:
        """DDU's scores of `features` `(M, D)`: `log_density` and `entropy`, each `(M,)` float64 on the
        Gaussians' device (see the module docstring for their formulas and orientation).

        With `original_quirks` both scores are the original code's, computed in float32 from the class
        log-densities it stores in float32: `original_float32_entropy`, and `log_density` as a float32
        log-sum-exp (the same up to float32 rounding, and -inf where a log-density lies below -3.4e38, as
        it can with the original's tiny jitters).
        """
        log_densities = self.class_log_densities(features, chunk_size=chunk_size)
        scores = ddu_scores(log_densities)
        if original_quirks:
            scores["entropy"] = original_float32_entropy(log_densities).double()
            scores["log_density"] = torch.logsumexp(log_densities.float(), dim=1).double()
        return scores


def original_float32_entropy(class_log_densities: Tensor) -> Tensor:
    """The original DDU code's m2 score, `(N, C)` class log-densities -> `(N,)` float32 (`--original-quirks`).

    The original copies the log-densities into a float32 tensor and computes
    `-sum_c softmax(x)_c * log_softmax(x)_c` in float32. When the largest class log-density exceeds the
    others by more than about 104 nats (float32's smallest `exp`), every other `softmax` entry is exactly 0
    and the entropy exactly 0: on in-distribution features that is nearly every sample, so m2 mostly
    measures which OoD samples happen to sit between two classes. The paper's entropy over the class
    densities is `metrics.ddu_scores`'s float64 one, the default.
    """
    x = class_log_densities.float()
    return -(torch.softmax(x, dim=1) * torch.log_softmax(x, dim=1)).sum(dim=1)


def original_float32_density(class_log_densities: Tensor, class_weights: Tensor) -> Tensor:
    """The original DDU code's active-learning density, `(N, C)` log-densities -> `(N,)` float32 on the CPU.

    `sum_c exp(float32(log q(z | c))) * w_c` computed in float32, as the original's acquisition does
    (`class_weights` `(C,)` are its `w_c`). `exp` underflows to 0 below about -104, so for the
    512-dimensional features of the paper's ResNet-18 nearly every sample's density is exactly 0 and ranking
    by it picks among ties (`--original-quirks`). The paper ranks by the density itself, which the default
    path does through the float64 log-density.
    """
    x = class_log_densities.detach().to(device="cpu", dtype=torch.float32)
    return (torch.exp(x) * class_weights.to(device="cpu", dtype=torch.float32)).sum(dim=1)
