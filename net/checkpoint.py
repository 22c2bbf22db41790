"""Loading checkpoints: this project's own and those written by the original DDU code.

The original saves `net.state_dict()` of an `nn.DataParallel` model, so keys carry a `module.` prefix, and
its spectral normalisation (a forward-pre-hook) stores `weight_orig`, `weight_u`, `weight_v` and
`weight_sigma`; this project's modules use the same names, so the two load into each other. Loading is
strict: a mismatch raises `CheckpointMismatchError`, whose `StateDictMismatch` lists the keys involved and
the families of layers they belong to (spectral normalisation, shortcuts, input, classifier) as data; the
command-line layer (`engine.networks.load_checkpoint`) names the flags from it. The one leniency: a ResNet
classifier stored as `linear.*` (pytorch-cifar's name) loads into our `fc.*` and back.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from net.registry import unwrap_model
from utils.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")
# Classifier names used by DDU-style code bases for the same layer; a checkpoint using the other name of a
# pair loads into a model that has only this one.
_CLASSIFIER_ALIASES = (("linear.", "fc."), ("fc.", "linear."))


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _apply_classifier_alias(state: dict[str, torch.Tensor], expected) -> dict[str, torch.Tensor]:
    for ours, theirs in _CLASSIFIER_ALIASES:
        if not any(k.startswith(ours) for k in state) and any(k.startswith(ours) for k in expected):
            if any(k.startswith(theirs) for k in state) and not any(k.startswith(theirs) for k in expected):
                return {(ours + k[len(theirs) :] if k.startswith(theirs) else k): v for k, v in state.items()}
    return state


def zip_damage(path: str | os.PathLike) -> str | None:
    """What is damaged in the zip container `torch.save` writes: the first record whose bytes do not match
    the CRC-32 stored with it, or a directory that cannot be read; None when all is intact (or the file is
    no zip: a legacy checkpoint has no CRCs to check, and `torch.load` judges it).

    `torch.load` does not check the CRCs, so a flipped bit in a tensor would load silently as another
    weight. One pass over the file: 0.6-0.8 s for 148 MB (a WRN-28-10 checkpoint's size) on a busy 2-core VM.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            name = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"its zip directory cannot be read ({type(err).__name__})"
    return None if name is None else f"its record {name} does not match the CRC-32 stored with it"


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `path` (a plain state dict, or a dict holding one under 'model')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint '{path}' does not exist; check --load-path / --saved-model-path and the epoch"
        )
    damage = zip_damage(path)
    if damage is not None:
        raise UserError(
            f"checkpoint '{path}' is damaged ({damage}: bytes changed after it was written, on the disk or "
            "in a copy), so it was not loaded; re-copy or re-train it"
        )
    try:
        with warnings.catch_warnings():  # torch warns about a pickle it does not expect, in several lines
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle garbage, wrong file type, ...
        raise UserError(
            f"checkpoint '{path}' could not be read ({type(err).__name__}); the file is corrupt or truncated, "
            "or not a PyTorch checkpoint: re-copy or re-train it"
        ) from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint '{path}' does not hold a model state dict (found {type(obj).__name__})")
    return dict(obj)


@dataclass(frozen=True)
class StateDictMismatch:
    """How a state dict differs from the one a network expects: the keys, and the families they fall in.

    `missing` are the network's keys the checkpoint lacks, `unexpected` the checkpoint's keys the network
    lacks, `shapes` the shared keys whose shapes differ, as `(key, checkpoint shape, network shape)`. The
    families, each None (or False) when that family agrees:

    * `other_architecture`: the top-level modules differ (`conv1, layer1, ...` against `features, ...`);
    * `spectral_norm_in`: "checkpoint" or "network", the side whose layers are spectrally normalised
      (weight stored as `weight_orig`) where the same layers on the other side are plain (`weight`); only
      layers both sides have count, so a layer present on one side only says nothing about SN;
    * `conv_shortcuts_in`: the side with convolutional (`.shortcut.`) keys the other lacks;
    * `input_channels`: `(checkpoint, network)` channels of the first convolution, when they differ;
    * `num_classes`: `(checkpoint, network)` outputs of the classifier, when they differ;
    * `width_ratio`: when every differing size among the shared keys is the network's size times one
      factor (other than 1), that factor (checkpoint / network): the layers are uniformly wider or narrower.

    It states facts about tensors only; which command-line flag explains them is the scripts' business.
    """

    network: str
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    other_architecture: bool = False
    spectral_norm_in: str | None = None
    conv_shortcuts_in: str | None = None
    input_channels: tuple[int, int] | None = None
    num_classes: tuple[int, int] | None = None
    width_ratio: float | None = None

    def keys_summary(self) -> str:
        """The differing keys, a few of each kind: 'missing keys: a, b; unexpected keys: c (+3 more)'."""

        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = []
        if self.missing:
            parts.append(f"missing keys: {show(list(self.missing))}")
        if self.unexpected:
            parts.append(f"unexpected keys: {show(list(self.unexpected))}")
        if self.shapes:
            details = [f"{key} {saved} vs {wanted}" for key, saved, wanted in self.shapes]
            parts.append(f"shape mismatches (checkpoint vs model): {show(details)}")
        return "; ".join(parts)

    def facts(self) -> list[str]:
        """The families in plain words (no flag names)."""
        out = []
        if self.other_architecture:
            out.append("the checkpoint holds another architecture")
        if self.spectral_norm_in:
            out.append(f"only the {self.spectral_norm_in} has spectral normalisation")
        if self.conv_shortcuts_in:
            out.append(f"only the {self.conv_shortcuts_in} has convolutional shortcuts")
        if self.input_channels:
            out.append(
                "the input channels differ ({} in the checkpoint, {} here)".format(*self.input_channels)
            )
        if self.num_classes:
            out.append(
                "the number of classes differs ({} in the checkpoint, {} here)".format(*self.num_classes)
            )
        if self.width_ratio:
            out.append(f"the checkpoint's layers are {self.width_ratio:g} times as wide as the network's")
        return out


class CheckpointMismatchError(UserError):
    """A checkpoint that does not fit the network; `mismatch` says how, `source` names the checkpoint."""

    def __init__(self, source: str, mismatch: StateDictMismatch) -> None:
        self.source, self.mismatch = source, mismatch
        facts = "; ".join(mismatch.facts()) or "the architecture differs"
        super().__init__(
            f"{source} does not fit this {mismatch.network} ({mismatch.keys_summary()}); {facts}"
        )


def _one_side(in_checkpoint: bool, in_network: bool) -> str | None:
    """'checkpoint' or 'network' when exactly that side shows a feature, else None."""
    if in_checkpoint != in_network:
        return "checkpoint" if in_checkpoint else "network"
    return None


def _side_with(marker, missing: list[str], unexpected: list[str]) -> str | None:
    """'checkpoint' when only unexpected keys match `marker`, 'network' when only missing ones do."""
    return _one_side(any(map(marker, unexpected)), any(map(marker, missing)))


def _spectral_norm_side(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> str | None:
    """'checkpoint' (or 'network') when some layer both sides have is spectrally normalised only there."""

    def layers(keys, suffix: str) -> set[str]:
        return {k[: -len(suffix)] for k in keys if k.endswith(suffix)}

    only_checkpoint = layers(state, ".weight_orig") & layers(expected, ".weight")
    only_network = layers(expected, ".weight_orig") & layers(state, ".weight")
    return _one_side(bool(only_checkpoint), bool(only_network))


def _first_conv_channels(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[int, int] | None:
    """Input channels of the network's first convolution, `(checkpoint, network)`, read from the same key."""
    key = next(
        (k for k, v in expected.items() if k.endswith(("weight", "weight_orig")) and v.dim() == 4), None
    )
    if key is None or key not in state or state[key].dim() != 4:
        return None
    return int(state[key].shape[1]), int(expected[key].shape[1])


def _width_ratio(shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]) -> float | None:
    """The one factor `checkpoint size / network size` shared by every differing dimension of `shapes`."""
    ratios = {
        saved[i] / wanted[i]
        for _, saved, wanted in shapes
        if len(saved) == len(wanted)
        for i in range(len(saved))
        if saved[i] != wanted[i] and wanted[i] > 0
    }
    if any(len(saved) != len(wanted) for _, saved, wanted in shapes) or len(ratios) != 1:
        return None
    (ratio,) = ratios
    return ratio if ratio > 0 else None


def _classifier_outputs(target: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    get_classifier = getattr(target, "get_classifier", None)
    if get_classifier is None:
        return None
    classifier = get_classifier()
    name = next((n for n, m in target.named_modules() if m is classifier), None)
    weight = state.get(f"{name}.weight") if name else None
    return None if weight is None else int(weight.shape[0])


def compare_state_dict(target: nn.Module, state: Mapping[str, torch.Tensor]) -> StateDictMismatch | None:
    """How `state` (prefixes already stripped) differs from `target.state_dict()`; None when it fits."""
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = tuple(
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or shapes):
        return None
    channels = _first_conv_channels(state, expected)
    classes = (_classifier_outputs(target, state), _classifier_outputs(target, expected))
    classes_differ = None not in classes and classes[0] != classes[1]
    # The classifier's outputs are the class count, not a width: leave them out of the width factor.
    classifier_keys = {
        k for k in expected if classes_differ and k.split(".")[0] in _classifier_prefixes(target)
    }
    return StateDictMismatch(
        network=type(target).__name__,
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shapes=shapes,
        other_architecture={k.split(".")[0] for k in state} != {k.split(".")[0] for k in expected},
        spectral_norm_in=_spectral_norm_side(state, expected),
        conv_shortcuts_in=_side_with(lambda k: ".shortcut." in k, missing, unexpected),
        input_channels=channels if channels is not None and channels[0] != channels[1] else None,
        num_classes=classes if classes_differ else None,
        width_ratio=_width_ratio(tuple(s for s in shapes if s[0] not in classifier_keys)),
    )


def _classifier_prefixes(target: nn.Module) -> set[str]:
    get_classifier = getattr(target, "get_classifier", None)
    if get_classifier is None:
        return set()
    classifier = get_classifier()
    return {n.split(".")[0] for n, m in target.named_modules() if m is classifier and n}


def load_state_dict(model: nn.Module, state_dict_or_path, *, source: str | None = None) -> nn.Module:
    """Load a checkpoint strictly into `model` (unwrapping DDP/compile); return the model.

    Raises `CheckpointMismatchError` (a `UserError`) whose `mismatch` says which keys and which families
    of layers differ; `engine.networks.load_checkpoint` turns that into the flags to change.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = source or str(state_dict_or_path)
        state = read_checkpoint(state_dict_or_path)
    else:
        state = dict(state_dict_or_path)
    source = source or "the given state dict"
    state = _strip_prefixes(state)
    target = unwrap_model(model)
    state = _apply_classifier_alias(state, target.state_dict())
    mismatch = compare_state_dict(target, state)
    if mismatch is not None:
        raise CheckpointMismatchError(source, mismatch)
    target.load_state_dict(state, strict=True)
    return model
