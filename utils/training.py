"""The training loop of DDU (Mukhoti et al. 2021) and what it needs: optimiser and schedule, the epoch
loop, accuracy, resumable state and the run's output files.

The recipe is the original's: SGD (momentum, weight decay, optional Nesterov) or Adam, cross-entropy on the
logits, `MultiStepLR` dropping the learning rate tenfold at two milestones, stepped once per epoch. What is
added is speed (bf16 autocast, channels_last, device-resident batches, no host synchronisation except every
`log_interval` steps), an exact resume, DistributedDataParallel and a stop on a non-finite loss.

Reusable pieces (active learning trains with the same loop):

    settings = TrainSettings(device=device, precision="fp32")
    optimizer = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = make_scheduler(optimizer, (150, 250))
    history = train_epochs(model, train_loader, optimizer, scheduler, settings, epochs=350)

`--loss-mean` keeps the original's meaning: the loss is already the batch mean (`F.cross_entropy`'s
default reduction) and `--loss-mean` divides it once more by the batch size, i.e. scales the gradient by
1/B. The "Average loss" the original prints and stores in `{name}_train_loss.json` is the sum of the
per-batch training objectives divided by the number of samples (about the mean loss / B); we store that
same number there for compatibility and the true per-sample mean loss in the JSON-lines log.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import net
from utils import cli, distributed
from utils.device import autocast_context
from utils.errors import UserError
from utils.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from data import DatasetInfo

log = logging.getLogger(__name__)

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cross_entropy": F.cross_entropy}
OPTIMIZERS = ("sgd", "adam")
MILESTONE_GAMMA = 0.1
RESUME_FORMAT = 1

# Architecture options of `net.create_model` that train.py exposes as flags (None: the paper's size).
ARCH_FLAGS = cli.ARCH_FLAGS

# Flags that change what is trained; a resume with any of them changed would silently be another run.
# Flags that only change speed, logging or where files go (epochs, workers, compile, channels_last,
# loader, dataset root, intervals, device) may differ on resume.
RESUME_MUST_MATCH = (
    "seed",
    "dataset",
    "data_aug",
    "val_seed",
    "model",
    "sn",
    "mod",
    "coeff",
    *ARCH_FLAGS,
    "train_batch_size",
    "per_rank_batch",
    "learning_rate",
    "momentum",
    "nesterov",
    "weight_decay",
    "optimiser",
    "loss_function",
    "loss_mean",
    "first_milestone",
    "second_milestone",
    "precision",
    "steps_per_epoch",
    "world_size",
)


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; training stops and the last good state is kept."""


# --------------------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def model_config(args: argparse.Namespace, info: DatasetInfo) -> dict[str, Any]:
    """Keyword arguments of `net.create_model` for a run (stored in the resume file to rebuild the model).

    `info` is the data set's `data.DatasetInfo`: it fixes the class count and the 1x28x28 variant.
    """
    return cli.model_config(args, info.num_classes, mnist=tuple(info.shape) == (1, 28, 28))


build_model = cli.create_from_config


def make_optimizer(
    parameters: Iterable[nn.Parameter],
    name: str = "sgd",
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """The original's optimisers: SGD(lr, momentum, weight_decay, nesterov) or Adam(lr, weight_decay)."""
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise UserError(f"unknown optimiser '{name}'; choose one of: {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = MILESTONE_GAMMA
) -> torch.optim.lr_scheduler.MultiStepLR:
    """The original's step schedule: the learning rate times `gamma` at each milestone (in epochs)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def prepare_model(
    model: nn.Module,
    device: torch.device,
    *,
    channels_last: bool = False,
    compile: bool = False,
    dist_info: distributed.DistInfo | None = None,
) -> nn.Module:
    """Move `model` to `device` and wrap it for training: DistributedDataParallel across ranks (never
    DataParallel, so checkpoints carry no `module.` prefix), then `torch.compile` if asked.

    Returns the module to train; `net.unwrap_model` gives back the bare network for saving and evaluation.
    """
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist_info is not None and dist_info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile:
        model = torch.compile(model)
    return model


# --------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainSettings:
    """How steps are run; nothing here changes the recipe except `loss_mean` (see the module docstring).

    `world_size` is only used to scale `loss_mean` to the global batch and to sum statistics across ranks.
    `max_steps` (0: all) cuts each epoch short, for smoke tests and benchmarks.
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    loss_function: str = "cross_entropy"
    loss_mean: bool = False
    log_interval: int = 50
    world_size: int = 1
    progress: bool = True
    max_steps: int = 0

    def __post_init__(self) -> None:
        if self.loss_function not in LOSSES:
            raise UserError(f"unknown loss '{self.loss_function}'; choose one of: {', '.join(LOSSES)}")
        if self.precision not in ("bf16", "fp32"):
            raise UserError(f"unknown precision '{self.precision}'; choose bf16 or fp32")


@dataclass
class EpochStats:
    """One epoch's summary; `epoch` counts from 0 as the original's train-loss keys.

    `loss` is the mean per-sample training loss, `original_loss` the number the original reports (see the
    module docstring), `accuracy` the training accuracy under augmentation, `lr` the rate used.
    """

    epoch: int
    loss: float
    original_loss: float
    accuracy: float
    lr: float
    images: int
    seconds: float
    images_per_s: float
    val_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EpochStats:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            **{k: v for k, v in obj.items() if k in names},
            extra={k: v for k, v in obj.items() if k not in names},
        )


def _nonfinite_message(epoch: int, step: int, value: float) -> str:
    return (
        f"the training loss became {value} at epoch {epoch + 1}, step {step}; training stopped and the last "
        "good state was kept: lower --lr, try --precision fp32, or check the data"
    )


def _check_progress(
    running: torch.Tensor, images: int, epoch: int, step: int, bar, started: float, settings: TrainSettings
) -> None:
    """Synchronise once: sum `[objective, loss * n]` and the sample count over ranks, stop on a non-finite
    loss, update the bar.

    Every rank calls this at the same steps, so the all-reduce pairs up and all ranks stop together.
    """
    objective_sum, loss_sum, samples = distributed.all_reduce_sum(
        torch.cat([running, running.new_tensor([images])])
    ).tolist()
    if not (math.isfinite(objective_sum) and math.isfinite(loss_sum)):
        raise NonFiniteLossError(
            _nonfinite_message(epoch, step, loss_sum if not math.isfinite(loss_sum) else objective_sum)
        )
    if bar is not None and not bar.disable:
        speed = samples / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / max(samples, 1):.4f}", img_s=f"{speed:,.0f}", refresh=False)


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings):
    """Move a batch to the device in the settings' memory layout and run `model` under their precision."""
    x = x.to(settings.device, non_blocking=True)
    y = y.to(settings.device, non_blocking=True)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(settings.device, settings.precision):
        logits = model(x)
    return x, y, logits


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    *,
    epoch: int = 0,
    desc: str | None = None,
) -> EpochStats:
    """One pass over `loader` (batches `(x (B, C, H, W), y (B,))`), as the original's `train_single_epoch`.

    Statistics stay on the device and are read every `settings.log_interval` steps and at the end: a
    per-step `.item()` would stall the GPU. Raises `NonFiniteLossError` (before the caller saves anything)
    when the loss becomes NaN or infinite; with DDP all ranks raise together.
    """
    device = settings.device
    loss_fn = LOSSES[settings.loss_function]
    model.train()
    lr = float(optimizer.param_groups[0]["lr"])
    # [sum of the training objectives as backpropagated, sum of the per-sample losses]; the sample count
    # is known on the host, and nothing here is read back before a check point.
    running = torch.zeros(2, dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total_steps = len(loader) if hasattr(loader, "__len__") else None
    if settings.max_steps and total_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    bar = tqdm(
        loader,
        total=total_steps,
        desc=desc or f"epoch {epoch + 1}",
        disable=not settings.progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    images = 0
    step = 0
    started = time.perf_counter()
    try:
        for x, y in bar:
            x, y, logits = _forward(model, x, y, settings)
            loss = loss_fn(logits.float(), y)
            # The original divides the (already mean) loss by the batch size once more under --loss-mean.
            objective = loss / (len(y) * settings.world_size) if settings.loss_mean else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            with torch.no_grad():
                running += torch.stack([objective.detach().double(), loss.detach().double() * len(y)])
                correct += (logits.detach().argmax(dim=1) == y).sum()
            images += len(y)
            step += 1
            if step % settings.log_interval == 0:
                _check_progress(running, images, epoch, step, bar, started, settings)
            if settings.max_steps and step >= settings.max_steps:
                break
    finally:
        bar.close()
    totals = torch.cat([running, correct.double().view(1), running.new_tensor([images])])
    totals = distributed.all_reduce_sum(totals).tolist()  # also synchronises the device for the timing
    seconds = time.perf_counter() - started
    objective_sum, loss_sum, num_correct, samples = totals
    if not (math.isfinite(objective_sum) and math.isfinite(loss_sum)):
        raise NonFiniteLossError(
            _nonfinite_message(epoch, step, loss_sum if not math.isfinite(loss_sum) else objective_sum)
        )
    samples = max(samples, 1.0)
    return EpochStats(
        epoch=epoch,
        loss=loss_sum / samples,
        # Per rank the objective is a mean over 1/world_size of the batch; their sum over ranks is
        # world_size times the single-process objective.
        original_loss=objective_sum / settings.world_size / samples,
        accuracy=num_correct / samples,
        lr=lr,
        images=int(samples),
        seconds=seconds,
        images_per_s=samples / max(seconds, 1e-9),
    )


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], settings: TrainSettings
) -> float:
    """Top-1 accuracy of `model` (in eval mode) over `loader`, summed over ranks when their loaders differ.

    Pass the bare network (`net.unwrap_model`), not the DDP wrapper: evaluation needs no gradient sync.
    Every rank sees the whole validation split (the data loaders do not shard it), so the summed ratio is
    the same number a single process gets.
    """
    device = settings.device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in loader:
        x, y, logits = _forward(model, x, y, settings)
        correct += (logits.argmax(dim=1) == y).sum()
        total += len(y)
    model.train(was_training)
    correct, total = distributed.all_reduce_sum(torch.stack([correct, correct.new_tensor(total)])).tolist()
    return correct / total if total else float("nan")


def train_epochs(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    settings: TrainSettings,
    *,
    epochs: int,
    start_epoch: int = 0,
    valid_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    validate_every: int = 0,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train from `start_epoch` up to `epochs` (exclusive, counting from 0); return the epochs' statistics.

    Per epoch: `train_loader.set_epoch(epoch)` (so order and augmentation are the same whether or not
    the run was resumed), one pass, `scheduler.step()` (per epoch, as the original), validation every
    `validate_every` epochs and after the last one when a `valid_loader` is given, then
    `on_epoch_end(stats)` (e.g. to write checkpoints; it may raise to stop).
    """
    history = []
    eval_model = net.unwrap_model(model)
    for epoch in range(start_epoch, epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, settings, epoch=epoch)
        if scheduler is not None:
            scheduler.step()
        last = epoch + 1 == epochs
        if valid_loader is not None and (last or (validate_every > 0 and (epoch + 1) % validate_every == 0)):
            stats.val_accuracy = evaluate_accuracy(eval_model, valid_loader, settings)
        if on_epoch_end is not None:
            on_epoch_end(stats)
        history.append(stats)
    return history


# --------------------------------------------------------------------------------------------------------
# Resumable state


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
    keys: Sequence[str] = RESUME_MUST_MATCH,
    flag_names: Mapping[str, str] | None = None,
    source: str = "the resume file",
) -> None:
    """Raise a `UserError` naming each flag in `keys` whose value differs between the saved and this run."""
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
            "values, or start a fresh run without --resume (or with another --save-path)"
        )


# --------------------------------------------------------------------------------------------------------
# Output files


class RunFiles:
    """The files of one run under `save_dir`, named as the original: `{name}_{epoch}.model` (a plain state
    dict of the bare network), `{name}_train_loss.json`, plus `{name}_log.jsonl` (one line per epoch) and
    `{name}_resume.pt` (everything `--resume` needs).

    `write_epoch` writes the resume file before the logs, each atomically: after a crash the logs are never
    ahead of the state a resume starts from, and both logs are rewritten in full from the history. It only
    reads what it is given, so train.py runs it on a `utils.io.BackgroundWriter` with a `cpu_snapshot`.
    """

    def __init__(self, save_dir: Path, name: str) -> None:
        self.save_dir, self.name = Path(save_dir), name

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
        return self.save_dir / f"{self.name}_{epoch}.model"

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
        self.write_logs(history)

    def write_logs(self, history: Sequence[EpochStats]) -> None:
        # The original's train-loss file: {"0": loss, "1": loss, ...} with its own loss definition.
        atomic_write_json(self.train_loss, {str(s.epoch): s.original_loss for s in history}, indent=None)
        lines = "".join(_json_line(s.to_json()) for s in history)
        atomic_write_bytes(self.log, lines.encode())


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=False) + "\n"


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


__all__ = [
    "ARCH_FLAGS",
    "EpochStats",
    "LOSSES",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "RESUME_MUST_MATCH",
    "RunFiles",
    "TrainSettings",
    "build_model",
    "capture_rng_state",
    "check_resume_compatible",
    "evaluate_accuracy",
    "load_resume_state",
    "make_optimizer",
    "make_scheduler",
    "model_config",
    "prepare_model",
    "restore_rng_state",
    "sanitize_args",
    "save_resume_state",
    "train_epochs",
    "train_one_epoch",
]
