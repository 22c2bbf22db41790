"""Argument groups shared by the scripts (DINO-style parents), so flag names and defaults live in one place,
and the one way to turn those flags into a network."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import net
from utils.errors import UserError

# Architecture options of `net.create_model` exposed as flags (None: the paper's size).
ARCH_FLAGS = ("depth", "widen_factor", "base_width", "width_divisor")


def model_parser(default_model: str = "resnet50") -> argparse.ArgumentParser:
    """`--model`, `-sn`, `--coeff`, `-mod` and the optional size overrides of the architecture."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("network")
    group.add_argument(
        "--model", default=default_model, choices=net.list_models(), help="network architecture"
    )
    group.add_argument(
        "-sn", "--sn", dest="sn", action="store_true", help="soft spectral normalisation of every convolution"
    )
    group.add_argument("--coeff", type=float, default=3.0, help="Lipschitz bound per layer for -sn")
    group.add_argument(
        "-mod",
        "--mod",
        dest="mod",
        action="store_true",
        help="leaky ReLU and average-pool shortcuts (the paper's)",
    )
    group.add_argument("--depth", type=int, default=None, help="Wide-ResNet depth (default 28)")
    group.add_argument("--widen-factor", type=int, default=None, help="Wide-ResNet widen factor (default 10)")
    group.add_argument("--base-width", type=int, default=None, help="ResNet stem width (default 64)")
    group.add_argument(
        "--width-divisor", type=int, default=None, help="divide VGG widths by this (default 1)"
    )
    return parser


def arch_kwargs(args: argparse.Namespace) -> dict:
    """The architecture overrides that were given on the command line."""
    return {name: getattr(args, name) for name in ARCH_FLAGS if getattr(args, name, None) is not None}


def model_config(args: argparse.Namespace, num_classes: int, mnist: bool) -> dict[str, Any]:
    """Keyword arguments of `net.create_model` (with `name`) for the flags; stored in resume files so the
    network can be rebuilt from the file alone."""
    return dict(
        name=args.model,
        num_classes=num_classes,
        spectral_normalization=bool(args.sn),
        mod=bool(args.mod),
        coeff=float(args.coeff),
        mnist=bool(mnist),
        **arch_kwargs(args),
    )


def create_from_config(config: Mapping[str, Any]) -> net.DDUNetwork:
    """`net.create_model(**config)`, turning a size option the model lacks into a `UserError`."""
    config = dict(config)
    name = config.pop("name")
    try:
        return net.create_model(name, **config)
    except (TypeError, ValueError) as err:
        given = [f"--{k.replace('_', '-')}" for k in ARCH_FLAGS if k in config]
        if not given:
            raise
        raise UserError(
            f"{' / '.join(given)} does not fit --model {name} ({err}); drop or change it"
        ) from None


def build_model(args: argparse.Namespace, num_classes: int, mnist: bool) -> net.DDUNetwork:
    """The network the flags describe, for `num_classes` classes and MNIST (1x28x28) or CIFAR inputs."""
    return create_from_config(model_config(args, num_classes, mnist))
