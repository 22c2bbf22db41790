"""The two-moons toy of DDU's argument (Mukhoti et al. 2021, Sec. 4): why feature density needs a
sensitive and smooth feature extractor.

A small residual MLP (`net.ResidualMLP`: `z = h_L(...h_1(W_0 x))`, `h_l(z) = z + relu(W_l z)`) is trained
on scikit-learn's two moons. With soft spectral normalisation each residual block is bi-Lipschitz, so
points far from the data keep far-away features and the GDA density fitted on the training features (as
DDU) is low there. Softmax entropy is low far from the data with or without it: the classifier extrapolates
confidently, which is why DDU does not use it for epistemic uncertainty.

    model = net.ResidualMLP(spectral_normalization=True)
    train_toy(model, x, y)                       # full-batch Adam, a second or two on a CPU core
    maps = plane_maps(model, x, y, grid)         # {"entropy": (G,), "log_density": (G,)}

Everything is float32 on the CPU; `x` is `(N, 2)`, `y` is `(N,)` int64.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics


def two_moons(n_samples: int = 400, noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's `make_moons`: points `(N, 2)` float32 and labels `(N,)` int64."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


@contextlib.contextmanager
def _one_thread():
    """The toy's matrices are tiny: one thread is several times faster than many, far more so on a busy
    machine, where waiting for the other threads dominates. The caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_toy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Full-batch Adam on the cross-entropy; returns the loss per step. The model ends in eval mode."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    with _one_thread():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return losses


def plane_grid(x: torch.Tensor, margin: float = 2.5, resolution: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A `(resolution, resolution)` mesh over the bounding box of `x` widened by `margin` on every side."""
    low = x.min(0).values.numpy() - margin
    high = x.max(0).values.numpy() + margin
    return np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))


@torch.no_grad()
def plane_maps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: np.ndarray
) -> dict[str, np.ndarray]:
    """Softmax entropy and DDU feature log-density at `points` `(G, 2)`, the GDA fitted on the features of
    the training set `(x, y)`; each map is `(G,)` float64."""
    model.eval()
    with _one_thread():
        scorer = metrics.DDUScorer.fit_features(model.forward_features(x), y, int(y.max()) + 1)
        z = model.forward_features(torch.as_tensor(points, dtype=torch.float32))
        return {
            "entropy": metrics.softmax_entropy(model.forward_head(z)).numpy(),
            "log_density": scorer.predict_features(z)["log_density"].numpy(),
        }


def display_floor(train_log_density: np.ndarray) -> float:
    """Lowest log density worth drawing: one training range below the lowest training point.

    Far from the data the log density falls to about -1e10; a colour scale down there shows only black
    around one yellow blob. Clipped at this floor, the map shows the density's shape near the data.
    """
    low, high = float(np.min(train_log_density)), float(np.max(train_log_density))
    return low - (high - low)


def distance_to(points: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """Euclidean distance `(G,)` from each of `points` `(G, 2)` to its nearest training point in `x`."""
    return torch.cdist(torch.as_tensor(points, dtype=torch.float32), x).min(1).values.numpy()
