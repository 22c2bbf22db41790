"""Pieces shared by the DDU networks: the activation choice and the average-pool shortcut of `-mod`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LEAKY_RELU_SLOPE = 0.01  # F.leaky_relu's default, as the original uses it


def activation(mod: bool):
    """Leaky ReLU with the paper's modifications (`-mod`), ReLU otherwise (a function, no parameters)."""
    return leaky_relu if mod else F.relu


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_RELU_SLOPE)


class AvgPoolShortcut(nn.Module):
    """The `-mod` shortcut for residual blocks that change shape (DDU paper, Sec. 4 / App. C).

    A strided 1x1 convolution can collapse distinct inputs onto one point, breaking the sensitivity that
    the residual connection is meant to give; average pooling with zero-padded extra channels keeps the
    shortcut an identity on the pooled input. Odd input sizes (7x7 in the MNIST ResNets) are subsampled
    with a 1x1 window, as in the original, so the output size matches the strided convolution branch.
    """

    def __init__(self, stride: int, in_channels: int, out_channels: int):
        super().__init__()
        self.stride, self.in_channels, self.out_channels = stride, in_channels, out_channels

    def extra_repr(self) -> str:
        return f"stride={self.stride}, in_channels={self.in_channels}, out_channels={self.out_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = 1 if x.shape[-1] % 2 else self.stride
        x = F.avg_pool2d(x, window, self.stride)
        missing = self.out_channels - self.in_channels
        if missing > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, missing))
        return x


class DDUNetwork(nn.Module):
    """Base class: `forward(x) = forward_head(forward_features(x))`.

    `forward_features(x)` returns the pooled, flattened penultimate features `(B, num_features)` that DDU
    fits its class-conditional Gaussians to.
    """

    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
