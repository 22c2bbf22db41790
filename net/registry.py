"""The network registry: the single source of truth for model names and their constructors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from net.imagenet_nets import imagenet_resnet50, imagenet_vgg16_bn, imagenet_wide_resnet50_2
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
    "imagenet_resnet50": imagenet_resnet50,
    "imagenet_wide_resnet50_2": imagenet_wide_resnet50_2,
    "imagenet_vgg16_bn": imagenet_vgg16_bn,
}


@dataclass(frozen=True)
class ModelOptions:
    """What a model's constructor lets the scripts' flags change, beyond the class count and input shape.

    `sizes` are the keyword arguments that change its size (the size flags); `width` is the one that scales
    the width of (nearly) every layer by one factor, `width_default` its default, and `wider_when_larger`
    says whether a larger value makes the layers wider (False for VGG's divisor). `sn_and_mod` is False for
    a model that ignores `spectral_normalization`, `mod` and `coeff` (LeNet, as in the original). `stem` is
    "cifar" for the networks of 32x32 and 28x28 inputs and "imagenet" for torchvision's layouts
    (`net.imagenet_nets`), which take the side of their square input as `image_size`. The flag checks and the
    hint for a checkpoint of another width read this.
    """

    sizes: tuple[str, ...] = ()
    width: str | None = None
    width_default: int = 1
    wider_when_larger: bool = True
    sn_and_mod: bool = True
    stem: str = "cifar"


_OPTIONS: dict[str, ModelOptions] = {
    "wide_resnet": ModelOptions(("depth", "widen_factor"), "widen_factor", 10),
    "resnet18": ModelOptions(("base_width",), "base_width", 64),
    "resnet50": ModelOptions(("base_width",), "base_width", 64),
    "vgg16": ModelOptions(("width_divisor",), "width_divisor", 1, wider_when_larger=False),
    "lenet": ModelOptions(sn_and_mod=False),
    "imagenet_resnet50": ModelOptions(("base_width",), "base_width", 64, stem="imagenet"),
    "imagenet_wide_resnet50_2": ModelOptions(("base_width",), "base_width", 64, stem="imagenet"),
    "imagenet_vgg16_bn": ModelOptions(
        ("width_divisor",), "width_divisor", 1, wider_when_larger=False, stem="imagenet"
    ),
}


def model_options(name: str) -> ModelOptions:
    """The options of registered model `name` (see `ModelOptions`)."""
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(_MODELS)}")
    return _OPTIONS[name]


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
    `widen_factor`, `dropout_rate` for `wide_resnet`; `base_width` for the ResNets; `width_divisor` for VGG;
    `image_size` for the ImageNet networks, whose `model_options(name).stem` is "imagenet").
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
