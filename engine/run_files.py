"""A run's files: how they are named, written, found again and resumed from.

Names follow the original DDU code, so its README's commands and its checkpoints work here:

* a run is `{model}_sn_{coeff}_mod_{seed}`, `{model}_sn_{coeff}_{seed}`, `{model}_mod_{seed}` or
  `{model}_{seed}` (`run_name`); train.py writes `{name}_{epoch}.model` (a plain state dict of the bare
  network) and `{name}_train_loss.json` into `--save-path`, plus `{name}_log.jsonl` and `{name}_resume.pt`
  (`RunFiles`);
* evaluate.py reads run `i` from `{load-path}/Run{i}/` (`locate_checkpoint`, `run_seeds`);
* a resume file is one dict (torchvision's reference scripts): weights, optimiser, schedule, the flags, every
  rank's RNG states and the history, written atomically after every epoch (`EpochCheckpointer`), read back
  with `weights_only=True` (`load_resume_state`) and refused when a flag that changes the run differs
  (`check_resume_compatible`, also used by active_learning.py for its state file); the learning rate may
  change on resume (`resume_training`), so a run stopped by a non-finite loss can continue more gently;
* the network flags a run was trained with are read back from its resume file beside a checkpoint
  (`saved_model_config`), so loading `{name}_{epoch}.model` with other flags is caught.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import net
from engine.models import load_checkpoint
from engine.training import EpochStats, NonFiniteLossError
from utils import distributed
from utils.errors import Interrupted, UserError
from utils.io import BackgroundWriter, atomic_torch_save, atomic_write_bytes, atomic_write_json, cpu_snapshot
from utils.validation import dangling_link, missing_reason

log = logging.getLogger(__name__)

RESUME_FORMAT = 1
# A mean training loss above this many nats (the true class's probability below e^-100 on average) means the
# weights have already diverged: such a state is not offered as a point to resume from.
DIVERGED_LOSS = 100.0

# --------------------------------------------------------------------------------------------------------
# Names


def format_coeff(coeff: float) -> str:
    """`3.0` as the original prints it (Python's str of a float)."""
    return str(float(coeff))


def run_name(model: str, seed: int | None, spectral_normalization: bool, mod: bool, coeff: float) -> str:
    """Name prefix of a run; `seed=None` gives the prefix without the seed (for result files)."""
    name = model
    if spectral_normalization:
        name += f"_sn_{format_coeff(coeff)}"
    if mod:
        name += "_mod"
    if seed is not None:
        name += f"_{seed}"
    return name


def checkpoint_file_name(name: str, epoch: int) -> str:
    """The checkpoint of run `name` after `epoch` epochs (counting from 1): `{name}_{epoch}.model`."""
    return f"{name}_{epoch}.model"


# --------------------------------------------------------------------------------------------------------
# Finding checkpoints (evaluate.py)


def run_seeds(seed: int, run: int, ensemble: int | None = None) -> list[int]:
    """Seeds of run `run` (1-based): `seed + run - 1` for single models; for ensembles of size E,
    `seed + (run-1)*E ... seed + run*E - 1` (seed 1: Run1 = 1..5, Run2 = 6..10)."""
    if ensemble is None:
        return [seed + run - 1]
    return list(range(seed + (run - 1) * ensemble, seed + run * ensemble))


def locate_checkpoint(
    load_path: Path,
    run: int,
    *,
    model: str,
    seed: int,
    sn: bool,
    mod: bool,
    coeff: float,
    epoch: int,
    ensemble_naming: bool = False,
) -> Path:
    """`{load_path}/Run{run}/{name}_{epoch}.model`; with `ensemble_naming` also the original's ensemble
    name `{model}_{seed}_{epoch}.model` (which ignores -sn/-mod). A `UserError` lists what exists otherwise."""
    folder = Path(load_path) / f"Run{run}"
    candidates = [folder / checkpoint_file_name(run_name(model, seed, sn, mod, coeff), epoch)]
    if ensemble_naming:
        candidates.append(folder / checkpoint_file_name(f"{model}_{seed}", epoch))
    for path in candidates:
        if path.is_file():
            return path
        if path.is_dir():
            raise UserError(
                f"expected the checkpoint file '{path}', but that is a folder; move it away or check --load-path"
            )
    for path in candidates:
        if dangling_link(path) is not None:
            raise UserError(
                f"expected the checkpoint '{path}', but it {missing_reason(path)}; restore the link's target "
                "or check --load-path"
            )
    if not folder.is_dir():
        raise UserError(
            f"expected the folder '{folder}' with run {run}'s checkpoints (layout {{load-path}}/Run{{i}}/); "
            "check --load-path and --runs"
        )
    existing = sorted(p.name for p in folder.glob("*.model"))
    shown = (
        ", ".join(existing[:10]) + (" ..." if len(existing) > 10 else "") if existing else "no .model files"
    )
    raise UserError(
        f"expected checkpoint '{candidates[0]}' but it does not exist (that folder has: {shown}); "
        "check --model, -sn, -mod, --coeff, --seed and --epoch"
    )


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"the resume file '{path}' could not be read ({type(err).__name__}); it is corrupt or not a "
            "resume file: delete it to start afresh"
        ) from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise UserError(
            f"'{path}' is not a resume file of this project's train.py; delete it to start afresh"
        )
    return state


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
# The files of one training run


class RunFiles:
    """The files of one run under `save_dir`, named as the original: `{name}_{epoch}.model` (a plain state
    dict of the bare network), `{name}_train_loss.json`, plus `{name}_log.jsonl` (one line per epoch) and
    `{name}_resume.pt` (everything `--resume` needs).

    `write_epoch` writes the resume file before the logs, each atomically: after a crash the logs are never
    ahead of the state a resume starts from, and both logs are rewritten in full from the history. It only
    reads what it is given, so `EpochCheckpointer` runs it on a `utils.io.BackgroundWriter`.
    """

    def __init__(self, save_dir: Path, name: str) -> None:
        self.save_dir, self.name = Path(save_dir), name
        # The epoch whose state this run has in its resume file (None: none yet), for the stop messages: set
        # by `write_epoch` once the file is in place, and to the start epoch by a resume.
        self.saved_epoch: int | None = None

    @property
    def resume(self) -> Path:
        return self.save_dir / f"{self.name}_resume.pt"

    @property
    def train_loss(self) -> Path:
        return self.save_dir / f"{self.name}_train_loss.json"

    @property
    def log(self) -> Path:
        return self.save_dir / f"{self.name}_log.jsonl"

    def model(self, epoch: int) -> Path:
        """The checkpoint after `epoch` epochs (counting from 1, as the original's file names)."""
        return self.save_dir / checkpoint_file_name(self.name, epoch)

    def save_model(self, model: nn.Module, epoch: int) -> Path:
        path = self.model(epoch)
        atomic_torch_save(net.unwrap_model(model).state_dict(), path)
        return path

    def write_epoch(
        self,
        state: Mapping[str, Any],
        history: Sequence[EpochStats],
        *,
        model_state: Mapping[str, torch.Tensor] | None = None,
        model_epoch: int | None = None,
    ) -> None:
        """The end-of-epoch files in a crash-safe order: `{name}_{model_epoch}.model` from `model_state` (when
        given), then the resume file from `state`, then the logs."""
        if model_state is not None:
            atomic_torch_save(model_state, self.model(model_epoch))
        save_resume_state(self.resume, state)
        self.saved_epoch = int(state["epoch"])
        self.write_logs(history)

    def write_logs(self, history: Sequence[EpochStats]) -> None:
        # The original's train-loss file: {"0": loss, "1": loss, ...} with its own loss definition.
        atomic_write_json(self.train_loss, {str(s.epoch): s.original_loss for s in history}, indent=None)
        lines = "".join(json.dumps(s.to_json(), sort_keys=False) + "\n" for s in history)
        atomic_write_bytes(self.log, lines.encode())

    @contextlib.contextmanager
    def explain_stops(self, history: Sequence[EpochStats]) -> Iterator[None]:
        """Turn Ctrl-C and a non-finite loss during training into one sentence saying what was kept."""
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted during epoch {len(history) + 1}; {self.kept()}") from None
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; {self._after_divergence(history)}") from None

    def kept(self) -> str:
        """What an interruption of this run leaves: the epoch its resume file really holds (the writes are
        awaited before this is asked), or that none was written."""
        if self.saved_epoch is None:
            return f"no epoch of {self.name} had been saved, so there is nothing to continue from"
        return (
            f"the state after epoch {self.saved_epoch} is in {self.resume}: rerun the same command with "
            "--resume (and without --overwrite) to continue"
        )

    def _after_divergence(self, history: Sequence[EpochStats]) -> str:
        """What to do after a non-finite loss, given the epochs whose state was saved."""
        if not history:
            return (
                "no checkpoint was written: rerun with a lower --lr (or --precision fp32), or check the data"
            )
        last = history[-1]
        if math.isfinite(last.loss) and last.loss <= DIVERGED_LOSS:
            return (
                f"the state after epoch {len(history)} (loss {last.loss:.4g}) is in {self.resume}: rerun the same "
                "command with --resume and a lower --lr to continue from it"
            )
        return (
            f"the state saved after epoch {len(history)} had already diverged (loss {last.loss:.3g}), so do not "
            f"resume from it: rerun with --overwrite, without --resume and with a lower --lr (or --precision "
            f"fp32), which starts afresh and replaces {self.resume}"
        )


@contextlib.contextmanager
def explain_ensemble_stops(
    files: Sequence[RunFiles], histories: Sequence[Sequence[EpochStats]]
) -> Iterator[None]:
    """`RunFiles.explain_stops` for ensemble members trained together (`files[k]`, `histories[k]`): one
    sentence saying which resume files hold the last finished epoch."""
    try:
        yield
    except (KeyboardInterrupt, NonFiniteLossError) as err:
        done = min(len(h) for h in histories)
        if isinstance(err, KeyboardInterrupt):  # what the resume files hold (the writes have been awaited)
            done = min(f.saved_epoch or 0 for f in files)
        where = f"{files[0].save_dir}/{{name}}_resume.pt for {', '.join(f.name for f in files)}"
        if isinstance(err, KeyboardInterrupt):
            kept = (
                f"the members' state after epoch {done} is in {where}: rerun the same command with --resume "
                "(and without --overwrite) to continue"
                if done
                else "no epoch had finished, so nothing was saved"
            )
            raise Interrupted(f"interrupted during epoch {done + 1}; {kept}") from None
        kept = (
            f"the last good states (after epoch {done}) are in {where}, which --resume continues"
            if done
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(f"{err}; {kept}") from None


@dataclass
class EpochCheckpointer:
    """`train_epochs`' `on_epoch_end` for train.py: appends the epoch to `history` and writes the epoch's
    files (`RunFiles.write_epoch`; the model file every `save_interval` epochs and after the last).

    The writes run on `writer`'s thread from CPU copies, overlapping the next epoch (a WRN-28-10 resume file
    is about 300 MB); their errors surface at the next epoch's end or when the writer closes. Every rank
    must call it (the RNG states are gathered, a collective); only the main rank writes.
    """

    files: RunFiles
    writer: BackgroundWriter
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    model_config: Mapping[str, Any]
    args: Mapping[str, Any]
    history: list[EpochStats]
    save_interval: int
    epochs: int
    is_main: bool = True

    def __call__(self, stats: EpochStats) -> None:
        self.history.append(stats)
        done = stats.epoch + 1
        rng_states = distributed.all_gather_objects(capture_rng_state())
        if not self.is_main:
            return
        model_state = cpu_snapshot(self.model.state_dict())
        state = {
            "epoch": done,
            "model": model_state,
            "model_config": self.model_config,
            "optimizer": cpu_snapshot(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": None,  # bf16 keeps fp32's exponent range: no loss scaling needed
            "args": self.args,
            "rng": rng_states,
            "history": [h.to_json() for h in self.history],
        }
        save_model = done % self.save_interval == 0 or done == self.epochs
        snapshot = list(self.history)
        self.writer.submit(
            lambda: self.files.write_epoch(
                state, snapshot, model_state=model_state if save_model else None, model_epoch=done
            )
        )


__all__ = [
    "EpochCheckpointer",
    "RESUME_FORMAT",
    "RunFiles",
    "capture_rng_state",
    "check_resume_compatible",
    "checkpoint_file_name",
    "explain_ensemble_stops",
    "format_coeff",
    "load_resume_state",
    "locate_checkpoint",
    "restore_rng_state",
    "resume_training",
    "run_name",
    "run_seeds",
    "sanitize_args",
    "save_resume_state",
    "set_initial_lr",
]
