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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    def fit_features(cls, features: Tensor, labels: Tensor, num_classes: int, **options: Any) -> DDUScorer:
        """Fit one Gaussian per class to `features` `(N, D)` with integer `labels` `(N,)` in `[0, C)`.

        `options` are `fit_class_gaussians`'s keywords: `weight_by_class_frequency` adds the prior
        `log(n_c / N)` to every class log-density (the DDU code uses none; its active learning does);
        `jitter_start` and `max_tries` steer the jitter search.

        Raises:
            GaussianFitError: with the reason, if a class is empty, features are not finite, or no jitter
                makes the covariances positive definite.
        """
        return cls(fit_class_gaussians(features, labels, num_classes, **options))

    @property
    def jitter(self) -> float:
        """The value added to every covariance diagonal before factoring (0.0 if none was needed)."""
        return float(self.gaussians.jitter)

    def class_log_densities(self, features: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """`log q(z | c)` (plus `log q(c)` when weighted) of `features` `(M, D)` -> `(M, C)` float64."""
        return class_log_densities(self.gaussians, features, chunk_size=chunk_size)

    def predict_features(self, features: Tensor, *, chunk_size: int | None = None) -> dict[str, Tensor]:
        """DDU's scores of `features` `(M, D)`: `log_density` and `entropy`, each `(M,)` float64 on the
        Gaussians' device (see the module docstring for their formulas and orientation)."""
        return ddu_scores(self.class_log_densities(features, chunk_size=chunk_size))
