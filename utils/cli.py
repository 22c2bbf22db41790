"""Argument groups shared by the scripts (DINO-style parents), so flag names and defaults live in one place."""

from __future__ import annotations

import argparse

import net
from utils.errors import UserError


def model_parser(default_model: str = "resnet50") -> argparse.ArgumentParser:
    """`--model`, `-sn`, `--coeff`, `-mod` and the optional size overrides of the architecture."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("network")
    group.add_argument("--model", default=default_model, choices=net.list_models(), help="network architecture")
    group.add_argument(
        "-sn", "--sn", dest="sn", action="store_true", help="soft spectral normalisation of every convolution"
    )
    group.add_argument("--coeff", type=float, default=3.0, help="Lipschitz bound per layer for -sn")
    group.add_argument(
        "-mod", "--mod", dest="mod", action="store_true", help="leaky ReLU and average-pool shortcuts (the paper's)"
    )
    group.add_argument("--depth", type=int, default=None, help="Wide-ResNet depth (default 28)")
    group.add_argument("--widen-factor", type=int, default=None, help="Wide-ResNet widen factor (default 10)")
    group.add_argument("--base-width", type=int, default=None, help="ResNet stem width (default 64)")
    group.add_argument("--width-divisor", type=int, default=None, help="divide VGG widths by this (default 1)")
    return parser


def arch_kwargs(args: argparse.Namespace) -> dict:
    """The architecture overrides that were given on the command line."""
    names = ("depth", "widen_factor", "base_width", "width_divisor")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def build_model(args: argparse.Namespace, num_classes: int, mnist: bool) -> net.DDUNetwork:
    """The network the flags describe, for `num_classes` classes and MNIST (1x28x28) or CIFAR inputs."""
    overrides = arch_kwargs(args)
    try:
        return net.create_model(
            args.model,
            num_classes=num_classes,
            spectral_normalization=args.sn,
            mod=args.mod,
            coeff=args.coeff,
            mnist=mnist,
            **overrides,
        )
    except (TypeError, ValueError) as err:
        flags = ", ".join("--" + k.replace("_", "-") for k in overrides) or "the size flags"
        raise UserError(f"{flags} do not fit --model {args.model} ({err})") from None
