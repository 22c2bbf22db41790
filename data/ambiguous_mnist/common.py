"""What every stage of the generator shares: file names, the class count, the seed offsets, and the
mini-batch and progress-bar helpers of its training loops."""

from __future__ import annotations

import torch

from data.sources import AMNIST_FILES, AMNIST_MANIFEST

SAMPLES_FILE, LABELS_FILE = AMNIST_FILES  # the released set's names, which the loader reads
MANIFEST_FILE = AMNIST_MANIFEST
GRID_FILE = "amnist_grid.png"
NUM_CLASSES = 10
# Offsets added to `--seed` so that every stage has its own stream and changing one stage's settings
# (e.g. the number of VAE epochs) leaves the others' random draws unchanged.
SEED_VAE, SEED_ENSEMBLE, SEED_SPLIT, SEED_CANDIDATES, SEED_LABELS, SEED_EVAL = 11, 23, 37, 41, 53, 67


def no_bar(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None lets tqdm hide bars when output is not a terminal (logs stay readable)."""
    return None if progress is None else not progress


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
