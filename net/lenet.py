"""LeNet-5 (LeCun et al. 1998) as in the DDU code: the small baseline without inductive biases for
feature-space distances (no residual connections, no spectral normalisation). Features: the 84 units
after the second fully connected layer (ReLU). `in_channels` and `image_size` (a square input's side, at least
16) override the MNIST (1x28x28) or CIFAR (3x32x32) input shape."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.layers import DDUNetwork


class LeNet(DDUNetwork):
    def __init__(
        self,
        num_classes: int = 10,
        *,
        mnist: bool = True,
        in_channels: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        default_channels, default_size = (1, 28) if mnist else (3, 32)
        in_channels, size = in_channels or default_channels, image_size or default_size
        side = ((size - 4) // 2 - 4) // 2  # after conv 5, pool 2, conv 5, pool 2: 4 for 28, 5 for 32
        if side < 1:
            raise ValueError(f"LeNet needs inputs of at least 16 pixels, got {size}")
        flat = 16 * side * side
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.num_features, self.num_classes = 84, num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        out = F.relu(self.fc1(out.flatten(1)))
        return F.relu(self.fc2(out))

    def get_classifier(self) -> nn.Module:
        return self.fc3
