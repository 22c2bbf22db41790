"""What every stage of the generator shares: file names, the class count, the seed offsets, and the
mini-batch and progress-bar helpers of its training loops."""

from __future__ import annotations

from collections.abc import Callable

import torch

from data.sources import AMNIST_FILES, AMNIST_MANIFEST
from engine.training import run_epochs
from utils.progress import progress_bar

SAMPLES_FILE, LABELS_FILE = AMNIST_FILES  # the released set's names, which the loader reads
MANIFEST_FILE = AMNIST_MANIFEST
GRID_FILE = "amnist_grid.png"
NUM_CLASSES = 10
# Offsets added to `--seed` so that every stage has its own stream and changing one stage's settings
# (e.g. the number of VAE epochs) leaves the others' random draws unchanged.
SEED_VAE, SEED_ENSEMBLE, SEED_SPLIT, SEED_CANDIDATES, SEED_LABELS, SEED_EVAL = 11, 23, 37, 41, 53, 67


def drop_stale_casts() -> None:
    """Call after every optimiser step of a loop that may run inside one `torch.autocast` region.

    Autocast caches the bf16 copy of each fp32 weight until the outermost autocast region ends, and an
    in-place optimiser update does not invalidate that copy: a whole training loop inside one region (as the
    pipeline runs each stage) would compute every forward pass with the initial weights and never learn.
    Without autocast the cache is empty and this does nothing, so fp32 results are unchanged.
    """
    torch.clear_autocast_cache()


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a shuffled epoch (the permutation comes from `generator`, on the CPU)."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def fit_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    desc: str,
    loss_name: str,
    progress: bool | None,
) -> list[float]:
    """The generator's training loop on the project's epoch plan (`engine.training.run_epochs`): per epoch one
    shuffled pass over `images` (order from a CPU generator seeded with `seed`), `batch_loss(indices)` the
    mean loss of a batch, one optimiser step per batch. Returns each epoch's mean loss per image, which the
    bar shows as `loss_name`."""
    order_gen = torch.Generator().manual_seed(seed)
    bar = progress_bar(range(epochs), desc=desc, unit="epoch", enabled=progress)

    def one_epoch(epoch: int) -> float:
        model.train()
        total, count = torch.zeros((), device=images.device), 0
        for idx in shuffled_batches(len(images), batch_size, order_gen, images.device):
            loss = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            drop_stale_casts()
            total += loss.detach() * len(idx)
            count += len(idx)
        return float(total) / count

    def show(loss: float) -> None:
        bar.set_postfix({loss_name: f"{loss:.3f}"})

    try:
        return run_epochs(one_epoch, epochs=epochs, epoch_bar=lambda _: bar, on_epoch_end=show)
    finally:
        bar.close()
