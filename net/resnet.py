"""ResNet-18 and ResNet-50 (He et al. 2016) in the CIFAR form DDU uses: a 3x3 stem without max-pool, four
stages, 4x4 average pooling. MNIST variants (`mnist=True`) take 1x28x28 inputs; `in_channels` and
`image_size` (the side of a square input) override both, for image folders of other shapes, and the final
pool then covers the whole last stage (4x4 for 32x32 and 28x28 inputs, as the original).

With `spectral_normalization` every convolution is softly normalised (3x3 ones on their input shape, 1x1
ones as matrices); with `mod` the activations are leaky ReLUs and shape-changing shortcuts are average pools
padded with zero channels instead of strided 1x1 convolutions with BatchNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.layers import AvgPoolShortcut, DDUNetwork, activation
from net.spectral_norm import conv_factory


def _shortcut(conv, input_size, in_planes, out_planes, stride, mod) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    if mod:
        return nn.Sequential(AvgPoolShortcut(stride, in_planes, out_planes))
    return nn.Sequential(conv(input_size, in_planes, out_planes, 1, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, conv, input_size, in_planes, planes, stride, mod):
        super().__init__()
        self.act = activation(mod)
        self.conv1 = conv(input_size, in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(math.ceil(input_size / stride), planes, planes, 3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(conv, input_size, in_planes, planes * self.expansion, stride, mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, conv, input_size, in_planes, planes, stride, mod):
        super().__init__()
        self.act = activation(mod)
        self.conv1 = conv(input_size, in_planes, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(input_size, planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(math.ceil(input_size / stride), planes, planes * self.expansion, 1, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(conv, input_size, in_planes, planes * self.expansion, stride, mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class ResNet(DDUNetwork):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        *,
        base_width: int = 64,
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
        in_channels, image_size = in_channels or default_channels, image_size or default_size
        self.act = activation(mod)
        self.conv1 = conv(image_size, in_channels, base_width, 3, 1)
        self.bn1 = nn.BatchNorm2d(base_width)
        in_planes, input_size, stages = base_width, image_size, []
        for stage, (blocks, first_stride) in enumerate(zip(num_blocks, (1, 2, 2, 2))):
            planes, layers = base_width * 2**stage, []
            for stride in [first_stride] + [1] * (blocks - 1):
                layers.append(block(conv, input_size, in_planes, planes, stride, mod))
                in_planes, input_size = planes * block.expansion, math.ceil(input_size / stride)
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool_size = input_size  # side of the last stage's output
        self.num_features, self.num_classes = in_planes, num_classes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # The original pools with a fixed 4x4 window: the last stage is 4x4 for both 32x32 and 28x28 inputs.
        return F.avg_pool2d(out, self.pool_size).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.fc


def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, **kwargs)


def resnet50(num_classes: int = 10, **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, **kwargs)
