"""The network registry: the single source of truth for model names and their constructors."""

from __future__ import annotations

import logging
from typing import Callable

import torch.nn as nn

from net.layers import DDUNetwork
from net.lenet import LeNet
from net.resnet import resnet18, resnet50
from net.vgg import vgg16
from net.wide_resnet import WideResNet
from utils.errors import UserError

log = logging.getLogger(__name__)


def _wide_resnet(num_classes, **kwargs) -> DDUNetwork:
    return WideResNet(num_classes, **kwargs)


def _lenet(
    num_classes, *, spectral_normalization, mod, coeff, n_power_iterations, mnist, **kwargs
) -> DDUNetwork:
    if spectral_normalization or mod:
        log.warning("LeNet has no spectral normalisation or -mod variant (as in the original); ignoring them")
    return LeNet(num_classes, mnist=mnist, **kwargs)


_MODELS: dict[str, Callable[..., DDUNetwork]] = {
    "wide_resnet": _wide_resnet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "lenet": _lenet,
}


def list_models() -> list[str]:
    """Registered model names."""
    return list(_MODELS)


def create_model(
    name: str,
    *,
    num_classes: int,
    spectral_normalization: bool = False,
    mod: bool = False,
    coeff: float = 3.0,
    n_power_iterations: int = 1,
    mnist: bool = False,
    **arch_kwargs,
) -> DDUNetwork:
    """Build a registered network.

    `mnist=True` selects the 1x28x28 variant. `arch_kwargs` go to the architecture (e.g. `depth`,
    `widen_factor`, `dropout_rate` for `wide_resnet`; `base_width` for the ResNets; `width_divisor` for VGG).
    """
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(_MODELS)}")
    return _MODELS[name](
        num_classes,
        spectral_normalization=spectral_normalization,
        mod=mod,
        coeff=coeff,
        n_power_iterations=n_power_iterations,
        mnist=mnist,
        **arch_kwargs,
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model
