"""The network flags every script shares (DINO-style parents): their names, defaults, valid values, how
they are checked, and the `net.create_model` config they describe (`model_config`, which resume files store
so a network can be rebuilt from the file alone, as nanoGPT's `model_args`).

    parser = argparse.ArgumentParser(parents=[model_parser(default_model="resnet50")])
    check_network_flags(args.model, args.coeff, arch_values(args))
    config = model_config(args)          # {"name": ..., "num_classes": ..., "spectral_normalization": ...}

Building and loading the network from these is `engine.networks`. `check_network_flags` is the network part
of every script's `check_args` (the other validators are in `utils.validation`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import data
import net
from utils.errors import UserError
from utils.validation import check_count, check_number

# Architecture options of `net.create_model` exposed as flags (None: the paper's size), with their help.
ARCH_FLAGS = ("depth", "widen_factor", "base_width", "width_divisor")
_ARCH_HELP = {
    "depth": "Wide-ResNet depth (default 28)",
    "widen_factor": "Wide-ResNet widen factor (default 10)",
    "base_width": "ResNet stem width (default 64)",
    "width_divisor": "divide VGG widths by this (default 1)",
}

# How the scripts spell the flags behind each part of a network's description, for messages: the keys are
# those of `model_config` plus "model" and "dataset"; a script with other spellings passes its own table.
MODEL_FLAGS: dict[str, str] = {
    "model": "--model",
    "sn": "-sn",
    "mod": "-mod",
    "coeff": "--coeff",
    "dataset": "--dataset",
    **{name: "--" + name.replace("_", "-") for name in ARCH_FLAGS},
}


def add_arch_flags(group: argparse._ActionsContainer, prefix: str = "", whose: str = "") -> None:
    """The size overrides `--depth`, `--widen-factor`, `--base-width`, `--width-divisor`, as
    `--{prefix}depth` (destination `{prefix}depth` with dashes as underscores) when `prefix` is given."""
    for name, help_text in _ARCH_HELP.items():
        flag = f"--{prefix}{name.replace('_', '-')}"
        dest = f"{prefix.replace('-', '_')}{name}"
        group.add_argument(flag, dest=dest, type=int, default=None, help=f"{whose}{help_text}")


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
    add_arch_flags(group)
    return parser


def check_network_flags(
    model: str, coeff: float, sizes: Mapping[str, int | None], flags: Mapping[str, str] = MODEL_FLAGS
) -> None:
    """The network flags of one model: a registered `--model`, `--coeff > 0` and size overrides (`sizes`,
    keyed as `ARCH_FLAGS`, None when not given) that are at least 1 and that this model has."""
    if model not in net.list_models():
        raise UserError(f"unknown {flags['model']} '{model}'; choose one of: {', '.join(net.list_models())}")
    check_number(
        coeff,
        flags["coeff"],
        above=0,
        hint=f"the Lipschitz bound of each layer under {flags['sn']}; the paper uses 3",
    )
    options = net.model_options(model)
    for name, value in sizes.items():
        if value is None:
            continue
        check_count(value, flags[name])
        if name not in options.sizes:
            takes = ", ".join(flags[n] for n in options.sizes) or "none"
            raise UserError(
                f"{flags[name]} does not apply to {flags['model']} {model} (its size flags: {takes}); drop it"
            )


def arch_values(args: argparse.Namespace, prefix: str = "") -> dict[str, int | None]:
    """Every size override of `args` keyed as `ARCH_FLAGS` (None when not given); `prefix` reads
    `{prefix}{name}` (active_learning.py's `trained_depth`, ...)."""
    return {name: getattr(args, f"{prefix}{name}", None) for name in ARCH_FLAGS}


def arch_kwargs(args: argparse.Namespace) -> dict[str, int]:
    """The architecture overrides that were given on the command line."""
    return {name: getattr(args, name) for name in ARCH_FLAGS if getattr(args, name, None) is not None}


def model_config(args: argparse.Namespace, dataset: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `net.create_model` (with `name`) for the network flags `args` (`model`, `sn`,
    `mod`, `coeff`, size overrides) and a registered data set (default `args.dataset`), which fixes the
    class count and the 1x28x28 variant. Resume files store it, so the network can be rebuilt from the file.

    For an image folder (`folder:PATH`) it also holds the input shape (`image_size`, and `in_channels` when
    not 3) and, under "data", what the network was trained on (`data.folders.FolderSet.config`: folder,
    image size, classes, mean/std), which `engine.networks.differing_flags` compares at evaluation."""
    info = data.get_info(dataset if dataset is not None else args.dataset)
    config = dict(
        name=args.model,
        num_classes=info.num_classes,
        spectral_normalization=bool(args.sn),
        mod=bool(args.mod),
        coeff=float(args.coeff),
        mnist=tuple(info.shape) == (1, 28, 28),
        **arch_kwargs(args),
    )
    if info.folder is not None:
        config.update(image_size=info.shape[1], data=dict(info.folder))
        if info.shape[0] != 3:
            config["in_channels"] = info.shape[0]
    elif args.model in net.list_models() and net.model_options(args.model).stem == "imagenet":
        if (
            info.shape[1] != net.imagenet_nets.IMAGENET_IMAGE_SIZE
        ):  # --image-size: SN's power iteration needs the side
            config["image_size"] = info.shape[1]
    return config
