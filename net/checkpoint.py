"""Loading checkpoints: this project's own and those written by the original DDU code.

The original saves `net.state_dict()` of an `nn.DataParallel` model, so keys carry a `module.` prefix, and
its spectral normalisation (a forward-pre-hook) stores `weight_orig`, `weight_u`, `weight_v` and
`weight_sigma`; this project's modules use the same names, so the two load into each other. Loading is
strict: any mismatch is reported with the keys involved and the flags that most likely differ. The one
leniency: a ResNet classifier stored as `linear.*` (pytorch-cifar's name) loads into our `fc.*` and back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `path` (a plain state dict, or a dict holding one under 'model')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint '{path}' does not exist; check --load-path / --saved-model-path and the epoch"
        )
    try:
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


def _likely_flags(
    missing: list[str], unexpected: list[str], mismatched: list[str], state_keys, model_keys
) -> list[str]:
    top_level = {k.split(".")[0] for k in state_keys}
    if top_level != {k.split(".")[0] for k in model_keys}:
        return [f"it holds another architecture (top-level modules {sorted(top_level)}): check --model"]
    hints = []
    sn_markers = ("weight_orig", "weight_u", "weight_v", "weight_sigma")
    if any(k.endswith(sn_markers) for k in unexpected) and not any(k.endswith(sn_markers) for k in missing):
        hints.append("the checkpoint was trained with -sn (spectral normalisation); add -sn")
    elif any(k.endswith(sn_markers) for k in missing) and not any(k.endswith(sn_markers) for k in unexpected):
        hints.append("the checkpoint was trained without -sn; drop -sn")
    if any(".shortcut." in k for k in unexpected):
        hints.append(
            "the checkpoint has convolutional shortcuts, i.e. it was trained without -mod; drop -mod"
        )
    elif any(".shortcut." in k for k in missing):
        hints.append("the checkpoint has no convolutional shortcuts, i.e. it was trained with -mod; add -mod")
    if any(k.endswith("weight_v") or k.startswith("conv1.") for k in mismatched):
        hints.append(
            "input shapes differ: check the mnist setting (1x28x28) versus CIFAR (3x32x32) / --dataset"
        )
    if any(k.split(".")[0] in ("linear", "fc", "fc3", "classifier") for k in mismatched):
        hints.append("the number of classes differs: check --dataset")
    if len(missing) + len(unexpected) > 0 and not hints:
        hints.append("the architecture differs: check --model (and depth/width settings)")
    return hints


def load_state_dict(model: nn.Module, state_dict_or_path, *, source: str | None = None) -> nn.Module:
    """Load a checkpoint strictly into `model` (unwrapping DDP/compile); return the model.

    Raises `UserError` naming missing, unexpected and mis-shaped keys and the flags (`--model`, `-sn`,
    `-mod`, mnist/dataset) that most likely differ.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = source or str(state_dict_or_path)
        state = read_checkpoint(state_dict_or_path)
    else:
        state = dict(state_dict_or_path)
    source = source or "the given state dict"
    state = _strip_prefixes(state)
    target = unwrap_model(model)
    expected = target.state_dict()
    state = _apply_classifier_alias(state, expected)

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:

        def show(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            details = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]
            parts.append(f"shape mismatches (checkpoint vs model): {show(details)}")
        hints = _likely_flags(missing, unexpected, mismatched, state, expected)
        raise UserError(
            f"{source} does not fit a {type(target).__name__} built with these flags ({'; '.join(parts)}); "
            f"most likely {'; '.join(hints)}"
        )
    target.load_state_dict(state, strict=True)
    return model
