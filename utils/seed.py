"""Seeding. One call seeds every global generator; data order and splits use explicit generators."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (bit-identical reruns on CPU; slower on a GPU)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """`set_deterministic(True)` for the block when `enabled`, and the switches as they were afterwards, so
    a run called in-process (tests, the demo, the experiments) leaves no global state behind: left on, a
    later `torch.compile`d step crashed with AVX2 kernels forced."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    set_deterministic(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
