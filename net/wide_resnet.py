"""Wide Residual Network (Zagoruyko & Komodakis 2016) in the pre-activation form DDU uses (after DUQ/DUE).

WRN-28-10 by default: depth 6n+4, widen factor k, stages of 16, 16k, 32k, 64k channels, dropout 0.3 inside
each block, BatchNorm momentum 0.01. With `spectral_normalization` every convolution (including the 1x1
shortcuts) is softly normalised; with `mod` the activations are leaky ReLUs and shape-changing shortcuts are
average pools padded with zero channels (no parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.layers import AvgPoolShortcut, DDUNetwork, activation
from net.spectral_norm import conv_factory, conv_weight


class WideBasic(nn.Module):
    """`x + conv2(drop(act(bn2(conv1(act(bn1(x)))))))`, with a projection/pool shortcut when shapes change."""

    def __init__(self, conv, input_size, in_c, out_c, stride, dropout_rate, mod, batchnorm_momentum):
        super().__init__()
        self.act = activation(mod)
        self.bn1 = nn.BatchNorm2d(in_c, momentum=batchnorm_momentum)
        self.conv1 = conv(input_size, in_c, out_c, 3, stride)
        self.bn2 = nn.BatchNorm2d(out_c, momentum=batchnorm_momentum)
        self.conv2 = conv(math.ceil(input_size / stride), out_c, out_c, 3, 1)
        self.dropout = nn.Dropout(p=dropout_rate) if dropout_rate > 0 else nn.Identity()
        if stride != 1 or in_c != out_c:
            self.shortcut = (
                AvgPoolShortcut(stride, in_c, out_c) if mod else conv(input_size, in_c, out_c, 1, stride)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.bn1(x)))
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNet(DDUNetwork):
    def __init__(
        self,
        num_classes: int = 10,
        *,
        depth: int = 28,
        widen_factor: int = 10,
        dropout_rate: float = 0.3,
        batchnorm_momentum: float = 0.01,
        spectral_normalization: bool = False,
        mod: bool = False,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        mnist: bool = False,
        in_channels: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 (e.g. 10, 16, 28), got {depth}")
        n = (depth - 4) // 6
        # `in_channels` and `image_size` (a square input's side) override the MNIST/CIFAR shapes.
        default_channels, default_size = (1, 28) if mnist else (3, 32)
        in_channels, image_size = in_channels or default_channels, image_size or default_size

        conv = conv_factory(spectral_normalization, coeff, n_power_iterations)

        stages = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        strides = [1, 1, 2, 2]
        sizes = [image_size]
        for s in strides[1:]:
            sizes.append(math.ceil(sizes[-1] / s))  # input size of each stage: 32, 32, 16 (then 8)

        self.conv1 = conv(image_size, in_channels, stages[0], 3, 1)
        layers = []
        for index in range(3):
            blocks, in_c, input_size = [], stages[index], sizes[index]
            for block_stride in [strides[index + 1]] + [1] * (n - 1):
                blocks.append(
                    WideBasic(
                        conv,
                        input_size,
                        in_c,
                        stages[index + 1],
                        block_stride,
                        dropout_rate,
                        mod,
                        batchnorm_momentum,
                    )
                )
                in_c, input_size = stages[index + 1], math.ceil(input_size / block_stride)
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn1 = nn.BatchNorm2d(stages[3], momentum=batchnorm_momentum)
        self.act = activation(mod)
        self.num_features, self.num_classes = stages[3], num_classes
        self.linear = nn.Linear(stages[3], num_classes)

        # The original's initialisation (after Zagoruyko's WRN code): Kaiming normal in fan-out mode for the
        # convolutions and for the classifier too, whose weight so has std sqrt(2 / num_classes) (the gain is
        # sqrt(2) for leaky ReLU as well: kaiming_normal_'s slope argument is 0); zero classifier bias.
        nonlinearity = "leaky_relu" if mod else "relu"
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity=nonlinearity)
                nn.init.zeros_(module.bias)
            elif hasattr(module, "weight_orig") or isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(conv_weight(module), mode="fan_out", nonlinearity=nonlinearity)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.act(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.linear
