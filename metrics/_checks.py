"""Shape checks shared by the metric functions.

A wrong shape is a programming error, so these raise `ValueError` with the shapes seen; they never touch
the values beyond what the check needs, and never move tensors between devices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_matrix(x: Tensor, name: str) -> None:
    """`x` must be a non-empty `(N, C)` tensor."""
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, C) tensor, got shape {tuple(x.shape)}")


def check_labels(labels: Tensor, num_rows: int, num_classes: int | None = None) -> None:
    """`labels` must be an integer `(N,)` tensor matching `num_rows`, with values in `[0, num_classes)`."""
    if labels.dim() != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"labels must have shape ({num_rows},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if num_classes is not None and num_rows > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]")


def check_scores(scores: Tensor, name: str) -> None:
    """`scores` must be a non-empty `(N,)` tensor without NaN (infinities rank fine)."""
    if scores.dim() != 1 or scores.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N,) tensor, got shape {tuple(scores.shape)}")
    if scores.isnan().any():
        raise ValueError(f"{name} contains NaN; a score must be a number for every sample")
