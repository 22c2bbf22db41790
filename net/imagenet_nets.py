"""ImageNet networks in torchvision's layouts: ResNet-50 and Wide-ResNet-50-2 (He et al. 2016, v1.5 with the
stride on the 3x3 convolution; Zagoruyko & Komodakis 2016 for the doubled bottleneck width) and VGG-16 with
batch norm (Simonyan & Zisserman 2015), as the CVPR 2023 version of the DDU paper trains them on ImageNet.

The module names, and so the state-dict keys, are those of `torchvision.models.resnet50`, `wide_resnet50_2`
and `vgg16_bn`: torchvision's own checkpoints load strictly into the networks built without `-sn`/`-mod`,
which gives the paper's "no SN" rows post hoc. With `spectral_normalization` every convolution is softly
normalised (`net.spectral_norm`; 3x3 and 7x7 ones on their actual input shape, which is why the networks
take `image_size`, the side of the square crop they are trained on, 224 by default), and so are VGG's two
hidden linear layers, which are part of its feature extractor; the classifier never is. With `mod` the
activations are leaky ReLUs and the ResNets' projection shortcuts (`downsample`) are average pools padded
with zero channels (parameter-free, so they leave `downsample.*` out of the state dict).

`forward_features` gives the pooled 2048 features of the ResNets (after the global average pool) and the
4096 features of VGG-16's second hidden linear layer (after its ReLU; dropout is off in eval mode), the
input of the last linear layer in both: the penultimate features DDU fits its Gaussians to.

The size options (`base_width` for the ResNets, `width_divisor` for VGG) shrink every layer by one factor for
tests and CPU smoke runs; the defaults are the paper's (torchvision's) sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from net.layers import LEAKY_RELU_SLOPE, AvgPoolShortcut, DDUNetwork, activation
from net.spectral_norm import SpectralNormLinear, conv_factory, conv_weight, make_conv
from utils.errors import UserError

IMAGENET_IMAGE_SIZE = 224


def _no_mnist(mnist: bool, name: str) -> None:
    if mnist:
        raise UserError(
            f"{name} takes 3-channel ImageNet-sized images, not 1x28x28 or greyscale ones; use resnet50 or "
            "vgg16 for those"
        )


def _check_image_size(image_size: int) -> None:
    # Five halvings (stem, max-pool or pools, three strided stages) must leave at least one pixel.
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 for the ImageNet networks, got {image_size}")


def _halve(size: int) -> int:
    """Output side of a stride-2 layer with 'same' padding (7x7/3, 3x3/1 convolutions, 3x3/1 max-pool)."""
    return math.ceil(size / 2)


class Bottleneck(nn.Module):
    """torchvision's `Bottleneck` (v1.5): 1x1 reduce, 3x3 with the stride, 1x1 expand; `downsample` is a
    strided 1x1 convolution with batch norm, or with `mod` the average-pool shortcut."""

    expansion = 4

    def __init__(self, conv, input_size, in_planes, planes, width, stride, mod):
        super().__init__()
        self.act = activation(mod)
        out_planes = planes * self.expansion
        self.conv1 = conv(input_size, in_planes, width, 1, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(input_size, width, width, 3, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(math.ceil(input_size / stride), width, out_planes, 1, 1)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = (
                AvgPoolShortcut(stride, in_planes, out_planes)
                if mod
                else nn.Sequential(
                    conv(input_size, in_planes, out_planes, 1, stride), nn.BatchNorm2d(out_planes)
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.act(out + identity)


class ImageNetResNet(DDUNetwork):
    """ResNet with the ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool), four bottleneck stages
    and a global average pool. `width_factor` multiplies the bottleneck width (2 for Wide-ResNet-50-2)."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        *,
        width_factor: int = 1,
        base_width: int = 64,
        image_size: int = IMAGENET_IMAGE_SIZE,
        spectral_normalization: bool = False,
        mod: bool = False,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        mnist: bool = False,
        in_channels: int | None = None,
        _name: str = "imagenet_resnet50",
    ):
        super().__init__()
        _no_mnist(mnist or in_channels not in (None, 3), _name)
        _check_image_size(image_size)
        conv = conv_factory(spectral_normalization, coeff, n_power_iterations)
        self.act = activation(mod)
        self.conv1 = conv(image_size, 3, base_width, 7, 2)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        size = _halve(_halve(image_size))
        in_planes, stages = base_width, []
        for stage, (blocks, first_stride) in enumerate(zip(num_blocks, (1, 2, 2, 2))):
            planes = base_width * 2**stage
            layers = []
            for stride in [first_stride] + [1] * (blocks - 1):
                layers.append(Bottleneck(conv, size, in_planes, planes, planes * width_factor, stride, mod))
                in_planes, size = planes * Bottleneck.expansion, math.ceil(size / stride)
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features, self.num_classes = in_planes, num_classes
        self.fc = nn.Linear(in_planes, num_classes)

        # torchvision's initialisation: Kaiming normal (fan-out) convolutions, unit/zero batch norm; the
        # classifier keeps nn.Linear's default.
        nonlinearity = "leaky_relu" if mod else "relu"
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d) or hasattr(module, "weight_orig"):
                nn.init.kaiming_normal_(conv_weight(module), mode="fan_out", nonlinearity=nonlinearity)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.act(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.fc


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class ImageNetVGG(DDUNetwork):
    """VGG-16 with batch norm in torchvision's `vgg16_bn` layout: `features` holds (conv with bias,
    BatchNorm, activation) triples and max-pools, `avgpool` brings the map to 7x7 and `classifier` is
    Linear-act-Dropout-Linear-act-Dropout-Linear (indices 0 to 6)."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width_divisor: int = 1,
        image_size: int = IMAGENET_IMAGE_SIZE,
        dropout: float = 0.5,
        spectral_normalization: bool = False,
        mod: bool = False,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        mnist: bool = False,
        in_channels: int | None = None,
    ):
        super().__init__()
        _no_mnist(mnist or in_channels not in (None, 3), "imagenet_vgg16_bn")
        _check_image_size(image_size)
        layers: list[nn.Module] = []
        in_channels, size = 3, image_size
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
                continue
            width = max(1, item // width_divisor)
            layers += [
                make_conv(
                    in_channels,
                    width,
                    3,
                    input_size=size,
                    spectral_normalization=spectral_normalization,
                    coeff=coeff,
                    n_power_iterations=n_power_iterations,
                    bias=True,
                ),
                nn.BatchNorm2d(width),
                _activation_module(mod),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = max(1, 4096 // width_divisor)

        def linear(n_in: int, n_out: int) -> nn.Module:
            if spectral_normalization:
                return SpectralNormLinear(n_in, n_out, coeff=coeff, n_power_iterations=n_power_iterations)
            return nn.Linear(n_in, n_out)

        self.classifier = nn.Sequential(
            linear(in_channels * 7 * 7, hidden),
            _activation_module(mod),
            nn.Dropout(p=dropout),
            linear(hidden, hidden),
            _activation_module(mod),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_features, self.num_classes = hidden, num_classes

        # torchvision's initialisation: Kaiming normal (fan-out) convolutions with zero bias, unit/zero batch
        # norm, linear layers N(0, 0.01) with zero bias.
        nonlinearity = "leaky_relu" if mod else "relu"
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Linear, SpectralNormLinear)):
                nn.init.normal_(conv_weight(module), 0, 0.01)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d) or hasattr(module, "weight_orig"):
                nn.init.kaiming_normal_(conv_weight(module), mode="fan_out", nonlinearity=nonlinearity)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(x)).flatten(1)
        return self.classifier[:6](out)

    def get_classifier(self) -> nn.Module:
        return self.classifier[6]


def _activation_module(mod: bool) -> nn.Module:
    return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True) if mod else nn.ReLU(inplace=True)


def imagenet_resnet50(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """torchvision's `resnet50` layout (25.6M parameters at 1,000 classes)."""
    return ImageNetResNet((3, 4, 6, 3), num_classes, width_factor=1, _name="imagenet_resnet50", **kwargs)


def imagenet_wide_resnet50_2(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """torchvision's `wide_resnet50_2` layout: ResNet-50 with bottlenecks twice as wide (68.9M parameters)."""
    return ImageNetResNet(
        (3, 4, 6, 3), num_classes, width_factor=2, _name="imagenet_wide_resnet50_2", **kwargs
    )


def imagenet_vgg16_bn(num_classes: int = 1000, **kwargs) -> ImageNetVGG:
    """torchvision's `vgg16_bn` layout (138.4M parameters)."""
    return ImageNetVGG(num_classes, **kwargs)
