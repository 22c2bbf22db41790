"""Active learning on MNIST and Dirty-MNIST (DDU paper, Sec. 6.2 and App. C.3), as the original script.

The pool, its validation split and the class-balanced initial labelled set are built once and shared by
every run, as the original does (`build_pool`, `balanced_initial_indices`). Each acquisition step trains a
fresh network on the labelled set (Adam, weight decay 5e-4; each epoch repeats every labelled sample about
equally often to fill 5,056 samples, `ResampledLoader`), keeps the epoch with the best validation accuracy,
records its MNIST test accuracy, then moves the `acquisition_batch_size` pool samples with the highest
acquisition score into the labelled set:

* softmax:  softmax entropy;
* ensemble: predictive entropy of the ensemble (or mutual information with `-mi`);
* gmm (DDU): negative feature log-density under the class-conditional Gaussians fitted on the labelled
  set's features, classes weighted by their frequency in the labelled set (the same code evaluate.py uses);
* random (a baseline the original lacks): i.i.d. uniform scores from a generator seeded per (run, step),
  so the acquired batch is a uniformly random subset of the pool, reproducible and resumable.

An ensemble's members are trained together, stacked into one vmapped network, where that is exact and the
device is a GPU (`train_best_models`, the same path as `train.py --ensemble`; see `engine.stacked_ensemble`), and one
after another otherwise.

Everything (pool, labelled set, validation and test sets) lives on the device as normalised tensors; the
pool is scored in large batches. Each (run, step) gets its own seed, so a resumed experiment continues with
exactly the numbers an uninterrupted one would have produced.

`original_quirks=True` (`active_learning.py --original-quirks`) reproduces two places where the original
code, in effect, does not do what it intends and the paper describes: it keeps the last epoch's model
instead of the best one (`train_best_model`), and it ranks the pool by feature densities summed in float32,
where they underflow to 0 and tie (`original_ddu_acquisition`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import data
import metrics
from data.loaders import epoch_generator
from data.transforms import normalize
from engine import stacked_ensemble, training
from engine.features import collect_outputs
from engine.training import run_epochs


@dataclass
class Split:
    """Normalised images `x (N, 1, 28, 28)` and labels `y (N,)` on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def take(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index])


def _normalised(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    info = data.get_info("mnist")
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return normalize(images.to(device), mean, std)


def build_pool(
    root, *, ambiguous: bool, subsample: int, seed: int, device: torch.device, max_pool: int | None = None
) -> tuple[Split, Split, Split]:
    """(pool, validation, test), built once per experiment and shared by all its runs, as the original.

    The pool is MNIST's training set, or with `ambiguous` `subsample` MNIST training digits drawn uniformly
    *with replacement* (the original's `np.random.choice(60000, subsample)`, so a digit can appear twice)
    followed by the Ambiguous-MNIST training set. `floor(10%)` of it is held out for validation with the
    original's split (`data.split_indices(N, 0.1, val_seed=seed)`; the pool keeps the shuffled order of
    the rest). The original draws the subsample from NumPy's unseeded global state; here it comes from
    `RandomState(seed)`, so an experiment is reproducible. `max_pool` (not in the original) caps the pool
    for quick runs. The test set is always MNIST's."""
    images, labels = data.load_split("mnist", root, "train")
    rng = np.random.RandomState(seed)
    if ambiguous:
        chosen = torch.as_tensor(rng.choice(len(labels), size=subsample, replace=True))
        amb_images, amb_labels = data.load_split("ambiguous_mnist", root, "train")
        x = torch.cat([_normalised(images[chosen], device), _normalised(amb_images, device)])
        y = torch.cat([labels[chosen], amb_labels]).to(device)
    else:
        x, y = _normalised(images, device), labels.to(device)
    if max_pool is not None and max_pool < len(y):
        keep = torch.as_tensor(rng.choice(len(y), size=max_pool, replace=False), device=device)
        x, y = x[keep], y[keep]
    train_idx, val_idx = data.split_indices(len(y), 0.1, val_seed=seed)
    full = Split(x, y)
    test_images, test_labels = data.load_split("mnist", root, "test")
    test = Split(_normalised(test_images, device), test_labels.to(device))
    return (
        full.take(torch.as_tensor(train_idx, device=device)),
        full.take(torch.as_tensor(val_idx, device=device)),
        test,
    )


def balanced_initial_indices(
    labels: torch.Tensor, total: int, num_classes: int, generator: torch.Generator
) -> list[int]:
    """The original's class-balanced initial labelled set: `total / num_classes` samples of each class.

    As the original (`get_balanced_sample_indices`), one random permutation of the pool is walked in order
    and a sample is kept while its class has fewer than `total / num_classes`; the indices come back in that
    permutation order. The original draws the permutation from torch's global generator right after
    `torch.manual_seed(seed)`, so a generator seeded with the same seed gives the same set (without
    -ambiguous, where nothing draws before it).
    """
    per_class = total // num_classes
    order = torch.randperm(len(labels), generator=generator)
    permuted = labels.cpu()[order]
    kept = []
    for c in range(num_classes):
        positions = torch.nonzero(permuted == c).flatten()
        if len(positions) < per_class:
            raise ValueError(f"class {c} has only {len(positions)} pool samples, {per_class} needed")
        kept.append(positions[:per_class])
    return order[torch.cat(kept).sort().values].tolist()


class ResampledLoader:
    """Batches of a labelled set stretched to `length` samples per epoch, every sample repeated about
    equally often: the original's `RandomFixedLengthSampler` (from BatchBALD), so short and long labelled
    sets get the same number of optimiser steps.

    Each epoch, with `n` labelled samples and `M = length` rounded up to a multiple of `n`: the first
    `length` entries of a random permutation of `0..M-1`, each taken modulo `n`. Sample `i` therefore
    appears `M / n = ceil(length / n)` times less the number of its copies among the dropped `M - length < n`
    entries: usually 0 or 1 (so floor or ceil of `length / n`), now and then more, and exactly `length / n`
    for every sample when `n` divides `length`. The batches follow the permutation's order. When
    `length < n` the epoch is one permutation of all `n` samples (the original never drops a sample).
    Epoch `e` draws from `data.loaders.epoch_generator(seed, e)`, the rule every loader of the project uses.
    """

    def __init__(self, split: Split, length: int, batch_size: int, seed: int):
        self.split, self.length, self.batch_size, self.seed = split, length, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_size(self) -> int:
        return max(self.length, len(self.split))

    def __len__(self) -> int:
        return math.ceil(self.epoch_size / self.batch_size)

    def positions(self) -> torch.Tensor:
        """`(epoch_size,)` int64 positions into the labelled set for the current epoch, in batch order."""
        generator = epoch_generator(self.seed, self.epoch)  # the loaders' per-epoch rule
        n = len(self.split)
        if self.length < n:
            return torch.randperm(n, generator=generator)
        padded = self.length + (-self.length % n)
        return torch.randperm(padded, generator=generator)[: self.length] % n

    def __iter__(self):
        order = self.positions().to(self.split.y.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.split.x[index], self.split.y[index]


def split_batches(split: Split, batch_size: int):
    for start in range(0, len(split), batch_size):
        yield split.x[start : start + batch_size], split.y[start : start + batch_size]


class _SplitLoader:
    def __init__(self, split: Split, batch_size: int):
        self.split, self.batch_size = split, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        return split_batches(self.split, self.batch_size)


def adam_optimizer(parameters) -> torch.optim.Optimizer:
    """The original's active-learning optimiser, for one network or a stack of members: Adam, learning rate
    1e-3, weight decay 5e-4."""
    return training.make_optimizer(parameters, "adam", lr=1e-3, weight_decay=5e-4)


def train_best_model(
    make_model,
    labelled: Split,
    validation: Split,
    *,
    epochs: int,
    batch_size: int,
    test_batch_size: int,
    samples_per_epoch: int,
    settings: training.TrainSettings,
    seed: int,
    on_epoch_end: Callable[[training.EpochStats], None] | None = None,
    original_quirks: bool = False,
):
    """A fresh model trained with Adam (weight decay 5e-4) for `epochs`; the epoch with the best validation
    accuracy is kept (its weights are returned, in eval mode), as the paper describes. `on_epoch_end(stats)`
    sees each epoch's statistics with the validation accuracy.

    With `original_quirks` the last epoch's weights are returned, as the original code effectively does: it
    "keeps" the best epoch with `best_model = model`, a reference to the network that later epochs go on
    training, so after the loop it holds the last epoch's weights whatever the validation accuracies were.
    """
    torch.manual_seed(seed)
    model = make_model().to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = adam_optimizer(model.parameters())
    loader = ResampledLoader(labelled, samples_per_epoch, batch_size, seed)
    val_loader = _SplitLoader(validation, test_batch_size)
    best = _BestEpochs(1)

    def validate(epoch: int, stats: training.EpochStats) -> None:
        stats.val_accuracy = training.evaluate_accuracy(model, val_loader, settings)
        best.offer(0, stats.val_accuracy, lambda: copy.deepcopy(model.state_dict()))

    run_epochs(
        lambda epoch: training.train_one_epoch(model, loader, optimizer, settings, epoch=epoch),
        epochs=epochs,
        loader=loader,
        validate=validate,
        validate_every=1,
        on_epoch_end=on_epoch_end,
    )
    if not original_quirks:
        model.load_state_dict(best.states[0])
    return model.eval()


class _BestEpochs:
    """The best validation accuracy so far of each of `n` members and a copy of its weights then (the first
    epoch that reached it: a later tie does not replace it)."""

    def __init__(self, n: int) -> None:
        self.accuracy = [-1.0] * n
        self.states: list[dict | None] = [None] * n

    def offer(self, k: int, accuracy: float, state: Callable[[], dict], force: bool = False) -> None:
        """Keep `state()` for member `k` when `accuracy` beats its best (or when `force`)."""
        if accuracy > self.accuracy[k] or force:
            self.accuracy[k], self.states[k] = accuracy, state()


def train_best_models(
    make_model,
    labelled: Split,
    validation: Split,
    *,
    seeds: Sequence[int],
    mode: str = "auto",
    epochs: int,
    batch_size: int,
    test_batch_size: int,
    samples_per_epoch: int,
    settings: training.TrainSettings,
    on_epoch_end: Callable[[int, training.EpochStats], None] | None = None,
    original_quirks: bool = False,
) -> list:
    """`train_best_model` for each of `seeds` (member k: seed `seeds[k]`, its own resampling of the labelled
    set, the common validation split), stacked or one after another as `engine.stacked_ensemble.choose_mode` picks
    for `mode`; `on_epoch_end(k, stats)` sees member k's epochs. Raises `ValueError` when `mode` is
    `stacked` and the network cannot be stacked. `original_quirks`: each member is its last epoch (see
    `train_best_model`)."""
    common = dict(
        epochs=epochs,
        batch_size=batch_size,
        test_batch_size=test_batch_size,
        samples_per_epoch=samples_per_epoch,
        settings=settings,
        original_quirks=original_quirks,
    )
    chosen = "sequential"
    if len(seeds) > 1:
        chosen, _ = stacked_ensemble.choose_mode(
            mode, stacked_ensemble.stacking_obstacle(make_model()), settings.device.type
        )
    if chosen == "sequential":
        return [
            train_best_model(
                make_model,
                labelled,
                validation,
                seed=seed,
                on_epoch_end=None if on_epoch_end is None else (lambda stats, k=k: on_epoch_end(k, stats)),
                **common,
            )
            for k, seed in enumerate(seeds)
        ]
    return _train_best_models_stacked(
        make_model, labelled, validation, seeds=seeds, on_epoch_end=on_epoch_end, **common
    )


def _train_best_models_stacked(
    make_model, labelled, validation, *, seeds, epochs, batch_size, test_batch_size, samples_per_epoch, settings,
    on_epoch_end, original_quirks,
) -> list:  # fmt: skip
    """The members of `train_best_models` stacked (see `engine.stacked_ensemble`): the same seeds, initial weights,
    batches and Adam updates as one after another; each member keeps its own best epoch."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(make_model().to(settings.device))
    stack = stacked_ensemble.StackedEnsemble(members).to(settings.device)
    optimizer = adam_optimizer(stack.parameters())
    loader = stacked_ensemble.ZippedLoader(
        [ResampledLoader(labelled, samples_per_epoch, batch_size, seed) for seed in seeds]
    )
    val_loader = _SplitLoader(validation, test_batch_size)
    best = _BestEpochs(len(seeds))

    def validate(epoch: int, stats: list[training.EpochStats]) -> None:
        accuracies = stacked_ensemble.evaluate_accuracy_stacked(
            stack, val_loader, settings, shared_input=True
        )
        for k, (member_stats, accuracy) in enumerate(zip(stats, accuracies)):
            member_stats.val_accuracy = accuracy
            best.offer(
                k,
                accuracy,
                lambda k=k: {name: t.clone() for name, t in stack.member_state_dict(k).items()},
                force=original_quirks and epoch == epochs - 1,
            )

    def each_member(stats: list[training.EpochStats]) -> None:
        for k, member_stats in enumerate(stats):
            on_epoch_end(k, member_stats)

    run_epochs(
        lambda epoch: stacked_ensemble.train_one_epoch_stacked(
            stack, loader, optimizer, settings, epoch=epoch
        ),
        epochs=epochs,
        loader=loader,
        validate=validate,
        validate_every=1,
        on_epoch_end=each_member if on_epoch_end is not None else None,
    )
    for member, state in zip(members, best.states):
        member.load_state_dict(state)
        if settings.channels_last:
            member.to(memory_format=torch.channels_last)
        member.eval()
    return members


@torch.no_grad()
def test_accuracy_percent(model, test: Split, batch_size: int, settings: training.TrainSettings) -> float:
    return 100.0 * training.evaluate_accuracy(model, _SplitLoader(test, batch_size), settings)


@torch.no_grad()
def acquisition_scores(
    al_type: str,
    models: list,
    pool: Split,
    labelled: Split,
    *,
    mutual_information: bool,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    num_classes: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Per pool sample, higher = acquire first (see the module docstring for each `al_type`).

    `seed` seeds the random scores of `al_type` "random" (which runs no network); other types ignore it.
    """
    if al_type == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(len(pool), generator=generator, dtype=torch.float64)
    pool_out = [collect_outputs(m, _SplitLoader(pool, batch_size), device, precision) for m in models]
    if al_type == "softmax":
        return metrics.softmax_entropy(pool_out[0].logits)
    if al_type == "ensemble":
        probs = torch.stack([o.logits.softmax(1) for o in pool_out])
        if mutual_information:
            return metrics.ensemble_mutual_information(probs)
        return metrics.ensemble_predictive_entropy(probs)
    if al_type == "gmm":
        train = collect_outputs(models[0], _SplitLoader(labelled, batch_size), device, precision)
        scorer = metrics.DDUScorer.fit_features(
            train.features, train.labels, num_classes, weight_by_class_frequency=True
        )
        return -scorer.predict_features(pool_out[0].features)["log_density"]
    raise ValueError(f"unknown acquisition type {al_type!r}")


def select_top(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` entries of `candidates` (pool indices, aligned with `scores`) with the highest scores."""
    k = min(k, len(candidates))
    return candidates[torch.topk(scores.to(torch.float64), k).indices.to(candidates.device)]


def original_class_weights(
    labelled: Split, samples_per_epoch: int, seed: int, epoch: int, num_classes: int
) -> torch.Tensor:
    """The class weights of the original's DDU acquisition (`--original-quirks`), `(C,)` float32 on the CPU.

    The original counts each class over one more pass of its resampling loader (the epoch after training,
    here `ResampledLoader(labelled, samples_per_epoch, ..., seed)` at `epoch`) and divides by the number of
    labelled samples, so the weights sum to about `samples_per_epoch / n`, not 1. The paper's density uses
    the labelled set's class frequencies, as the default path does.
    """
    loader = ResampledLoader(labelled, samples_per_epoch, 1, seed)
    loader.set_epoch(epoch)
    labels = labelled.y.cpu()[loader.positions()]
    return torch.bincount(labels, minlength=num_classes).float() / len(labelled)


@torch.no_grad()
def original_ddu_acquisition(
    model,
    pool: Split,
    labelled: Split,
    k: int,
    class_weights: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    num_classes: int = 10,
) -> torch.Tensor:
    """Positions (into `pool`) of the `k` samples the original's DDU acquisition picks (`--original-quirks`).

    The original stores the class log-densities `log q(z | c)` in float32, sums `exp(log q(z | c)) * w_c`
    in float32 (`metrics.original_float32_density`) and takes `torch.topk(..., largest=False)` on the CPU.
    With hundreds of feature dimensions and 20 to 300 labelled samples nearly every pool density underflows
    to exactly 0, so the choice is topk's tie-breaking among zeros (on current PyTorch, for a large pool,
    the first pool positions), not the lowest density. The default path ranks the float64 log-densities
    themselves (`acquisition_scores`), as the paper does. The Gaussians are fitted as the original's
    `gmm_fit` (the one its evaluation uses): its jitter search (`jitter_search="original"`), no class
    priors (it applies `class_weights` after the exp).
    """
    labelled_out = collect_outputs(model, _SplitLoader(labelled, batch_size), device, precision)
    pool_out = collect_outputs(model, _SplitLoader(pool, batch_size), device, precision)
    scorer = metrics.DDUScorer.fit_features(
        labelled_out.features, labelled_out.labels, num_classes, jitter_search="original"
    )
    density = metrics.original_float32_density(scorer.class_log_densities(pool_out.features), class_weights)
    return torch.topk(density, min(k, len(pool)), largest=False).indices


def sample_entropies(
    model, split: Split, batch_size: int, device: torch.device, precision: str = "fp32"
) -> torch.Tensor:
    """Softmax entropy of every sample in `split` under `model` (used to tell ambiguous samples)."""
    return metrics.softmax_entropy(
        collect_outputs(model, _SplitLoader(split, batch_size), device, precision).logits
    )


def ensemble_test_accuracy_percent(
    models: list, test: Split, batch_size: int, device: torch.device, precision: str = "fp32"
) -> float:
    """Test accuracy (%) of the mean of the members' softmaxes."""
    loader = _SplitLoader(test, batch_size)
    probs = torch.stack([collect_outputs(m, loader, device, precision).logits.softmax(1) for m in models])
    return 100.0 * metrics.accuracy(probs.mean(0), test.y)
