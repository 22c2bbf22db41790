"""VGG-16 with BatchNorm (Simonyan & Zisserman 2015) in the CIFAR form DDU uses: 13 3x3 convolutions
(no bias, each followed by BatchNorm and the activation), five 2x2 max-pools, and one linear classifier on
the 512 pooled features. With `spectral_normalization` every convolution is softly normalised; `mod` switches
to leaky ReLUs (VGG has no residual connections, so it cannot gain the sensitivity `mod` gives ResNets,
which is the point of the paper's comparison).

MNIST (`mnist=True`, 1x28x28): four pools already reduce 28 to 1 (28, 14, 7, 3, 1), so the fifth pool is
left out and the feature map is 512x1x1, as for CIFAR.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from net.layers import LEAKY_RELU_SLOPE, DDUNetwork
from net.spectral_norm import conv_factory

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(DDUNetwork):
    def __init__(
        self,
        layout=VGG16_LAYOUT,
        num_classes: int = 10,
        *,
        width_divisor: int = 1,
        spectral_normalization: bool = False,
        mod: bool = False,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        mnist: bool = False,
    ):
        super().__init__()
        conv = conv_factory(spectral_normalization, coeff, n_power_iterations)
        in_channels, size = (1, 28) if mnist else (3, 32)
        layers: list[nn.Module] = []
        for item in layout:
            if item == "M":
                if size == 1:  # MNIST: nothing left to pool
                    continue
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
                continue
            width = max(1, item // width_divisor)
            layers += [
                conv(size, in_channels, width, 3, 1),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True) if mod else nn.ReLU(inplace=True),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.num_features, self.num_classes = in_channels * size * size, num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.classifier


def vgg16(num_classes: int = 10, **kwargs) -> VGG:
    return VGG(VGG16_LAYOUT, num_classes, **kwargs)
