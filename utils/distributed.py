"""Distributed data parallel set-up from the variables `torchrun` sets, falling back to one process.

    torchrun --nproc_per_node=4 train.py --seed 1 --dataset cifar10 --model wide_resnet -sn -mod

`torchrun` exports RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT); when they are absent the
run is an ordinary single process and every helper here is a no-op, so the training code has no branches
for the two cases. NCCL is used between GPUs and gloo on the CPU (also what the tests use).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: `rank` among `world_size` processes, `local_rank` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs progress and draws progress bars."""
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"the environment variable {name}={value!r} is not an integer; launch with torchrun"
        ) from None


def read_env() -> DistInfo:
    """The rank layout from RANK / WORLD_SIZE / LOCAL_RANK, or a single process when they are unset."""
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None or world_size is None:
        return DistInfo()
    if not 0 <= rank < world_size:
        raise UserError(
            f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size}); launch with torchrun"
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=rank if local_rank is None else local_rank)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU); return the layout.

    `device` must already be this rank's device (see `utils.device.select_device(no_gpu, local_rank)`).
    """
    info = read_env()
    if not info.enabled:
        return info
    if not dist.is_available():  # pragma: no cover - every supported build has it
        raise UserError("this PyTorch build has no torch.distributed; train with a single process")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        log.debug("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)
    return info


def cleanup() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (and return it); unchanged for a single process."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (`[obj]` for a single process); used for per-rank RNG states."""
    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
