"""Ambiguous-MNIST regenerated from MNIST alone: this project's regeneration, not the released set.

DDU (Mukhoti et al. 2021, "Deterministic Neural Networks with Appropriate Inductive Biases Capture
Epistemic and Aleatoric Uncertainty") uses Dirty-MNIST in Fig. 1 and 2 and in its active-learning runs:
MNIST plus Ambiguous-MNIST, digits that are genuinely ambiguous between classes yet look like handwriting,
each with several labels drawn from a predictive distribution. The released files cannot be downloaded
everywhere, so this module builds a set in the same spirit and in exactly the released format:

1. Fit a small convolutional VAE (Kingma & Welling 2014) to MNIST training digits.
2. Train an ensemble of small MNIST classifiers (LeNets from `net`, different seeds).
3. Candidates: decode convex combinations of the latent means of two or three training digits of
   different classes (weights drawn from a symmetric Dirichlet), i.e. points between classes on the
   VAE's learnt digit manifold rather than pixel blends.
4. Keep candidates the ensemble finds ambiguous but not foreign: predictive entropy `H[mean_m p_m]` at
   least `--min-entropy` (aleatoric), mutual information `H[mean p] - mean_m H[p_m]` at most `--max-mi`
   (the members agree, so the uncertainty is not epistemic), and log feature density, under DDU's
   class-conditional Gaussians fitted to each member's MNIST features, above the `--density-quantile`
   of MNIST's own (the candidate sits near data; this is DDU's epistemic score used as a filter).
5. Draw each kept sample's labels (10 by default) from the ensemble's mean softmax.

Train and test samples are decoded from disjoint halves of the source digits, so no source digit appears
in both. MNIST's test split is never used for generation; `--evaluate` uses it to check the result with
an independent classifier (by default a ResNet-18: another architecture and seed, trained on clean MNIST).

Outputs in `--out` (what the `dirty_mnist` loader reads): `amnist_samples.pt` float32 `(N, 1, 28, 28)` in
[0, 1] and `amnist_labels.pt` int64 `(N, K)`, train samples first, then test; `amnist_manifest.json`
(seed, counts, settings, label-entropy histogram, timings) and `amnist_grid.png` (one row per majority
class, samples ordered left to right by increasing label entropy).

Run:
    python -m data.ambiguous_mnist --mnist-root DATA --out DATA                  # 6000 + 6000 samples
    python -m data.ambiguous_mnist --mnist-root DATA --out DATA --device cuda --evaluate
    python -m data.ambiguous_mnist --mnist-root DATA --out DATA --evaluate-only  # re-check existing files
    python -m data.ambiguous_mnist --mnist-root DATA --out DATA --num-threads 1    # on a busy shared CPU
    python -m data.ambiguous_mnist --mnist-root DATA --out /tmp/am --train 200 --test 200 --max-mnist 4000 \
        --vae-epochs 2 --vae-batch-size 32 --vae-lr 3e-3 --classifier-epochs 4 --ensemble-size 3  # ~20 s
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import net
from data.registry import MNIST_MEAN, MNIST_STD
from data.sources import AMNIST_MANIFEST, AMNIST_TRAIN_PAIRS
from metrics.ddu import DDUScorer
from metrics.gmm import ClassGaussians
from metrics.ood import detection_metrics
from metrics.uncertainty import (
    ensemble_mutual_information,
    ensemble_predictive_entropy,
    entropy_of_probs,
    softmax_entropy,
)
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, check_writable_dir, read_json
from utils.seed import seed_everything

log = logging.getLogger(__name__)

SAMPLES_FILE = "amnist_samples.pt"
LABELS_FILE = "amnist_labels.pt"
MANIFEST_FILE = AMNIST_MANIFEST
GRID_FILE = "amnist_grid.png"
NUM_CLASSES = 10
# Histogram edges (nats) for the manifest; the last edge is just above log(10), the maximum for 10 classes.
ENTROPY_BIN_EDGES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.31]
# Offsets added to `--seed` so that every stage has its own stream and changing one stage's settings
# (e.g. the number of VAE epochs) leaves the others' random draws unchanged.
_SEED_VAE, _SEED_ENSEMBLE, _SEED_SPLIT, _SEED_CANDIDATES, _SEED_LABELS, _SEED_EVAL = 11, 23, 37, 41, 53, 67


# --------------------------------------------------------------------------------------------------------
# Models and training
# --------------------------------------------------------------------------------------------------------


class ConvVAE(nn.Module):
    """A small convolutional VAE for 1x28x28 images in [0, 1] with a Bernoulli decoder.

    Two stride-2 convolutions (28 -> 14 -> 7) and one linear layer give the Gaussian posterior
    `q(z | x) = N(mu, diag(exp(logvar)))`; the decoder mirrors them with transposed convolutions and
    returns pixel logits. Small on purpose: it must train in minutes on a CPU, and a smooth,
    low-dimensional latent space keeps interpolations between digits digit-like. Batch normalisation
    and no hidden fully connected layer make it leave the "mean digit" plateau early: after 250 steps
    of 32 digits the reconstruction NLL was 103 nats against 141 with a 256-unit hidden layer and no
    batch normalisation (measured here), which matters for the short settings used in tests.
    """

    def __init__(self, latent_dim: int = 16, width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, 7, 7)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 1, 28, 28)` in [0, 1] -> posterior mean and log-variance, each `(B, latent_dim)`."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, latent_dim)` -> Bernoulli logits `(B, 1, 28, 28)`."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, latent_dim)` -> mean image `(B, 1, 28, 28)` in [0, 1] (grey levels, like MNIST's)."""
        return torch.sigmoid(self.decode_logits(z))


def vae_loss(vae: ConvVAE, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Negative ELBO per image: Bernoulli reconstruction NLL (summed over pixels) plus KL to N(0, I).

    MNIST grey levels are used directly as Bernoulli targets (the usual continuous relaxation).
    """
    mu, logvar = vae.encode(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + eps * (0.5 * logvar).exp()
    recon = F.binary_cross_entropy_with_logits(vae.decode_logits(z), x, reduction="sum")
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
    return (recon + kl) / x.shape[0]


def _no_bar(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None lets tqdm hide bars when output is not a terminal (logs stay readable)."""
    return None if progress is None else not progress


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a shuffled epoch (the permutation comes from `generator`, on the CPU)."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_vae(
    images: torch.Tensor,
    *,
    epochs: int,
    latent_dim: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[ConvVAE, float]:
    """Fit a `ConvVAE` to `images` `(N, 1, 28, 28)` float in [0, 1] (on the training device).

    Adam, constant learning rate; returns the model in eval mode and the last epoch's mean loss (nats per
    image, the negative ELBO) for the manifest.
    """
    torch.manual_seed(seed)
    vae = ConvVAE(latent_dim).to(images.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=images.device).manual_seed(seed + 1)
    loss_value = float("nan")
    bar = tqdm(range(epochs), desc="VAE", unit="epoch", disable=_no_bar(progress))
    for _ in bar:
        vae.train()
        total, count = torch.zeros((), device=images.device), 0
        for idx in _batches(len(images), batch_size, order_gen, images.device):
            loss = vae_loss(vae, images[idx], noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        loss_value = float(total) / count
        bar.set_postfix(neg_elbo=f"{loss_value:.1f}")
    return vae.eval(), loss_value


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the network input, with MNIST's constants as everywhere in the suite."""
    return (images - MNIST_MEAN[0]) / MNIST_STD[0]


def train_classifier(
    model_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    desc: str = "classifier",
    progress: bool | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Train `net.create_model(model_name, mnist=True)` on `images` `(N, 1, 28, 28)` in [0, 1].

    Adam with a constant learning rate and no augmentation: the classifiers only need to be accurate
    MNIST classifiers, not state of the art. Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    model = net.create_model(model_name, num_classes=NUM_CLASSES, mnist=True, **model_kwargs).to(
        images.device
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=_no_bar(progress))
    for _ in bar:
        model.train()
        total, count = torch.zeros((), device=images.device), 0
        for idx in _batches(len(images), batch_size, order_gen, images.device):
            loss = F.cross_entropy(model(normalize(images[idx])), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        bar.set_postfix(loss=f"{float(total) / count:.3f}")
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `(N, D)` and logits `(N, C)` of `images` `(N, 1, 28, 28)` in [0, 1], in batches."""
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        z = model.forward_features(normalize(images[start : start + batch_size]))
        features.append(z)
        logits.append(model.get_classifier()(z))
    return torch.cat(features), torch.cat(logits)


# --------------------------------------------------------------------------------------------------------
# Scoring: the ensemble's view of a candidate
# --------------------------------------------------------------------------------------------------------


@dataclass
class Ensemble:
    """Classifiers plus, per member, DDU's class-conditional Gaussians on its MNIST features."""

    members: list[nn.Module]
    gaussians: list[ClassGaussians]
    log_density_threshold: float = -math.inf


@torch.no_grad()
def ensemble_scores(ensemble: Ensemble, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores of `images` `(N, 1, 28, 28)` in [0, 1], each `(N,)` float64 except `mean_probs` `(N, C)`.

    - `entropy`: `H[mean_m p_m(y | x)]`, total predictive uncertainty;
    - `mutual_information`: `H[mean_m p_m] - mean_m H[p_m]`, the members' disagreement (epistemic);
    - `log_density`: mean over members of `log sum_c q_m(z_m | c)`, DDU's feature density with the
      uniform class prior dropped as in the DDU code (a constant shift).
    """
    probs, log_densities = [], []
    for model, gaussians in zip(ensemble.members, ensemble.gaussians):
        features, logits = predict(model, images)
        probs.append(torch.softmax(logits.double(), dim=1))
        log_densities.append(DDUScorer(gaussians).predict_features(features)["log_density"])
    member_probs = torch.stack(probs)
    return {
        "mean_probs": member_probs.mean(dim=0),
        "entropy": ensemble_predictive_entropy(member_probs),
        "mutual_information": ensemble_mutual_information(member_probs),
        "log_density": torch.stack(log_densities).mean(dim=0),
    }


def build_ensemble(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    size: int,
    model_name: str,
    epochs: int,
    batch_size: int,
    lr: float,
    density_quantile: float,
    seed: int,
    progress: bool | None = None,
) -> Ensemble:
    """Train `size` classifiers (seeds `seed`, `seed + 1`, ...), fit each one's feature Gaussians on the
    training digits, and set the density threshold to the `density_quantile` of the digits' own scores."""
    members, gaussians = [], []
    for m in range(size):
        model = train_classifier(
            model_name,
            images,
            labels,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed + m,
            desc=f"classifier {m + 1}/{size}",
            progress=progress,
        )
        features, _ = predict(model, images)
        members.append(model)
        gaussians.append(DDUScorer.fit_features(features, labels, NUM_CLASSES).gaussians)
    ensemble = Ensemble(members, gaussians)
    if density_quantile > 0:
        own = ensemble_scores(ensemble, images)["log_density"]
        ensemble.log_density_threshold = float(torch.quantile(own.float().cpu(), density_quantile))
    return ensemble


# --------------------------------------------------------------------------------------------------------
# Candidates and selection
# --------------------------------------------------------------------------------------------------------


def _distinct_class_partner(
    labels: torch.Tensor, taken: list[torch.Tensor], generator: torch.Generator
) -> torch.Tensor:
    """For each row, a random index into `labels` whose class differs from those of the `taken` indices.

    Rejection sampling, vectorised: redraw only the rows that clash (expected < 1.5 rounds per row).
    """
    n = len(taken[0])
    pick = torch.randint(len(labels), (n,), generator=generator)
    while True:
        clash = torch.zeros(n, dtype=torch.bool)
        for t in taken:
            clash |= labels[pick] == labels[t]
        if not clash.any():
            return pick
        pick[clash] = torch.randint(len(labels), (int(clash.sum()),), generator=generator)


def dirichlet(n: int, k: int, concentration: int, generator: torch.Generator) -> torch.Tensor:
    """`(n, k)` draws from a symmetric Dirichlet with integer concentration `a`.

    A Gamma(a, 1) variable with integer `a` is a sum of `a` unit exponentials, `-sum log U`; normalised
    Gammas are Dirichlet. This keeps every draw on an explicit generator (torch's Gamma sampler has none).
    """
    u = torch.rand(n, k, concentration, generator=generator, dtype=torch.float64)
    gammas = -torch.log1p(-u).sum(dim=2)  # log1p(-u) avoids log(0); u < 1 always
    return gammas / gammas.sum(dim=1, keepdim=True)


@torch.no_grad()
def make_candidates(
    vae: ConvVAE,
    codes: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    *,
    triple_fraction: float,
    concentration: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `count` latent mixtures of 2 or 3 source digits of different classes.

    Args:
        codes: `(P, L)` posterior means of the source digits (on the VAE's device).
        labels: `(P,)` their MNIST labels (CPU).
        triple_fraction: share of candidates mixing three classes; they give the 3-way ambiguity that
            pushes label entropy above log 2 = 0.69 nats.
        concentration: Dirichlet concentration of the mixture weights; larger values keep weights nearer
            the middle, where the classifiers are uncertain, so fewer candidates are wasted.

    Returns:
        images `(count, 1, 28, 28)` in [0, 1] and the source indices `(count, 3)` (-1 where unused).
    """
    first = torch.randint(len(labels), (count,), generator=generator)
    second = _distinct_class_partner(labels, [first], generator)
    third = _distinct_class_partner(labels, [first, second], generator)
    is_triple = torch.rand(count, generator=generator) < triple_fraction
    weights = torch.zeros(count, 3, dtype=torch.float64)
    weights[:, :2] = dirichlet(count, 2, concentration, generator)
    weights[is_triple] = dirichlet(count, 3, concentration, generator)[is_triple]
    third = torch.where(is_triple, third, torch.full_like(third, -1))
    parents = torch.stack([first, second, third], dim=1)
    w = weights.to(codes.device, codes.dtype)
    idx = parents.clamp_min(0).to(codes.device)
    z = (w[:, :, None] * codes[idx]).sum(dim=1)
    # A convex combination of codes is shorter than its ends (a chord's middle: about 0.7 times as long
    # for two digits), which decodes to fainter, more prototypical strokes; restoring the weighted mean
    # norm brings stroke contrast closer to MNIST's (mean of the 50 brightest pixels of 2,000 midpoints
    # 0.84 -> 0.90, MNIST 0.97; measured with an earlier variant of the VAE).
    target_norm = (w * codes[idx].norm(dim=2)).sum(dim=1, keepdim=True)
    z = z * target_norm / z.norm(dim=1, keepdim=True).clamp_min(1e-8)
    images = torch.cat([vae.decode(chunk) for chunk in z.split(4096)])
    return images, parents


def select_ambiguous(
    scores: dict[str, torch.Tensor],
    *,
    min_entropy: float,
    max_mi: float,
    log_density_threshold: float,
) -> torch.Tensor:
    """Boolean mask `(N,)` of candidates that are ambiguous (high entropy), agreed on (low mutual
    information) and near the data (feature density above the threshold)."""
    return (
        (scores["entropy"] >= min_entropy)
        & (scores["mutual_information"] <= max_mi)
        & (scores["log_density"] >= log_density_threshold)
    )


def generate_split(
    vae: ConvVAE,
    ensemble: Ensemble,
    codes: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    *,
    generator: torch.Generator,
    min_entropy: float,
    max_mi: float,
    triple_fraction: float,
    concentration: int,
    candidate_batch: int,
    max_candidates: int,
    name: str = "",
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Generate candidates (`make_candidates`) in rounds until `target` pass `select_ambiguous`.

    Candidates are i.i.d., so keeping the first `target` that pass is a uniform random choice among those
    that pass. Returns samples `(target, 1, 28, 28)` and mean probabilities `(target, C)` on the CPU, and
    counts for the manifest. Raises `UserError` when `max_candidates` tries are not enough.
    """
    kept_images, kept_probs, kept = [], [], 0
    passing = {"entropy": 0, "mutual_information": 0, "log_density": 0, "all": 0}
    generated, budget = 0, max(max_candidates, candidate_batch)
    bar = tqdm(total=target, desc=f"{name} samples", unit="sample", disable=_no_bar(progress))
    while kept < target:
        if generated >= budget:
            bar.close()
            rates = ", ".join(f"{k} {v / generated:.1%}" for k, v in passing.items() if k != "all")
            raise UserError(
                f"only {kept} of {target} {name} candidates passed the filters after {generated} tries "
                f"(each filter alone passed: {rates}); train longer (--vae-epochs, --classifier-epochs) "
                "or relax --min-entropy, --max-mi or --density-quantile"
            )
        images, _ = make_candidates(
            vae,
            codes,
            labels,
            candidate_batch,
            triple_fraction=triple_fraction,
            concentration=concentration,
            generator=generator,
        )
        generated += len(images)
        scores = ensemble_scores(ensemble, images)
        mask = select_ambiguous(
            scores,
            min_entropy=min_entropy,
            max_mi=max_mi,
            log_density_threshold=ensemble.log_density_threshold,
        )
        for key, passed in (
            ("entropy", scores["entropy"] >= min_entropy),
            ("mutual_information", scores["mutual_information"] <= max_mi),
            ("log_density", scores["log_density"] >= ensemble.log_density_threshold),
        ):
            passing[key] += int(passed.sum())
        passing["all"] += int(mask.sum())
        take = torch.nonzero(mask).squeeze(1)[: target - kept]
        kept_images.append(images[take].cpu())
        kept_probs.append(scores["mean_probs"][take].cpu())
        kept += len(take)
        bar.update(len(take))
    bar.close()
    # The last round usually passes more than are needed; the rates count every candidate scored.
    stats = {
        "candidates": generated,
        "kept": kept,
        "passed_each_filter": {k: round(v / generated, 5) for k, v in passing.items()},
    }
    return torch.cat(kept_images), torch.cat(kept_probs), stats


def draw_labels(probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """`k` labels per row of `probs` `(N, C)`, drawn with replacement -> int64 `(N, k)`."""
    return torch.multinomial(probs.double().cpu(), k, replacement=True, generator=generator)


# --------------------------------------------------------------------------------------------------------
# Summaries: histogram, grid, independent evaluation
# --------------------------------------------------------------------------------------------------------


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
    """The quality check of the issue: an independent classifier (not an ensemble member; by default a
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


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def load_mnist(root: Path, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST `split` as float images `(N, 1, 28, 28)` in [0, 1] and int64 labels `(N,)` on `device`.

    Missing files end in the data package's one-sentence `UserError`.
    """
    from data import load_split

    images, labels = load_split("mnist", root, split)
    return images.to(device=device, dtype=torch.float32).div_(255), labels.to(device)


def random_subset(
    images: torch.Tensor, labels: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits in a seeded random order, cut to the first `size` (0 = all): the order also decides
    which half of the digits feeds the training samples and which the test samples."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    if size:
        order = order[:size]
    order = order.to(images.device)
    return images[order], labels[order]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.ambiguous_mnist",
        description="Generate Ambiguous-MNIST (this project's regeneration) from MNIST.",
        add_help=add_help,
    )
    parser.add_argument(
        "--mnist-root",
        "--dataset-root",
        dest="mnist_root",
        type=Path,
        default=Path("data"),
        help="folder holding MNIST/raw/*-ubyte[.gz] (the suite's --dataset-root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder; default --mnist-root, where the dirty_mnist loader looks",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of every stage; on the CPU the same seed and --num-threads give byte-identical files "
        "(another thread count changes float rounding, hence the files)",
    )
    parser.add_argument(
        "--train",
        type=int,
        default=6000,
        help="training samples; 6000 x 10 labels = the 60,000 pairs the loader's train split "
        "takes, as in the released set",
    )
    parser.add_argument("--test", type=int, default=6000, help="test samples (after the training ones)")
    parser.add_argument(
        "--labels-per-sample", type=int, default=10, help="labels drawn per sample (released: 10)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="'cpu', 'cuda', 'cuda:1', ...; default: CUDA if available. Bit-identical reruns "
        "are promised on the CPU only",
    )
    parser.add_argument(
        "--max-mnist",
        type=int,
        default=0,
        help="use only this many MNIST training digits (a seeded random subset) for the VAE, "
        "the classifiers and the sources (and another subset for --evaluate's classifier); "
        "0 = all 60,000. For quick runs",
    )
    group = parser.add_argument_group("VAE")
    group.add_argument("--vae-epochs", type=int, default=10, help="passes over the digits")
    group.add_argument(
        "--vae-latent",
        type=int,
        default=16,
        help="latent size; small keeps interpolations on the digit manifold, large sharpens them",
    )
    group.add_argument("--vae-batch-size", type=int, default=128, help="mini-batch size")
    group.add_argument("--vae-lr", type=float, default=1e-3, help="Adam learning rate")
    group = parser.add_argument_group("ensemble")
    group.add_argument(
        "--ensemble-size", type=int, default=5, help="classifiers (at least 3, different seeds)"
    )
    group.add_argument(
        "--classifier-model",
        default="lenet",
        help="a name from the net registry; LeNet is fast and accurate enough on MNIST",
    )
    group.add_argument("--classifier-epochs", type=int, default=3, help="passes over the digits per member")
    group.add_argument("--classifier-batch-size", type=int, default=128, help="mini-batch size")
    group.add_argument("--classifier-lr", type=float, default=1e-3, help="Adam learning rate")
    group = parser.add_argument_group("candidates and selection")
    group.add_argument(
        "--triple-fraction",
        type=float,
        default=0.5,
        help="share of candidates mixing 3 classes instead of 2 (3-way ambiguity gives label "
        "entropy above log 2)",
    )
    group.add_argument(
        "--mix-concentration",
        type=int,
        default=3,
        help="integer Dirichlet concentration of the mixing weights; larger = nearer the middle",
    )
    group.add_argument(
        "--min-entropy",
        type=float,
        default=0.6,
        help="keep candidates whose ensemble predictive entropy (nats) is at least this; 0.61 is a 70/30 "
        "split of two classes: lower admits nearly certain digits, higher needs more candidates",
    )
    group.add_argument(
        "--max-mi",
        type=float,
        default=0.1,
        help="keep candidates whose ensemble mutual information (nats) is at most this: the members must "
        "agree that the digit is ambiguous (disagreement is epistemic, not aleatoric, uncertainty)",
    )
    group.add_argument(
        "--density-quantile",
        type=float,
        default=0.05,
        help="keep candidates whose feature log-density is above this quantile of MNIST's "
        "own; 0 switches the density filter off",
    )
    group.add_argument(
        "--candidate-batch", type=int, default=8192, help="candidates decoded and scored at once"
    )
    group.add_argument(
        "--max-candidates-per-sample",
        type=int,
        default=200,
        help="give up (with an error) after this many candidates per requested sample",
    )
    group.add_argument("--grid-columns", type=int, default=16, help="samples per class in the PNG grid")
    group = parser.add_argument_group("independent evaluation")
    group.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after generating, train an independent classifier on clean MNIST and record the "
        "entropy AUROC of generated test samples versus MNIST test digits in the manifest",
    )
    group.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip generation; evaluate the files already in --out (uses the manifest's test "
        "count, else the released split: samples after the first 60,000 pairs)",
    )
    group.add_argument(
        "--eval-model", default="resnet18", help="independent classifier from the net registry"
    )
    group.add_argument(
        "--eval-base-width",
        type=int,
        default=8,
        help="base width when --eval-model is a ResNet (8 keeps it fast on a CPU)",
    )
    group.add_argument(
        "--eval-epochs", type=int, default=2, help="passes over MNIST for the independent classifier"
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="CPU threads for torch; 0 keeps torch's default (all cores). On a CPU shared with other jobs, "
        "1 can be several times faster than oversubscribed cores. Part of what makes a CPU run reproducible",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars; default: only when writing to a terminal",
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = []
    if args.train < 1 or args.test < 1:
        problems.append("--train and --test must be positive")
    if args.labels_per_sample < 1:
        problems.append("--labels-per-sample must be positive")
    if args.ensemble_size < 3:
        problems.append("--ensemble-size must be at least 3 (mutual information needs several members)")
    if not 0.0 <= args.triple_fraction <= 1.0:
        problems.append("--triple-fraction must lie in [0, 1]")
    if not 0.0 <= args.density_quantile < 1.0:
        problems.append("--density-quantile must lie in [0, 1)")
    if args.mix_concentration < 1:
        problems.append("--mix-concentration must be a positive integer")
    if min(args.vae_epochs, args.classifier_epochs, args.candidate_batch, args.eval_epochs) < 1:
        problems.append("epochs and --candidate-batch must be positive")
    if args.max_mnist < 0 or 0 < args.max_mnist < 100:
        problems.append("--max-mnist must be 0 (all) or at least 100")
    if problems:
        raise UserError("; ".join(problems))


def _resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def _eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_width": args.eval_base_width} if args.eval_model.startswith("resnet") else {}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline; writes the four files into `args.out` and returns the manifest."""
    _check_args(args)
    device = _resolve_device(args.device)
    progress = args.progress
    seed_everything(args.seed)
    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()

    # MNIST first: a wrong --mnist-root should not leave a new empty output folder behind.
    mnist_train = load_mnist(args.mnist_root, "train", device)
    out = check_writable_dir(args.out if args.out is not None else args.mnist_root)
    images, labels = random_subset(*mnist_train, args.max_mnist, args.seed + _SEED_SPLIT)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vae, vae_loss_value = train_vae(
        images,
        epochs=args.vae_epochs,
        latent_dim=args.vae_latent,
        batch_size=args.vae_batch_size,
        lr=args.vae_lr,
        seed=args.seed + _SEED_VAE,
        progress=progress,
    )
    timings["vae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ensemble = build_ensemble(
        images,
        labels,
        size=args.ensemble_size,
        model_name=args.classifier_model,
        epochs=args.classifier_epochs,
        batch_size=args.classifier_batch_size,
        lr=args.classifier_lr,
        density_quantile=args.density_quantile,
        seed=args.seed + _SEED_ENSEMBLE,
        progress=progress,
    )
    timings["ensemble"] = time.perf_counter() - t0

    # Disjoint source digits: the first half of the (already shuffled) subset feeds the training samples,
    # the second half the test samples.
    t0 = time.perf_counter()
    with torch.no_grad():
        codes = torch.cat([vae.encode(chunk)[0] for chunk in images.split(4096)])
    half = len(images) // 2
    cand_gen = torch.Generator().manual_seed(args.seed + _SEED_CANDIDATES)
    split_samples, split_probs, split_stats = [], [], {}
    for name, part, target in (("train", slice(0, half), args.train), ("test", slice(half, None), args.test)):
        samples, probs, stats = generate_split(
            vae,
            ensemble,
            codes[part],
            labels[part].cpu(),
            target,
            generator=cand_gen,
            min_entropy=args.min_entropy,
            max_mi=args.max_mi,
            triple_fraction=args.triple_fraction,
            concentration=args.mix_concentration,
            candidate_batch=args.candidate_batch,
            max_candidates=args.max_candidates_per_sample * target,
            name=name,
            progress=progress,
        )
        split_samples.append(samples)
        split_probs.append(probs)
        split_stats[name] = stats
    samples = torch.cat(split_samples).to(torch.float32).clamp_(0.0, 1.0).contiguous()
    probs = torch.cat(split_probs)
    multi_labels = draw_labels(
        probs, args.labels_per_sample, torch.Generator().manual_seed(args.seed + _SEED_LABELS)
    )
    timings["generation"] = time.perf_counter() - t0

    atomic_torch_save(samples, out / SAMPLES_FILE)
    atomic_torch_save(multi_labels, out / LABELS_FILE)
    atomic_write_bytes(out / GRID_FILE, render_grid(samples, multi_labels, args.grid_columns))

    manifest: dict[str, Any] = {
        "description": "Ambiguous-MNIST regenerated by this project (data/ambiguous_mnist.py), not the "
        "released set: VAE latent mixtures of 2-3 MNIST digits of different classes, kept when an "
        "ensemble finds them ambiguous (high entropy), agreed on (low mutual information) and "
        "near the data (feature density); labels drawn from the ensemble's mean softmax",
        "files": {
            SAMPLES_FILE: f"float32 [{len(samples)}, 1, 28, 28] in [0, 1]; train samples first, then test",
            LABELS_FILE: f"int64 [{len(samples)}, {args.labels_per_sample}]",
        },
        "seed": args.seed,
        "train_samples": args.train,
        "test_samples": args.test,
        "labels_per_sample": args.labels_per_sample,
        "train_pairs": args.train * args.labels_per_sample,
        "settings": _settings(args),
        "device": str(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "vae_final_neg_elbo": round(vae_loss_value, 3),
        "log_density_threshold": ensemble.log_density_threshold,
        "candidates": split_stats,
        "label_entropy": {
            "all": label_entropy_summary(probs, multi_labels),
            "train": label_entropy_summary(probs[: args.train], multi_labels[: args.train]),
            "test": label_entropy_summary(probs[args.train :], multi_labels[args.train :]),
        },
        "majority_class_counts": torch.bincount(
            F.one_hot(multi_labels, NUM_CLASSES).sum(dim=1).argmax(dim=1), minlength=NUM_CLASSES
        ).tolist(),
    }
    if args.evaluate:
        t0 = time.perf_counter()
        manifest["quality"] = evaluate_quality(
            samples[args.train :].to(device),
            random_subset(*mnist_train, args.max_mnist, args.seed + _SEED_EVAL),
            load_mnist(args.mnist_root, "test", device),
            model_name=args.eval_model,
            epochs=args.eval_epochs,
            seed=args.seed + _SEED_EVAL,
            progress=progress,
            **_eval_kwargs(args),
        )
        timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    manifest["time_s"] = {k: round(v, 1) for k, v in timings.items()}
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def evaluate_existing(args: argparse.Namespace) -> dict[str, Any]:
    """`--evaluate-only`: the independent check on files already in `--out` (ours or the released ones)."""
    device = _resolve_device(args.device)
    out = args.out if args.out is not None else args.mnist_root
    paths = [out / SAMPLES_FILE, out / LABELS_FILE]
    if not all(p.is_file() for p in paths):
        raise UserError(f"expected {SAMPLES_FILE} and {LABELS_FILE} in '{out}'; generate them first")
    samples = torch.load(paths[0], map_location="cpu", weights_only=True)
    labels = torch.load(paths[1], map_location="cpu", weights_only=True)
    manifest_path = out / MANIFEST_FILE
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    first_test = manifest.get("train_samples", AMNIST_TRAIN_PAIRS // labels.shape[1])
    seed_everything(args.seed)
    quality = evaluate_quality(
        samples[first_test:].to(device=device, dtype=torch.float32),
        random_subset(*load_mnist(args.mnist_root, "train", device), args.max_mnist, args.seed + _SEED_EVAL),
        load_mnist(args.mnist_root, "test", device),
        model_name=args.eval_model,
        epochs=args.eval_epochs,
        seed=args.seed + _SEED_EVAL,
        progress=args.progress,
        **_eval_kwargs(args),
    )
    quality["label_entropy_test"] = label_entropy_summary(
        F.one_hot(labels[first_test:], NUM_CLASSES).double().mean(dim=1), labels[first_test:]
    )["empirical"]
    if manifest:
        manifest["quality"] = quality
        atomic_write_json(manifest_path, manifest)
    return quality


@exit_on_user_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s", json.dumps(_settings(args), sort_keys=True))
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        result = evaluate_existing(args) if args.evaluate_only else generate(args)
    finally:
        torch.set_num_threads(threads)
    log.info("%s", json.dumps({k: result[k] for k in ("quality", "time_s", "candidates") if k in result}))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))
