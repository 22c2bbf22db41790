"""The one path from network flags (or a stored config) to a network and from a checkpoint into it, so that
the meaning of a checkpoint lives in one place:

    model = build_model(args)                      # the flags of train.py / evaluate.py (`args.dataset`)
    model = build_model(state["model_config"])     # or the config a resume file stores (nanoGPT's model_args)
    load_checkpoint(model, "runs/Run1/resnet18_sn_3.0_mod_1_350.model", config=model_config(args))

`build_model` goes through `net.create_model`; `load_checkpoint` through `net.load_state_dict`, turning the
mismatch facts it reports (`net.StateDictMismatch`) into the flags a user should change, and, given the
config, first comparing it with the one the run's resume file beside the checkpoint records. The flags
themselves (parser, checks, `model_config`) are `engine.network_flags`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import net
from data import folders
from engine.network_flags import ARCH_FLAGS, MODEL_FLAGS, model_config
from engine.run_paths import RunFiles
from utils.errors import UserError

log = logging.getLogger(__name__)


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
    config.pop("data", None)  # what an image-folder network was trained on: a record, not an argument
    try:
        return net.create_model(name, **config)
    except (TypeError, ValueError) as err:
        given = [flags.get(k, k) for k in ARCH_FLAGS if k in config]
        if not given:
            raise
        raise UserError(
            f"{' / '.join(given)} does not fit {flags['model']} {name} ({err}); drop or change it"
        ) from None


def _width_hint(ratio: float, config: Mapping[str, Any] | None, flags: Mapping[str, str]) -> str:
    """'the checkpoint's layers are 2 times as wide as these flags build: pass --base-width 16'."""
    text = f"the checkpoint's layers are {ratio:g} times as wide as these flags build"
    options = (
        net.model_options(config["name"]) if config and config.get("name") in net.list_models() else None
    )
    if options is None or options.width is None:
        sizes = ", ".join(flags[k] for k in ARCH_FLAGS if k in flags)
        return f"{text}: check the size flags ({sizes})"
    current = config.get(options.width) or options.width_default
    wanted = current * ratio if options.wider_when_larger else current / ratio
    flag = flags[options.width]
    if abs(wanted - round(wanted)) < 1e-9 and round(wanted) >= 1:
        return f"{text}: pass {flag} {round(wanted)}"
    return f"{text}: change {flag}"


def mismatch_hints(
    mismatch: net.StateDictMismatch,
    flags: Mapping[str, str] = MODEL_FLAGS,
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """The flags that most likely explain a checkpoint mismatch, as sentences (`flags` spells them; `config`,
    the network's `model_config`, lets a width mismatch name the value to pass)."""
    if mismatch.other_architecture:
        return [f"it holds another architecture than a {mismatch.network}: check {flags['model']}"]
    width = _width_hint(mismatch.width_ratio, config, flags) if mismatch.width_ratio else None
    # A Wide-ResNet of widen factor 1 has no shortcut convolution in its first block; wider ones have one:
    # when the width explains every shape and only shortcuts are missing, the width is the whole story.
    only_shortcuts = all(".shortcut." in k for k in (*mismatch.missing, *mismatch.unexpected))
    if width and only_shortcuts and not (mismatch.spectral_norm_in or mismatch.input_channels):
        return [width]
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
    if not hints and width:
        hints.append(width)
    if not hints:
        sizes = ", ".join(flags[k] for k in ARCH_FLAGS if k in flags)
        widths_only = mismatch.shapes and not (mismatch.missing or mismatch.unexpected)
        what = "the layer widths differ" if widths_only else "the architecture differs"
        hints.append(f"{what}: check {flags['model']} and the size flags ({sizes})")
    return hints


def differing_flags(
    saved: Mapping[str, Any], config: Mapping[str, Any], flags: Mapping[str, str] = MODEL_FLAGS
) -> list[str]:
    """The network flags whose values differ between a run's saved `model_config` and `config`, as
    '--coeff 3.0 there vs 6.0 here'. -sn and -mod count only for a model that has them, `--coeff` only when
    both use -sn, a size flag only when both give it (an absent one is the model's default, which the
    state-dict check compares). For image folders, the folder, image size and class list it was trained on
    (`data.folders.config_differences`)."""

    def shown(value: Any) -> str:
        return ("given" if value else "not given") if isinstance(value, bool) else str(value)

    keys = [("name", "model")]
    name = config.get("name")
    if saved.get("name") == name and name in net.list_models() and net.model_options(name).sn_and_mod:
        keys += [("spectral_normalization", "sn"), ("mod", "mod")]
        if saved.get("spectral_normalization") and config.get("spectral_normalization"):
            keys.append(("coeff", "coeff"))
    keys += [
        (name, name) for name in ARCH_FLAGS if saved.get(name) is not None and config.get(name) is not None
    ]
    return [
        f"{flags[flag]} {shown(saved.get(key))} there vs {shown(config.get(key))} here"
        for key, flag in keys
        if saved.get(key) != config.get(key)
    ] + folders.config_differences(saved.get("data"), config.get("data"))


class RunFailedError(Exception):
    """A run that cannot be scored (its network holds or computes NaN/inf); evaluate.py records it in
    `failed_runs` with this message as the reason, as it does for a failed GMM fit."""


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Raise `RunFailedError` when a floating-point parameter or buffer of `model` is NaN or infinite."""
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RunFailedError(
            f"{source} holds NaN or infinite values in {len(bad)} of its {len(state)} tensors (first: {bad[0]}); "
            "its training diverged: retrain it, or use an earlier epoch's checkpoint"
        )


def load_checkpoint(
    model: nn.Module,
    checkpoint,
    *,
    source: str | None = None,
    flags: Mapping[str, str] = MODEL_FLAGS,
    config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """`net.load_state_dict(model, checkpoint)` (a path or a state dict, strict); a mismatch becomes a
    `UserError` that names the differing keys and the flags (spelled by `flags`) that most likely explain
    it. Returns `model`.

    With `config` (the `model_config` the network was built from) and a checkpoint path whose run left its
    resume file beside it (`saved_model_config`), the flags that file records are compared
    first: a checkpoint of another `--coeff` loads without any shape mismatch, yet computes other outputs.
    """
    if config is not None and not isinstance(checkpoint, Mapping):
        saved = saved_model_config(checkpoint)
        if saved is not None:
            differ = differing_flags(saved[0], config, flags)
            if differ:
                raise UserError(
                    f"'{checkpoint}' was trained with other network flags than these (its run's '{saved[1]}' "
                    f"records them): {'; '.join(differ)}; pass the run's values"
                )
    try:
        return net.load_state_dict(model, checkpoint, source=source)
    except net.CheckpointMismatchError as err:
        mismatch = err.mismatch
        raise UserError(
            f"{err.source} does not fit a {mismatch.network} built with these flags "
            f"({mismatch.keys_summary()}); most likely {'; '.join(mismatch_hints(mismatch, flags, config))}"
        ) from None


def saved_model_config(checkpoint: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The `model_config` (flags of the network) recorded by the run that wrote `checkpoint`, and the file
    it was read from: `{name}_resume.pt` beside `{name}_{epoch}.model`. None when there is no such file or
    it cannot be read (it only adds a check; loading goes on without it).

    The resume file is memory-mapped, so only its small `model_config` entry is read, whatever its size.
    """
    files = RunFiles.of_checkpoint(Path(checkpoint))
    resume = files.resume if files is not None else None
    if resume is None or not resume.is_file():
        return None
    try:
        state = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
        config = state.get("model_config") if isinstance(state, dict) else None
    except Exception as err:  # noqa: BLE001  (a damaged resume file must not stop an evaluation)
        log.warning(
            "could not read the run's flags from %s (%s); not cross-checked", resume, type(err).__name__
        )
        return None
    return (dict(config), resume) if isinstance(config, Mapping) else None


def load_network(
    spec: argparse.Namespace | Mapping[str, Any],
    checkpoint: str | Path,
    device: torch.device | str | None = None,
    *,
    dataset: str | None = None,
    flags: Mapping[str, str] = MODEL_FLAGS,
) -> nn.Module:
    """Flags -> network -> checkpoint loaded, the one way every script and tool does it: the network that
    `spec` describes (script flags with `dataset`, default `spec.dataset`, or a stored `model_config`), the
    state dict of `checkpoint` loaded into it after the flags were compared with those its run recorded
    (`load_checkpoint`), NaN/inf weights refused (`RunFailedError`), on `device`, in eval mode."""
    config = model_config(spec, dataset) if isinstance(spec, argparse.Namespace) else dict(spec)
    model = load_checkpoint(build_model(config, flags=flags), checkpoint, flags=flags, config=config)
    check_finite_weights(model, f"'{checkpoint}'")
    return (model.to(device) if device is not None else model).eval()
