"""Pure tensor metrics for DDU (Mukhoti et al. 2021, arXiv 2102.11582): no models, no loaders, no state.

- `classification`: accuracy, ECE (15 bins as DDU/Guo et al.), NLL.
- `uncertainty`: per-sample scores (softmax entropy, log-sum-exp, MSP, ensemble entropy and mutual
  information), each `(N,)` float64.
- `ood`: one AUROC/AUPRC/FPR95 routine for every score, oriented as the DDU code.
- `temperature`: the DDU grid search for temperature scaling.
- `gmm`: DDU's per-class feature Gaussians and Lee et al.'s tied-covariance Mahalanobis score.
- `ddu`: `DDUScorer`, the one way to fit DDU on training features and score features with it.

Scalar metrics return Python floats; functions work on CPU and CUDA tensors and compute in float64 where
precision matters.
"""

from metrics.classification import (
    accuracy,
    calibration_bins,
    expected_calibration_error,
    negative_log_likelihood,
)
from metrics.ddu import DDUScorer, original_float32_density, original_float32_entropy
from metrics.gmm import (
    JITTER_SEARCHES,
    ClassGaussians,
    GaussianFitError,
    SharedGaussian,
    class_log_densities,
    ddu_scores,
    fit_class_gaussians,
    fit_shared_mahalanobis,
    mahalanobis_score,
)
from metrics.ood import detection_metrics, fpr_at_95_tpr, ood_metrics
from metrics.temperature import fit_temperature, temperature_grid, temperature_nll
from metrics.uncertainty import (
    ensemble_mutual_information,
    ensemble_predictive_entropy,
    entropy_of_probs,
    logsumexp_score,
    max_softmax_probability,
    softmax_entropy,
)

__all__ = [
    "JITTER_SEARCHES",
    "ClassGaussians",
    "DDUScorer",
    "GaussianFitError",
    "SharedGaussian",
    "accuracy",
    "calibration_bins",
    "class_log_densities",
    "ddu_scores",
    "detection_metrics",
    "ensemble_mutual_information",
    "ensemble_predictive_entropy",
    "entropy_of_probs",
    "expected_calibration_error",
    "fit_class_gaussians",
    "fit_shared_mahalanobis",
    "fit_temperature",
    "fpr_at_95_tpr",
    "logsumexp_score",
    "mahalanobis_score",
    "original_float32_density",
    "original_float32_entropy",
    "max_softmax_probability",
    "negative_log_likelihood",
    "ood_metrics",
    "softmax_entropy",
    "temperature_grid",
    "temperature_nll",
]
