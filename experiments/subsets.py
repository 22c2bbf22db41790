"""Small copies of real data sets in their official on-disk layouts, for the `smoke` scale.

The scripts the experiments call (train.py, evaluate.py, active_learning.py) read whole splits; a smoke run
points them at a data root holding the first N images of each split instead, written in exactly the format
the official download has (IDX for the MNIST family, pickles for CIFAR-10, JPEG files for Tiny-ImageNet).
So a smoke run exercises the same readers, loaders and scripts as a full one, on real images, in seconds.
"""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path

import numpy as np

import data
from utils.errors import UserError

_MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX of unsigned bytes: magic 0x00000800 + ndim, big-endian uint32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _mnist_family(name: str, source: Path, dest: Path, train: int, test: int) -> None:
    raw = dest / _MNIST_FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images, labels = data.load_split(name, source, split)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:count, 0].numpy())
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[:count].numpy().astype(np.uint8))


def _cifar10(source: Path, dest: Path, train: int, test: int) -> None:
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = data.load_split("cifar10", source, "train")
    parts = np.array_split(np.arange(min(train, len(labels))), 5)
    for number, part in enumerate(parts, start=1):
        _write_cifar_batch(folder / f"data_batch_{number}", images[part].numpy(), labels[part].numpy())
    images, labels = data.load_split("cifar10", source, "test")
    _write_cifar_batch(folder / "test_batch", images[:test].numpy(), labels[:test].numpy())


def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A CIFAR-10 python pickle: `data` (N, 3072) uint8 rows in CHW order, `labels` a list of ints."""
    entry = {"batch_label": path.name, "data": images.reshape(len(images), -1), "labels": labels.tolist()}
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def _tiny_imagenet(source: Path, dest: Path, count: int) -> None:
    """The first `count` test images (test_0.JPEG, test_1.JPEG, ...), copied unchanged."""
    images = source / "tiny-imagenet-200" / "test" / "images"
    out = dest / "tiny-imagenet-200" / "test" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"test_{index}.JPEG"
        if not (images / name).is_file():
            data.load_split("tiny_imagenet", source, "test")  # the loader's one-sentence error if absent
            held = len(list(images.glob("*.JPEG")))
            raise UserError(
                f"'{images / name}' is missing: '{images}' holds {held} of Tiny-ImageNet's 10,000 test images "
                f"(test_0.JPEG to test_9999.JPEG), as a partly unzipped archive leaves it; unzip "
                f"tiny-imagenet-200.zip into '{source}' again"
            )
        shutil.copyfile(images / name, out / name)


def write_subset_root(source: str | Path, dest: str | Path, sizes: dict[str, tuple[int, ...]]) -> Path:
    """A data root at `dest` with the first images of each set in `sizes` read from `source`.

    `sizes`: `{"mnist": (train, test), "fashion_mnist": (train, test), "cifar10": (train, test),
    "tiny_imagenet": (test,)}`; any subset of these names. Existing copies are rewritten.
    """
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, counts in sizes.items():
        if name in _MNIST_FOLDERS:
            _mnist_family(name, source, dest, *counts)
        elif name == "cifar10":
            _cifar10(source, dest, *counts)
        elif name == "tiny_imagenet":
            _tiny_imagenet(source, dest, *counts)
        else:
            raise ValueError(f"no subset writer for {name!r}")
    return dest
