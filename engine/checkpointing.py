"""What a run's files hold, how they are written, and how a run resumes from them (their names are
`engine.run_paths`):

* a resume file is one dict (torchvision's reference scripts): weights, optimiser, schedule, the flags, every
  rank's RNG states and the history, written atomically after every epoch (`write_epoch`, from `engine.training_run.EpochCheckpointer`), read back
  with `weights_only=True` (`load_resume_state`) and refused when a flag that changes the run differs
  (`check_resume_compatible`, also used by active_learning.py for its state file); the learning rate may
  change on resume (`resume_training`), so a run stopped by a non-finite loss can continue more gently;
* the end-of-epoch files are written in a crash-safe order (`write_epoch`), and a stop (Ctrl-C, a
  non-finite loss) becomes one sentence saying what was kept and how to go on (`explain_stops`).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import net
from engine.networks import load_checkpoint
from engine.run_paths import RunFiles
from engine.training import EpochStats, NonFiniteLossError
from net.checkpoint import zip_damage
from utils.errors import Interrupted, UserError
from utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

RESUME_FORMAT = 1
# A mean training loss above this many nats (the true class's probability below e^-100 on average) means the
# weights have already diverged: such a state is not offered as a point to resume from.
DIVERGED_LOSS = 100.0
# The way on after an interruption, said once for every script.
RERUN_WITH_RESUME = "rerun the same command with --resume (and without --overwrite) to continue"

# --------------------------------------------------------------------------------------------------------
# Random generators


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state (torch CPU and CUDA, NumPy, Python), loadable with weights_only."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _tuples_to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only when this process uses CUDA)."""
    torch.set_rng_state(state["torch"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_tuples_to_lists(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------------
# Resume state


def sanitize_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """Arguments as plain JSON-able values (paths as strings), fit for a weights_only checkpoint."""
    items = vars(args).items() if isinstance(args, argparse.Namespace) else args.items()
    out = {}
    for key, value in items:
        if isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool, type(None), list, tuple)):
            value = repr(value)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def save_resume_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the full training state atomically (a crash mid-write leaves the previous file intact)."""
    atomic_torch_save({"format": RESUME_FORMAT, **state}, Path(path))


def load_resume_state(path: Path) -> dict[str, Any]:
    """Read a resume file written by `save_resume_state` (with `weights_only=True`: no arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the resume file '{path}' does not exist; check --save-path and the run's flags")
    damage = zip_damage(path)  # torch.load does not check the CRC-32s: a changed byte would load silently
    if damage is not None:
        raise UserError(
            f"the resume file '{path}' is damaged ({damage}), so it was not loaded; re-copy it, or pass "
            "--overwrite instead of --resume to start the run afresh"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"the resume file '{path}' could not be read ({type(err).__name__}); it is corrupt or not a "
            "resume file: delete it to start afresh"
        ) from None
    if isinstance(state, dict) and state.get("format") == RESUME_FORMAT:
        return state
    # What the file is, and what to pass instead: never advice that would throw away a finished model.
    name = path.name[: -len(".model")].rsplit("_", 1)[0] if path.name.endswith(".model") else "{name}"
    if isinstance(state, dict) and "format" not in state and all(torch.is_tensor(v) for v in state.values()):
        raise UserError(
            f"'{path}' is a model checkpoint (a network's weights only, as train.py saves every "
            f"--save-interval epochs), not a resume file; pass the run's {name}_resume.pt to --resume, or "
            "--resume alone to continue from --save-path"
        )
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > RESUME_FORMAT:
        raise UserError(
            f"the resume file '{path}' was written by a newer version of this code (format {found}; this "
            f"version reads format {RESUME_FORMAT}); update the code to continue the run"
        )
    raise UserError(
        f"'{path}' is not a resume file of this project's train.py; pass the run's {name}_resume.pt to "
        "--resume, or --overwrite instead of --resume to start the run afresh"
    )


def check_resume_compatible(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    keys: Sequence[str],
    flag_names: Mapping[str, str] | None = None,
    source: str = "the resume file",
    output_flag: str = "--save-path",
) -> None:
    """Raise a `UserError` naming each flag in `keys` whose value differs between the saved and this run
    (`flag_names` maps a key to the flag a user types; `output_flag` is where a fresh run could go)."""
    flag_names = flag_names or {}
    differ = []
    for key in keys:
        old, new = saved.get(key), current.get(key)
        if old != new:
            flag = flag_names.get(key, "--" + key.replace("_", "-"))
            differ.append(f"{flag} {old!r} in the saved run vs {new!r} now")
    if differ:
        raise UserError(
            f"cannot resume from {source} because these settings differ: {'; '.join(differ)}; pass the saved "
            f"values, or start afresh with --overwrite instead of --resume (or with another {output_flag})"
        )


def resume_training(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    args: Mapping[str, Any],
    *,
    keys: Sequence[str],
    flag_names: Mapping[str, str],
    rank: int = 0,
    learning_rate: float | None = None,
) -> tuple[list[EpochStats], int]:
    """Restore weights, optimiser, schedule and this rank's generators from the resume file `path` after
    checking that the flags in `keys` match `args`; return the history so far and the epochs done.

    `learning_rate` (this run's initial rate) may differ from the saved run's: the schedule then continues
    from it, i.e. the rate becomes `learning_rate` times the drops already passed (`set_initial_lr`).
    """
    state = load_resume_state(path)
    check_resume_compatible(state["args"], args, keys=keys, flag_names=flag_names, source=f"'{path}'")
    load_checkpoint(model, state["model"], source=str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    saved_lr = state["args"].get("learning_rate")
    if learning_rate is not None and saved_lr is not None and learning_rate != saved_lr:
        now = set_initial_lr(optimizer, scheduler, learning_rate)
        log.warning(
            "--lr changed on resume from %g to %g: the schedule continues from the new rate (%g from epoch %d)",
            saved_lr, learning_rate, now, int(state["epoch"]) + 1,
        )  # fmt: skip
    rng = state["rng"]
    restore_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return [EpochStats.from_json(h) for h in state["history"]], int(state["epoch"])


def set_initial_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.MultiStepLR, lr: float
) -> float:
    """Make `lr` the schedule's initial rate after `scheduler` has already stepped: every group's rate becomes
    `lr * gamma ** (milestones passed)`, as if the run had started with it. Returns the new current rate."""
    passed = bisect.bisect_right(sorted(scheduler.milestones.elements()), scheduler.last_epoch)
    current = lr * scheduler.gamma**passed
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, current
    scheduler._last_lr = [current for _ in optimizer.param_groups]
    return current


# --------------------------------------------------------------------------------------------------------
# Writing a run's files


def save_model(files: RunFiles, model: nn.Module, epoch: int) -> Path:
    """`{name}_{epoch}.model`: the bare network's state dict (no DDP or compile wrapper), atomically."""
    path = files.model(epoch)
    atomic_torch_save(net.unwrap_model(model).state_dict(), path)
    return path


def write_epoch(
    files: RunFiles,
    state: Mapping[str, Any],
    history: Sequence[EpochStats],
    *,
    model_state: Mapping[str, torch.Tensor] | None = None,
    model_epoch: int | None = None,
) -> None:
    """The end-of-epoch files in a crash-safe order: `{name}_{model_epoch}.model` from `model_state` (when
    given), then the resume file from `state`, then the logs, each atomically: after a crash the logs are
    never ahead of the state a resume starts from, and both logs are rewritten in full from the history.

    It only reads what it is given, so it can run on a `utils.io.BackgroundWriter`'s thread.
    """
    if model_state is not None:
        atomic_torch_save(model_state, files.model(model_epoch))
    save_resume_state(files.resume, state)
    files.saved_epoch = int(state["epoch"])
    write_logs(files, history)


def write_logs(files: RunFiles, history: Sequence[EpochStats]) -> None:
    """`{name}_train_loss.json` (the original's `{"0": loss, ...}` with its own loss definition) and
    `{name}_log.jsonl` (one `EpochStats` per line)."""
    atomic_write_json(files.train_loss, {str(s.epoch): s.original_loss for s in history}, indent=None)
    lines = "".join(json.dumps(s.to_json(), sort_keys=False) + "\n" for s in history)
    atomic_write_bytes(files.log, lines.encode())


# --------------------------------------------------------------------------------------------------------
# What a stop leaves


@contextlib.contextmanager
def explain_stops(
    files: Sequence[RunFiles], histories: Sequence[Sequence[EpochStats]], *, members: bool = False
) -> Iterator[None]:
    """Turn Ctrl-C and a non-finite loss during training into one sentence saying what was kept: for one
    run (`files[0]`, `histories[0]`) or for ensemble members trained together (`members=True`), whose
    resume files hold the last epoch all of them finished."""
    try:
        yield
    except KeyboardInterrupt:
        # Members: the epoch after the one all their resume files hold (the writes have been awaited).
        done = min(f.saved_epoch or 0 for f in files) if members else len(histories[0])
        raise Interrupted(f"interrupted during epoch {done + 1}; {kept(files)}") from None
    except NonFiniteLossError as err:
        if members:
            done = min(len(h) for h in histories)
            where = _resume_files(files)
            after = (
                f"the last good states (after epoch {done}) are in {where}, which --resume continues"
                if done
                else "no checkpoint was written"
            )
        else:
            after = _after_divergence(files[0], histories[0])
        raise NonFiniteLossError(f"{err}; {after}") from None


def _resume_files(files: Sequence[RunFiles]) -> str:
    if len(files) == 1:
        return str(files[0].resume)
    return f"{files[0].save_dir}/{{name}}_resume.pt for {', '.join(f.name for f in files)}"


def kept(files: Sequence[RunFiles]) -> str:
    """What an interruption of these runs (one, or ensemble members trained together) leaves: the epoch
    their resume files really hold (the writes are awaited before this is asked), or that none was written."""
    saved = [f.saved_epoch for f in files]
    if any(epoch is None for epoch in saved):
        if len(files) == 1:
            return f"no epoch of {files[0].name} had been saved, so there is nothing to continue from"
        return "no epoch had finished, so nothing was saved"
    whose = "the state" if len(files) == 1 else "the members' state"
    return f"{whose} after epoch {min(saved)} is in {_resume_files(files)}: {RERUN_WITH_RESUME}"


def _after_divergence(files: RunFiles, history: Sequence[EpochStats]) -> str:
    """What to do after a non-finite loss, given the epochs whose state was saved."""
    if not history:
        return "no checkpoint was written: rerun with a lower --lr (or --precision fp32), or check the data"
    last = history[-1]
    if math.isfinite(last.loss) and last.loss <= DIVERGED_LOSS:
        return (
            f"the state after epoch {len(history)} (loss {last.loss:.4g}) is in {files.resume}: rerun the same "
            "command with --resume and a lower --lr to continue from it"
        )
    return (
        f"the state saved after epoch {len(history)} had already diverged (loss {last.loss:.3g}), so do not "
        f"resume from it: rerun with --overwrite, without --resume and with a lower --lr (or --precision "
        f"fp32), which starts afresh and replaces {files.resume}"
    )


__all__ = [
    "DIVERGED_LOSS",
    "RERUN_WITH_RESUME",
    "RESUME_FORMAT",
    "capture_rng_state",
    "check_resume_compatible",
    "explain_stops",
    "kept",
    "load_resume_state",
    "restore_rng_state",
    "resume_training",
    "sanitize_args",
    "save_model",
    "save_resume_state",
    "set_initial_lr",
    "write_epoch",
    "write_logs",
]
