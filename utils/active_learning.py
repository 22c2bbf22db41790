"""Active learning on MNIST and Dirty-MNIST (DDU paper, Sec. 6.2 and App. C.3), as the original script.

Each acquisition step trains a fresh network on the labelled set (Adam, weight decay 5e-4, the labelled set
resampled with replacement to a fixed 5,056 samples per epoch), keeps the epoch with the best validation
accuracy, records its MNIST test accuracy, then moves the `acquisition_batch_size` pool samples with the
highest acquisition score into the labelled set:

* softmax:  softmax entropy;
* ensemble: predictive entropy of the ensemble (or mutual information with `-mi`);
* gmm (DDU): negative feature log-density under the class-conditional Gaussians fitted on the labelled
  set's features, classes weighted by their frequency in the labelled set (the same code evaluate.py uses);
* random (a baseline the original lacks): i.i.d. uniform scores from a generator seeded per (run, step),
  so the acquired batch is a uniformly random subset of the pool, reproducible and resumable.

Everything (pool, labelled set, validation and test sets) lives on the device as normalised tensors; the
pool is scored in large batches. Each (run, step) gets its own seed, so a resumed experiment continues with
exactly the numbers an uninterrupted one would have produced.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

import data
import metrics
from data.transforms import normalize
from utils import training
from utils.features import collect_outputs


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
    """(pool, validation, test). The pool is MNIST's training set, or with `ambiguous` a random subsample
    of `subsample` MNIST training digits plus the Ambiguous-MNIST training set; 10% of it is held out for
    validation with the original's seeded split. `max_pool` (not in the original) caps the pool for quick
    runs. The test set is always MNIST's."""
    images, labels = data.load_split("mnist", root, "train")
    rng = np.random.RandomState(seed)
    if ambiguous:
        chosen = torch.as_tensor(rng.choice(len(labels), size=min(subsample, len(labels)), replace=False))
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
    """`total / num_classes` random indices of each class (the original's class-balanced initial set)."""
    per_class = total // num_classes
    cpu_labels = labels.cpu()
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(cpu_labels == c).flatten()
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} pool samples, {per_class} needed")
        chosen += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return chosen


class ResampledLoader:
    """Batches of a labelled set drawn with replacement to a fixed length per epoch (the original's
    `RandomFixedLengthSampler`), so short and long labelled sets get the same number of steps."""

    def __init__(self, split: Split, length: int, batch_size: int, seed: int):
        self.split, self.length, self.batch_size, self.seed = split, length, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.length / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randint(0, len(self.split), (self.length,), generator=generator).to(self.split.y.device)
        for start in range(0, self.length, self.batch_size):
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
):
    """A fresh model trained with Adam (weight decay 5e-4) for `epochs`; the epoch with the best validation
    accuracy is kept (its weights are returned, in eval mode)."""
    torch.manual_seed(seed)
    model = make_model().to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = training.make_optimizer(model.parameters(), "adam", lr=1e-3, weight_decay=5e-4)
    loader = ResampledLoader(labelled, samples_per_epoch, batch_size, seed)
    val_loader = _SplitLoader(validation, test_batch_size)
    best_accuracy, best_state = -1.0, None
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        training.train_one_epoch(model, loader, optimizer, settings, epoch=epoch)
        accuracy = training.evaluate_accuracy(model, val_loader, settings)
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()


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
