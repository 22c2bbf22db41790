"""Device choice and the fast-path settings (bf16 autocast, channels_last) used on a GPU."""

from __future__ import annotations

import contextlib

import torch


def select_device(no_gpu: bool = False, local_rank: int | None = None) -> torch.device:
    """CUDA (this rank's GPU) when available and not disabled, otherwise the CPU."""
    if no_gpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device("cuda")


def autocast_context(device: torch.device, precision: str):
    """`torch.autocast` in bf16 for precision 'bf16', a no-op context for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; use 'bf16' or 'fp32'")
    return contextlib.nullcontext()
