"""Feature-space densities: DDU's class-conditional Gaussians and Lee et al.'s tied-covariance Mahalanobis.

DDU (Mukhoti et al. 2021, Sec. 4 and Alg. 1) fits Gaussian discriminant analysis to the penultimate
features `z` of the training set: one Gaussian `q(z | y = c) = N(mu_c, Sigma_c)` per class with its own mean
and (unbiased) covariance. The feature density `q(z) = sum_c q(z | c) q(c)` is the epistemic score (high =
in-distribution). The DDU code uses no prior (`log q(z) ~ logsumexp_c log q(z | c)`, a constant shift of
`log C` from the uniform prior, which ranks identically); `weight_by_class_frequency=True` adds
`log q(c) = log(n_c / N)`.

Covariances are factored with `torch.linalg.cholesky_ex`, which reports failure instead of raising. A
factorisation counts as failed when LAPACK/cuSOLVER rejects it, when it is not finite, or when a pivot
`L_ii^2` is at round-off level (`<= 10 * D * eps * max_i Sigma_ii`): a rank-deficient matrix (fewer samples
than dimensions, duplicated or constant features) can otherwise slip through with a pivot that is pure
rounding noise and yield meaningless densities. On failure the same jitter `lambda * I` is added to every
class covariance, starting at `eps * mean_c,i (Sigma_c)_ii` and growing by powers of 10; the jitter used is
the smallest of these that makes every class sound, and it is recorded (0 when none was needed). If no
jitter in `max_tries` works, `GaussianFitError` is raised: a broken model is never returned.

`jitter_search="original"` picks the jitter the DDU code picks (`--original-quirks`): it tries the absolute
jitters `0, tiny, 1e-308, 1e-307, ..., 1e-1` and keeps the first for which `torch.linalg.cholesky` (inside
`MultivariateNormal`) succeeds on every class, with no pivot check. Its `jitter * torch.eye(D)` is float32,
so every jitter below ~1e-45 adds exactly 0, and the others add their float32 roundings (1e-45 adds
1.4e-45): that is the value recorded and used. On a singular covariance a pivot of rounding noise then
passes, so the choice (1e-45 ... 1e-18 on LeNet features with dead ReLUs) depends on that noise's sign and
moves log-densities by orders of magnitude off the features' span. The covariances follow the DDU code's
arithmetic (`(1 / (n_c - 1)) * x.t().mm(x)`, each product in a fresh buffer), so on the CPU, for the same
features in the same order, the factors are bit for bit those of its `MultivariateNormal`, and the
log-densities agree to rounding (on CUDA its batched factorisation may round differently, which on a
singular covariance can move the accepted jitter). The order matters: the DDU code reads its training
features through a shuffled loader, callers here pass them in split order, and on a singular covariance the
summation order of `x.t().mm(x)` can decide which jitter passes (one LeNet of five: 1e-17 instead of 1e-18;
docs/differences.md).
Unchanged, the DDU code cannot run on current PyTorch: a rejected covariance raises a `ValueError` whose
message it does not expect, and its model is left unassigned.

The search factors one class at a time, in place: an attempt stops at its first unsound class (tried first
at the next attempt), so a failed attempt costs about one factorisation instead of `C`, and only the final
jitter is applied to every class. The factors are bit for bit those of factoring all classes at every
attempt. Scoring whitens large chunks of samples one class at a time, where LAPACK's triangular solve
runs near its best rate, within a fixed memory budget.

Everything is computed in float64 on the features' device, with triangular solves rather than inverses.

Many classes (ImageNet: `C = 1000` classes of `D = 2048` features, whose factors alone take
`C * D^2 * 8` bytes = 33.5 GB) are fitted and scored in chunks of `k` classes (`class_chunk`, by default
`2^29 // D^2`, 128 at `D = 2048`; every class in one chunk, the unchunked path, whenever all factors fit
in 4 GiB). The chunked model keeps the means, the jitter and the training features sorted by class (an
index into the caller's tensor, no copy) instead of the factors; scoring recomputes one chunk's
covariances and factors at a time, with the same arithmetic, so the factors are bit for bit those of the
unchunked fit and the log-densities agree to rounding (the solves are grouped differently). The jitter
search visits the chunks in turn from the smallest jitter every chunk visited so far needed, and re-checks
earlier chunks when a later one needs more: the jitter is the first of the list that makes every class
sound, as unchunked. (The default first jitter is computed from the variances directly instead of from
the covariance diagonals, equal to rounding.) Peak memory beyond the features and the `(N, C)` float64
output, in float64 numbers (8 bytes each):

    fit:    C * D  +  (k + 1) * D^2  +  2 * n_max * D          (n_max: samples of the largest class)
    score:  C * D  +  (k + 1) * D^2  +  2 * _CHUNK_ELEMENTS    (2^24: the scoring chunk and its scratch)

which at `C = 1000`, `D = 2048`, `k = 128` is 4.3 GB (the covariances of one chunk dominate), against
33.5 GB unchunked. Scoring costs the recomputation of the covariances (`N_train * D^2` multiply-adds) and
factors (`C * D^3 / 3`) once per call, small next to its `N * C * D^2` triangular solves; pass every set
to score in one call where that matters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metrics._checks import check_labels, check_matrix
from metrics.uncertainty import logsumexp_score, softmax_entropy

_LOG_2PI = math.log(2 * math.pi)
_EPS = torch.finfo(torch.float64).eps
# A pivot L_ii^2 at or below this many `D * eps * max diagonal` is rounding noise, not variance.
_PIVOT_TOLERANCE = 10.0
DEFAULT_MAX_TRIES = 20
JITTER_SEARCHES = ("project", "original")
# Scoring works on chunks whose largest temporary holds about this many float64 numbers (128 MiB).
_CHUNK_ELEMENTS = 2**24
# The covariances (and factors) of one chunk of classes hold about this many float64 numbers (4 GiB).
_CLASS_CHUNK_ELEMENTS = 2**29


def default_class_chunk(dim: int) -> int:
    """Classes fitted and scored together at `dim` features: those whose covariances fit in 4 GiB."""
    return max(1, _CLASS_CHUNK_ELEMENTS // max(1, dim) ** 2)


class GaussianFitError(RuntimeError):
    """A Gaussian could not be fitted (empty class, non-finite features, or no jitter made the covariance
    positive definite). `reason` says which, so a caller can record it instead of dropping the run."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _SortedClasses:
    """Training features grouped by class without a copy: class `c`'s rows are
    `features[order[starts[c] : starts[c] + counts[c]]]`. What a chunked `ClassGaussians` keeps instead of
    its factors, to recompute them a chunk at a time."""

    features: Tensor
    order: Tensor
    starts: tuple[int, ...]
    counts: tuple[int, ...]

    def rows(self, c: int, device: torch.device) -> Tensor:
        """Class `c`'s features `(n_c, D)` in float64 on `device`."""
        index = self.order[self.starts[c] : self.starts[c] + self.counts[c]]
        return self.features.index_select(0, index).to(device=device, dtype=torch.float64)


@dataclass(frozen=True)
class ClassGaussians:
    """One Gaussian per class in feature space (DDU's GDA), all tensors float64 on one device.

    Attributes:
        means: `(C, D)` class means `mu_c`.
        cholesky: `(C, D, D)` lower-triangular `L_c` with `L_c L_c^T = Sigma_c + jitter * I`, stored
            column-major (LAPACK's layout: `cholesky.mT` is contiguous) because it is factored in place;
            None for a chunked model, whose factors `class_factors` recomputes (module docstring).
        log_priors: `(C,)` `log q(c)`: `log(n_c / N)` when weighted by class frequency, else `-log C`.
        jitter: the value added to every covariance diagonal before factoring (0.0 if none was needed).
        class_counts: `(C,)` int64 training samples per class.
        weight_by_class_frequency: whether `class_log_densities` adds `log_priors` (DDU's code does not).
        jitter_search: which search chose `jitter`, `"project"` or `"original"` (see the module docstring).
        class_chunk: classes per chunk of a chunked model (None when `cholesky` holds every factor).
        source: a chunked model's training features grouped by class (None when `cholesky` is stored).
    """

    means: Tensor
    cholesky: Tensor | None
    log_priors: Tensor
    jitter: float
    class_counts: Tensor
    weight_by_class_frequency: bool = False
    jitter_search: str = "project"
    class_chunk: int | None = None
    source: _SortedClasses | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def chunks(self) -> list[slice]:
        """The class ranges scored together: one for a stored model, `class_chunk` classes each otherwise."""
        step = self.class_chunk or self.num_classes
        return [
            slice(first, min(self.num_classes, first + step)) for first in range(0, self.num_classes, step)
        ]

    def class_factors(self, classes: slice) -> Tensor:
        """`(k, D, D)` factors `L_c` of the classes in `classes`: a view of the stored ones, or for a chunked
        model recomputed from the training features (the covariances and the factorisation at `jitter` are
        those of the fit, so the factors are bit for bit the unchunked ones on the same device)."""
        if self.cholesky is not None:
            return self.cholesky[classes]
        original = self.jitter_search == "original"
        covariances = _class_covariances(self.source, self.means, classes, original)
        accept = _cholesky_succeeds if original else _sound
        what = [f"class {c}" for c in range(classes.start, classes.stop)]
        return _factor_with_jitter(covariances, [self.jitter], what, accept)[0]

    def covariances(self) -> Tensor:
        """`(C, D, D)` covariances as used for scoring, `L_c L_c^T` (jitter included)."""
        return torch.cat([(f := self.class_factors(part)) @ f.transpose(-2, -1) for part in self.chunks()])

    def to(self, device: torch.device | str) -> ClassGaussians:
        """The model on `device`; a chunked one leaves its training features where they are and moves each
        class's rows when it recomputes a chunk."""
        return dataclasses.replace(
            self,
            means=self.means.to(device),
            cholesky=None if self.cholesky is None else self.cholesky.to(device),
            log_priors=self.log_priors.to(device),
            class_counts=self.class_counts.to(device),
        )


@dataclass(frozen=True)
class SharedGaussian:
    """Class means with one tied covariance (Lee et al. 2018), all tensors float64 on one device.

    Attributes:
        means: `(C, D)` class means `mu_c`.
        cholesky: `(D, D)` lower-triangular `L` with `L L^T = Sigma + jitter * I` (column-major), where
            `Sigma = 1/N sum_c sum_{i: y_i = c} (z_i - mu_c)(z_i - mu_c)^T`.
        jitter: the value added to the covariance diagonal before factoring (0.0 if none was needed).
        class_counts: `(C,)` int64 training samples per class.
    """

    means: Tensor
    cholesky: Tensor
    jitter: float
    class_counts: Tensor

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def covariance(self) -> Tensor:
        """`(D, D)` covariance as used for scoring, `L L^T` (jitter included)."""
        return self.cholesky @ self.cholesky.T

    def to(self, device: torch.device | str) -> SharedGaussian:
        return dataclasses.replace(
            self,
            means=self.means.to(device),
            cholesky=self.cholesky.to(device),
            class_counts=self.class_counts.to(device),
        )


def _all_finite(x: Tensor) -> bool:
    """`isfinite(x).all()`, fast: a sum is finite only if every entry is (inf and NaN propagate), and reads
    `x` once, where `isfinite` takes ~10x longer (2.5 s for 45,000 x 2,048 on a 2-core CPU). Only a sum
    that overflows or is not finite needs the exact test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _sort_by_class(features: Tensor, labels: Tensor, num_classes: int) -> _SortedClasses:
    """The features grouped by class (an index, no copy), after the checks of `_class_moments`."""
    check_matrix(features, "features")
    check_labels(labels, features.shape[0], num_classes)
    if not _all_finite(features):
        raise GaussianFitError("the features contain NaN or infinite values (did the network diverge?)")
    labels_cpu = labels.detach().cpu().long()
    counts = torch.bincount(labels_cpu, minlength=num_classes)
    empty = torch.nonzero(counts == 0).squeeze(1).tolist()
    if empty:
        raise GaussianFitError(f"class(es) {empty} have no samples, so their Gaussian is undefined")
    order = torch.argsort(labels_cpu, stable=True).to(features.device)
    starts = torch.cumsum(counts, 0) - counts
    return _SortedClasses(features, order, tuple(starts.tolist()), tuple(counts.tolist()))


def _class_means(source: _SortedClasses) -> Tensor:
    """`(C, D)` float64 class means on the features' device."""
    device = source.features.device
    means = torch.empty(len(source.counts), source.features.shape[1], dtype=torch.float64, device=device)
    for c in range(len(source.counts)):
        means[c] = source.rows(c, device).mean(dim=0)
    return means


def _scatters(source: _SortedClasses, means: Tensor, classes: slice, fresh_products: bool) -> Tensor:
    """`(k, D, D)` centred scatter matrices of the classes in `classes`, float64 on the means' device."""
    dim, device = means.shape[1], means.device
    scatters = torch.empty(classes.stop - classes.start, dim, dim, dtype=torch.float64, device=device)
    for i, c in enumerate(range(classes.start, classes.stop)):
        centred = source.rows(c, device) - means[c]
        if fresh_products:
            scatters[i] = centred.T @ centred
        else:
            torch.matmul(centred.T, centred, out=scatters[i])
    return scatters


def _class_covariances(source: _SortedClasses, means: Tensor, classes: slice, original: bool) -> Tensor:
    """`(k, D, D)` unbiased covariances of the classes in `classes` (`fit_class_gaussians`'s arithmetic)."""
    covariances = _scatters(source, means, classes, fresh_products=original)
    counts = torch.tensor(source.counts[classes], dtype=torch.float64)
    denominators = (counts - 1).clamp(min=1).to(covariances.device)
    if original:  # the DDU code's `1 / (n - 1) * x.t().mm(x)`, which rounds differently from a division
        return covariances.mul_(denominators.reciprocal()[:, None, None])
    return covariances.div_(denominators[:, None, None])


def _class_moments(
    features: Tensor, labels: Tensor, num_classes: int, *, fresh_products: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class means `(C, D)`, centred scatter matrices `sum_i (z_i - mu_c)(z_i - mu_c)^T` `(C, D, D)`
    and counts `(C,)` (CPU int64), in float64 on the features' device.

    `fresh_products` computes each scatter in a new `(D, D)` buffer and copies it in, as the DDU code's
    `x.t().mm(x)` does: a BLAS may round a product differently when its output is not aligned as a fresh
    buffer is (a slice of the `(C, D, D)` block), and on a singular covariance that rounding decides which
    tiny jitter the original search accepts.

    Raises `GaussianFitError` for non-finite features or a class without samples.
    """
    source = _sort_by_class(features, labels, num_classes)
    means = _class_means(source)
    scatters = _scatters(source, means, slice(0, num_classes), fresh_products)
    return means, scatters, torch.tensor(source.counts)


def _sound(factors: Tensor, info: Tensor, largest_diagonal: Tensor) -> Tensor:
    """`(B,)` bool for `(B, D, D)` factors of matrices whose largest diagonal entries are `(B,)`."""
    dim = factors.shape[-1]
    floor = _PIVOT_TOLERANCE * dim * _EPS * largest_diagonal
    pivots = factors.diagonal(dim1=-2, dim2=-1).square()
    # A sum is finite exactly when every entry is (inf and NaN propagate), and cannot overflow for a
    # successful factor (|L_ij| <= sqrt(Sigma_ii)); it reads the factor once, where isfinite is ~10x slower.
    finite = torch.isfinite(factors.sum(dim=(-2, -1)))
    return (info == 0) & finite & (pivots > floor[..., None]).all(dim=-1)


def _sound_factors(factors: Tensor, info: Tensor, matrices: Tensor) -> Tensor:
    """`(B,)` bool: Cholesky factor succeeded, is finite and has no pivot at round-off level."""
    return _sound(factors, info, matrices.diagonal(dim1=-2, dim2=-1).amax(dim=-1))


def _project_jitters(variances: Tensor, jitter_start: float | None, max_tries: int) -> list[float]:
    """This project's jitters `0, s, 10 s, ..., 10^(max_tries - 1) s` for covariances whose diagonal
    entries are `variances` (e.g. `(B, D)`).

    `s` is `jitter_start`, or `eps * mean diagonal entry` (1.0 if that is 0) so the search is scale-free.
    """
    if max_tries < 0:
        raise ValueError(f"max_tries must be non-negative, got {max_tries}")
    if jitter_start is None:
        scale = variances.mean().item()
        jitter_start = _EPS * (scale if scale > 0 else 1.0)
    elif not jitter_start > 0:
        raise ValueError(f"jitter_start must be positive, got {jitter_start}")
    return [0.0] + [jitter_start * 10.0**exponent for exponent in range(max_tries)]


def _original_jitters() -> list[float]:
    """The values the DDU code adds to the covariance diagonals, in the order it tries them.

    Its list is `[0, tiny] + [10**e for e in range(-308, 0)]`, multiplied by a float32 identity: each jitter
    becomes its float32 rounding (0 below ~1e-45). Repeats are dropped, since the same matrix gets the same
    verdict, which leaves 0, 1.4e-45, 9.8e-45, ..., 0.1 (46 values).
    """
    nominal = [0.0, torch.finfo(torch.float64).tiny] + [10**exponent for exponent in range(-308, 0)]
    added = torch.tensor(nominal, dtype=torch.float32).double().tolist()
    return [value for i, value in enumerate(added) if i == 0 or value != added[i - 1]]


def _cholesky_succeeds(factor: Tensor, info: Tensor, largest_diagonal: Tensor) -> Tensor:
    """The DDU code's test of a factor: `torch.linalg.cholesky` does not raise (no pivot check)."""
    return info == 0


def _factor_with_jitter(
    covariances: Tensor, jitters: list[float], what: list[str], accept=_sound, tries: int | None = None
) -> tuple[Tensor, float]:
    """Cholesky factors of `(B, D, D)` covariances, adding the first jitter `lambda * I` (shared by all `B`)
    in `jitters` for which `accept(factor, info, largest diagonal)` holds for every matrix.

    `accept` is `_sound` (this project's test) or `_cholesky_succeeds` (the DDU code's). `what` names each
    matrix and `tries` (default `len(jitters) - 1`) counts the jittered tries for the error message.

    Works in place, with one `(D, D)` scratch factor: `covariances` is overwritten and the returned factors
    are a column-major view of its memory. Only the lower triangle of each covariance is read (as LAPACK
    does); while the search runs, the upper triangle of a matrix already factored at the current jitter
    holds `L^T` and its strict lower triangle still holds `Sigma`, with the variances kept aside, so a later
    attempt can refactor it. Matrices are factored one at a time and an attempt stops at its first rejected
    matrix, which leads the next attempt; the result is that of factoring every matrix at every attempt.
    """
    batch, dim, device = covariances.shape[0], covariances.shape[-1], covariances.device
    variances = covariances.diagonal(dim1=-2, dim2=-1).clone()
    factor = torch.empty(dim, dim, dtype=covariances.dtype, device=device).mT  # LAPACK's layout: no copy
    info = torch.empty((), dtype=torch.int32, device=device)
    upper = torch.ones(dim, dim, dtype=torch.bool, device=device).triu()
    order = list(range(batch))
    jitter, failing = 0.0, []
    for attempt, jitter in enumerate(jitters):
        last_attempt = attempt == len(jitters) - 1
        failing = []
        for position, b in enumerate(order):
            matrix = covariances[b]
            diagonal = variances[b] + jitter if jitter else variances[b]
            matrix.diagonal().copy_(diagonal)
            torch.linalg.cholesky_ex(matrix, out=(factor, info))
            if bool(accept(factor, info, diagonal.amax())):
                torch.where(upper, factor.mT, matrix, out=matrix)  # L^T into the upper triangle
                continue
            failing.append(b)
            if not last_attempt:  # this jitter fails: retry with the next, this matrix first
                order = [b] + order[position + 1 :] + order[:position]
                break
        if not failing:
            return covariances.triu_().mT, jitter
    raise GaussianFitError(
        f"the covariance of {', '.join(what[i] for i in sorted(failing))} is not positive definite even "
        f"with jitter {jitter:.3g} on the diagonal ({len(jitters) - 1 if tries is None else tries} jittered "
        "tries); the features may be "
        "degenerate"
    )


def fit_class_gaussians(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    weight_by_class_frequency: bool = False,
    jitter_start: float | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
    jitter_search: str = "project",
    class_chunk: int | None = None,
) -> ClassGaussians:
    """Fit DDU's per-class Gaussians `N(mu_c, Sigma_c)` to training features (paper Alg. 1, "GDA fit").

    `mu_c` is the class mean and `Sigma_c = 1/(n_c - 1) sum_{i: y_i = c} (z_i - mu_c)(z_i - mu_c)^T` the
    unbiased covariance (zero for a single-sample class, which the jitter then regularises). See the
    module docstring for the jitter search.

    Args:
        features: `(N, D)` penultimate features of the training split (any float dtype, any device).
        labels: `(N,)` integer labels in `[0, num_classes)`.
        num_classes: `C`; every class needs at least one sample.
        weight_by_class_frequency: use `q(c) = n_c / N` in `class_log_densities` (DDU's code uses none).
        jitter_start: first jitter tried after the plain factorisation; default `eps * mean variance`.
        max_tries: number of jitters tried (each 10 times the previous) after the plain factorisation.
        jitter_search: `"project"` (the sound search above) or `"original"`, the DDU code's choice of jitter
            (`--original-quirks`; `jitter_start` and `max_tries` do not apply to it).
        class_chunk: classes whose covariances are held at once (default `default_class_chunk(D)`); with
            fewer than `C` the model is chunked and keeps a reference to `features` (module docstring).

    Returns:
        `ClassGaussians` in float64 on the features' device.

    Raises:
        GaussianFitError: with the reason, if a class is empty, features are not finite, or no jitter works.
    """
    if jitter_search not in JITTER_SEARCHES:
        raise ValueError(f"jitter_search must be one of {JITTER_SEARCHES}, got {jitter_search!r}")
    original = jitter_search == "original"
    if original and (jitter_start is not None or max_tries != DEFAULT_MAX_TRIES):
        raise ValueError("jitter_start and max_tries steer the project's search, not the original one")
    if class_chunk is not None and class_chunk < 1:
        raise ValueError(f"class_chunk must be positive, got {class_chunk}")
    source = _sort_by_class(features, labels, num_classes)
    means = _class_means(source)
    chunk = class_chunk or default_class_chunk(means.shape[1])
    accept = _cholesky_succeeds if original else _sound
    what = [f"class {c}" for c in range(num_classes)]
    counts = torch.tensor(source.counts, device=means.device)
    if chunk >= num_classes:
        covariances = _class_covariances(source, means, slice(0, num_classes), original)
        variances = covariances.diagonal(dim1=-2, dim2=-1)
        jitters = _original_jitters() if original else _project_jitters(variances, jitter_start, max_tries)
        factors, jitter = _factor_with_jitter(covariances, jitters, what, accept)
        chunk, source = None, None
    else:
        if original:
            jitters = _original_jitters()
        else:
            jitters = _project_jitters(_class_variances(source, means), jitter_start, max_tries)
        jitter = _chunked_jitter_search(source, means, chunk, jitters, what, accept, original)
        factors = None
    if weight_by_class_frequency:
        log_priors = torch.log(counts.double() / counts.sum())
    else:
        log_priors = torch.full(
            (num_classes,), -math.log(num_classes), dtype=torch.float64, device=means.device
        )
    return ClassGaussians(
        means=means,
        cholesky=factors,
        log_priors=log_priors,
        jitter=jitter,
        class_counts=counts,
        weight_by_class_frequency=weight_by_class_frequency,
        jitter_search=jitter_search,
        class_chunk=chunk,
        source=source,
    )


def _class_variances(source: _SortedClasses, means: Tensor) -> Tensor:
    """`(C, D)` unbiased variances from sums of squares: the diagonals of the covariances to rounding,
    without forming them (the chunked fit needs them, for the default first jitter, before any chunk)."""
    variances = torch.empty_like(means)
    for c, count in enumerate(source.counts):
        centred = source.rows(c, means.device) - means[c]
        variances[c] = centred.square().sum(dim=0) / max(count - 1, 1)
    return variances


def _chunked_jitter_search(
    source: _SortedClasses,
    means: Tensor,
    chunk: int,
    jitters: list[float],
    what: list[str],
    accept,
    original: bool,
) -> float:
    """The first jitter of `jitters` that makes every class sound, holding `chunk` classes' covariances at
    a time: each chunk's search starts at the jitter the chunks before needed, and chunks checked at a
    smaller jitter are checked again until all agree. Every jitter skipped failed some class, so this is
    the unchunked search's choice; the factors are dropped (scoring recomputes them)."""
    num_classes = means.shape[0]
    parts = [slice(first, min(num_classes, first + chunk)) for first in range(0, num_classes, chunk)]
    current, checked_at = 0, [None] * len(parts)
    while any(position != current for position in checked_at):
        for i, part in enumerate(parts):
            if checked_at[i] == current:
                continue
            covariances = _class_covariances(source, means, part, original)
            _, jitter = _factor_with_jitter(
                covariances, jitters[current:], what[part], accept, tries=len(jitters) - 1
            )
            del covariances, _
            current = jitters.index(jitter, current)
            checked_at[i] = current
    return jitters[current]


def _chunk_rows(num_rows: int, elements_per_row: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return chunk_size
    return max(1, min(num_rows, _CHUNK_ELEMENTS // max(1, elements_per_row)))


def _check_features(features: Tensor, dim: int) -> None:
    if features.dim() != 2 or features.shape[1] != dim:
        raise ValueError(
            f"features must have shape (N, {dim}) to match the fitted model, got {tuple(features.shape)}"
        )


def class_log_densities(model: ClassGaussians, features: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """`log N(z; mu_c, Sigma_c)` (plus `log q(c)` if the model is weighted) for every sample and class.

    `log N(z; mu, L L^T) = -1/2 (D log 2 pi + ||L^{-1} (z - mu)||^2) - sum_i log L_ii`. The whitening
    `L^{-1} (z - mu)` is a triangular solve with as many samples as the memory budget allows (e.g. 8,192 at
    `D = 2048`), for one class or a group of classes at a time: a solve's speed grows with its number of
    right-hand sides, so spreading the budget over all classes (~80 samples each at 100 classes) ran 1.2-2.5x
    slower on 2 CPU cores. Scratch memory stays near `2 * _CHUNK_ELEMENTS` float64 numbers (a chunk and one
    reused buffer for its differences to the means, whitened in place). A chunked model (`class_chunk`)
    is scored one chunk of classes at a time, each chunk's factors recomputed once per call.

    Args:
        model: fitted `ClassGaussians`.
        features: `(N, D)` features (any float dtype); moved chunk by chunk to the model's device.
        chunk_size: samples per chunk; chosen from the memory budget when None.

    Returns:
        `(N, C)` float64 on the model's device: DDU's GMM "logits".
    """
    _check_features(features, model.dim)
    device, num_classes, dim = model.means.device, model.num_classes, model.dim
    rows = _chunk_rows(features.shape[0], dim, chunk_size)
    classes_per_solve = max(1, min(num_classes, _CHUNK_ELEMENTS // (dim * rows)))
    out = torch.empty(features.shape[0], num_classes, dtype=torch.float64, device=device)
    # One scratch buffer for every solve: a fresh 128 MiB tensor per solve costs page faults and zeroing.
    scratch = torch.empty(
        classes_per_solve * min(rows, features.shape[0]) * dim, dtype=torch.float64, device=device
    )
    for part in model.chunks():
        factors = model.class_factors(part)
        log_norm = -0.5 * dim * _LOG_2PI - factors.diagonal(dim1=-2, dim2=-1).log().sum(dim=1)
        if model.weight_by_class_frequency:
            log_norm = log_norm + model.log_priors[part]
        for start in range(0, features.shape[0], rows):
            z = features[start : start + rows].to(device=device, dtype=torch.float64)
            for first in range(part.start, part.stop, classes_per_solve):
                group = slice(first, min(part.stop, first + classes_per_solve))
                size = (group.stop - group.start, z.shape[0], dim)  # (G, n, D): .mT is LAPACK's layout
                diff = torch.sub(
                    z[None], model.means[group, None, :], out=scratch[: math.prod(size)].view(size)
                )
                local = slice(group.start - part.start, group.stop - part.start)
                white = torch.linalg.solve_triangular(factors[local], diff.mT, upper=False, out=diff.mT)
                squared_norms = torch.linalg.vector_norm(white, dim=1).square_()  # (G, n), one pass
                out[start : start + z.shape[0], group] = (log_norm[local, None] - 0.5 * squared_norms).T
        del factors
    return out


def ddu_scores(class_log_densities: Tensor) -> dict[str, Tensor]:
    """DDU's two GMM scores from `(N, C)` class log-densities, each `(N,)` float64.

    Returns:
        `log_density`: `logsumexp_c log q(z | c)` (+ log prior), the log feature density, the paper's
        epistemic score (m1; higher = in-distribution); `entropy`: entropy of `softmax_c log q(z | c)`,
        the DDU code's m2 (higher = more uncertain).
    """
    check_matrix(class_log_densities, "class_log_densities")
    return {
        "log_density": logsumexp_score(class_log_densities),
        "entropy": softmax_entropy(class_log_densities),
    }


def fit_shared_mahalanobis(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    jitter_start: float | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> SharedGaussian:
    """Class means and one tied covariance for the Mahalanobis detector of Lee et al. 2018 (Eq. 1).

    `Sigma = 1/N sum_c sum_{i: y_i = c} (z_i - mu_c)(z_i - mu_c)^T` (the maximum-likelihood estimate, as
    their sklearn `EmpiricalCovariance` on class-centred features); factored with the same jitter search
    as `fit_class_gaussians`.

    Args:
        features: `(N, D)` training features.
        labels: `(N,)` integer labels in `[0, num_classes)`.
        num_classes: `C`; every class needs at least one sample.
        jitter_start: first jitter tried after the plain factorisation; default `eps * mean variance`.
        max_tries: number of jitters tried after the plain factorisation.

    Raises:
        GaussianFitError: with the reason, if a class is empty, features are not finite, or no jitter works.
    """
    means, scatters, counts = _class_moments(features, labels, num_classes)
    covariance = scatters.sum(dim=0, keepdim=True) / features.shape[0]
    del scatters
    jitters = _project_jitters(covariance.diagonal(dim1=-2, dim2=-1), jitter_start, max_tries)
    factors, jitter = _factor_with_jitter(covariance, jitters, ["the shared covariance"])
    counts = counts.to(means.device)
    return SharedGaussian(means=means, cholesky=factors[0], jitter=jitter, class_counts=counts)


def mahalanobis_score(model: SharedGaussian, features: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Lee et al. 2018's confidence score `-min_c (z - mu_c)^T Sigma^{-1} (z - mu_c)` -> `(N,)` float64.

    The negative smallest squared Mahalanobis distance to a class mean (higher = in-distribution; the
    square root would rank identically). Features and means are whitened once by `L^{-1}`, so the distance
    is a squared Euclidean one in whitened space.

    Args:
        model: fitted `SharedGaussian`.
        features: `(N, D)` features (any float dtype); moved chunk by chunk to the model's device.
        chunk_size: samples per chunk; chosen from the memory budget when None.
    """
    _check_features(features, model.dim)
    device = model.means.device
    white_means = torch.linalg.solve_triangular(model.cholesky, model.means.T, upper=False).T  # (C, D)
    rows = _chunk_rows(features.shape[0], model.num_classes * model.dim, chunk_size)
    out = torch.empty(features.shape[0], dtype=torch.float64, device=device)
    for start in range(0, features.shape[0], rows):
        z = features[start : start + rows].to(device=device, dtype=torch.float64)
        white = torch.linalg.solve_triangular(model.cholesky, z.T, upper=False).T  # (n, D)
        squared = (white[:, None, :] - white_means[None, :, :]).square().sum(dim=2)  # (n, C)
        out[start : start + z.shape[0]] = -squared.min(dim=1).values
    return out
