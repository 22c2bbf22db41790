"""Device choice and the fast-path settings (bf16 autocast, channels_last).

bf16 autocast is used on a GPU and on a CPU that computes bf16 natively (AVX512-BF16 or AMX: bf16 dot
products in hardware, so oneDNN's bf16 convolutions run about twice as fast as fp32 ones there); elsewhere
the default is fp32, the original's numerics. channels_last (NHWC) is the default on a GPU and with bf16 on
a CPU. For fp32 on a CPU it would pay too (1.1-1.5x for training the networks here, docs/speed.md), but it
is not the default there: in torch 2.14 oneDNN's fp32 weight gradient of a strided 1x1 convolution in
channels_last crashes the process (a segmentation fault or a double free, measured with 2-7 input
channels, as in a plain ResNet below base width 8). `--channels-last` turns it on for a network without
such layers. `--precision` and `--channels-last` override the choice in every script.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch

PRECISIONS = ("bf16", "fp32")
CPU_BF16_ENV = "DDU_CPU_BF16"


def select_device(no_gpu: bool = False, local_rank: int | None = None) -> torch.device:
    """CUDA (this rank's GPU) when available and not disabled, otherwise the CPU."""
    if no_gpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device("cuda")


@functools.cache
def _cpu_reports_bf16() -> bool:
    try:  # private helpers of torch.cpu (present since torch 2.1); a torch without them gets fp32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), or what `DDU_CPU_BF16` says."""
    forced = os.environ.get(CPU_BF16_ENV, "auto").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    return _cpu_reports_bf16()


def fast_path(device: torch.device) -> bool:
    """True where bf16 autocast (and with it channels_last) is the default: CUDA, or a CPU with native bf16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def resolve_precision(
    device: torch.device, precision: str | None = None, channels_last: bool | None = None
) -> tuple[str, bool]:
    """The `(precision, channels_last)` a run uses: what the flags say, defaults for what they leave `None`.

    This is the one place that decides both. precision: 'bf16' on the fast path (`fast_path`), else 'fp32'.
    channels_last: on for CUDA whatever the precision (NHWC convolutions are faster there) and for bf16 on
    a CPU (oneDNN's bf16 kernels gain from NHWC). fp32 on a CPU stays contiguous by default although NHWC
    is faster there too, because oneDNN's fp32 NHWC weight gradient of strided 1x1 convolutions with few
    input channels crashes (module docstring); asked for, the layout changes no formula, only the order in
    which the convolutions sum, so its results agree with contiguous ones to rounding.
    """
    if precision is None:
        precision = "bf16" if fast_path(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use 'bf16' or 'fp32'")
    if channels_last is None:
        channels_last = device.type == "cuda" or precision == "bf16"
    return precision, channels_last


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for benchmark and experiment records."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_reports_native_bf16() -> bool:
    """What PyTorch says of this CPU's bf16 support, whatever `DDU_CPU_BF16` says (for records)."""
    return _cpu_reports_bf16()


def autocast_context(device: torch.device, precision: str):
    """`torch.autocast` in bf16 for precision 'bf16', a no-op context for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; use 'bf16' or 'fp32'")
    return contextlib.nullcontext()
