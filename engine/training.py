"""The training loop of DDU (Mukhoti et al. 2021) and what it needs: optimiser, schedule, device placement,
the epoch loop and accuracy. A run's files (checkpoints, logs, resume state) live in `engine.checkpointing`.

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

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import net
from utils import distributed
from utils.device import autocast_context
from utils.epochs import run_epochs
from utils.errors import UserError

log = logging.getLogger(__name__)

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cross_entropy": F.cross_entropy}
OPTIMIZERS = ("sgd", "adam")
MILESTONE_GAMMA = 0.1


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; training stops and the last good state is kept."""


# --------------------------------------------------------------------------------------------------------
# Optimiser, schedule, device placement


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

    def summary(self, epochs: int) -> str:
        """The log line of this epoch out of `epochs`."""
        val = "" if self.val_accuracy is None else f", validation accuracy {self.val_accuracy:.4f}"
        return (
            f"epoch {self.epoch + 1}/{epochs}: loss {self.loss:.4f}, accuracy {self.accuracy:.4f}, lr {self.lr:g}, "
            f"{self.images_per_s:.0f} images/s, {self.seconds:.1f} s{val}"
        )

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


def _nonfinite_message(epoch: int, step: int, value: float, precision: str | None = None) -> str:
    # train.py adds what was kept and how to go on (`engine.run_paths.RunFiles.explain_stops`).
    causes = "the learning rate is too high for this network, bf16 overflowed, or the data is bad"
    if precision != "bf16":
        causes = "the learning rate is too high for this network, or the data is bad"
    return (
        f"the training loss became {value} at epoch {epoch + 1}, step {step}, so training stopped ({causes})"
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
            _nonfinite_message(
                epoch, step, loss_sum if not math.isfinite(loss_sum) else objective_sum, settings.precision
            )
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


def epoch_progress(loader, settings: TrainSettings, desc: str):
    """The epoch's progress bar over `loader` (its length capped at `settings.max_steps`), on stderr."""
    total_steps = len(loader) if hasattr(loader, "__len__") else None
    if settings.max_steps and total_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    return tqdm(
        loader,
        total=total_steps,
        desc=desc,
        disable=not settings.progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


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
    bar = epoch_progress(loader, settings, desc or f"epoch {epoch + 1}")
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
            _nonfinite_message(
                epoch, step, loss_sum if not math.isfinite(loss_sum) else objective_sum, settings.precision
            )
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
    on_epoch_end: Callable[[Any], None] | None = None,
    one_epoch: Callable[[int], Any] | None = None,
    validate: Callable[[int, Any], None] | None = None,
) -> list:
    """Train from `start_epoch` up to `epochs` (exclusive, counting from 0); return the epochs' statistics.

    The epoch plan of `utils.epochs.run_epochs` with one pass of `train_one_epoch` per epoch and, when a
    `valid_loader` is given, its accuracy every `validate_every` epochs and after the last one;
    `on_epoch_end(stats)` may write checkpoints or raise to stop. A stacked ensemble passes its own
    `one_epoch(epoch)` and `validate(epoch, stats)` (`engine.stacked_ensemble.train_epochs_stacked`).
    """
    eval_model = net.unwrap_model(model)

    def validate_network(epoch: int, stats: EpochStats) -> None:
        stats.val_accuracy = evaluate_accuracy(eval_model, valid_loader, settings)

    return run_epochs(
        one_epoch or (lambda epoch: train_one_epoch(model, train_loader, optimizer, settings, epoch=epoch)),
        epochs=epochs,
        start_epoch=start_epoch,
        loader=train_loader,
        scheduler=scheduler,
        validate=(validate or validate_network) if valid_loader is not None else None,
        validate_every=validate_every,
        on_epoch_end=on_epoch_end,
    )


__all__ = [
    "EpochStats",
    "LOSSES",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "TrainSettings",
    "evaluate_accuracy",
    "make_optimizer",
    "make_scheduler",
    "prepare_model",
    "train_epochs",
    "train_one_epoch",
]
