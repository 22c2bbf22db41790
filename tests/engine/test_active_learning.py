"""active_learning.py and engine/acquisition.py: acquisition on hand-built scores, the experiment end to
end for every acquisition type (with and without -ambiguous), output names and structure, resume, errors.

The end-to-end runs read a tiny MNIST (300 training and 100 test images of class-dependent bar patterns,
written in the official IDX layout) and a tiny Ambiguous-MNIST (40 blends of two classes, two labels each),
both made here; each step trains a LeNet on one resampled epoch of 64 samples, so a run takes a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import AMBIGUOUS_SAMPLES, FIXTURES, TEST_IMAGES, TRAIN_IMAGES
from torch import nn

import active_learning
import data
import engine.acquisition
import metrics
import net
from data.loaders import epoch_generator
from engine import al_run, training
from engine.acquisition import (
    ResampledLoader,
    Split,
    acquisition_scores,
    balanced_initial_indices,
    build_pool,
    original_class_weights,
    original_ddu_acquisition,
    sample_entropies,
    select_top,
    train_best_model,
)
from metrics import DDUScorer
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")

NUM_CLASSES = 10
CPU = torch.device("cpu")
PRETRAINED = "tiny_dirty_lenet.model"
_TRAIN_BEST_MODEL = train_best_model  # the real trainer, wrapped by `record_training`


# ----------------------------------------------------------------------------------------------------
# Tiny data sets and the pretrained Dirty-MNIST model, written once per module


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> Path:
    """A LeNet checkpoint standing in for the Dirty-MNIST model; its last layer is scaled up so that the
    softmax entropies of different inputs spread over (0, log 10) instead of all sitting near log 10."""
    folder = tmp_path_factory.mktemp("al_pretrained")
    torch.manual_seed(0)
    model = net.create_model("lenet", num_classes=NUM_CLASSES, mnist=True)
    with torch.no_grad():
        model.fc3.weight.mul_(110.0)
    torch.save(model.state_dict(), folder / PRETRAINED)
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Missing files must fail at once, never start a download."""
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")


# ----------------------------------------------------------------------------------------------------
# Helpers


def parse(*argv: str):
    return active_learning.get_args_parser().parse_args(list(argv))


def tiny_args(root: Path, out: Path, *extra: str, al_type: str = "gmm", max_samples: int = 30, runs: int = 1):
    """20 initial samples, +5 per step up to `max_samples`, one epoch of 64 resampled samples per step."""
    return parse(
        "--seed", "1", "--model", "lenet", "--al-type", al_type, "--epochs", "1", "--samples-per-epoch", "64",
        "-b", "32", "-tb", "256", "-sb", "64", "--num-initial-samples", "20",
        "--max-training-samples", str(max_samples), "--acquisition-batch-size", "5", "--runs", str(runs),
        "--no-gpu", "--dataset-root", str(root), "--output-dir", str(out), *extra,
    )  # fmt: skip


def ambiguous_flags(pretrained: Path, subsample: int = 100) -> list[str]:
    return [
        "-ambiguous", "--subsample", str(subsample), "--trained-model", "lenet",
        "--saved-model-path", str(pretrained), "--saved-model-name", PRETRAINED,
    ]  # fmt: skip


def record_training(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Wrap `engine.acquisition.train_best_model` to record the labelled-set size of every call; with `interrupt_at`,
    the call with that index raises KeyboardInterrupt (as Ctrl-C would) before training."""
    sizes: list[int] = []

    def wrapper(make_model, labelled, *args, **kwargs):
        if interrupt_at is not None and len(sizes) == interrupt_at:
            raise KeyboardInterrupt
        sizes.append(len(labelled))
        return _TRAIN_BEST_MODEL(make_model, labelled, *args, **kwargs)

    monkeypatch.setattr(engine.acquisition, "train_best_model", wrapper)
    return sizes


def read(path: Path):
    return json.loads(path.read_text())


def one_line_error(capsys, args) -> str:
    """Run main(args), expecting a user error: non-zero exit, one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as info:
        active_learning.main(args)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------------
# Acquisition on hand-built scores


class TableModel(nn.Module):
    """A stand-in network whose outputs are fixed per input: pixel (0, 0) of each image holds a row index
    into `features (N, D)`; the logits are the first `C` feature dimensions (`forward_head`)."""

    def __init__(self, features: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("table", features.float())
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, : self.num_classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def index_split(rows: range | list[int], labels=None) -> Split:
    """A `Split` whose image i carries table row `rows[i]` in pixel (0, 0)."""
    x = torch.zeros(len(rows), 1, 28, 28)
    x[:, 0, 0, 0] = torch.as_tensor(list(rows), dtype=torch.float32)
    y = torch.zeros(len(rows), dtype=torch.int64) if labels is None else torch.as_tensor(labels)
    return Split(x, y)


def scores_for(al_type: str, models, pool: Split, labelled: Split, mi: bool = False, classes: int = 10):
    # batch_size 3 splits the pool unevenly, so batching must keep scores aligned with the samples
    return acquisition_scores(al_type, models, pool, labelled, mutual_information=mi, batch_size=3,
                                 device=CPU, num_classes=classes)  # fmt: skip


def test_select_top_returns_the_candidates_with_the_highest_scores():
    scores = torch.tensor([0.1, 5.0, -2.0, 3.0, float("inf"), 0.0])
    candidates = torch.tensor([40, 41, 42, 43, 44, 45])
    assert set(select_top(scores, candidates, 3).tolist()) == {44, 41, 43}
    assert select_top(scores, candidates, 1).tolist() == [44]
    assert sorted(select_top(scores, candidates, 10).tolist()) == candidates.tolist()  # k beyond the pool
    assert select_top(scores.to(torch.bfloat16), candidates, 2).tolist() == [44, 41]


def test_softmax_acquisition_picks_the_highest_entropy_samples():
    logits = torch.full((12, NUM_CLASSES), -10.0)
    logits[torch.arange(12), torch.arange(12) % NUM_CLASSES] = 10.0  # confident: entropy ~ 0
    logits[4] = 0.0  # uniform: entropy log 10
    logits[9] = torch.tensor([10.0, 10.0] + [-10.0] * (NUM_CLASSES - 2))  # two classes: entropy ~ log 2
    model = TableModel(logits, NUM_CLASSES)
    pool = index_split(range(12))
    scores = scores_for("softmax", [model], pool, pool)
    assert scores.shape == (12,)
    assert scores[4] == pytest.approx(math.log(10), abs=1e-6)
    assert scores[9] == pytest.approx(math.log(2), abs=1e-6)
    candidates = torch.arange(100, 112)
    assert select_top(scores, candidates, 2).tolist() == [104, 109]


@pytest.mark.parametrize("mutual_information", [False, True])
def test_ensemble_acquisition_picks_disagreement_with_mi_and_total_uncertainty_without(mutual_information):
    """Samples 2 and 7: both members are uniform (high entropy, no disagreement). Samples 5 and 10: each
    member is confident, but in a different class (moderate entropy, all of it disagreement)."""
    n = 12
    first = torch.full((n, NUM_CLASSES), -10.0)
    first[torch.arange(n), torch.arange(n) % NUM_CLASSES] = 10.0
    second = first.clone()
    first[[2, 7]] = second[[2, 7]] = 0.0
    for i in (5, 10):
        second[i] = first[i].roll(3)
    members = [TableModel(first, NUM_CLASSES), TableModel(second, NUM_CLASSES)]
    pool = index_split(range(n))
    scores = scores_for("ensemble", members, pool, pool, mi=mutual_information)
    chosen = set(select_top(scores, torch.arange(n), 2).tolist())
    if mutual_information:
        assert chosen == {5, 10}
        assert scores[[2, 7]].abs().max() < 1e-6 and scores[5] == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert chosen == {2, 7}
        assert scores[2] == pytest.approx(math.log(10), abs=1e-6)


def test_gmm_acquisition_picks_the_samples_far_from_the_labelled_features():
    """Labelled features: two well-separated 3-d clusters (classes 0 and 1). Pool: points near the
    clusters, plus samples 3, 11 and 17 far from both; the farther, the lower the density."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0]])
    labelled_y = torch.arange(40) % 2
    labelled_z = centres[labelled_y] + torch.randn(40, 3, generator=gen)
    pool_z = centres[torch.arange(20) % 2] + 0.5 * torch.randn(20, 3, generator=gen)
    pool_z[3] = torch.tensor([30.0, -30.0, 5.0])
    pool_z[11] = torch.tensor([4.0, 4.0, 25.0])
    pool_z[17] = torch.tensor([4.0, 4.0, 12.0])
    model = TableModel(torch.cat([labelled_z, pool_z]), num_classes=2)
    labelled = index_split(range(40), labelled_y)
    pool = index_split(range(40, 60))
    scores = scores_for("gmm", [model], pool, labelled, classes=2)
    assert set(select_top(scores, torch.arange(20), 3).tolist()) == {3, 11, 17}
    assert scores[3] > scores[11] > scores[17] > scores[[i for i in range(20) if i not in (3, 11, 17)]].max()


def test_original_quirks_rank_float32_densities_that_tie_at_zero():
    """Labelled: two tight 3-d clusters. Pool: 30 samples, every one at least 30 standard deviations from
    both (log-densities below -400: exp is exactly 0 in float32), three of them (3, 11, 17) much farther.
    The paper's ranking takes those three; the original's takes `torch.topk(zeros, 3, largest=False)`,
    whatever its tie-breaking gives, and never looks at the distances."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0]])
    labelled_y = torch.arange(40) % 2
    labelled_z = centres[labelled_y] + 0.3 * torch.randn(40, 3, generator=gen)
    pool_z = torch.tensor([4.0, 4.0, 30.0]) + torch.randn(30, 3, generator=gen)
    pool_z[[3, 11, 17]] += torch.tensor([0.0, 0.0, 60.0])
    model = TableModel(torch.cat([labelled_z, pool_z]), num_classes=2)
    labelled, pool = index_split(range(40), labelled_y), index_split(range(40, 70))
    candidates = torch.arange(100, 130)

    paper = select_top(scores_for("gmm", [model], pool, labelled, classes=2), candidates, 3)
    assert set(paper.tolist()) == {103, 111, 117}

    weights = torch.tensor([0.5, 0.5])
    scorer = DDUScorer.fit_features(labelled_z, labelled_y, 2)
    log_densities = scorer.class_log_densities(pool_z)
    assert log_densities.max() < -400  # so exp underflows ...
    density = metrics.original_float32_density(log_densities, weights)
    assert density.dtype == torch.float32 and torch.equal(density, torch.zeros(30))  # ... to exact ties
    positions = original_ddu_acquisition(model, pool, labelled, 3, weights, batch_size=7, device=CPU,
                                         num_classes=2)  # fmt: skip
    assert positions.tolist() == torch.topk(torch.zeros(30), 3, largest=False).indices.tolist()
    assert set(candidates[positions].tolist()) != {103, 111, 117}


def test_original_class_weights_count_one_more_resampled_epoch():
    """The original's `class_probs`: class counts over one pass of the resampling loader, divided by the
    labelled-set size (not by the epoch length), so they sum to about 5056 / n, not 1."""
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 2])
    split = Split(torch.zeros(10, 1, 1, 1), labels)
    weights = original_class_weights(split, 5056, seed=4, epoch=3, num_classes=3)
    loader = ResampledLoader(split, 5056, 64, seed=4)
    loader.set_epoch(3)
    counts = torch.bincount(torch.cat([y for _, y in loader]), minlength=3)
    assert weights.dtype == torch.float32 and torch.equal(weights, counts.float() / 10)
    assert float(weights.sum()) == pytest.approx(505.6)
    assert weights.tolist() == pytest.approx([151.7, 50.6, 303.4], abs=0.31)  # 3, 1 and 6 of 10 samples


class ExplodingModel(nn.Module):
    """A network that must not run: random acquisition scores the pool without any forward pass."""

    def forward(self, x):  # pragma: no cover - reaching it is the failure
        raise AssertionError("random acquisition ran the network")

    forward_features = forward


def test_random_acquisition_is_seeded_uniform_and_runs_no_network():
    pool, labelled = index_split(range(50)), index_split(range(5))

    def scores(seed: int) -> torch.Tensor:
        return acquisition_scores("random", [ExplodingModel()], pool, labelled, mutual_information=False,
                                     batch_size=3, device=CPU, seed=seed)  # fmt: skip

    first = scores(7)
    assert first.shape == (50,) and first.dtype == torch.float64
    assert torch.equal(first, scores(7))  # the same (run, step) seed acquires the same batch on resume
    assert not torch.equal(first, scores(8))
    assert ((first >= 0) & (first < 1)).all() and len(set(first.tolist())) == 50  # no ties for top-k
    # Uniform over the pool: over 2,000 seeds each of 50 samples lands in the top 5 about 200 times.
    counts = torch.zeros(50)
    for seed in range(2000):
        counts[select_top(scores(seed), torch.arange(50), 5)] += 1
    expected = 2000 * 5 / 50
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 90.0  # 49 degrees of freedom: P(chi2 > 90) < 3e-4 for a uniform choice


def originals_balanced_walk(labels: torch.Tensor, per_class: int, seed: int) -> list[int]:
    """The original's procedure, step by step: `torch.manual_seed(seed)`, one `torch.randperm` from the
    global generator, then walk it and keep a sample while its class has fewer than `per_class`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        order = torch.randperm(len(labels)).tolist()
    taken: dict[int, int] = {}
    kept = []
    for index in order:
        c = int(labels[index])
        if taken.get(c, 0) < per_class:
            kept.append(index)
            taken[c] = taken.get(c, 0) + 1
        if len(kept) == per_class * NUM_CLASSES:
            break
    return kept


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_balanced_initial_indices_is_the_originals_walk_over_one_permutation(seed):
    labels = torch.tensor([c for c in range(NUM_CLASSES) for _ in range(3 + c)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(99))]
    chosen = balanced_initial_indices(labels, 20, NUM_CLASSES, torch.Generator().manual_seed(seed))
    assert chosen == originals_balanced_walk(labels, 2, seed)  # the same indices in the same order
    assert len(set(chosen)) == 20
    assert torch.bincount(labels[chosen], minlength=NUM_CLASSES).tolist() == [2] * NUM_CLASSES
    with pytest.raises(ValueError, match="class 0 has only 3"):
        balanced_initial_indices(labels, 40, NUM_CLASSES, torch.Generator().manual_seed(0))


def originals_fixed_length_positions(n: int, length: int, generator: torch.Generator) -> list[int]:
    """The original's `RandomFixedLengthSampler`, written out: fewer wanted than there are samples -> one
    permutation of all; else a permutation of `length` rounded up to a multiple of `n`, cut to `length`,
    modulo `n`."""
    if length < n:
        return torch.randperm(n, generator=generator).tolist()
    padded = length + (-length % n)
    return [int(i) % n for i in torch.randperm(padded, generator=generator)[:length]]


@pytest.mark.parametrize("n, length", [(7, 100), (20, 5056), (32, 5056), (300, 5056), (9, 5)])
def test_resampled_loader_repeats_each_sample_as_the_originals_sampler(n, length):
    split = Split(torch.arange(float(n)).view(n, 1, 1, 1), torch.arange(n))
    loader = ResampledLoader(split, length=length, batch_size=64, seed=3)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        drawn = torch.cat([y for _, y in batches])
        generator = epoch_generator(3, epoch)
        assert drawn.tolist() == originals_fixed_length_positions(n, length, generator)
        assert all(torch.equal(x.flatten(), y.float()) for x, y in batches)  # images stay with their labels
        assert len(loader) == len(batches) and all(len(y) == 64 for _, y in batches[:-1])
    counts = torch.bincount(drawn, minlength=n)
    if length < n:  # the original never drops a sample: one pass over all of them
        assert counts.tolist() == [1] * n
        return
    assert int(counts.sum()) == length
    ceil = -(-length // n)
    # ceil(length / n) copies of each, less its copies among the M - length dropped permutation entries
    padded = ceil * n
    generator = epoch_generator(3, 1)
    dropped = torch.randperm(padded, generator=generator)[length:] % n
    assert counts.tolist() == (ceil - torch.bincount(dropped, minlength=n)).tolist()
    if length % n == 0:
        assert counts.tolist() == [length // n] * n  # 5056 = 32 * 158: every sample exactly 158 times


def test_resampled_loader_counts_by_hand():
    """7 samples, 100 per epoch: 105 = 15 * 7 permuted, the last 5 dropped, so each sample appears 15 times
    less its copies among those 5: 100 = 15 * 7 - 5, counts between 10 and 15, mostly 14 or 15."""
    split = Split(torch.zeros(7, 1, 1, 1), torch.arange(7))
    totals = torch.zeros(7, dtype=torch.int64)
    for epoch in range(50):
        loader = ResampledLoader(split, length=100, batch_size=32, seed=0)
        loader.set_epoch(epoch)
        counts = torch.bincount(torch.cat([y for _, y in loader]), minlength=7)
        assert int(counts.sum()) == 100 and counts.max() <= 15 and counts.min() >= 10
        assert int((counts < 14).sum()) <= 2  # two samples short by two each at most: 5 dropped entries
        totals += counts
    assert totals.max() - totals.min() <= 25  # over 50 epochs each sample is drawn about 714 times


def test_train_best_model_keeps_the_epoch_with_the_best_validation_accuracy(monkeypatch):
    """Epoch e sets every weight to e + 1; validation accuracies 0.2, 0.9, 0.5 must select epoch 1."""
    accuracies = iter([0.2, 0.9, 0.5])

    def fake_epoch(model, loader, optimizer, settings, *, epoch=0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(epoch + 1)
        return training.EpochStats(epoch, 0.0, 0.0, 0.0, 1e-3, 4, 1.0, 4.0)

    monkeypatch.setattr(training, "train_one_epoch", fake_epoch)
    monkeypatch.setattr(training, "evaluate_accuracy", lambda model, loader, settings: next(accuracies))
    split = index_split(range(4))
    model = train_best_model(
        lambda: net.create_model("lenet", num_classes=NUM_CLASSES, mnist=True), split, split, epochs=3,
        batch_size=2, test_batch_size=2, samples_per_epoch=4, settings=training.TrainSettings(device=CPU), seed=0,
    )  # fmt: skip
    assert not model.training
    assert all(bool((p == 2).all()) for p in model.parameters())


def test_original_quirks_fit_the_acquisition_gaussians_with_the_original_jitter(monkeypatch):
    # The original's active learning fits its Gaussians with the same gmm_fit as its evaluation: on the
    # dead-ReLU features its gmm_fit picked 1e-45 (float32: 1.4e-45; tests/fixtures/gmm), the project's
    # search a far larger jitter.
    fixture = json.loads((FIXTURES / "gmm" / "original_jitter_dead_relu.json").read_text())
    features, labels = torch.tensor(fixture["features"]), torch.tensor(fixture["labels"])
    n = len(labels)
    model = TableModel(torch.cat([features, features[:20] + 1.0]), num_classes=10)
    fitted = []
    real_fit = DDUScorer.fit_features.__func__

    def fit_spy(cls, *args, **kwargs):
        fitted.append(real_fit(cls, *args, **kwargs))
        return fitted[-1]

    monkeypatch.setattr(DDUScorer, "fit_features", classmethod(fit_spy))
    original_ddu_acquisition(model, index_split(range(n, n + 20)), index_split(range(n), labels), 3,
                             torch.full((10,), 0.1), batch_size=64, device=CPU)  # fmt: skip
    assert len(fitted) == 1 and fitted[0].jitter_search == "original"
    assert fitted[0].jitter == torch.tensor(fixture["original_jitter_eps"], dtype=torch.float32).item()
    assert DDUScorer.fit_features(features, labels, 10).jitter > 1e-20


def test_original_quirks_keep_the_last_epoch_whatever_the_validation_says(monkeypatch):
    """The original's `best_model = model` is a reference to the network that goes on training, so the
    last epoch's weights come back: with accuracies 0.2, 0.9, 0.5 that is epoch 2 (weights 3), not epoch 1."""

    def fake_epoch(model, loader, optimizer, settings, *, epoch=0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(epoch + 1)
        return training.EpochStats(epoch, 0.0, 0.0, 0.0, 1e-3, 4, 1.0, 4.0)

    monkeypatch.setattr(training, "train_one_epoch", fake_epoch)
    accuracies = iter([0.2, 0.9, 0.5])
    monkeypatch.setattr(training, "evaluate_accuracy", lambda model, loader, settings: next(accuracies))
    split = index_split(range(4))
    model = train_best_model(
        lambda: net.create_model("lenet", num_classes=NUM_CLASSES, mnist=True), split, split, epochs=3,
        batch_size=2, test_batch_size=2, samples_per_epoch=4, settings=training.TrainSettings(device=CPU), seed=0,
        original_quirks=True,
    )  # fmt: skip
    assert not model.training
    assert all(bool((p == 3).all()) for p in model.parameters())


def test_dirty_pool_subsamples_mnist_with_replacement_then_splits_off_validation_as_the_original(data_root):
    """By hand: `RandomState(seed).choice(300, 400)` MNIST digits (with replacement: 400 of 300 images, so
    repeats), then all of Ambiguous-MNIST; `floor(10%)` of that, shuffled as the original, is validation."""
    pool, validation, test = build_pool(data_root, ambiguous=True, subsample=400, seed=5, device=CPU)
    chosen = np.random.RandomState(5).choice(TRAIN_IMAGES, size=400, replace=True)
    assert len(set(chosen.tolist())) < 400  # repeats: the draw is with replacement
    images, labels = data.load_split("mnist", data_root, "train")
    amb_images, amb_labels = data.load_split("ambiguous_mnist", data_root, "train")
    x = torch.cat([images[chosen].float() / 255, amb_images])
    y = torch.cat([labels[chosen], amb_labels])
    train_idx, val_idx = data.split_indices(len(y), 0.1, val_seed=5)
    assert len(val_idx) == (400 + 2 * AMBIGUOUS_SAMPLES) // 10 == len(validation)
    assert torch.equal(pool.y, y[train_idx]) and torch.equal(validation.y, y[val_idx])
    mean, std = data.get_info("mnist").mean[0], data.get_info("mnist").std[0]
    torch.testing.assert_close(pool.x, (x[train_idx] - mean) / std)
    assert len(test) == TEST_IMAGES


# ----------------------------------------------------------------------------------------------------
# Command line


def test_original_readme_commands_parse_with_the_original_defaults():
    args = parse("--seed", "1", "--model", "resnet18", "-sn", "-mod", "--al-type", "gmm")
    given = (args.seed, args.model, args.sn, args.mod, args.coeff, args.al_type)
    assert given == (1, "resnet18", True, True, 3.0, "gmm")
    defaults = (args.ambiguous, args.mi, args.num_ensemble, args.num_initial_samples, args.max_training_samples,
                args.acquisition_batch_size, args.epochs, args.train_batch_size, args.test_batch_size,
                args.scoring_batch_size, args.threshold, args.subsample, args.runs)  # fmt: skip
    assert defaults == (False, False, 5, 20, 300, 5, 20, 64, 512, 128, 1.0, 1000, 5)
    assert al_run.output_names(args)["test_accs"] == "test_accs_resnet18_sn_3.0_mod_1_gmm_mnist.json"

    args = parse(
        "--seed", "1", "--model", "resnet18", "-sn", "-mod", "--al-type", "gmm", "-ambiguous",
        "--trained-model", "resnet18", "-tsn", "-tmod", "--saved-model-path", "runs/",
        "--saved-model-name", "resnet18_sn_3.0_mod_1_350.model",
    )  # fmt: skip
    given = (args.ambiguous, args.trained_model, args.tsn, args.tmod, args.tcoeff)
    assert given == (True, "resnet18", True, True, 3.0)
    assert (args.saved_model_path, args.saved_model_name) == ("runs/", "resnet18_sn_3.0_mod_1_350.model")
    names = al_run.output_names(args)
    assert names["test_accs"] == "test_accs_resnet18_sn_3.0_mod_1_gmm_dirty_mnist_1000.json"
    assert names["ambiguous"] == "ambiguous_resnet18_sn_3.0_mod_1_gmm_dirty_mnist_1000.json"
    assert names["entropies"] == "ambiguous_entropies_resnet18_sn_3.0_mod_1_gmm_dirty_mnist_1000.json"


# ----------------------------------------------------------------------------------------------------
# The experiment end to end


def check_labelled_sets(
    state: dict, args, root: Path, ambiguous: bool = False, subsample: int = 1000
) -> None:
    """Per run: final size `max`, no duplicates, all inside the pool (one pool for all runs, built from
    --seed), and the same class-balanced initial set, the original's walk with --seed."""
    pool, _, _ = build_pool(root, ambiguous=ambiguous, subsample=subsample, seed=args.seed, device=CPU,
                               max_pool=args.max_pool)  # fmt: skip
    initial_set = originals_balanced_walk(pool.y, args.num_initial_samples // NUM_CLASSES, args.seed)
    for run, record in state["runs"].items():
        labelled = record["labelled"]
        assert labelled[: args.num_initial_samples] == initial_set
        assert len(labelled) == args.max_training_samples and len(set(labelled)) == len(labelled)
        assert all(0 <= i < len(pool) for i in labelled)
        initial = pool.y[labelled[: args.num_initial_samples]]
        assert torch.bincount(initial, minlength=NUM_CLASSES).tolist() == [2] * NUM_CLASSES


@pytest.mark.parametrize(
    "al_type, extra, suffix",
    [
        ("softmax", [], "softmax"),
        ("ensemble", ["--num-ensemble", "2"], "ensemble"),
        ("ensemble", ["--num-ensemble", "2", "-mi"], "ensemble_mi"),
        ("gmm", [], "gmm"),
        ("random", [], "random"),
    ],
)
def test_each_acquisition_type_writes_the_original_files(
    data_root, tmp_path, monkeypatch, al_type, extra, suffix
):
    sizes = record_training(monkeypatch)
    args = tiny_args(data_root, tmp_path, *extra, al_type=al_type, runs=2)
    active_learning.main(args)

    members = 2 if al_type == "ensemble" else 1
    steps = [20, 25, 30]  # (30 - 20) / 5 + 1 steps, growing by the acquisition batch size
    assert sizes == [n for _ in range(2) for n in steps for _ in range(members)]
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    accs_name = f"test_accs_lenet_1_{suffix}_mnist.json"
    assert written == sorted([accs_name, f"al_state_lenet_1_{suffix}_mnist.json"])
    accs = read(tmp_path / accs_name)
    assert list(accs) == ["0", "1"]
    for values in accs.values():
        assert len(values) == len(steps) and all(0.0 <= a <= 100.0 for a in values)
        correct = [a * TEST_IMAGES / 100 for a in values]  # percent of the 100 test images
        assert correct == pytest.approx([round(c) for c in correct])
    state = read(tmp_path / f"al_state_lenet_1_{suffix}_mnist.json")
    check_labelled_sets(state, args, data_root)  # one pool and one initial set for both runs ...
    assert state["runs"]["0"]["labelled"][20:] != state["runs"]["1"]["labelled"][20:]  # ... seeds seed + run


def test_spectral_resnet_run_is_named_as_train_py_names_it(data_root, tmp_path):
    args = tiny_args(
        data_root, tmp_path, "--model", "resnet18", "-sn", "-mod", "--base-width", "2", max_samples=25
    )
    active_learning.main(args)
    accs = read(tmp_path / "test_accs_resnet18_sn_3.0_mod_1_gmm_mnist.json")
    assert list(accs) == ["0"] and len(accs["0"]) == 2


@pytest.mark.parametrize("al_type", ["gmm", "softmax"])
def test_ambiguous_run_records_ambiguity_of_the_labelled_set(
    data_root, pretrained_dir, tmp_path, monkeypatch, al_type
):
    sizes = record_training(monkeypatch)
    args = tiny_args(data_root, tmp_path, *ambiguous_flags(pretrained_dir), al_type=al_type, runs=2)
    active_learning.main(args)
    assert sizes == [20, 25, 30] * 2

    suffix = f"lenet_1_{al_type}_dirty_mnist_100"
    accs = read(tmp_path / f"test_accs_{suffix}.json")
    fractions = read(tmp_path / f"ambiguous_{suffix}.json")
    entropies = read(tmp_path / f"ambiguous_entropies_{suffix}.json")
    state = read(tmp_path / f"al_state_{suffix}.json")
    assert list(accs) == list(fractions) == list(entropies) == ["0", "1"]
    check_labelled_sets(state, args, data_root, ambiguous=True, subsample=100)

    model = net.create_model("lenet", num_classes=NUM_CLASSES, mnist=True)
    net.load_state_dict(model, pretrained_dir / PRETRAINED)
    model.eval()
    pool, _, _ = build_pool(data_root, ambiguous=True, subsample=100, seed=1, device=CPU)
    for run in ("0", "1"):
        assert len(accs[run]) == 3 and all(0.0 <= a <= 100.0 for a in accs[run])
        # Measured after each acquisition, as the original: none for the initial 20, one per acquisition.
        assert list(entropies[run]) == ["0", "1"]
        assert [len(entropies[run][s]) for s in ("0", "1")] == [25, 30]
        assert len(fractions[run]) == 2
        labelled = state["runs"][run]["labelled"]
        for step, size in enumerate((25, 30)):
            values = torch.tensor(entropies[run][str(step)])
            # the pretrained model's entropies of exactly the samples labelled at that step
            expected = sample_entropies(model, pool.take(torch.tensor(labelled[:size])), 64, CPU)
            torch.testing.assert_close(values, expected.to(values.dtype), atol=1e-5, rtol=1e-5)
            assert 0.0 <= fractions[run][step] <= 1.0
            # exactly k / n in float64, as the original's `sum(...).item() / len(dataset)` (not a float32 mean)
            assert fractions[run][step] == int((values > args.threshold).sum()) / size
    every_entropy = torch.tensor([e for r in entropies.values() for s in r.values() for e in s])
    assert every_entropy.min() < args.threshold < every_entropy.max()  # the fraction is not trivially 0 or 1


def test_original_quirks_flag_reaches_training_and_the_gmm_acquisition(data_root, tmp_path, monkeypatch):
    """--original-quirks: every training keeps its last epoch, and the gmm acquisition is the original's
    float32 ranking, whose positions in the pool's unlabelled part are what the run acquires."""
    trained, acquired = [], []
    real_train, real_acquire = (
        engine.acquisition.train_best_model,
        engine.acquisition.original_ddu_acquisition,
    )

    def train_spy(*args, **kwargs):
        trained.append(kwargs["original_quirks"])
        return real_train(*args, **kwargs)

    def acquire_spy(model, pool, labelled, k, weights, **kwargs):
        positions = real_acquire(model, pool, labelled, k, weights, **kwargs)
        acquired.append((pool.y.clone(), positions, weights))
        return positions

    monkeypatch.setattr(engine.acquisition, "train_best_model", train_spy)
    monkeypatch.setattr(engine.acquisition, "original_ddu_acquisition", acquire_spy)
    args = tiny_args(data_root, tmp_path, "--original-quirks", max_samples=30)
    active_learning.main(args)
    state = read(tmp_path / "al_state_lenet_1_gmm_mnist.json")
    assert trained == [True, True, True] and len(acquired) == 2 and state["args"]["original_quirks"] is True
    pool, _, _ = build_pool(data_root, ambiguous=False, subsample=1000, seed=1, device=CPU)
    labelled = state["runs"]["0"]["labelled"]
    for step, (candidate_labels, positions, weights) in enumerate(acquired):
        unlabelled = [i for i in range(len(pool)) if i not in labelled[: 20 + 5 * step]]
        assert labelled[20 + 5 * step : 25 + 5 * step] == [unlabelled[p] for p in positions.tolist()]
        assert torch.equal(candidate_labels, pool.y[unlabelled])
        assert float(weights.sum()) == pytest.approx(64 / (20 + 5 * step), abs=1e-5)  # 64 samples per epoch

    sizes = record_training(monkeypatch)  # the paper's default uses neither path
    active_learning.main(tiny_args(data_root, tmp_path / "paper", max_samples=25))
    assert sizes == [20, 25] and len(acquired) == 2


@pytest.mark.parametrize("interrupt_at", [2, 4], ids=["run0-step2", "run1-step1"])
def test_resume_continues_to_the_same_results_as_an_uninterrupted_run(
    data_root, tmp_path, monkeypatch, capsys, interrupt_at
):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    active_learning.main(tiny_args(data_root, reference_dir, runs=2))
    name = "test_accs_lenet_1_gmm_mnist.json"
    reference = read(reference_dir / name)
    reference_state = read(reference_dir / "al_state_lenet_1_gmm_mnist.json")

    record_training(monkeypatch, interrupt_at=interrupt_at)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # Ctrl-C: one sentence that says how to continue, status 130
        active_learning.main(tiny_args(data_root, resumed_dir, runs=2))
    assert info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interrupted;") and "\n" not in err and "--resume" in err
    partial = read(resumed_dir / name)  # what finished before the interruption is kept
    if interrupt_at <= 3:
        assert partial == {"0": reference["0"][:interrupt_at]}
    else:
        assert partial == {"0": reference["0"], "1": reference["1"][: interrupt_at - 3]}

    sizes = record_training(monkeypatch)
    active_learning.main(tiny_args(data_root, resumed_dir, "--resume", runs=2))
    assert len(sizes) == 6 - interrupt_at  # only the missing steps are trained again
    assert read(resumed_dir / name) == reference
    assert read(resumed_dir / "al_state_lenet_1_gmm_mnist.json") == reference_state


def test_resume_with_a_changed_experiment_argument_is_refused(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, max_samples=20)
    active_learning.main(args)
    accs = read(tmp_path / "test_accs_lenet_1_gmm_mnist.json")
    capsys.readouterr()
    changed = tiny_args(data_root, tmp_path, "--resume", "--acquisition-batch-size", "10", max_samples=20)
    err = one_line_error(capsys, changed)
    assert "--acquisition-batch-size 5 in the saved run vs 10 now" in err and "--resume" in err
    assert read(tmp_path / "test_accs_lenet_1_gmm_mnist.json") == accs  # nothing was overwritten


# ----------------------------------------------------------------------------------------------------
# User errors


def test_ambiguous_without_a_saved_model_is_a_one_line_error(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, "-ambiguous", "--trained-model", "lenet")
    err = one_line_error(capsys, args)
    assert "--saved-model-path" in err and "--saved-model-name" in err


def test_ambiguous_with_a_missing_checkpoint_is_a_one_line_error(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, *ambiguous_flags(tmp_path / "nowhere"))
    err = one_line_error(capsys, args)
    assert "nowhere" in err and "--saved-model-path" in err


def test_a_reduced_width_ambiguity_model_loads_with_its_size_flag(tmp_path):
    """The pretrained Dirty-MNIST model is built from --trained-model, -tsn, -tmod, --tcoeff and the
    --trained-* size flags; a checkpoint that does not fit names those flags, not the main model's."""
    torch.manual_seed(0)
    saved = net.create_model("resnet18", num_classes=NUM_CLASSES, mnist=True, mod=True, base_width=2)
    torch.save(saved.state_dict(), tmp_path / "narrow.model")
    flags = [
        "--saved-model-path",
        str(tmp_path),
        "--saved-model-name",
        "narrow.model",
        "--trained-model",
        "resnet18",
    ]
    args = parse("--seed", "1", "-ambiguous", *flags, "-tmod", "--trained-base-width", "2")
    loaded = al_run.load_ambiguity_model(args, CPU)
    assert not loaded.training and loaded.conv1.weight.shape == (2, 1, 3, 3)
    assert all(torch.equal(value, saved.state_dict()[key]) for key, value in loaded.state_dict().items())
    with pytest.raises(UserError, match="--trained-base-width"):  # built at the default width 64
        al_run.load_ambiguity_model(parse("--seed", "1", "-ambiguous", *flags, "-tmod"), CPU)
    with pytest.raises(UserError, match="drop -tsn"):
        al_run.load_ambiguity_model(
            parse("--seed", "1", "-ambiguous", *flags, "-tmod", "-tsn", "--trained-base-width", "2"), CPU
        )
    with pytest.raises(
        UserError, match="--trained-depth / --trained-base-width does not fit --trained-model"
    ):
        al_run.load_ambiguity_model(
            parse("--seed", "1", "-ambiguous", *flags, "--trained-depth", "10", "--trained-base-width", "2"),
            CPU,
        )


def test_missing_mnist_is_a_one_line_error(tmp_path, capsys):
    args = tiny_args(tmp_path / "empty", tmp_path / "out")
    err = one_line_error(capsys, args)
    assert "mnist" in err and "train-images-idx3-ubyte" in err


def test_bad_sizes_are_one_line_errors(data_root, tmp_path, capsys):
    err = one_line_error(capsys, tiny_args(data_root, tmp_path, "--num-initial-samples", "15"))
    assert "--num-initial-samples" in err
    err = one_line_error(capsys, tiny_args(data_root, tmp_path, max_samples=10))
    assert "--max-training-samples" in err


def test_a_pool_too_small_for_the_experiment_is_a_one_line_error(data_root, tmp_path, capsys):
    # 40 images minus the 10% validation hold-out leave 36 pool samples, fewer than the 50 to be labelled
    err = one_line_error(capsys, tiny_args(data_root, tmp_path, "--max-pool", "40", max_samples=50))
    assert "36" in err and "--max-training-samples 50" in err and "--max-pool" in err
    # 23 images (21 in the pool) leave some class with fewer than the 2 the balanced initial set needs
    err = one_line_error(capsys, tiny_args(data_root, tmp_path, "--max-pool", "23", max_samples=20))
    assert "class-balanced initial set" in err and "--num-initial-samples" in err


def test_resume_of_a_finished_run_with_a_larger_budget_is_refused(data_root, tmp_path, capsys):
    """A finished run cannot grow (its last models are not kept), so a larger --max-training-samples must
    not silently leave the results as they are."""
    active_learning.main(tiny_args(data_root, tmp_path, max_samples=20))
    capsys.readouterr()
    err = one_line_error(capsys, tiny_args(data_root, tmp_path, "--resume", max_samples=30))
    assert "--max-training-samples 20 in the saved run vs 30 now" in err


# ----------------------------------------------------------------------------------------------------
# Ensemble members trained together (engine.stacked_ensemble) and TensorBoard


def test_ensemble_members_stacked_equal_members_trained_one_after_another():
    """The acquisition ensemble's stacked path trains the same members as the one-after-another path:
    same seeds, initial weights, resampled batches and Adam steps, up to the order of floating-point sums.
    Adam divides by the root of the squared-gradient average, which magnifies the rounding of near-zero
    gradients: where a gradient is pure round-off (a dead input, say), the two paths can take Adam steps of
    up to lr = 1e-3 in different directions, whatever BLAS rounds them. So all but 1% of each tensor's
    entries (at least one) must agree to 1% of one Adam step, and every entry must stay within the distance
    that the steps taken could put between two trajectories from the same start."""
    generator = torch.Generator().manual_seed(0)
    labelled = Split(
        torch.randn(40, 1, 28, 28, generator=generator), torch.randint(0, 10, (40,), generator=generator)
    )
    validation = Split(
        torch.randn(30, 1, 28, 28, generator=generator), torch.randint(0, 10, (30,), generator=generator)
    )
    settings = training.TrainSettings(device=CPU, progress=False, log_interval=10**9)
    common = dict(epochs=2, batch_size=16, test_batch_size=32, samples_per_epoch=48, settings=settings)
    adam_steps = 2 * 48 // 16  # epochs x batches per epoch
    seen: dict[str, list] = {"stacked": [], "sequential": []}
    members = {
        mode: engine.acquisition.train_best_models(
            lambda: net.create_model("lenet", num_classes=10, mnist=True),
            labelled,
            validation,
            seeds=[11, 12, 13],
            mode=mode,
            on_epoch_end=lambda k, stats, mode=mode: seen[mode].append((k, stats)),
            **common,
        )  # fmt: skip
        for mode in ("stacked", "sequential")
    }
    for together, alone in zip(members["stacked"], members["sequential"]):
        assert not together.training and not alone.training
        for key, value in alone.state_dict().items():
            difference = (together.state_dict()[key] - value).abs().double()
            # Adam step t <= 6 moves a weight by at most 1.016 lr (bias-corrected |m| <= 1.016 sqrt(v)).
            assert float(difference.max()) <= 2 * 1.1 * adam_steps * 1e-3, key
            assert int((difference > 1e-5).sum()) <= max(1, value.numel() // 100), key
    first = [m.state_dict()["fc3.weight"] for m in members["stacked"]]
    assert not torch.equal(first[0], first[1])  # different seeds, different members

    # The same epochs were reported: member, epoch, loss, validation accuracy.
    def summary(mode):
        return sorted((k, s.epoch, s.val_accuracy, s.loss) for k, s in seen[mode])

    stacked, sequential = summary("stacked"), summary("sequential")
    assert [row[:3] for row in stacked] == [row[:3] for row in sequential] and len(stacked) == 6
    assert [row[3] for row in stacked] == pytest.approx([row[3] for row in sequential], rel=1e-5)


def test_ensemble_acquisition_stacked_gives_the_results_one_after_another_gives(data_root, tmp_path):
    results = {}
    for mode in ("stacked", "sequential"):
        out = tmp_path / mode
        args = tiny_args(data_root, out, "--num-ensemble", "2", "--ensemble-mode", mode, al_type="ensemble")
        active_learning.main(args)
        results[mode] = read(out / "al_state_lenet_1_ensemble_mnist.json")["runs"]["0"]
    assert results["stacked"]["labelled"] == results["sequential"]["labelled"]
    assert results["stacked"]["test_accs"] == pytest.approx(results["sequential"]["test_accs"])


def test_stacked_ensemble_acquisition_of_a_spectral_network_is_a_user_error(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, "--model", "resnet18", "-sn", "--base-width", "2",
                     "--ensemble-mode", "stacked", al_type="ensemble")  # fmt: skip
    err = one_line_error(capsys, args)
    assert "spectral normalisation" in err and "--ensemble-mode" in err


def test_tensorboard_has_every_epoch_and_every_step(data_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = tiny_args(data_root, tmp_path, "--tensorboard", "--epochs", "2", al_type="softmax")
    active_learning.main(args)
    accuracies = read(tmp_path / "test_accs_lenet_1_softmax_mnist.json")["0"]
    events = EventAccumulator(str(tmp_path / "stats_logging" / "lenet_1_softmax_mnist" / "run0"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert {"loss", "accuracy", "lr", "val_accuracy", "images_per_s", "test_accuracy", "labelled"} <= set(
        scalars
    )
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]  # 3 steps of 2 epochs
    assert [step for step, _ in scalars["test_accuracy"]] == [2, 4, 6]
    assert [value for _, value in scalars["test_accuracy"]] == pytest.approx(accuracies, rel=1e-6)
    assert [value for _, value in scalars["labelled"]] == [20, 25, 30]
