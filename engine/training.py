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
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import net
from utils import distributed
from utils.device import autocast_context
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


# A step: train on one batch `(x, y)` and return, per network it trains (one, or a stacked ensemble's
# members), the objective as backpropagated `(M,)`, the mean loss `(M,)` and the correct predictions `(M,)`,
# all detached on the device, and the batch size.
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]


def _nonfinite_message(epoch: int, step: int, value: float, precision: str, who: str = "") -> str:
    """The one sentence of a stop on a non-finite loss (`who`: " of member 2 (lenet_2)" for ensembles);
    the caller that owns the run's files adds what was kept and how to go on
    (`engine.checkpointing.explain_stops`)."""
    causes = "the learning rate is too high for this network, or the data is bad"
    if precision == "bf16":
        causes = "the learning rate is too high for this network, bf16 overflowed, or the data is bad"
    return f"the training loss{who} became {value} at epoch {epoch + 1}, step {step}, so training stopped ({causes})"


def _check_finite(
    sums: list[list[float]], epoch: int, step: int, settings: TrainSettings, names: Sequence[str] | None
) -> None:
    """Raise `NonFiniteLossError` when a network's summed objective or loss (`sums[m]`, summed over ranks) is
    NaN or infinite, naming the networks (`names`, for a stacked ensemble's members)."""
    bad = [
        m
        for m, (objective, loss) in enumerate(sums)
        if not (math.isfinite(objective) and math.isfinite(loss))
    ]
    if not bad:
        return
    objective, loss = sums[bad[0]]
    who = f" of {', '.join(names[m] for m in bad)}" if names else ""
    raise NonFiniteLossError(
        _nonfinite_message(
            epoch, step, loss if not math.isfinite(loss) else objective, settings.precision, who
        )
    )


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


def run_epoch(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    step: Step,
    settings: TrainSettings,
    *,
    epoch: int = 0,
    lr: float,
    names: Sequence[str] | None = None,
    desc: str | None = None,
) -> list[EpochStats]:
    """One pass of `step` over `loader`, for one network or a stacked ensemble's members alike (torchvision's
    one `train_one_epoch` with the step passed in); one `EpochStats` per network, in `step`'s order.

    Statistics stay on the device and are read every `settings.log_interval` steps and at the end: a per-step
    `.item()` would stall the GPU. Each read sums over ranks (all ranks read at the same steps, so the
    all-reduces pair up) and raises `NonFiniteLossError`, before the caller saves anything, when a loss
    became NaN or infinite; with DDP all ranks raise together.
    """
    running = None  # (M, 2): [sum of the objectives as backpropagated, sum of the per-sample losses]
    correct = None  # (M,)
    bar = epoch_progress(loader, settings, desc or f"epoch {epoch + 1}")
    images = done = 0
    started = time.perf_counter()

    def read() -> list[float]:
        """[objective sums, loss sums, correct counts (each M), images], summed over ranks."""
        totals = torch.cat([running[:, 0], running[:, 1], correct.double(), running.new_tensor([images])])
        return distributed.all_reduce_sum(totals).tolist()

    def sums(totals: list[float]) -> list[list[float]]:
        return [list(pair) for pair in zip(totals[: len(running)], totals[len(running) : 2 * len(running)])]

    try:
        for x, y in bar:
            objectives, losses, hits, batch = step(x, y)
            if running is None:
                running = torch.zeros(len(losses), 2, dtype=torch.float64, device=losses.device)
                correct = torch.zeros(len(losses), dtype=torch.int64, device=losses.device)
            with torch.no_grad():
                running += torch.stack([objectives.double(), losses.double() * batch], 1)
                correct += hits
            images += batch
            done += 1
            if done % settings.log_interval == 0:
                totals = read()
                _check_finite(sums(totals), epoch, done, settings, names)
                if not bar.disable:
                    speed = totals[-1] / max(time.perf_counter() - started, 1e-9)
                    mean_loss = sum(totals[len(running) : 2 * len(running)]) / len(running)
                    bar.set_postfix(
                        loss=f"{mean_loss / max(totals[-1], 1):.4f}", img_s=f"{speed:,.0f}", refresh=False
                    )
            if settings.max_steps and done >= settings.max_steps:
                break
    finally:
        bar.close()
    if running is None:  # an empty loader
        running = torch.zeros(max(len(names or ()), 1), 2, dtype=torch.float64, device=settings.device)
        correct = torch.zeros(len(running), dtype=torch.int64, device=settings.device)
    totals = read()  # also synchronises the device for the timing
    seconds = time.perf_counter() - started
    m = len(running)
    _check_finite(sums(totals), epoch, done, settings, names)
    samples = max(totals[-1], 1.0)
    return [
        EpochStats(
            epoch=epoch,
            loss=totals[m + k] / samples,
            # Per rank the objective is a mean over 1/world_size of the batch; their sum over ranks is
            # world_size times the single-process objective.
            original_loss=totals[k] / settings.world_size / samples,
            accuracy=totals[2 * m + k] / samples,
            lr=lr,
            images=int(samples),
            seconds=seconds,
            images_per_s=samples / max(seconds, 1e-9),
        )
        for k in range(m)
    ]


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings):
    """Move a batch to the device in the settings' memory layout and run `model` under their precision."""
    x = x.to(settings.device, non_blocking=True)
    y = y.to(settings.device, non_blocking=True)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(settings.device, settings.precision):
        logits = model(x)
    return x, y, logits


def network_step(model: nn.Module, optimizer: torch.optim.Optimizer, settings: TrainSettings) -> Step:
    """The original's step for one network: cross-entropy of the fp32 logits, then backward and update.

    The original divides the (already mean) loss by the batch size once more under --loss-mean; with DDP by
    the global batch, so that the gradient all-reduce (a sum over ranks) gives the single-process gradient.
    """
    loss_fn = LOSSES[settings.loss_function]

    def step(x: torch.Tensor, y: torch.Tensor):
        x, y, logits = _forward(model, x, y, settings)
        loss = loss_fn(logits.float(), y)
        objective = loss / (len(y) * settings.world_size) if settings.loss_mean else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        hits = (logits.detach().argmax(dim=1) == y).sum()
        return objective.detach().view(1), loss.detach().view(1), hits.view(1), len(y)

    return step


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    *,
    epoch: int = 0,
    desc: str | None = None,
) -> EpochStats:
    """One pass over `loader` (batches `(x (B, C, H, W), y (B,))`), as the original's `train_single_epoch`:
    `run_epoch` with `network_step`."""
    model.train()
    lr = float(optimizer.param_groups[0]["lr"])
    return run_epoch(
        loader, network_step(model, optimizer, settings), settings, epoch=epoch, lr=lr, desc=desc
    )[0]


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


# --------------------------------------------------------------------------------------------------------
# The epoch plan


Stats = TypeVar("Stats")


def run_epochs(
    one_epoch: Callable[[int], Stats],
    *,
    epochs: int,
    start_epoch: int = 0,
    loader: Any = None,
    scheduler: Any = None,
    validate: Callable[[int, Stats], None] | None = None,
    validate_every: int = 0,
    on_epoch_end: Callable[[Stats], None] | None = None,
    epoch_bar: Callable[[range], Iterable[int]] | None = None,
) -> list[Stats]:
    """The epoch plan every training loop of the project follows, written once; returns each epoch's
    `one_epoch` result, in order. For each epoch from `start_epoch` to `epochs` (exclusive, from 0):

    1. `loader.set_epoch(epoch)` when it has one, so the batch order and augmentation of an epoch depend on
       the epoch alone (a resumed run sees the same batches as an uninterrupted one);
    2. `stats = one_epoch(epoch)`: one pass over the data, whatever a step is (one network, a stacked
       ensemble, a VAE's ELBO);
    3. `scheduler.step()`, once per epoch as the original DDU code steps its `MultiStepLR`;
    4. `validate(epoch, stats)` every `validate_every` epochs and after the last one (`validate_every=0`:
       after the last only); it records what it measures on `stats` and may keep the best epoch's weights;
    5. `on_epoch_end(stats)` (checkpoints, logs; it may raise to stop).

    The pieces that differ are passed in: `train_epochs` (one network), `engine.training_run` (members
    stacked), `engine.acquisition` (the best epoch on validation), the Ambiguous-MNIST generator's
    classifiers and VAE (`tools.ambiguous_mnist`). `epoch_bar` wraps the epoch range (a progress bar).
    """
    history = []
    epoch_range = range(start_epoch, epochs)
    for epoch in epoch_bar(epoch_range) if epoch_bar is not None else epoch_range:
        if loader is not None and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        stats = one_epoch(epoch)
        if scheduler is not None:
            scheduler.step()
        last = epoch + 1 == epochs
        if validate is not None and (last or (validate_every > 0 and (epoch + 1) % validate_every == 0)):
            validate(epoch, stats)
        if on_epoch_end is not None:
            on_epoch_end(stats)
        history.append(stats)
    return history


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
    """Train one network from `start_epoch` up to `epochs` (exclusive, counting from 0); return the epochs'
    statistics.

    The epoch plan (`run_epochs`) with one `train_one_epoch` per epoch and, when a
    `valid_loader` is given, its accuracy every `validate_every` epochs and after the last one;
    `on_epoch_end(stats)` may write checkpoints or raise to stop. A stacked ensemble follows the same plan
    with `engine.stacked_ensemble.train_one_epoch_stacked` (`engine.training_run`).
    """
    eval_model = net.unwrap_model(model)

    def validate(epoch: int, stats: EpochStats) -> None:
        stats.val_accuracy = evaluate_accuracy(eval_model, valid_loader, settings)

    return run_epochs(
        lambda epoch: train_one_epoch(model, train_loader, optimizer, settings, epoch=epoch),
        epochs=epochs,
        start_epoch=start_epoch,
        loader=train_loader,
        scheduler=scheduler,
        validate=validate if valid_loader is not None else None,
        validate_every=validate_every,
        on_epoch_end=on_epoch_end,
    )


__all__ = [
    "EpochStats",
    "LOSSES",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "Step",
    "TrainSettings",
    "evaluate_accuracy",
    "make_optimizer",
    "make_scheduler",
    "network_step",
    "prepare_model",
    "run_epoch",
    "run_epochs",
    "train_epochs",
    "train_one_epoch",
]
