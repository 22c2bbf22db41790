"""The generator's report: the files it writes, the manifest (settings, counts, label-entropy histograms),
the PNG grid, and the independent quality check (`--evaluate`, `--evaluate-only`)."""

from __future__ import annotations

import argparse
import io
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metrics.ood import detection_metrics
from metrics.uncertainty import entropy_of_probs, softmax_entropy
from tools.ambiguous_mnist.classifiers import predict, train_classifier
from tools.ambiguous_mnist.shared import GRID_FILE, LABELS_FILE, NUM_CLASSES, SAMPLES_FILE
from utils.io import atomic_torch_save, atomic_write_bytes

# Histogram edges (nats) for the manifest; the last edge is just above log(10), the maximum for 10 classes.
ENTROPY_BIN_EDGES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.31]


def label_entropy_summary(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Histogram and quantiles of two label entropies (nats) over samples:

    - `distribution`: entropy of the mean softmax the labels were drawn from;
    - `empirical`: entropy of the drawn labels' frequencies (what a model trained on them sees), e.g.
      a 5/5 split gives log 2 = 0.69 and 10 identical labels give 0.
    """
    counts = F.one_hot(labels, NUM_CLASSES).sum(dim=1).double()
    empirical = entropy_of_probs(counts / counts.sum(dim=1, keepdim=True))
    out: dict[str, Any] = {"bin_edges": ENTROPY_BIN_EDGES}
    for key, values in (("distribution", entropy_of_probs(probs)), ("empirical", empirical)):
        hist = np.histogram(values.numpy(), bins=ENTROPY_BIN_EDGES)[0]
        q = torch.quantile(values, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))
        out[key] = {
            "counts": hist.tolist(),
            "mean": round(float(values.mean()), 4),
            "quantiles_5_25_50_75_95": [round(float(v), 4) for v in q],
            "fraction_between_0.5_and_2": round(
                float(((values >= 0.5) & (values <= 2.0)).double().mean()), 4
            ),
        }
    out["fraction_single_label"] = round(
        float((counts.max(dim=1).values == labels.shape[1]).double().mean()), 4
    )
    out["distinct_labels_per_sample_counts"] = torch.bincount(
        (counts > 0).sum(dim=1), minlength=NUM_CLASSES + 1
    ).tolist()
    return out


def render_grid(samples: torch.Tensor, labels: torch.Tensor, columns: int = 16, scale: int = 2) -> bytes:
    """PNG bytes of a 10-row grid like the released figure: row c holds samples whose most frequent label
    is c, at evenly spaced ranks of increasing label entropy (left: least ambiguous). Empty cells stay
    dark grey, so a class with few samples is visible as such."""
    from PIL import Image

    counts = F.one_hot(labels, NUM_CLASSES).sum(dim=1).double()
    ent = entropy_of_probs(counts / counts.sum(dim=1, keepdim=True))
    majority = counts.argmax(dim=1)
    pad, cell = 2, 28 + 2
    canvas = torch.full((NUM_CLASSES * cell + pad, columns * cell + pad), 0.25)
    for c in range(NUM_CLASSES):
        members = torch.nonzero(majority == c).squeeze(1)
        if len(members) == 0:
            continue
        order = members[torch.sort(ent[members], stable=True).indices]
        ranks = torch.linspace(0, len(order) - 1, min(columns, len(order))).round().long()
        for j, i in enumerate(order[ranks].tolist()):
            y, x = pad + c * cell, pad + j * cell
            canvas[y : y + 28, x : x + 28] = samples[i, 0]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)  # 2-D uint8: 8-bit grey ("L")
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate_quality(
    generated_test: torch.Tensor,
    mnist_train: tuple[torch.Tensor, torch.Tensor],
    mnist_test: tuple[torch.Tensor, torch.Tensor],
    *,
    model_name: str = "resnet18",
    epochs: int = 2,
    seed: int = 0,
    progress: bool | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """The quality check of a generated set: an independent classifier (not an ensemble member; by default a
    ResNet-18, a different architecture) trained on clean MNIST should be clearly more uncertain on the
    generated test samples than on MNIST test digits.

    Args:
        generated_test: `(M, 1, 28, 28)` float in [0, 1] on the training device.
        mnist_train, mnist_test: (images `(N, 1, 28, 28)` float in [0, 1], labels `(N,)`) on that device.

    Returns:
        mean softmax entropies, the AUROC of softmax entropy with generated samples as positives
        (`metrics.detection_metrics`, equal to sklearn's `roc_auc_score`; 1.0 = every generated sample is
        more uncertain than every MNIST digit, 0.5 = no separation), and the MNIST test accuracy.
    """
    start = time.perf_counter()
    model = train_classifier(
        model_name,
        *mnist_train,
        epochs=epochs,
        seed=seed,
        desc="independent classifier",
        progress=progress,
        **model_kwargs,
    )
    _, logits_mnist = predict(model, mnist_test[0], batch_size=1024)
    _, logits_gen = predict(model, generated_test, batch_size=1024)
    h_mnist, h_gen = softmax_entropy(logits_mnist).cpu(), softmax_entropy(logits_gen).cpu()
    return {
        "classifier": {"model": model_name, **model_kwargs, "epochs": epochs, "seed": seed},
        "mnist_test_accuracy": round(float((logits_mnist.argmax(1) == mnist_test[1]).double().mean()), 4),
        "mean_entropy_generated_test": round(float(h_gen.mean()), 4),
        "mean_entropy_mnist_test": round(float(h_mnist.mean()), 4),
        "auroc_entropy_generated_vs_mnist": round(detection_metrics(h_gen, h_mnist)["auroc"], 4),
        "num_generated_test": len(h_gen),
        "num_mnist_test": len(h_mnist),
        "time_s": round(time.perf_counter() - start, 1),
    }


def write_files(out: Path, samples: torch.Tensor, labels: torch.Tensor, grid_columns: int) -> None:
    """The set in the released format (samples `(N, 1, 28, 28)` float32, labels `(N, K)` int64) and its grid."""
    atomic_torch_save(samples, out / SAMPLES_FILE)
    atomic_torch_save(labels, out / LABELS_FILE)
    atomic_write_bytes(out / GRID_FILE, render_grid(samples, labels, grid_columns))


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line settings, sorted by name, paths as strings (for the log and the manifest)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}


def build_manifest(
    args: argparse.Namespace,
    *,
    device: torch.device,
    probs: torch.Tensor,
    labels: torch.Tensor,
    vae_neg_elbo: float,
    log_density_threshold: float,
    candidates: dict[str, Any],
) -> dict[str, Any]:
    """What `amnist_manifest.json` records about a generated set (before the quality check and timings).

    Args:
        probs: `(N, C)` the ensemble's mean softmax of every kept sample, train samples first.
        labels: `(N, K)` the labels drawn from it.
        candidates: per split, the counts of `candidates.generate_split`.
    """
    total = len(labels)
    return {
        "description": "Ambiguous-MNIST regenerated by this project (tools/ambiguous_mnist.py), not the "
        "released set: VAE latent mixtures of 2-3 MNIST digits of different classes, kept when an "
        "ensemble finds them ambiguous (high entropy), agreed on (low mutual information) and "
        "near the data (feature density); labels drawn from the ensemble's mean softmax",
        "files": {
            SAMPLES_FILE: f"float32 [{total}, 1, 28, 28] in [0, 1]; train samples first, then test",
            LABELS_FILE: f"int64 [{total}, {args.labels_per_sample}]",
        },
        "seed": args.seed,
        "train_samples": args.train,
        "test_samples": args.test,
        "labels_per_sample": args.labels_per_sample,
        "train_pairs": args.train * args.labels_per_sample,
        "settings": run_settings(args),
        "device": str(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "vae_final_neg_elbo": round(vae_neg_elbo, 3),
        "log_density_threshold": log_density_threshold,
        "candidates": candidates,
        "label_entropy": {
            "all": label_entropy_summary(probs, labels),
            "train": label_entropy_summary(probs[: args.train], labels[: args.train]),
            "test": label_entropy_summary(probs[args.train :], labels[args.train :]),
        },
        "majority_class_counts": torch.bincount(
            F.one_hot(labels, NUM_CLASSES).sum(dim=1).argmax(dim=1), minlength=NUM_CLASSES
        ).tolist(),
    }
