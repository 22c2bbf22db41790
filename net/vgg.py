"""VGG-16 with BatchNorm (Simonyan & Zisserman 2015) in the forms DDU uses: 13 3x3 convolutions (no bias,
each followed by BatchNorm and the activation), max-pools that bring the map to 512x1x1, and one linear
classifier on those 512 features. With `spectral_normalization` every convolution is softly normalised (its
power iteration runs on the layer's actual input shape); `mod` switches to leaky ReLUs (VGG has no residual
connections, so it cannot gain the sensitivity `mod` gives ResNets, which is the point of the paper's
comparison).

CIFAR (3x32x32): the standard layout, five 2x2 pools after the blocks of 2, 2, 3, 3 and 3 convolutions
(32, 16, 8, 4, 2, 1).

MNIST (`mnist=True`, 1x28x28): DDU's own layout leaves out the *first* pool, so the first two blocks run
together at full resolution: 4 convolutions (64, 64, 128, 128 channels) at 28x28, 3 at 14x14, 3 at 7x7 and
3 at 3x3, then the last pool to 1x1 (floor division: 28, 14, 7, 3, 1). The original then applies a 1x1
average pool, an identity left out here. Channel widths, and so the parameter count, are those of the CIFAR
network; the compute is not: 845M multiply-adds per 28x28 image against 313M per 32x32 one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from net.layers import LEAKY_RELU_SLOPE, DDUNetwork
from net.spectral_norm import conv_factory

MAX_POOL = "M"
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The original's MNIST layout: the CIFAR one without its first pool.
VGG16_MNIST_LAYOUT = (64, 64, 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(DDUNetwork):
    """`features` is one `nn.Sequential` of (conv, BatchNorm, activation) triples and max-pools, in the order
    of `layout`, so the state-dict keys (`features.<index>.*`, `classifier.*`) are the original's."""

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
        in_channels: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        conv = conv_factory(spectral_normalization, coeff, n_power_iterations)
        default_channels, default_size = (1, 28) if mnist else (3, 32)
        in_channels, size = in_channels or default_channels, image_size or default_size
        if size >> sum(item == MAX_POOL for item in layout) < 1:
            raise ValueError(
                f"VGG-16 needs inputs of at least {2 ** sum(i == MAX_POOL for i in layout)} pixels, got {size}"
            )
        layers: list[nn.Module] = []
        for item in layout:
            if item == MAX_POOL:
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


def vgg16(num_classes: int = 10, *, mnist: bool = False, **kwargs) -> VGG:
    """VGG-16 in DDU's CIFAR layout, or in its MNIST layout (first pool left out) with `mnist=True`; other
    square inputs through `in_channels` and `image_size` (the MNIST layout below 32 pixels)."""
    size = kwargs.get("image_size")
    small = mnist if size is None else size < 32
    return VGG(VGG16_MNIST_LAYOUT if small else VGG16_LAYOUT, num_classes, mnist=mnist, **kwargs)
