"""Stage 2 of the generator: an ensemble of small MNIST classifiers (LeNets from `net` by default, different
seeds) and, per member, DDU's class-conditional Gaussians on its MNIST features.

The ensemble judges candidates (`ensemble_scores`): predictive entropy (aleatoric), mutual information
(the members' disagreement, epistemic) and DDU's feature log-density (how near the data a candidate is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import net
from data.registry import MNIST_MEAN, MNIST_STD
from metrics.ddu import DDUScorer
from metrics.gmm import ClassGaussians
from metrics.uncertainty import ensemble_mutual_information, ensemble_predictive_entropy
from tools.ambiguous_mnist.shared import NUM_CLASSES, fit_epochs


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
    fit_epochs(
        model,
        optimizer,
        images,
        lambda idx: F.cross_entropy(model(normalize(images[idx])), labels[idx]),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        desc=desc,
        loss_name="loss",
        progress=progress,
    )
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `(N, D)` and logits `(N, C)` in float32 of `images` `(N, 1, 28, 28)` in [0, 1], in batches."""
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        z = model.forward_features(normalize(images[start : start + batch_size]))
        features.append(z.float())  # fp32 whatever autocast computed in
        logits.append(model.get_classifier()(z).float())
    return torch.cat(features), torch.cat(logits)


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
