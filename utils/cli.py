"""The network flags shared by the scripts (DINO-style parents) and the one path from flags to a loaded
network, so that flag names, defaults and the meaning of a checkpoint live in one place.

    model = build_model(args)                      # the flags of train.py / evaluate.py (`args.dataset`)
    model = build_model(state["model_config"])     # or the config a resume file stores (nanoGPT's model_args)
    load_checkpoint(model, "runs/Run1/resnet18_sn_3.0_mod_1_350.model")

`build_model` goes through `net.create_model`; `load_checkpoint` through `net.load_state_dict`, turning the
mismatch facts it reports (`net.StateDictMismatch`) into the flags a user should change.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

import data
import net
from utils.errors import UserError

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


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the flag a user types (the original's spelling first), for messages."""
    return {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}


def arch_kwargs(args: argparse.Namespace) -> dict[str, int]:
    """The architecture overrides that were given on the command line."""
    return {name: getattr(args, name) for name in ARCH_FLAGS if getattr(args, name, None) is not None}


def model_config(args: argparse.Namespace, dataset: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `net.create_model` (with `name`) for the network flags `args` (`model`, `sn`,
    `mod`, `coeff`, size overrides) and a registered data set (default `args.dataset`), which fixes the
    class count and the 1x28x28 variant. Resume files store it, so the network can be rebuilt from the file."""
    info = data.get_info(dataset if dataset is not None else args.dataset)
    return dict(
        name=args.model,
        num_classes=info.num_classes,
        spectral_normalization=bool(args.sn),
        mod=bool(args.mod),
        coeff=float(args.coeff),
        mnist=tuple(info.shape) == (1, 28, 28),
        **arch_kwargs(args),
    )


def build_model(
    spec: argparse.Namespace | Mapping[str, Any],
    dataset: str | None = None,
    *,
    flags: Mapping[str, str] = MODEL_FLAGS,
) -> net.DDUNetwork:
    """The network that flags (an `argparse.Namespace`, read by `model_config` with `dataset`) or a stored
    config (a mapping with `name` and the other keyword arguments of `net.create_model`) describe.

    A size override the model does not have (`--depth` for a ResNet) is a `UserError` naming the flag.
    """
    config = dict(model_config(spec, dataset) if isinstance(spec, argparse.Namespace) else spec)
    name = config.pop("name")
    try:
        return net.create_model(name, **config)
    except (TypeError, ValueError) as err:
        given = [flags.get(k, k) for k in ARCH_FLAGS if k in config]
        if not given:
            raise
        raise UserError(
            f"{' / '.join(given)} does not fit {flags['model']} {name} ({err}); drop or change it"
        ) from None


def mismatch_hints(mismatch: net.StateDictMismatch, flags: Mapping[str, str] = MODEL_FLAGS) -> list[str]:
    """The flags that most likely explain a checkpoint mismatch, as sentences (`flags` spells them)."""
    if mismatch.other_architecture:
        return [f"it holds another architecture than a {mismatch.network}: check {flags['model']}"]
    hints = []
    sn, mod = flags["sn"], flags["mod"]
    if mismatch.spectral_norm_in == "checkpoint":
        hints.append(f"the checkpoint was trained with {sn} (spectral normalisation); add {sn}")
    elif mismatch.spectral_norm_in == "network":
        hints.append(f"the checkpoint was trained without {sn}; drop {sn}")
    if mismatch.conv_shortcuts_in == "checkpoint":
        hints.append(
            f"the checkpoint has convolutional shortcuts, i.e. it was trained without {mod}; drop {mod}"
        )
    elif mismatch.conv_shortcuts_in == "network":
        hints.append(
            f"the checkpoint has no convolutional shortcuts, i.e. it was trained with {mod}; add {mod}"
        )
    if mismatch.input_channels:
        hints.append(
            "input shapes differ: check the mnist setting (1x28x28) versus CIFAR (3x32x32) / "
            f"{flags.get('dataset', 'the data set')}"
        )
    if mismatch.num_classes:
        saved, here = mismatch.num_classes
        hints.append(
            f"the number of classes differs ({saved} in the checkpoint, {here} here): check "
            f"{flags.get('dataset', 'the data set')}"
        )
    if not hints:
        sizes = ", ".join(flags[k] for k in ARCH_FLAGS if k in flags)
        widths_only = mismatch.shapes and not (mismatch.missing or mismatch.unexpected)
        what = "the layer widths differ" if widths_only else "the architecture differs"
        hints.append(f"{what}: check {flags['model']} and the size flags ({sizes})")
    return hints


def load_checkpoint(
    model: nn.Module,
    checkpoint,
    *,
    source: str | None = None,
    flags: Mapping[str, str] = MODEL_FLAGS,
) -> nn.Module:
    """`net.load_state_dict(model, checkpoint)` (a path or a state dict, strict); a mismatch becomes a
    `UserError` that names the differing keys and the flags (spelled by `flags`) that most likely explain
    it. Returns `model`."""
    try:
        return net.load_state_dict(model, checkpoint, source=source)
    except net.CheckpointMismatchError as err:
        mismatch = err.mismatch
        raise UserError(
            f"{err.source} does not fit a {mismatch.network} built with these flags "
            f"({mismatch.keys_summary()}); most likely {'; '.join(mismatch_hints(mismatch, flags))}"
        ) from None
