"""Temperature scaling (Guo et al. 2017) by the DDU code's grid search.

The DDU code tries `T = 0.1, 0.2, ..., 10.0` on held-out logits and keeps the first `T` with the lowest
NLL of `softmax(logits / T)`. The grid is built from integers (`k / 10`) instead of repeatedly adding
0.1, so every value is the float nearest to its decimal and the chosen `T` prints as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics._checks import check_labels, check_matrix


def temperature_grid() -> Tensor:
    """The 100 temperatures `0.1, 0.2, ..., 10.0` searched by the DDU code, `(100,)` float64 on the CPU."""
    return torch.arange(1, 101, dtype=torch.float64) / 10


def temperature_nll(logits: Tensor, labels: Tensor, grid: Tensor | None = None) -> Tensor:
    """NLL `-1/N sum_i log softmax(logits_i / T)[y_i]` for every `T` in `grid` -> `(G,)` float64.

    Args:
        logits: `(N, C)` held-out logits.
        labels: `(N,)` integer labels.
        grid: `(G,)` positive temperatures; `temperature_grid()` when None.
    """
    check_matrix(logits, "logits")
    check_labels(labels, logits.shape[0], logits.shape[1])
    grid = temperature_grid() if grid is None else grid
    if grid.dim() != 1 or grid.shape[0] == 0 or not bool((grid > 0).all()):
        raise ValueError(f"grid must be a non-empty (G,) tensor of positive temperatures, got {grid}")
    logits64 = logits.double()
    labels = labels.to(logits.device).long()
    # One temperature at a time keeps memory at one (N, C) copy, whatever the grid size.
    return torch.stack([F.cross_entropy(logits64 / float(t), labels) for t in grid.tolist()])


def fit_temperature(logits: Tensor, labels: Tensor, grid: Tensor | None = None) -> float:
    """Temperature `T` on `grid` minimising the NLL of `logits / T` (first minimum on ties, as DDU).

    Args:
        logits: `(N, C)` held-out (validation) logits.
        labels: `(N,)` integer labels.
        grid: `(G,)` candidate temperatures in the order they are tried; `temperature_grid()` when None.

    Returns:
        The chosen temperature as a Python float.
    """
    grid = temperature_grid() if grid is None else grid
    nll = temperature_nll(logits, labels, grid).cpu()
    if not bool(torch.isfinite(nll).all()):
        raise ValueError("the NLL is not finite for some temperature; the logits contain NaN or infinity")
    return float(grid[int(torch.argmin(nll.cpu()))])
