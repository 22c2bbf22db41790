"""DDU's class Gaussians and the tied-covariance Mahalanobis score against numpy/scipy references,
including the singular cases that need a jitter."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import DEVICES, FIXTURES
from scipy.special import logsumexp, softmax
from scipy.stats import entropy, multivariate_normal

from metrics import (
    DDUScorer,
    GaussianFitError,
    class_log_densities,
    ddu_scores,
    fit_class_gaussians,
    fit_shared_mahalanobis,
    mahalanobis_score,
)
from metrics.gmm import _class_moments, _original_jitters, _sound_factors


def _blobs(seed=0, counts=(400, 300, 200), dim=4, spread=4.0):
    """Gaussian blobs with known means `(C, D)` and random SPD covariances `(C, D, D)`."""
    gen = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(len(counts), dim, generator=gen, dtype=torch.float64)
    factors = torch.randn(len(counts), dim, dim, generator=gen, dtype=torch.float64)
    covs = factors @ factors.transpose(1, 2) / dim + 0.5 * torch.eye(dim, dtype=torch.float64)
    feats, labels = [], []
    for c, n in enumerate(counts):
        noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        feats.append(means[c] + noise @ torch.linalg.cholesky(covs[c]).T)
        labels.append(torch.full((n,), c))
    return torch.cat(feats), torch.cat(labels), means, covs


def test_recovers_blob_means_and_covariances():
    features, labels, means, covs = _blobs(counts=(20000, 15000, 10000))
    model = fit_class_gaussians(features.float(), labels, 3)
    assert model.jitter == 0.0
    assert model.means.dtype == torch.float64 and model.cholesky.shape == (3, 4, 4)
    assert model.class_counts.tolist() == [20000, 15000, 10000]
    assert torch.allclose(model.means, means, atol=0.05)
    assert torch.allclose(model.covariances(), covs, atol=0.05)
    # Exactly the sample mean and the unbiased sample covariance (ddof=1) of the same float32 data.
    x = features.float().double().numpy()
    y = labels.numpy()
    for c in range(3):
        assert np.allclose(model.means[c].numpy(), x[y == c].mean(axis=0), rtol=0, atol=1e-12)
        sample_cov = np.cov(x[y == c], rowvar=False, ddof=1)
        assert np.allclose(model.covariances()[c].numpy(), sample_cov, rtol=0, atol=1e-12)
    assert torch.equal(model.cholesky, model.cholesky.tril())


@pytest.mark.parametrize("device", DEVICES)
def test_class_log_densities_match_scipy(device):
    features, labels, _, _ = _blobs(seed=1)
    test_points, _, _, _ = _blobs(seed=2, counts=(30, 30, 30))
    model = fit_class_gaussians(features.to(device), labels.to(device), 3)
    got = class_log_densities(model, test_points.to(device)).cpu().numpy()
    assert got.shape == (90, 3) and got.dtype == np.float64
    x, y = features.numpy(), labels.numpy()
    references = [multivariate_normal(x[y == c].mean(0), np.cov(x[y == c], rowvar=False)) for c in range(3)]
    expected = np.stack([ref.logpdf(test_points.numpy()) for ref in references], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # DDU's scores: logsumexp over classes (no prior) and the entropy of the softmax over classes.
    scores = ddu_scores(torch.from_numpy(got))
    np.testing.assert_allclose(scores["log_density"].numpy(), logsumexp(expected, axis=1), rtol=1e-12)
    expected_entropy = entropy(softmax(expected, axis=1), axis=1)
    np.testing.assert_allclose(scores["entropy"].numpy(), expected_entropy, atol=1e-12)


def test_weighting_by_class_frequency_adds_log_priors():
    features, labels, _, _ = _blobs(seed=3, counts=(300, 100))
    uniform = fit_class_gaussians(features, labels, 2)
    weighted = fit_class_gaussians(features, labels, 2, weight_by_class_frequency=True)
    assert uniform.log_priors.tolist() == pytest.approx([math.log(0.5)] * 2)
    assert weighted.log_priors.tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    difference = class_log_densities(weighted, features) - class_log_densities(uniform, features)
    assert torch.allclose(difference, weighted.log_priors.expand_as(difference), atol=1e-9)


def test_ddu_entropy_is_finite_for_far_apart_log_densities():
    scores = ddu_scores(torch.tensor([[-1e5, -2e5, -3e5], [0.0, 0.0, -math.inf]], dtype=torch.float64))
    assert scores["entropy"].tolist() == pytest.approx([0.0, math.log(2)])
    assert scores["log_density"].tolist() == pytest.approx([-1e5, math.log(2)])


def test_chunking_does_not_change_scores():
    features, labels, _, _ = _blobs(seed=4)
    model = fit_class_gaussians(features, labels, 3)
    shared = fit_shared_mahalanobis(features, labels, 3)
    assert torch.allclose(
        class_log_densities(model, features, chunk_size=61), class_log_densities(model, features), rtol=1e-13
    )
    chunked = mahalanobis_score(shared, features, chunk_size=61)
    assert torch.allclose(chunked, mahalanobis_score(shared, features), rtol=1e-13)


def _singular_case(kind):
    gen = torch.Generator().manual_seed(5)
    features, labels, _, _ = _blobs(seed=6, counts=(200, 200), dim=6)
    if kind == "fewer_samples_than_dims":
        features, labels = features[196:204], labels[196:204]  # 4 samples per class in 6 dimensions
    elif kind == "duplicated_feature":
        features = torch.cat([features, features[:, :1]], dim=1)
    elif kind == "linear_combination":  # LAPACK accepts this class with a round-off pivot
        features, labels = features[:200], labels[:200]
        features = torch.cat([features, 0.3 * features[:, :1] + 0.7 * features[:, 1:2]], dim=1)
    elif kind == "constant_feature":
        features = features.clone()
        features[:, 2] = 1.5
    elif kind == "single_sample":
        lone = 3 + torch.randn(1, 6, generator=gen, dtype=torch.float64)
        features = torch.cat([features, lone])
        labels = torch.cat([labels, torch.tensor([2])])
    return features, labels, int(labels.max()) + 1


SINGULAR_KINDS = [
    "fewer_samples_than_dims",
    "duplicated_feature",
    "linear_combination",
    "constant_feature",
    "single_sample",
]


@pytest.mark.parametrize("kind", SINGULAR_KINDS)
def test_singular_cases_fit_with_recorded_jitter(kind):
    features, labels, num_classes = _singular_case(kind)
    model = fit_class_gaussians(features, labels, num_classes)
    assert model.jitter > 0
    dim = features.shape[1]
    # The factor reproduces the sample covariance plus exactly the recorded jitter.
    x, y = features.numpy(), labels.numpy()
    for c in range(num_classes):
        sample_cov = np.cov(x[y == c], rowvar=False) if (y == c).sum() > 1 else np.zeros((dim, dim))
        np.testing.assert_allclose(
            model.covariances()[c].numpy(), sample_cov + model.jitter * np.eye(dim), rtol=1e-9, atol=1e-9
        )
    assert torch.isfinite(class_log_densities(model, features)).all()
    shared = fit_shared_mahalanobis(features, labels, num_classes)
    assert torch.isfinite(mahalanobis_score(shared, features)).all()


def test_linear_combination_case_is_caught_by_the_pivot_check():
    # Why the pivot check exists: a rank-deficient covariance can come out of LAPACK with `info == 0` and a
    # last pivot at round-off level (or with `info > 0`: which one depends on the BLAS, the CPU and the
    # threads). What holds everywhere is asserted here.
    features, labels, num_classes = _singular_case("linear_combination")
    for c in range(num_classes):
        z = features[labels == c]
        z = z - z.mean(dim=0)
        covariance = z.T @ z / (z.shape[0] - 1)
        eigenvalues = torch.linalg.eigvalsh(covariance)
        # Numerically singular: the smallest eigenvalue is rounding noise next to the largest.
        assert eigenvalues[0].abs() < 1e-10 * eigenvalues[-1]
        factor, info = torch.linalg.cholesky_ex(covariance)
        # Whatever LAPACK says, the factor is not accepted as it stands.
        assert not bool(_sound_factors(factor[None], info[None], covariance[None]))
    # The same check on a factor built by hand: `info == 0`, finite, and a tiny positive last pivot, as some
    # LAPACK builds return for this matrix. Without the pivot check it would pass.
    factor = torch.eye(3, dtype=torch.float64)
    factor[2, 2] = 1e-9
    matrix = factor @ factor.T
    info = torch.zeros(1, dtype=torch.int32)
    assert not bool(_sound_factors(factor[None], info, matrix[None]))
    healthy = torch.eye(3, dtype=torch.float64)
    assert bool(_sound_factors(healthy[None], info, healthy[None]))
    # And the fit regularises it with a recorded jitter.
    assert fit_class_gaussians(features, labels, num_classes).jitter > 0


def test_jitter_is_scaled_to_the_covariance():
    features, labels, num_classes = _singular_case("duplicated_feature")
    small = fit_class_gaussians(features, labels, num_classes)
    large = fit_class_gaussians(features * 1024.0, labels, num_classes)  # a power of 2 scales exactly
    assert large.jitter == small.jitter * 1024.0**2


def test_explicit_jitter_start_and_max_tries():
    features, labels, num_classes = _singular_case("duplicated_feature")
    model = fit_class_gaussians(features, labels, num_classes, jitter_start=1e-3)
    assert model.jitter == 1e-3
    with pytest.raises(GaussianFitError, match="not positive definite") as err:
        fit_class_gaussians(features, labels, num_classes, max_tries=0)
    assert "class 0" in err.value.reason and "class 1" in err.value.reason


def test_fit_errors():
    features, labels, _, _ = _blobs(seed=7, counts=(50, 50))
    with pytest.raises(GaussianFitError, match=r"class\(es\) \[2\] have no samples"):
        fit_class_gaussians(features, labels, 3)
    bad = features.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(GaussianFitError, match="NaN"):
        fit_class_gaussians(bad, labels, 2)
    with pytest.raises(GaussianFitError, match="NaN"):
        fit_shared_mahalanobis(bad, labels, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_class_gaussians(features, labels, 1)
    model = fit_class_gaussians(features, labels, 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        class_log_densities(model, features[:, :3])


@pytest.mark.parametrize("device", DEVICES)
def test_mahalanobis_matches_numpy_reference(device):
    features, labels, _, _ = _blobs(seed=8)
    test_points, _, _, _ = _blobs(seed=9, counts=(20, 20, 20))
    model = fit_shared_mahalanobis(features.float().to(device), labels.to(device), 3)
    got = mahalanobis_score(model, test_points.to(device)).cpu().numpy()
    x, y = features.float().double().numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    centred = x - means[y]
    precision = np.linalg.inv(centred.T @ centred / len(x))  # tied covariance, divided by N (Lee et al.)
    diffs = test_points.numpy()[:, None, :] - means[None]
    squared = np.einsum("ncd,de,nce->nc", diffs, precision, diffs)
    np.testing.assert_allclose(got, -squared.min(axis=1), rtol=1e-9)
    assert model.jitter == 0.0
    # In-distribution points score higher than far-away ones.
    assert got.mean() > mahalanobis_score(model, (test_points + 50).to(device)).mean().item()


def _reference_fit_and_score(features, labels, num_classes, test_points, max_tries=20):
    """The jitter search and scoring written out plainly, as they were before the in-place search: every
    class refactored (on a jittered copy) at every attempt until all are sound, then one batched triangular
    solve over all classes. Returns `(jitter, cholesky (C, D, D), log-densities (M, C))`.

    The class moments come from the fit's own `_class_moments`: how a BLAS rounds the scatter products
    (it may round a product written into a slice of a block differently from a fresh one, as MKL does on
    AMD CPUs) is not what this compares, and on a singular covariance that round-off moves the factors."""
    eps = torch.finfo(torch.float64).eps
    dim = features.shape[1]
    means, scatters, counts = _class_moments(features, labels, num_classes)
    covariances = scatters / (counts - 1).clamp(min=1).double()[:, None, None]
    scale = covariances.diagonal(dim1=-2, dim2=-1).mean().item()
    jitter_start = eps * (scale if scale > 0 else 1.0)
    for attempt in range(max_tries + 1):
        jitter = 0.0 if attempt == 0 else jitter_start * 10.0 ** (attempt - 1)
        jittered = covariances + jitter * torch.eye(dim, dtype=torch.float64)
        factors, info = torch.linalg.cholesky_ex(jittered)
        floor = 10.0 * dim * eps * jittered.diagonal(dim1=-2, dim2=-1).amax(dim=-1)
        pivots = factors.diagonal(dim1=-2, dim2=-1).square()
        finite = torch.isfinite(factors).flatten(1).all(dim=1)
        if bool(((info == 0) & finite & (pivots > floor[:, None]).all(dim=1)).all()):
            break
    else:
        raise AssertionError("the reference found no jitter")
    diff = test_points.double().T[None] - means[:, :, None]  # (C, D, M)
    white = torch.linalg.solve_triangular(factors, diff, upper=False)
    log_norm = -0.5 * dim * math.log(2 * math.pi) - factors.diagonal(dim1=-2, dim2=-1).log().sum(dim=1)
    return jitter, factors, (log_norm[:, None] - 0.5 * white.square().sum(dim=1)).T


def _many_singular_classes(seed, dim=40, counts=(15,) * 12):
    gen = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(len(counts), dim, generator=gen, dtype=torch.float64)
    features = torch.cat(
        [m + torch.randn(n, dim, generator=gen, dtype=torch.float64) for m, n in zip(means, counts)]
    )
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return features, labels, len(counts)


EQUIVALENCE_CASES = {
    "fewer_samples_than_dims_many_classes": lambda: _many_singular_classes(10),
    # Full-rank classes are sound at jitter 0 and must still be refactored at the jitter the others need.
    "full_rank_and_singular_classes": lambda: _many_singular_classes(11, counts=(200, 12, 120, 3, 41, 1, 90)),
    "large_scale": lambda: (lambda f, y, c: (1e4 * f, y, c))(*_many_singular_classes(12, dim=24)),
    **{kind: (lambda kind=kind: _singular_case(kind)) for kind in SINGULAR_KINDS},
}


@pytest.mark.parametrize("case", sorted(EQUIVALENCE_CASES))
def test_in_place_search_chooses_the_same_jitter_and_densities_as_the_plain_search(case):
    features, labels, num_classes = EQUIVALENCE_CASES[case]()
    gen = torch.Generator().manual_seed(13)
    test_points = torch.cat(
        [features[::3], features.mean(dim=0) + 2 * torch.randn(50, features.shape[1], generator=gen).double()]
    )
    jitter, factors, expected = _reference_fit_and_score(features, labels, num_classes, test_points)
    model = fit_class_gaussians(features, labels, num_classes)
    assert model.jitter == jitter
    # Same factors (the same LAPACK call on the same numbers), so the same densities; off a singular class's
    # span they are ~1e13 in size and would move at 1e-5 if the covariance's round-off changed.
    assert torch.equal(model.cholesky, factors)
    got = class_log_densities(model, test_points)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9, atol=0)
    chunked = class_log_densities(model, test_points, chunk_size=7)
    np.testing.assert_allclose(chunked.numpy(), expected.numpy(), rtol=1e-9, atol=0)


def test_the_cases_need_a_jitter_and_classes_need_different_ones():
    # Guards the test above: the singular cases need a jitter, and in the mixed case some classes are sound
    # at a smaller one than the jitter finally shared by all.
    for case in EQUIVALENCE_CASES:
        features, labels, num_classes = EQUIVALENCE_CASES[case]()
        assert fit_class_gaussians(features, labels, num_classes).jitter > 0, case
    features, labels, _ = EQUIVALENCE_CASES["full_rank_and_singular_classes"]()
    alone = [fit_class_gaussians(features[labels == c], labels[labels == c] * 0, 1).jitter for c in range(7)]
    assert min(alone) == 0.0 and max(alone) > 0.0


def test_a_failed_jitter_costs_one_factorisation(monkeypatch):
    # Ten classes with the same (singular) covariance fail and succeed together: each failed attempt should
    # factor only the class it tries first, and the final attempt every class once.
    gen = torch.Generator().manual_seed(14)
    features = torch.randn(8, 20, generator=gen, dtype=torch.float64).repeat(10, 1)
    labels = torch.arange(10).repeat_interleave(8)
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = fit_class_gaussians(features, labels, 10)
    attempts = 1 + round(math.log10(model.jitter / _default_jitter_start(features, labels, 10))) + 1
    assert attempts > 2
    assert len(calls) == (attempts - 1) + 10


def _default_jitter_start(features, labels, num_classes):
    variances = torch.stack([features[labels == c].var(dim=0) for c in range(num_classes)])
    return torch.finfo(torch.float64).eps * variances.mean().item()


def test_scoring_groups_classes_within_the_memory_budget(monkeypatch):
    # Small features: several classes share one triangular solve; the result does not depend on the grouping.
    features, labels, num_classes = _many_singular_classes(15, dim=6, counts=(30,) * 9)
    model = fit_class_gaussians(features, labels, num_classes)
    whole = class_log_densities(model, features)
    monkeypatch.setattr("metrics.gmm._CHUNK_ELEMENTS", 6 * 20 * 4)
    solves = []
    real = torch.linalg.solve_triangular
    monkeypatch.setattr(
        torch.linalg, "solve_triangular", lambda a, b, **k: solves.append(b.shape) or real(a, b, **k)
    )
    grouped = class_log_densities(model, features, chunk_size=20)
    # 270 samples in chunks of 20 (the last of 10), 9 classes in solves of 4, 4 and 1.
    assert (
        solves[:3] == [(4, 6, 20), (4, 6, 20), (1, 6, 20)]
        and solves[-1] == (1, 6, 10)
        and len(solves) == 14 * 3
    )
    np.testing.assert_allclose(grouped.numpy(), whole.numpy(), rtol=1e-12, atol=0)


def test_finiteness_check_tells_overflowing_sums_from_non_finite_features():
    from metrics.gmm import _all_finite

    huge = torch.full((4, 3), 1e308, dtype=torch.float64)  # every entry finite, the sum overflows
    assert _all_finite(huge)
    for bad in (math.inf, -math.inf, math.nan):
        x = huge.clone()
        x[2, 1] = bad
        assert not _all_finite(x)
    opposite = torch.tensor([[math.inf, -math.inf]])  # sums to NaN
    assert not _all_finite(opposite) and _all_finite(torch.zeros(2, 2))


ORIGINAL_FIXTURE = FIXTURES / "gmm" / "original_jitter_dead_relu.json"


def _float32(value):
    """What the DDU code adds for a jitter: its `jitter * torch.eye(D)` is float32."""
    return torch.tensor(value, dtype=torch.float32).item()


def _original_fixture():
    fixture = json.loads(ORIGINAL_FIXTURE.read_text())
    features = torch.tensor(fixture["features"], dtype=torch.float32)
    labels = torch.tensor(fixture["labels"])
    test_points = torch.tensor(fixture["test_points"], dtype=torch.float32)
    return fixture, features, labels, test_points


def test_original_jitter_search_matches_the_original_code_on_its_fixture():
    # Written by the DDU code's own gmm_fit (tests/fixtures/make_gmm_fixture.py). The covariances have exactly
    # zero rows (dead ReLUs), so which jitters LAPACK accepts does not depend on rounding.
    fixture, features, labels, test_points = _original_fixture()
    num_classes = fixture["num_classes"]
    model = fit_class_gaussians(features, labels, num_classes, jitter_search="original")
    assert fixture["original_jitter_eps"] == 1e-45
    assert model.jitter == _float32(fixture["original_jitter_eps"]) and model.jitter_search == "original"
    expected = np.array(fixture["original_log_probs"])
    # In-span points score ~300 and off-span ones down to ~-1e46: compare relatively.
    assert expected.max() > 0 and expected.min() < -1e44
    np.testing.assert_allclose(class_log_densities(model, test_points).numpy(), expected, rtol=1e-6, atol=0)
    scorer = DDUScorer.fit_features(features, labels, num_classes, jitter_search="original")
    assert scorer.jitter == model.jitter and scorer.jitter_search == "original"
    # The default search rejects those pivots: the option is what makes the difference.
    default = fit_class_gaussians(features, labels, num_classes)
    assert default.jitter_search == "project" and default.jitter > 1e20 * model.jitter
    assert DDUScorer.fit_features(features, labels, num_classes).jitter == default.jitter


def _original_gmm_fit(features, labels, num_classes):
    """The DDU code's `gmm_fit` loop, rewritten for this test: absolute jitters (times a float32 identity)
    from 0 up; the first for which `MultivariateNormal` (its `torch.linalg.cholesky`) accepts every class
    wins. Returns `(jitter_eps, gmm)`."""
    x = features.double()
    means = torch.stack([x[labels == c].mean(dim=0) for c in range(num_classes)])
    covariances = []
    for c in range(num_classes):
        centred = x[labels == c] - means[c]
        covariances.append(1 / (centred.shape[0] - 1) * centred.t().mm(centred))
    covariances = torch.stack(covariances)
    jitters = [0, torch.finfo(torch.double).tiny] + [10**exponent for exponent in range(-308, 0)]
    for jitter_eps in jitters:
        identity = jitter_eps * torch.eye(x.shape[1]).unsqueeze(0)
        try:
            gmm = torch.distributions.MultivariateNormal(means, covariances + identity, validate_args=False)
        except RuntimeError as error:
            assert "cholesky" in str(error)
            continue
        return jitter_eps, gmm
    raise AssertionError("no jitter of the original list works")


RANK_DEFICIENT_CASES = {
    "fewer_samples_than_dims_relu": lambda: (lambda f, y, c: (torch.relu(f).float(), y, c))(
        *_many_singular_classes(16, dim=30, counts=(12,) * 10)
    ),
    "large_scale": EQUIVALENCE_CASES["large_scale"],
    **{
        kind: (lambda kind=kind: _singular_case(kind))
        for kind in ("duplicated_feature", "linear_combination")
    },
}


@pytest.mark.parametrize("case", sorted(RANK_DEFICIENT_CASES))
def test_original_jitter_search_follows_the_original_loop_on_rank_deficient_classes(case):
    # Singular covariances: the last pivots are rounding noise, which the original accepts whenever it is
    # positive (from jitter 0 for the linear combination here). Which jitter wins depends on the BLAS, so
    # the original's loop runs here, on the same one, and the factors must be the same numbers.
    features, labels, num_classes = RANK_DEFICIENT_CASES[case]()
    jitter_eps, gmm = _original_gmm_fit(features, labels, num_classes)
    model = fit_class_gaussians(features, labels, num_classes, jitter_search="original")
    assert model.jitter == _float32(jitter_eps)
    assert torch.equal(model.cholesky, gmm.scale_tril)
    test_points = features[::5].double()
    expected = gmm.log_prob(test_points[:, None, :])
    np.testing.assert_allclose(class_log_densities(model, test_points).numpy(), expected.numpy(), rtol=1e-6)


def test_original_jitters_are_the_float32_roundings_of_the_original_list():
    jitters = _original_jitters()
    # 0 (with tiny and 1e-308 ... 1e-46, which all round to 0 in float32), then 1e-45 ... 1e-1.
    assert len(jitters) == 1 + 45 and jitters[0] == 0.0
    assert jitters[1] == _float32(1e-45) and jitters[-1] == _float32(0.1)
    assert all(a < b for a, b in zip(jitters, jitters[1:]))


def test_default_jitter_search_is_unchanged():
    # On the fixture's exactly zero rows the pivot is the jitter itself, so the project's rule (the first
    # `eps * mean variance * 10^k` above `10 D eps * largest variance` of every class) fixes the jitter on any
    # BLAS; here k = 4 (the largest ratio is 10^3.02). Passing the keyword changes nothing.
    _, features, labels, _ = _original_fixture()
    default = fit_class_gaussians(features, labels, 10)
    explicit = fit_class_gaussians(features, labels, 10, jitter_search="project")
    assert default.jitter_search == explicit.jitter_search == "project"
    assert default.jitter == explicit.jitter and torch.equal(default.cholesky, explicit.cholesky)
    x, y = features.double().numpy(), labels.numpy()
    variances = np.stack([x[y == c].var(axis=0, ddof=1) for c in range(10)])
    eps, dim = np.finfo(np.float64).eps, x.shape[1]
    start, floor = eps * variances.mean(), 10 * dim * eps * variances.max()
    k = next(k for k in range(20) if start * 10.0**k > floor)
    assert k == 4 and default.jitter == pytest.approx(start * 10.0**k, rel=1e-12)
    covariances = np.stack([np.cov(x[y == c], rowvar=False) for c in range(10)])
    np.testing.assert_allclose(
        default.covariances().numpy(), covariances + default.jitter * np.eye(dim), rtol=1e-12, atol=1e-12
    )


def test_jitter_search_errors():
    features, labels, num_classes = _singular_case("duplicated_feature")
    with pytest.raises(ValueError, match="jitter_search must be one of"):
        fit_class_gaussians(features, labels, num_classes, jitter_search="paper")
    with pytest.raises(ValueError, match="not the original one"):
        fit_class_gaussians(features, labels, num_classes, jitter_search="original", jitter_start=1e-3)
    # A covariance the original's largest jitter cannot fix: a GaussianFitError, not an unassigned model.
    # Variance 2^54 in two identical columns: every step of the factorisation is exact and 2^54 + 0.1
    # rounds to 2^54, so the last pivot is exactly 0 at every jitter of the original list.
    a = 2.0**27
    duplicated = torch.tensor([[-a, -a], [0.0, 0.0], [a, a]])
    with pytest.raises(GaussianFitError, match=r"class 0 is not positive definite .* \(45 jittered tries\)"):
        fit_class_gaussians(duplicated, torch.zeros(3, dtype=torch.long), 1, jitter_search="original")
    assert fit_class_gaussians(duplicated, torch.zeros(3, dtype=torch.long), 1).jitter > 0.1


# ---- Classes in chunks (ImageNet's 1,000 x 2,048): the chunked fit and scoring equal the unchunked ones.

CHUNK_CASES = {
    "full_rank": lambda: _blobs(seed=20, counts=(60, 50, 40, 70, 30), dim=5)[:2] + (5,),
    "fewer_samples_than_dims": lambda: _many_singular_classes(21, dim=12, counts=(6,) * 7),
    # The last class is singular at 1e6 times the others' scale: it needs a far larger jitter than the first
    # chunks, which must then be checked again at that jitter.
    "late_class_needs_more_jitter": lambda: (
        lambda f, y, c: (torch.where((y == c - 1)[:, None], 1e6 * f, f), y, c)
    )(*_many_singular_classes(22, dim=10, counts=(30, 30, 30, 5, 30, 4))),
    "single_sample_class": lambda: _singular_case("single_sample"),
}


@pytest.mark.parametrize("jitter_search", ["project", "original"])
@pytest.mark.parametrize("case", sorted(CHUNK_CASES))
def test_chunked_fit_and_scores_equal_the_unchunked_ones(case, jitter_search):
    features, labels, num_classes = CHUNK_CASES[case]()
    gen = torch.Generator().manual_seed(23)
    points = torch.cat([features[::2], 3 * torch.randn(20, features.shape[1], generator=gen).double()])
    whole = fit_class_gaussians(features, labels, num_classes, jitter_search=jitter_search)
    assert whole.cholesky is not None and whole.class_chunk is None
    expected = class_log_densities(whole, points)
    for chunk in range(1, num_classes):
        model = fit_class_gaussians(
            features, labels, num_classes, jitter_search=jitter_search, class_chunk=chunk
        )
        assert model.cholesky is None and model.class_chunk == chunk
        assert torch.equal(model.means, whole.means) and torch.equal(model.class_counts, whole.class_counts)
        if jitter_search == "original" or case == "full_rank":
            assert model.jitter == whole.jitter
        else:  # the default first jitter comes from sums of squares instead of covariance diagonals
            assert model.jitter == pytest.approx(whole.jitter, rel=1e-12)
        got = class_log_densities(model, points, chunk_size=9)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9, atol=0)
        np.testing.assert_allclose(model.covariances().numpy(), whole.covariances().numpy(), rtol=1e-9)


def test_chunked_factors_are_bit_for_bit_the_unchunked_ones_at_the_same_jitter():
    features, labels, num_classes = _many_singular_classes(24, dim=12, counts=(6,) * 7)
    whole = fit_class_gaussians(features, labels, num_classes, jitter_start=1e-3)
    model = fit_class_gaussians(features, labels, num_classes, jitter_start=1e-3, class_chunk=3)
    assert model.jitter == whole.jitter > 0
    for part in model.chunks():
        assert torch.equal(model.class_factors(part), whole.cholesky[part])


def test_the_late_case_needs_a_larger_jitter_than_its_first_chunk():
    # Guards the chunk test: the first chunk alone would stop at a smaller jitter than all classes need.
    features, labels, num_classes = CHUNK_CASES["late_class_needs_more_jitter"]()
    first = labels < 2
    start = _default_jitter_start(features, labels, num_classes)
    alone = fit_class_gaussians(features[first], labels[first], 2, jitter_start=start).jitter
    assert alone < fit_class_gaussians(features, labels, num_classes).jitter


def test_chunked_fit_and_scoring_hold_one_chunk_of_covariances(monkeypatch):
    import metrics.gmm as gmm

    features, labels, num_classes = _many_singular_classes(25, dim=8, counts=(10,) * 7)
    held = []
    real = gmm._class_covariances
    monkeypatch.setattr(
        gmm, "_class_covariances", lambda s, m, part, o: held.append(part) or real(s, m, part, o)
    )
    model = fit_class_gaussians(features, labels, num_classes, class_chunk=3)
    fitted = len(held)
    class_log_densities(model, features)
    assert all(part.stop - part.start <= 3 for part in held)
    # Scoring recomputes each chunk once: 7 classes in chunks of 3, 3 and 1.
    assert [(p.start, p.stop) for p in held[fitted:]] == [(0, 3), (3, 6), (6, 7)]


def test_default_class_chunk_bounds_imagenet_memory():
    from metrics.gmm import default_class_chunk

    chunk = default_class_chunk(2048)
    assert chunk == 128 and chunk < 1000
    # One chunk's covariances plus the means and the scoring buffers stay far below 16 GB at 1,000 x 2,048.
    assert (chunk + 1) * 2048**2 * 8 + 1000 * 2048 * 8 + 2 * 2**24 * 8 < 5e9
    # CIFAR's networks (640 or 2,048 features, 10 or 100 classes) stay on the unchunked path.
    assert default_class_chunk(640) >= 100 and default_class_chunk(2048) >= 100


def test_class_chunk_must_be_positive():
    features, labels, _, _ = _blobs(seed=26)
    with pytest.raises(ValueError, match="class_chunk"):
        fit_class_gaussians(features, labels, 3, class_chunk=0)


def test_ddu_scorer_passes_class_chunk_through():
    features, labels, _, _ = _blobs(seed=27)
    scorer = DDUScorer.fit_features(features, labels, 3, class_chunk=1)
    whole = DDUScorer.fit_features(features, labels, 3)
    assert scorer.gaussians.class_chunk == 1
    np.testing.assert_allclose(
        scorer.predict_features(features)["log_density"].numpy(),
        whole.predict_features(features)["log_density"].numpy(),
        rtol=1e-9,
    )
