"""Ambiguous-MNIST generator: the helpers on hand-built inputs with known answers, and the small setting end
to end on real MNIST (conftest's `real_data_root`, laid out from ../shared/data)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_THREADS
from PIL import Image

import data
import net
import tools.ambiguous_mnist as am
from metrics.uncertainty import entropy_of_probs
from utils.errors import UserError

# The small setting: about 20 s on one CPU thread. The suite's thread count (one unless DDU_TEST_THREADS says
# otherwise) because on a CPU shared with other jobs two oversubscribed threads were several times slower. The VAE needs a few hundred steps to leave the "mean
# digit" plateau (hence small batches and a higher learning rate) and the classifiers a few epochs to be
# confident on clean digits; with less, every candidate is grey fog that all filters pass or all reject.
COMMON = ["--device", "cpu", "--no-progress", "--num-threads", str(TEST_THREADS), "--ensemble-size", "3"]
SMALL = [
    *COMMON,
    *("--train", "200", "--test", "200", "--max-mnist", "4000", "--candidate-batch", "1024"),
    *("--vae-epochs", "2", "--vae-batch-size", "32", "--vae-lr", "3e-3"),
    *("--classifier-epochs", "4", "--classifier-batch-size", "64"),
    *("--evaluate", "--eval-model", "lenet", "--eval-epochs", "4"),
]
# Even smaller, for the determinism check (three runs). Models this weak put every candidate below the
# density threshold, so that filter is off here; the other two still run.
TINY = [
    *COMMON,
    *("--train", "20", "--test", "20", "--max-mnist", "1000", "--candidate-batch", "256"),
    *("--vae-epochs", "1", "--vae-batch-size", "32", "--vae-lr", "3e-3", "--vae-latent", "8"),
    *("--classifier-epochs", "3", "--classifier-batch-size", "64", "--density-quantile", "0"),
]


# The small command the package docstring and the docs give (there with DATA and /tmp/am): steps, not epochs,
# decide whether 2,000 digits train models good enough to pass the filters at their default thresholds.
DOCUMENTED_SMALL = [
    *("--max-mnist", "2000", "--train", "100", "--test", "100"),
    *("--vae-epochs", "4", "--vae-batch-size", "32", "--vae-lr", "3e-3"),
    *("--classifier-epochs", "4", "--classifier-batch-size", "64"),
    *("--ensemble-size", "3", "--candidate-batch", "1024"),
]


def _root_with_mnist(folder: Path, cache: Path) -> Path:
    """A data root holding MNIST (a link to the cache): the dirty_mnist loader reads it next to our files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MNIST").symlink_to(cache / "MNIST", target_is_directory=True)
    return folder


def _run(root: Path, extra: list[str]) -> dict:
    args = am.get_args_parser().parse_args(["--mnist-root", str(root), *extra])
    return am.main(args)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, real_data_root) -> tuple[Path, dict]:
    root = _root_with_mnist(tmp_path_factory.mktemp("amnist_small"), real_data_root)
    return root, _run(root, SMALL)


# ---------------------------------------------------------------------------------------------------------
# Helpers with known answers
# ---------------------------------------------------------------------------------------------------------


def test_dirichlet_rows_are_probability_vectors_centred_on_uniform():
    w = am.dirichlet(20000, 3, 3, torch.Generator().manual_seed(0))
    assert w.shape == (20000, 3) and bool((w > 0).all())
    torch.testing.assert_close(w.sum(dim=1), torch.ones(20000, dtype=torch.float64))
    torch.testing.assert_close(w.mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    # Dirichlet(3, 3, 3): Var w_i = a_i (a0 - a_i) / (a0^2 (a0 + 1)) = 3 * 6 / (81 * 10).
    assert w[:, 0].var().item() == pytest.approx(18 / 810, rel=0.05)


def test_partners_never_share_a_class():
    labels = torch.arange(10).repeat(5)
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(len(labels), (1000,), generator=gen)
    second = am._distinct_class_partner(labels, [first], gen)
    third = am._distinct_class_partner(labels, [first, second], gen)
    assert bool((labels[first] != labels[second]).all())
    assert bool((labels[third] != labels[first]).all() and (labels[third] != labels[second]).all())


def test_candidates_are_images_of_two_or_three_distinct_classes():
    torch.manual_seed(0)
    vae = am.ConvVAE(latent_dim=4).eval()
    codes, labels = torch.randn(30, 4), torch.arange(10).repeat(3)
    images, parents = am.make_candidates(
        vae,
        codes,
        labels,
        64,
        triple_fraction=0.5,
        concentration=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert images.shape == (64, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    triples = parents[:, 2] >= 0
    assert 0 < int(triples.sum()) < 64
    assert bool((labels[parents[:, 0]] != labels[parents[:, 1]]).all())
    assert bool((labels[parents[triples, 2]] != labels[parents[triples, 0]]).all())


def test_selection_needs_all_three_criteria():
    scores = {
        "entropy": torch.tensor([1.0, 0.2, 1.0, 1.0], dtype=torch.float64),
        "mutual_information": torch.tensor([0.05, 0.05, 0.5, 0.05], dtype=torch.float64),
        "log_density": torch.tensor([10.0, 10.0, 10.0, -10.0], dtype=torch.float64),
    }
    mask = am.select_ambiguous(scores, min_entropy=0.5, max_mi=0.1, log_density_threshold=0.0)
    assert mask.tolist() == [True, False, False, False]


def _fitted_ensemble(seeds: list[int]) -> am.Ensemble:
    from metrics.gmm import fit_class_gaussians

    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(200, 1, 28, 28, generator=gen), torch.arange(10).repeat(20)
    members, gaussians = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        model = net.create_model("lenet", num_classes=10, mnist=True).eval()
        members.append(model)
        gaussians.append(fit_class_gaussians(am.predict(model, images)[0], labels, 10))
    return am.Ensemble(members, gaussians)


def test_identical_members_have_zero_mutual_information_and_different_ones_do_not():
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    same = am.ensemble_scores(_fitted_ensemble([0, 0, 0]), images)
    assert same["mutual_information"].abs().max().item() < 1e-9
    assert same["mean_probs"].shape == (16, 10) and same["log_density"].shape == (16,)
    torch.testing.assert_close(same["entropy"], entropy_of_probs(same["mean_probs"]))
    different = am.ensemble_scores(_fitted_ensemble([0, 1, 2]), images)
    assert bool((different["mutual_information"] > 0).all())


def test_label_entropies_on_hand_built_labels():
    labels = torch.tensor([[3] * 10, [1] * 5 + [7] * 5, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    probs = torch.tensor([[1.0] + [0.0] * 9, [0.5, 0.5] + [0.0] * 8, [0.1] * 10], dtype=torch.float64)
    summary = am.label_entropy_summary(probs, labels)
    assert summary["fraction_single_label"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["empirical"]["mean"] == pytest.approx((0 + math.log(2) + math.log(10)) / 3, abs=1e-4)
    assert summary["distribution"]["mean"] == pytest.approx((0 + math.log(2) + math.log(10)) / 3, abs=1e-4)
    # 0 -> first bin, log 2 = 0.69 -> [0.5, 0.75), log 10 = 2.303 -> last bin [2.0, 2.31).
    assert summary["empirical"]["counts"] == [1, 0, 1, 0, 0, 0, 0, 0, 1]
    assert summary["distinct_labels_per_sample_counts"] == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1]


def test_labels_are_drawn_from_the_given_distribution():
    probs = torch.zeros(2000, 10, dtype=torch.float64)
    probs[:1000, 2] = 1.0
    probs[1000:, 4], probs[1000:, 9] = 0.3, 0.7
    labels = am.draw_labels(probs, 10, torch.Generator().manual_seed(0))
    assert labels.shape == (2000, 10) and labels.dtype == torch.int64
    assert bool((labels[:1000] == 2).all())
    mixed = labels[1000:]
    assert bool(((mixed == 4) | (mixed == 9)).all())
    assert (mixed == 9).double().mean().item() == pytest.approx(0.7, abs=0.02)


def test_grid_rows_are_majority_classes_ordered_by_entropy():
    samples = torch.zeros(3, 1, 28, 28)
    samples[0], samples[1], samples[2] = 1.0, 0.5, 0.75
    labels = torch.tensor([[4] * 10, [4] * 6 + [1] * 4, [0] * 10])
    png = am.render_grid(samples, labels, columns=4, scale=1)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (10 * 30 + 2, 4 * 30 + 2)

    def cell(row: int, col: int) -> int:
        return int(image[2 + row * 30 + 14, 2 + col * 30 + 14])

    assert cell(4, 0) == 255 and cell(4, 1) == 128  # class 4: the pure sample before the ambiguous one
    assert cell(0, 0) == 191 and cell(1, 0) == 64  # class 0 filled; class 1 has no majority sample


def test_bad_flags_and_missing_mnist_end_in_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")
    with pytest.raises(UserError, match="at least 3"):
        am.generate(am.get_args_parser().parse_args(["--mnist-root", str(tmp_path), "--ensemble-size", "2"]))
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, ["--device", "cpu"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the logged settings, if shown
    assert message.startswith("error: ") and "mnist" in message.lower() and str(tmp_path) in message
    assert not (tmp_path / am.SAMPLES_FILE).exists()


def test_missing_mnist_names_the_generators_own_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")
    with pytest.raises(UserError) as err:
        am.generate(am.get_args_parser().parse_args(["--mnist-root", str(tmp_path), "--device", "cpu"]))
    assert "--mnist-root" in str(err.value) and "--dataset-root" not in str(err.value)


def _write_released_style(root: Path) -> dict[str, bytes]:
    """The released set's two files (tiny stand-ins) in `root`; returns every file's bytes."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.rand(3, 1, 28, 28), root / am.SAMPLES_FILE)
    torch.save(torch.zeros(3, 10, dtype=torch.int64), root / am.LABELS_FILE)
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.mark.parametrize("generated", [False, True], ids=["released_files", "generated_set"])
def test_existing_set_is_kept_without_overwrite(tmp_path, monkeypatch, capsys, generated):
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")
    out = tmp_path / "out"
    _write_released_style(out)
    if generated:
        (out / am.MANIFEST_FILE).write_text(json.dumps({"train_pairs": 20}))
        (out / am.GRID_FILE).write_bytes(b"png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # No MNIST under --mnist-root: the refusal comes first, before anything is read or trained.
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path / "no_mnist", ["--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "--overwrite" in message and str(out) in message
    assert all(name in message for name in before)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # With --overwrite the run goes on (here to the missing MNIST).
    with pytest.raises(UserError, match="mnist data not found"):
        am.generate(
            am.get_args_parser().parse_args(
                [
                    "--mnist-root",
                    str(tmp_path / "no_mnist"),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--overwrite",
                ]
            )
        )


def test_evaluate_only_checks_the_manifest_before_training(tmp_path):
    _write_released_style(tmp_path)  # 3 samples x 10 labels = 30 pairs
    (tmp_path / am.MANIFEST_FILE).write_text(json.dumps({"train_pairs": 999999}))
    args = am.get_args_parser().parse_args(
        ["--mnist-root", str(tmp_path), "--evaluate-only", "--device", "cpu"]
    )
    with pytest.raises(UserError, match=r"train_pairs 999999.*only 30 \(sample, label\) pairs"):
        am.evaluate_existing(args)


def test_failed_selection_names_the_training_steps():
    torch.manual_seed(0)
    vae = am.ConvVAE(latent_dim=4).eval()
    with pytest.raises(UserError, match="16 optimiser steps and each classifier for 32") as err:
        am.generate_split(
            vae,
            _fitted_ensemble([0, 1, 2]),
            torch.randn(30, 4),
            torch.arange(10).repeat(3),
            5,
            generator=torch.Generator().manual_seed(0),
            min_entropy=10.0,  # above log 10: nothing can pass
            max_mi=0.1,
            triple_fraction=0.5,
            concentration=3,
            candidate_batch=64,
            max_candidates=64,
            name="train",
            training_steps=(16, 32),
        )
    assert "\n" not in str(err.value) and "--vae-batch-size" in str(err.value)


def _stripes(n_per_class: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes an untrained net cannot tell apart but a few steps can: a bright block per class."""
    labels = torch.arange(10).repeat(n_per_class)
    images = 0.2 * torch.rand(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for c in range(10):
        row, col = divmod(c, 5)
        images[labels == c, :, 4 + 12 * row : 12 + 12 * row, 1 + 5 * col : 6 + 5 * col] = 1.0
    return images, labels


def test_training_inside_one_bf16_autocast_region_learns():
    """The pipeline runs each training stage inside one autocast region; autocast's cached bf16 weights
    must not outlive an optimiser step, else every step sees the initial weights (accuracy stays at 10%)."""
    images, labels = _stripes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = am.train_classifier("lenet", images, labels, epochs=3, batch_size=20, seed=0)
        accuracy = (am.predict(model, images)[1].argmax(1) == labels).double().mean().item()
        _, first = am.train_vae(images, epochs=1, latent_dim=4, batch_size=20, lr=3e-3, seed=0)
        _, third = am.train_vae(images, epochs=3, latent_dim=4, batch_size=20, lr=3e-3, seed=0)
    assert accuracy > 0.9
    assert third < 0.8 * first  # fp32 on these images: 462 -> 328 nats


# ---------------------------------------------------------------------------------------------------------
# The small setting end to end
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_setting_writes_the_released_format(small_run):
    root, manifest = small_run
    samples = torch.load(root / am.SAMPLES_FILE, weights_only=True)
    labels = torch.load(root / am.LABELS_FILE, weights_only=True)
    assert samples.dtype == torch.float32 and samples.shape == (400, 1, 28, 28)
    assert samples.min() >= 0 and samples.max() <= 1
    # Strokes reach near-white as in MNIST; the fog of a VAE stuck at the mean digit stays around 0.5.
    assert samples.flatten(1).max(dim=1).values.median() > 0.8
    assert labels.dtype == torch.int64 and labels.shape == (400, 10)
    assert labels.min() >= 0 and labels.max() <= 9
    on_disk = json.loads((root / am.MANIFEST_FILE).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert (on_disk["seed"], on_disk["train_samples"], on_disk["test_samples"]) == (1, 200, 200)
    assert on_disk["labels_per_sample"] == 10 and on_disk["train_pairs"] == 2000
    assert sum(on_disk["label_entropy"]["all"]["empirical"]["counts"]) == 400
    assert on_disk["settings"]["vae_epochs"] == 2 and on_disk["time_s"]["total"] > 0
    assert {"train", "test"} <= set(on_disk["candidates"])
    with Image.open(root / am.GRID_FILE) as grid:
        assert grid.format == "PNG" and grid.size == (2 * (16 * 30 + 2), 2 * (10 * 30 + 2))


@pytest.mark.slow
def test_small_setting_labels_are_ambiguous_not_degenerate(small_run):
    root, manifest = small_run
    labels = torch.load(root / am.LABELS_FILE, weights_only=True)
    counts = torch.nn.functional.one_hot(labels, 10).sum(dim=1)
    single = (counts.max(dim=1).values == 10).double().mean().item()
    assert single < 0.3, "samples with one label repeated 10 times must not dominate"
    assert (counts > 0).sum(dim=1).double().mean().item() >= 2.0
    assert len(torch.unique(counts.argmax(dim=1))) >= 6, "majority classes should cover most digits"
    # Every kept sample's label distribution has at least --min-entropy (0.6 nats).
    distribution = manifest["label_entropy"]["all"]["distribution"]
    assert distribution["counts"][:2] == [0, 0] and distribution["quantiles_5_25_50_75_95"][0] >= 0.6
    # Even these briefly trained models see the generated test samples as more ambiguous than MNIST.
    quality = manifest["quality"]
    assert quality["mean_entropy_generated_test"] > quality["mean_entropy_mnist_test"]
    assert quality["auroc_entropy_generated_vs_mnist"] > 0.75


@pytest.mark.slow
def test_small_setting_is_read_by_the_dirty_mnist_loader(small_run):
    root, _ = small_run
    samples = torch.load(root / am.SAMPLES_FILE, weights_only=True)
    labels = torch.load(root / am.LABELS_FILE, weights_only=True)
    pairs_x, pairs_y = samples.repeat_interleave(10, dim=0), labels.reshape(-1)
    train_x, train_y = data.load_split("ambiguous_mnist", root, "train")
    test_x, test_y = data.load_split("ambiguous_mnist", root, "test")
    # The loader flattens (sample, label) pairs and splits them in order: train and test together are
    # exactly our pairs, in our order.
    assert torch.equal(torch.cat([train_x, test_x]), pairs_x) and torch.equal(
        torch.cat([train_y, test_y]), pairs_y
    )
    dirty_x, _ = data.load_split("dirty_mnist", root, "train")
    assert len(dirty_x) == 60_000 + len(train_x) and torch.equal(dirty_x[60_000:], train_x)
    loader = data.get_test_loader("dirty_mnist", root, 1024, device="cpu")
    seen = sum(len(batch[1]) for batch in loader)
    assert seen == 10_000 + len(test_x)


@pytest.mark.slow
def test_evaluate_only_rechecks_existing_files(small_run, tmp_path, real_data_root):
    source, _ = small_run
    root = _root_with_mnist(tmp_path / "copy", real_data_root)
    for name in (am.SAMPLES_FILE, am.LABELS_FILE, am.MANIFEST_FILE):
        shutil.copy(source / name, root / name)
    extra = ["--evaluate-only", "--eval-model", "lenet", "--eval-epochs", "2", "--max-mnist", "4000"]
    quality = _run(root, [*COMMON, *extra])
    # The test samples are found from the manifest's training count: the last 200 of 400.
    assert quality["num_generated_test"] == 200 and quality["num_mnist_test"] == 10_000
    assert 0.5 < quality["auroc_entropy_generated_vs_mnist"] <= 1.0
    assert json.loads((root / am.MANIFEST_FILE).read_text())["quality"] == json.loads(json.dumps(quality))


@pytest.mark.slow
def test_same_seed_same_files_other_seed_other_files(tmp_path, real_data_root):
    outputs = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        root = _root_with_mnist(tmp_path / name, real_data_root)
        manifest = _run(root, [*TINY, "--seed", seed])
        outputs.append(
            (
                torch.load(root / am.SAMPLES_FILE, weights_only=True),
                torch.load(root / am.LABELS_FILE, weights_only=True),
                {k: v for k, v in manifest.items() if k not in ("time_s", "settings")},
                (root / am.GRID_FILE).read_bytes(),
            )
        )
    (xa, ya, ma, ga), (xb, yb, mb, gb), (xc, _, _, _) = outputs
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and ma == mb and ga == gb
    assert not torch.equal(xa, xc)


@pytest.mark.slow
def test_written_files_leave_no_temporaries(small_run):
    root, _ = small_run
    assert sorted(p.name for p in root.iterdir() if p.name != "MNIST") == sorted(
        [am.SAMPLES_FILE, am.LABELS_FILE, am.MANIFEST_FILE, am.GRID_FILE]
    )
    assert not any(name.startswith(".") for name in os.listdir(root))


@pytest.mark.slow
def test_documented_small_command_succeeds(tmp_path, real_data_root):
    """The docs' small command (about 15 s on one thread) passes the default filters, with digit-like samples."""
    root = _root_with_mnist(tmp_path / "data", real_data_root)
    out = tmp_path / "am"
    manifest = _run(
        root,
        [
            *DOCUMENTED_SMALL,
            "--device",
            "cpu",
            "--no-progress",
            "--num-threads",
            str(TEST_THREADS),
            "--out",
            str(out),
        ],
    )
    samples = torch.load(out / am.SAMPLES_FILE, weights_only=True)
    assert samples.shape == (200, 1, 28, 28) and manifest["train_pairs"] == 1000
    assert samples.flatten(1).max(dim=1).values.median() > 0.8  # strokes, not the grey fog of too few steps
    assert manifest["label_entropy"]["all"]["distribution"]["quantiles_5_25_50_75_95"][0] >= 0.6
