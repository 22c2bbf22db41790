"""Train/validation/test loaders: a GPU-resident tensor loader (default) and a torchvision one.

Both yield `(x, y)` with x float32 normalised `(B, C, H, W)` and y int64 `(B,)` on the target device, have
`len()` (batches), `num_samples` and `set_epoch(epoch)`, keep the last smaller batch (no drop_last, as
the original), and draw an epoch's order and augmentation from one `torch.Generator` seeded from
`(seed, epoch)`. The draws are made on the CPU and shared by both loaders, so the order and augmentation
of an epoch do not depend on the device or the loader kind: for the same seed and epoch both loaders
yield the same batches. Calling `set_epoch(e)` before iterating makes epoch `e` reproducible, which is
what an exact resume needs; without it each pass over the loader uses the next epoch number.

- `loader="gpu"` (`TensorLoader`): the whole split lives on the device as one uint8 tensor (float for
  Ambiguous-MNIST); indexing, crop, flip and normalisation are batched tensor ops. No workers, no
  per-image Python: an augmented CIFAR-10 epoch takes well under a second on a GPU.
- `loader="torchvision"` (`TorchvisionLoader`): a torchvision-style `Dataset` and `DataLoader` doing
  what the original pipeline does per image on PIL images (`RandomCrop(32, padding=4)`,
  `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`, through the same functional ops those
  classes call), with `num_workers` processes. Its random parameters come from the epoch generator
  instead of the global RNG, so it is deterministic too, with any number of workers.

DDP: the training loader of rank `r` of `w` takes the `r`-th of `w` disjoint equal slices
(`N // w` samples) of the epoch permutation; the few samples left over differ from epoch to epoch.
Validation and test loaders never shuffle, never augment and are not sharded: every rank sees the whole
split, so metrics agree across ranks without a gather.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import functional as TF

from data import folders, imagenet
from data.registry import canonical_name, folder_options, folder_set, get_info
from data.sources import load_split
from data.transforms import crop_flip, normalize, to_shape
from utils.errors import UserError

LOADERS = ("gpu", "torchvision")
CROP_PADDING = 4
Batch = tuple[torch.Tensor, torch.Tensor]


def split_indices(
    num_samples: int, val_size: float = 0.1, val_seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) index arrays, exactly as the original DDU code splits off its validation set.

    The original does `np.random.seed(val_seed); np.random.shuffle(indices)` on `list(range(N))` and
    takes the first `floor(val_size * N)` as validation. A private `RandomState(val_seed)` draws the
    same numbers without touching NumPy's global state.
    """
    if not 0.0 <= val_size <= 1.0:
        raise UserError(f"the validation fraction must be in [0, 1], got {val_size}")
    indices = list(range(num_samples))
    np.random.RandomState(val_seed).shuffle(indices)
    split = int(np.floor(val_size * num_samples))
    return np.asarray(indices[split:], dtype=np.int64), np.asarray(indices[:split], dtype=np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of one rank: `positions` `(n,)` into the loader's subset, and per-position augmentation
    (`top`, `left` crop offsets in `[0, 2 * pad]`, `flip` bool), each `(n,)` on the CPU or None."""

    positions: torch.Tensor
    top: torch.Tensor | None
    left: torch.Tensor | None
    flip: torch.Tensor | None


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for `(seed, epoch)`; SeedSequence mixes the pair so nearby seeds do not collide."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass(frozen=True)
class Schedule:
    """What varies from epoch to epoch: the order, the crop/flip draws and this rank's share.

    Everything is drawn for the whole subset (size `size`) and then sliced for the rank, so the union of
    all ranks' epochs is the single-process epoch, augmentation included.
    """

    size: int
    shuffle: bool
    crop: bool
    flip: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    pad: int = CROP_PADDING

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")

    @property
    def num_samples(self) -> int:
        return self.size if self.world_size == 1 else self.size // self.world_size

    def plan(self, epoch: int) -> EpochPlan:
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.size, generator=gen) if self.shuffle else torch.arange(self.size)
        top = left = flip = None
        if self.crop:
            top = torch.randint(0, 2 * self.pad + 1, (self.size,), generator=gen)
            left = torch.randint(0, 2 * self.pad + 1, (self.size,), generator=gen)
        if self.flip:
            flip = torch.randint(0, 2, (self.size,), generator=gen).bool()
        share = slice(self.rank * self.num_samples, (self.rank + 1) * self.num_samples)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[share]

        return EpochPlan(order[share], take(top), take(left), take(flip))


class _EpochCounter:
    """`set_epoch(e)` picks the epoch of the next pass; without it every pass takes the next number."""

    def __init__(self) -> None:
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def _take_epoch(self) -> int:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        return epoch


class TensorLoader(_EpochCounter):
    """The GPU-resident loader: one device tensor for the whole split, batched augmentation.

    images: `(N, C, H, W)` uint8 (or float32 in [0, 1]), labels `(N,)` int64, both on the target device and
    shared between the loaders of one split; indices: `(M,)` subset of `0..N-1` this loader serves.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray | None,
        schedule: Schedule,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.device = images.device
        self.indices = (
            None if indices is None else torch.as_tensor(indices, dtype=torch.int64).to(self.device)
        )
        self.schedule = schedule
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        return self.schedule.num_samples

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        plan = self.schedule.plan(self._take_epoch())
        top, left, flip = (None if t is None else t.to(self.device) for t in (plan.top, plan.left, plan.flip))
        order = plan.positions.to(self.device)
        if self.indices is not None:
            order = self.indices[order]
        for start in range(0, self.num_samples, self.batch_size):
            part = slice(start, start + self.batch_size)
            idx = order[part]
            x = self.images[idx]
            if top is not None or flip is not None:
                x = crop_flip(
                    x,
                    None if top is None else top[part],
                    None if left is None else left[part],
                    None if flip is None else flip[part],
                    self.schedule.pad,
                )
            yield normalize(x, self.mean, self.std), self.labels[idx]


class _EpochSampler(Sampler):
    """Yields `(index, top, left, flip)` keys for `_ImageDataset`: -1 offsets mean no crop."""

    def __init__(self, schedule: Schedule, indices: np.ndarray | None) -> None:
        self.schedule, self.indices = schedule, indices
        self.epoch = 0

    def __len__(self) -> int:
        return self.schedule.num_samples

    def __iter__(self) -> Iterator[tuple[int, int, int, bool]]:
        plan = self.schedule.plan(self.epoch)
        n = len(plan.positions)
        positions = plan.positions.numpy()
        index = positions if self.indices is None else self.indices[positions]
        top = plan.top.tolist() if plan.top is not None else [-1] * n
        left = plan.left.tolist() if plan.left is not None else [-1] * n
        flip = plan.flip.tolist() if plan.flip is not None else [False] * n
        return iter(zip(index.tolist(), top, left, flip))


class _ImageDataset(Dataset):
    """Per-image pipeline of the original: numpy HWC uint8 -> PIL -> pad/crop, flip -> ToTensor -> Normalize.

    Float data (Ambiguous-MNIST) skips PIL, as the original's tensor datasets do.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, pad: int) -> None:
        self.use_pil = images.dtype == torch.uint8
        # Like torchvision's CIFAR10/MNIST datasets: HWC uint8 numpy (grayscale as HW) and a list of labels.
        if self.use_pil:
            data = images.permute(0, 2, 3, 1).numpy()
            self.data = np.ascontiguousarray(data[..., 0] if data.shape[-1] == 1 else data)
        else:
            self.data = images
        self.targets = labels.tolist()
        self.size = tuple(images.shape[2:])
        self.mean, self.std, self.pad = list(mean), list(std), pad

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int, int, bool]) -> tuple[torch.Tensor, int]:
        index, top, left, flip = key
        img = Image.fromarray(self.data[index]) if self.use_pil else self.data[index]
        if top >= 0:  # what RandomCrop(size, padding=pad) does, with offsets drawn by the sampler
            img = TF.crop(TF.pad(img, self.pad, fill=0), top, left, *self.size)
        if flip:  # what RandomHorizontalFlip does
            img = TF.hflip(img)
        x = TF.to_tensor(img) if self.use_pil else img
        return TF.normalize(x, self.mean, self.std), self.targets[index]


class TorchvisionLoader(_EpochCounter):
    """torchvision `Dataset` + `DataLoader` with PIL transforms, to compare with the original pipeline.

    images: `(N, C, H, W)` on the CPU; batches are moved to `device` (pinned memory when it is a GPU).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: np.ndarray | None,
        schedule: Schedule,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.batch_size = batch_size
        self.device = device
        self.sampler = _EpochSampler(schedule, indices)
        self.dataset = _ImageDataset(images, labels, mean, std, schedule.pad)
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )

    @property
    def num_samples(self) -> int:
        return self.schedule.num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.epoch = self._take_epoch()
        non_blocking = self.device.type == "cuda"
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


Loader = TensorLoader | TorchvisionLoader | folders.FolderLoader | imagenet.ImageNetLoader


def _read_split(name: str, root, split: str) -> tuple[torch.Tensor | folders.FolderDataset, torch.Tensor]:
    """A split in memory, or for an image folder too large for memory a dataset decoding from disk."""
    if get_info(name).folder is None:
        return load_split(name, root, split)
    folder = folder_set(name)
    folders.announce(folder)  # which of the two ways it is read, once per process
    if folder.in_memory:
        return folders.load_split(folder, split)  # decoded once per process
    dataset = folders.FolderDataset(
        folder.train if split == "train" else folder.test,
        folders.ImageReader(folder.channels, folder.image_size),
    )
    return dataset, dataset.labels


def _make_loader(
    kind: str,
    images: torch.Tensor | folders.FolderDataset,
    labels: torch.Tensor,
    indices: np.ndarray | None,
    schedule: Schedule,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    num_workers: int,
) -> Loader:
    if isinstance(images, folders.FolderDataset):
        return folders.FolderLoader(
            images, indices, schedule, batch_size, mean, std, device, num_workers or None
        )
    if kind == "gpu":
        return TensorLoader(images, labels, indices, schedule, batch_size, mean, std)
    return TorchvisionLoader(images, labels, indices, schedule, batch_size, mean, std, device, num_workers)


def _check_args(loader: str, batch_size: int, device: str | torch.device) -> tuple[str, torch.device]:
    kind = str(loader).lower()
    if kind not in LOADERS:
        raise UserError(f"unknown loader {loader!r}; choose one of: {', '.join(LOADERS)}")
    if int(batch_size) < 1:
        raise UserError(f"the batch size must be at least 1, got {batch_size}")
    return kind, torch.device(device)


def get_train_valid_loader(
    name: str,
    root: str | os.PathLike | None,
    batch_size: int,
    augment: bool = True,
    val_seed: int = 1,
    val_size: float = 0.1,
    *,
    device: str | torch.device = "cpu",
    loader: str = "gpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    test_batch_size: int | None = None,
    shuffle: bool = True,
    num_workers: int = 0,
) -> tuple[Loader, Loader]:
    """Training and validation loaders over the training split of `name`, split as the original.

    The validation part (`floor(val_size * N)` samples, see `split_indices`) is never augmented, never
    shuffled and not sharded; `augment=True` applies the registry's augmentation to the training part
    only. The training part is shuffled per epoch (`seed`, `set_epoch`) and sharded over
    `world_size` ranks. `test_batch_size` (default `batch_size`) is the validation batch size.
    """
    info = get_info(name)
    kind, device = _check_args(loader, batch_size, device)
    if not info.has_train:
        raise UserError(
            f"{info.name} has only a test split (an out-of-distribution set); train on another set"
        )
    if info.name == "imagenet":  # from disk through workers, with its own crops (data/imagenet.py)
        files = imagenet.scan_imagenet(root, "train")
        train_idx, valid_idx = split_indices(len(files), val_size, val_seed)
        plans = (
            Schedule(len(train_idx), shuffle, False, False, seed, rank, world_size),
            Schedule(len(valid_idx), False, False, False, seed),
        )
        return tuple(
            imagenet.ImageNetLoader(
                files,
                idx,
                plan,
                size,
                info.shape[-1],
                device,
                train=augment and idx is train_idx,
                num_workers=num_workers,
                seed=seed,
                epoch_rng=epoch_generator,
            )
            for idx, plan, size in zip(
                (train_idx, valid_idx), plans, (batch_size, test_batch_size or batch_size)
            )
        )
    images, labels = _read_split(info.name, root, "train")
    if kind == "gpu" and isinstance(images, torch.Tensor):
        images, labels = images.to(device), labels.to(device)
    train_idx, valid_idx = split_indices(len(labels), val_size, val_seed)
    aug = augment and info.augmentation == "crop_flip"
    train_schedule = Schedule(len(train_idx), shuffle, aug, aug, seed, rank, world_size)
    valid_schedule = Schedule(len(valid_idx), False, False, False, seed)
    common = {"mean": info.mean, "std": info.std, "device": device, "num_workers": num_workers}
    train = _make_loader(kind, images, labels, train_idx, train_schedule, batch_size, **common)
    valid = _make_loader(
        kind, images, labels, valid_idx, valid_schedule, test_batch_size or batch_size, **common
    )
    return train, valid


def get_test_loader(
    name: str,
    root: str | os.PathLike | None,
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    like: str | None = None,
    loader: str = "gpu",
    num_workers: int = 0,
) -> Loader:
    """Loader over the test split of `name`, in order, never augmented.

    `like` names the in-distribution set when `name` is used as out-of-distribution data: the images
    are then brought to its shape (channels by repeat or luma, size by bilinear resizing, see
    `data.transforms.to_shape`) and normalised with its constants, as a model trained on it expects.
    Fashion-MNIST `like="cifar10"` becomes `(3, 32, 32)`; CIFAR-10 `like="mnist"` becomes `(1, 28, 28)`.
    """
    kind, device = _check_args(loader, batch_size, device)
    if not folders.is_folder_name(name) and canonical_name(name) in ("imagenet", "imagenet_o"):
        target = get_info(like if like is not None else name)
        if target.shape[0] != 3:
            raise UserError(
                f"{name} has colour images; a network of {target.shape[0]}-channel inputs cannot score them"
            )
        files = (
            imagenet.scan_imagenet(root, "val")
            if canonical_name(name) == "imagenet"
            else imagenet.scan_imagenet_o(root)
        )
        plan = Schedule(len(files), False, False, False)
        return imagenet.ImageNetLoader(
            files,
            None,
            plan,
            batch_size,
            target.shape[-1],
            device,
            train=False,
            mean=target.mean,
            std=target.std,
            num_workers=num_workers,
        )
    if folders.is_folder_name(name) and like is not None and canonical_name(like) != canonical_name(name):
        # An out-of-distribution folder: every image below it, decoded straight to the shape of `like`.
        target = get_info(like)
        images = folders.ood_images(name, target.shape, skip_bad_images=folder_options().skip_bad_images)
        images, labels = (images, images.labels) if isinstance(images, folders.FolderDataset) else images
    else:
        info = get_info(name)
        target = get_info(like) if like is not None else info
        images, labels = _read_split(info.name, root, "test")
        if isinstance(images, torch.Tensor):
            images = to_shape(images, target.shape)
    if kind == "gpu" and isinstance(images, torch.Tensor):
        images, labels = images.to(device), labels.to(device)
    schedule = Schedule(len(labels), False, False, False)
    return _make_loader(
        kind, images, labels, None, schedule, batch_size, target.mean, target.std, device, num_workers
    )
