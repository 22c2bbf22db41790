"""The epoch plan every training loop of the project follows, written once.

For each epoch from `start_epoch` to `epochs` (exclusive, counting from 0):

1. `loader.set_epoch(epoch)`, so the batch order and augmentation of an epoch depend on the epoch alone
   (a resumed run sees the same batches as an uninterrupted one);
2. `stats = one_epoch(epoch)`: one pass over the data, whatever a step is (one network, a stacked
   ensemble, a VAE's ELBO);
3. `scheduler.step()`, once per epoch as the original DDU code steps its `MultiStepLR`;
4. `validate(epoch, stats)` every `validate_every` epochs and after the last one (`validate_every=0`: after
   the last only); it records what it measures on `stats` and may keep the best epoch's weights;
5. `on_epoch_end(stats)` (checkpoints, logs; it may raise to stop).

The pieces that differ are passed in by the callers: `engine.training.train_epochs` (one network),
`engine.stacked_ensemble.train_epochs_stacked` (members stacked), `engine.acquisition` (the best epoch on
validation), and the Ambiguous-MNIST generator's classifiers and VAE. Nothing here knows about models, so
every layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

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
    """Run the epoch plan of the module docstring; returns each epoch's `one_epoch` result, in order.

    `epoch_bar` wraps the epoch range (a progress bar over epochs, e.g. `tqdm`); `loader` is only used for
    `set_epoch`, when it has one.
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
