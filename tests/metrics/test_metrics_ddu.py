"""metrics.DDUScorer: DDU's fit-then-score on closed-form and scipy references, and exactly the numbers of
the `metrics.gmm` functions it composes (so every caller scores as before)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import entropy, multivariate_normal

from metrics import DDUScorer, GaussianFitError, class_log_densities, ddu_scores, fit_class_gaussians


def _blobs(seed, counts, dim=3):
    gen = torch.Generator().manual_seed(seed)
    means = 5.0 * torch.randn(len(counts), dim, generator=gen, dtype=torch.float64)
    features = torch.cat(
        [means[c] + torch.randn(n, dim, generator=gen, dtype=torch.float64) for c, n in enumerate(counts)]
    )
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return features, labels


def test_one_dimensional_classes_give_the_closed_form_scores():
    """Class 0 = {-1, 1} (mean 0), class 1 = {9, 11} (mean 10): both have unbiased variance 2."""
    features = torch.tensor([[-1.0], [1.0], [9.0], [11.0]])
    scorer = DDUScorer.fit_features(features, torch.tensor([0, 0, 1, 1]), 2)
    scores = scorer.predict_features(torch.tensor([[0.0], [5.0], [10.0]]))
    log_norm = -0.5 * math.log(2 * math.pi * 2.0)  # log N(mu; mu, 2)
    # z = 0 and z = 10 sit on one class mean and 10 from the other, whose log density is 100 / 4 = 25 lower;
    # z = 5 is halfway, where both classes have log density log_norm - 25 / 4.
    far = math.exp(-25.0)
    expected_density = [
        log_norm + math.log1p(far),
        math.log(2.0) + log_norm - 6.25,
        log_norm + math.log1p(far),
    ]
    expected_entropy = math.log1p(far) + 25.0 * far / (1.0 + far)  # H[(1, e^-25) / (1 + e^-25)]
    assert scores["log_density"].tolist() == pytest.approx(expected_density, rel=1e-12)
    assert scores["entropy"].tolist() == pytest.approx(
        [expected_entropy, math.log(2.0), expected_entropy], rel=1e-6
    )
    assert scorer.jitter == 0.0 and isinstance(scorer.jitter, float)
    assert scores["log_density"].dtype == torch.float64 and scores["log_density"].shape == (3,)


@pytest.mark.parametrize("weighted", [False, True])
def test_scores_match_scipy(weighted):
    counts = (300, 120, 60)
    features, labels = _blobs(0, counts)
    test_points, _ = _blobs(1, (20, 20, 20))
    scorer = DDUScorer.fit_features(features, labels, 3, weight_by_class_frequency=weighted)
    x, y = features.numpy(), labels.numpy()
    per_class = np.stack(
        [
            multivariate_normal(x[y == c].mean(0), np.cov(x[y == c], rowvar=False)).logpdf(
                test_points.numpy()
            )
            for c in range(3)
        ],
        axis=1,
    )
    if weighted:
        per_class = per_class + np.log(np.array(counts) / sum(counts))
    np.testing.assert_allclose(scorer.class_log_densities(test_points).numpy(), per_class, rtol=1e-10)
    scores = scorer.predict_features(test_points)
    np.testing.assert_allclose(scores["log_density"].numpy(), logsumexp(per_class, axis=1), rtol=1e-10)
    np.testing.assert_allclose(
        scores["entropy"].numpy(), entropy(softmax(per_class, axis=1), axis=1), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_same_numbers_as_the_gmm_functions_it_composes(weighted):
    features, labels = _blobs(2, (50, 40, 30))
    points = features.float()[::7]
    scorer = DDUScorer.fit_features(features.float(), labels, 3, weight_by_class_frequency=weighted)
    gaussians = fit_class_gaussians(features.float(), labels, 3, weight_by_class_frequency=weighted)
    for key, value in ddu_scores(class_log_densities(gaussians, points)).items():
        assert torch.equal(scorer.predict_features(points)[key], value), key
    chunked = scorer.predict_features(points, chunk_size=4)["log_density"]
    torch.testing.assert_close(chunked, scorer.predict_features(points)["log_density"], rtol=1e-13, atol=0)


def test_fit_options_reach_the_jitter_search():
    """A duplicated feature makes every covariance singular: a jitter is needed, found and recorded."""
    features, labels = _blobs(3, (40, 40))
    singular = torch.cat([features, features[:, :1]], dim=1)
    scorer = DDUScorer.fit_features(singular, labels, 2)
    assert scorer.jitter > 0 and scorer.jitter == scorer.gaussians.jitter
    assert torch.isfinite(scorer.predict_features(singular)["log_density"]).all()
    assert DDUScorer.fit_features(singular, labels, 2, jitter_start=1e-3).jitter >= 1e-3
    with pytest.raises(GaussianFitError, match="not positive definite"):
        DDUScorer.fit_features(singular, labels, 2, max_tries=0)
    with pytest.raises(GaussianFitError, match=r"class\(es\) \[2\]"):
        DDUScorer.fit_features(features, labels, 3)
