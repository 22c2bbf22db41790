"""Stage 3 of the generator: candidates decoded from latent mixtures of two or three MNIST digits of
different classes, kept when the ensemble finds them ambiguous, agreed on and near the data, and their
labels drawn from the ensemble's mean softmax."""

from __future__ import annotations

from typing import Any

import torch

from tools.ambiguous_mnist.classifiers import Ensemble, ensemble_scores
from tools.ambiguous_mnist.vae import ConvVAE
from utils.errors import UserError
from utils.progress import progress_bar


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
    # norm brings stroke contrast closer to MNIST's (mean of the 50 brightest pixels of 2,000 two-digit
    # midpoints 0.85 -> 0.90, MNIST 0.97; the default VAE on all 60,000 digits, seed 1, 2026-12-01).
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
    training_steps: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Generate candidates (`make_candidates`) in rounds until `target` pass `select_ambiguous`.

    Candidates are i.i.d., so keeping the first `target` that pass is a uniform random choice among those
    that pass. Returns samples `(target, 1, 28, 28)` and mean probabilities `(target, C)` on the CPU, and
    counts for the manifest. Raises `UserError` when `max_candidates` tries are not enough; that message
    names `training_steps`, the optimiser steps of the VAE and of each classifier, when given: too few
    steps (not too few epochs) is the usual cause.
    """
    kept_images, kept_probs, kept = [], [], 0
    passing = {"entropy": 0, "mutual_information": 0, "log_density": 0, "all": 0}
    generated, budget = 0, max(max_candidates, candidate_batch)
    bar = progress_bar(total=target, desc=f"{name} samples", unit="sample", enabled=progress)
    while kept < target:
        if generated >= budget:
            bar.close()
            rates = ", ".join(f"{k} {v / generated:.1%}" for k, v in passing.items() if k != "all")
            steps = ""
            if training_steps is not None:
                steps = (
                    f"; the VAE trained for {training_steps[0]} optimiser steps and each classifier for "
                    f"{training_steps[1]} (epochs x digits / batch size), and a few hundred each are needed "
                    "for candidates that look like digits rather than grey fog"
                )
            raise UserError(
                f"only {kept} of {target} {name} candidates passed the filters after {generated} tries "
                f"(each filter alone passed: {rates}{steps}); train longer (--vae-epochs, "
                "--classifier-epochs, or smaller --vae-batch-size, --classifier-batch-size) or relax "
                "--min-entropy, --max-mi or --density-quantile"
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
