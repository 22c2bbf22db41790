"""TensorBoard logs of the per-epoch numbers the JSON-lines log already holds, as the original's
`SummaryWriter` did. TensorBoard is optional: only `--tensorboard` needs it.

    with epoch_writer("runs/stats_logging/resnet18_1", purge_step=start_epoch + 1) as writer:
        add_scalars(writer, stats.to_json(), step=stats.epoch + 1)

Tags are the JSON keys (`loss`, `accuracy`, `lr`, `val_accuracy`, `images_per_s`), and train.py also writes the
original's own scalar, `{name}_train_loss` with the number the original computes (`EpochStats.original_loss`:
the sum of the batch-mean losses over the number of samples; `add_original_train_loss`); the step is the
number of epochs done, so a resumed run continues the same curves (`purge_step` hides what an interrupted run wrote
after the epoch it resumes from).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from utils.errors import UserError

EPOCH_SCALARS = ("loss", "accuracy", "lr", "val_accuracy", "images_per_s")
DEFAULT_FOLDER = "stats_logging"  # under --save-path / --output-dir, as the original's SummaryWriter folder
INSTALL_HINT = "pip install tensorboard (it is in requirements-dev.txt)"


def require_tensorboard(flag: str = "--tensorboard") -> None:
    """Raise a one-sentence `UserError` when the tensorboard package is missing (checked before training)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(
            f"{flag} needs the tensorboard package, which is not installed: {INSTALL_HINT}"
        ) from None


def resolve_folder(value: str | None, base: str | Path) -> Path | None:
    """The folder of `--tensorboard [DIR]`: None when the flag is absent, `{base}/stats_logging` without DIR."""
    if value is None:
        return None
    return Path(base) / DEFAULT_FOLDER if value == "" else Path(value)


@contextlib.contextmanager
def epoch_writer(log_dir: str | Path | None, *, purge_step: int | None = None) -> Iterator[Any]:
    """A `torch.utils.tensorboard.SummaryWriter` on `log_dir`, closed on exit; None when `log_dir` is None."""
    if log_dir is None:
        yield None
        return
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
    try:
        yield writer
    finally:
        writer.close()


def add_scalars(
    writer: Any,
    values: Mapping[str, Any],
    *,
    step: int,
    keys: tuple[str, ...] = EPOCH_SCALARS,
    prefix: str = "",
) -> None:
    """Write `values[key]` for each of `keys` that is a number (a missing or None one is skipped)."""
    if writer is None:
        return
    for key in keys:
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(prefix + key, float(value), step)
    writer.flush()


def add_original_train_loss(writer: Any, name: str, original_loss: float, *, step: int) -> None:
    """The scalar the original's train.py writes every epoch: tag `{name}_train_loss` (its run name), value
    its "Average loss", step the number of epochs done."""
    add_scalars(writer, {f"{name}_train_loss": original_loss}, step=step, keys=(f"{name}_train_loss",))


__all__ = [
    "DEFAULT_FOLDER",
    "EPOCH_SCALARS",
    "add_original_train_loss",
    "add_scalars",
    "epoch_writer",
    "require_tensorboard",
    "resolve_folder",
]
