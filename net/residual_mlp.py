"""A residual MLP on 2-d inputs: the network of DDU's two-moons argument (Mukhoti et al. 2021, Sec. 4).

`z = h_L(...h_1(W_0 x))` with `h_l(z) = z + relu(W_l z)`. With soft spectral normalisation every `W` has
Lipschitz constant at most `coeff < 1`, so each residual block is bi-Lipschitz,
`(1 - coeff) |a - b| <= |h(a) - h(b)| <= (1 + coeff) |a - b|`: inputs far apart keep features far apart,
which is what a feature density needs (see `tools.two_moons` for the experiment). Not in the model registry,
which holds the image networks the scripts train.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.layers import DDUNetwork
from net.spectral_norm import SpectralNormLinear


class ResidualMLP(DDUNetwork):
    """`width`-wide residual MLP on `(N, 2)` inputs; `forward_features` gives the `(N, width)` features the
    GDA is fitted on, `forward_head` the `(N, num_classes)` logits."""

    def __init__(
        self,
        width: int = 64,
        depth: int = 4,
        num_classes: int = 2,
        *,
        spectral_normalization: bool = False,
        coeff: float = 0.95,
    ):
        super().__init__()

        def linear(n_in: int, n_out: int) -> nn.Module:
            if spectral_normalization:
                return SpectralNormLinear(n_in, n_out, coeff=coeff, n_power_iterations=1)
            return nn.Linear(n_in, n_out)

        self.num_features, self.num_classes = width, num_classes
        self.stem = linear(2, width)
        self.blocks = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        for block in self.blocks:
            z = z + F.relu(block(z))
        return z

    def get_classifier(self) -> nn.Module:
        return self.head
