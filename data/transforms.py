"""Batched image operations: the crop/flip augmentation, normalisation and the OoD shape conversion.

The augmentation works on a whole batch `(B, C, H, W)` at once with per-image parameters drawn
beforehand from an explicit generator, so it runs on any device without per-image Python and gives the
same result as torchvision's PIL path (`RandomCrop(H, padding=pad)` then `RandomHorizontalFlip`) for the
same parameters.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def crop_flip(
    images: torch.Tensor,
    top: torch.Tensor | None,
    left: torch.Tensor | None,
    flip: torch.Tensor | None,
    pad: int,
) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a batch, as one index gather.

    images: `(B, C, H, W)` of any dtype (uint8 here, so the gather moves a quarter of the bytes).
    top, left: `(B,)` int64 offsets in `[0, 2 * pad]` into the zero-padded image, or None for no crop.
    flip: `(B,)` bool, or None for no flip. Returns `(B, C, H, W)`, same dtype.
    Output pixel (r, c) is padded pixel (top + r, left + c), with c mirrored to W - 1 - c when flipped;
    the row/column pair becomes one linear index into the flattened padded image, so a single `gather`
    does the crop and the flip (three times faster on a CPU than gathering rows, then columns).
    """
    if top is None and flip is None:
        return images
    b, c, h, w = images.shape
    device = images.device
    cols = torch.arange(w, device=device).expand(b, w)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    rows = torch.arange(h, device=device).expand(b, h)
    if top is None or left is None:
        pad = 0
    else:
        images = F.pad(images, (pad, pad, pad, pad))
        rows, cols = rows + top[:, None], cols + left[:, None]
    linear = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (B, H, W) into the padded H'W'
    flat = images.reshape(b, c, -1)
    return flat.gather(2, linear.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 1]) `(B, C, H, W)` to normalised float32, with the same operations (and
    so the same rounding) as torchvision's `ToTensor()` followed by `Normalize(mean, std)`.

    mean, std: `(1, C, 1, 1)` float32 on the images' device.
    """
    x = images.to(torch.float32, copy=True)  # a fresh tensor, so the in-place ops below touch no input
    if images.dtype == torch.uint8:
        x.div_(255)
    return x.sub_(mean).div_(std)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """`(N, 3, H, W)` to `(N, 1, H, W)` with ITU-R 601 luma, bit-exact with PIL's `convert("L")` for uint8."""
    if images.dtype == torch.uint8:
        r, g, b = images.to(torch.int32).unbind(1)
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(N, C, H, W)` to `(N, C, *size)` with PIL's bilinear filter, channel by channel.

    PIL, because the original pipeline resizes PIL images (torchvision's `Resize`); uint8 images go
    through mode "L" and float images through mode "F", so no precision is lost for float data.
    """
    arr = images.cpu().numpy()
    n, c = arr.shape[:2]
    out = np.empty((n, c, size[0], size[1]), dtype=arr.dtype)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(arr[i, ch])
            out[i, ch] = np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(out)


def to_shape(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Bring out-of-distribution images `(N, C, H, W)` to the in-distribution `shape` `(C', H', W')`.

    Grayscale becomes RGB by repeating the channel (as PIL's `convert("RGB")`), RGB becomes grayscale by
    luma; the size changes by bilinear resizing. Channels are reduced before and expanded after the
    resize, so the resize handles as few channels as possible. The dtype is kept.
    """
    c, h, w = shape
    if images.shape[1] == c and tuple(images.shape[2:]) == (h, w):
        return images
    if images.shape[1] not in (1, 3) or c not in (1, 3):
        raise ValueError(f"cannot convert {images.shape[1]}-channel images to {c} channels")
    if images.shape[1] == 3 and c == 1:
        images = rgb_to_gray(images)
    if tuple(images.shape[2:]) != (h, w):
        images = resize(images, (h, w))
    if images.shape[1] == 1 and c == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return images
