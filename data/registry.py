"""The one table of data sets: names, class counts, image shapes, normalisation and augmentation.

Everything else (loaders, scripts, models' input shapes) reads from here, so a data set's constants are
written exactly once. Normalisation constants are those of the original DDU code: the CIFAR-10 constants
(mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)) for every 3x32x32 set and the MNIST constants
((0.1307,), (0.3081,)) for every 1x28x28 set. Out-of-distribution data is normalised with the
in-distribution set's constants (see `data.loaders.get_test_loader(like=...)`), never its own.

Augmentation choices (what `augment=True` applies to the training split):

- CIFAR-10/100: random crop 32 with zero padding 4 plus horizontal flip, as the original.
- SVHN: none. The original applies none as far as we know, and we keep it that way so that numbers stay
  comparable: horizontal flips are wrong for digits (a mirrored 2, 3, 4, 5, 7 or 9 is not that digit), and
  SVHN crops are centred on one digit with its neighbours visible at the edges, so a 4-pixel shift can
  push the labelled digit towards the border and a neighbour into the centre. In the paper SVHN is only
  an out-of-distribution set, where augmentation never applies anyway.
- MNIST family and the embedded digits: none, as the original.
- Image folders (`folder:PATH`, `data.folders`): `--augment`, by default crop_flip for RGB sets and none
  for greyscale ones.

`folder:PATH` names a parametrised data set: its entry is built from the folder itself (class list,
channels, image size, mean and std of its training split; `data.folders.describe`) with the options of
`set_folder_options` (the scripts' `--image-size`, `--augment`, `--skip-bad-images`), once per process.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from data import folders
from data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set looks like to the network.

    `shape` is `(C, H, W)` as fed to the network; `augmentation` is "crop_flip" or "none" and says what
    `augment=True` does; `has_train` is False for test-only (out-of-distribution) sets. `folder` is None
    for the registered sets and, for `folder:PATH`, what a checkpoint records of it
    (`data.folders.FolderSet.config`: folder, image size, channels, classes, mean, std, augment).
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    has_train: bool
    folder: Mapping[str, Any] | None = None


def _cifar_like(name: str, num_classes: int, augmentation: str, has_train: bool = True) -> DatasetInfo:
    return DatasetInfo(name, num_classes, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, augmentation, has_train)


def _mnist_like(name: str, has_train: bool = True) -> DatasetInfo:
    return DatasetInfo(name, 10, (1, 28, 28), MNIST_MEAN, MNIST_STD, "none", has_train)


_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _cifar_like("cifar10", 10, "crop_flip"),
        _cifar_like("cifar100", 100, "crop_flip"),
        _cifar_like("svhn", 10, "none"),
        # Test only; labels are all 0, the class count is that of Tiny-ImageNet and is never used.
        _cifar_like("tiny_imagenet", 200, "none", has_train=False),
        _mnist_like("mnist"),
        _mnist_like("fashion_mnist"),
        _mnist_like("dirty_mnist"),
        _mnist_like("ambiguous_mnist"),
        # Embedded demo sets built from scikit-learn's digits and sample photographs (data/digits.py).
        _mnist_like("digits"),
        _mnist_like("digits_clean"),
        _mnist_like("digits_ambiguous"),
        _mnist_like("digits_ood", has_train=False),
        # ILSVRC-2012 and ImageNet-O from their folders (data/imagenet.py); the side follows --image-size.
        DatasetInfo(
            "imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "random_resized_crop", True
        ),
        DatasetInfo("imagenet_o", 200, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "none", False),
    )
}


# Dirty sets and their (clean, ambiguous) parts, each also a registered set: evaluation scores the parts
# separately (the paper's Figure 1 / Table 1 split of aleatoric and epistemic uncertainty).
_DIRTY_PARTS: dict[str, tuple[str, str]] = {
    "dirty_mnist": ("mnist", "ambiguous_mnist"),
    "digits": ("digits_clean", "digits_ambiguous"),
}


@dataclass(frozen=True)
class FolderOptions:
    """How `folder:PATH` sets are read in this process (`set_folder_options`)."""

    image_size: int | None = None
    augment: str | None = None
    skip_bad_images: bool = False


_folder_options = FolderOptions()


def set_folder_options(
    image_size: int | None = None, augment: str | None = None, skip_bad_images: bool = False
) -> None:
    """The options every `folder:PATH` set of this process is read with (the scripts' --image-size,
    --augment and --skip-bad-images); they apply to names resolved afterwards."""
    global _folder_options
    if augment is not None and augment not in folders.AUGMENTATIONS:
        raise UserError(f"--augment must be one of {', '.join(folders.AUGMENTATIONS)}, got {augment!r}")
    if image_size is not None and int(image_size) < 8:
        raise UserError(f"--image-size must be at least 8 pixels, got {image_size}")
    _folder_options = FolderOptions(image_size, augment, bool(skip_bad_images))


def folder_options() -> FolderOptions:
    """The options `folder:PATH` sets are read with now."""
    return _folder_options


def folder_parser() -> argparse.ArgumentParser:
    """`--image-size`, `--augment` and `--skip-bad-images` (for `folder:PATH` data sets), as a parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("image folders (--dataset folder:PATH)")
    group.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="bring folder images to N x N (default: the size every training image has; shorter side resized "
        "to N, then centre-cropped)",
    )
    group.add_argument(
        "--augment",
        choices=folders.AUGMENTATIONS,
        default=None,
        help="augmentation of a folder's training split (default: crop_flip for RGB, none for greyscale)",
    )
    group.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out folder files Pillow cannot read, with a warning (default: refuse them)",
    )
    return parser


def folder_set(name: str) -> folders.FolderSet:
    """The described image-folder training set of `folder:PATH` under the current options."""
    options = _folder_options
    return folders.describe(
        name,
        image_size=options.image_size,
        augment=options.augment,
        skip_bad_images=options.skip_bad_images,
    )


def _folder_info(name: str) -> DatasetInfo:
    folder = folder_set(name)
    return DatasetInfo(
        folder.name,
        len(folder.classes),
        folder.shape,
        folder.mean,
        folder.std,
        folder.augment,
        True,
        folder.config(),
    )


def is_folder(name: object) -> bool:
    """Whether `name` is an image-folder set, `folder:PATH`."""
    return folders.is_folder_name(name)


def list_datasets() -> list[str]:
    """Canonical names of every registered data set, in registry order."""
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """Map a user-typed name to its canonical form: 'Dirty-MNIST' and 'dirty-mnist' become 'dirty_mnist'.

    `folder:PATH` becomes `folder:` and the resolved path (a missing folder is a `UserError`).
    Raises `UserError` listing the valid names when the name is unknown.
    """
    if is_folder(name):
        return folders.canonical_folder_name(name)
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UserError(
            f"unknown data set {name!r}; choose one of: {', '.join(_REGISTRY)}, or folder:PATH for a folder of "
            "images"
        )
    return key


def get_info(name: str) -> DatasetInfo:
    """The registry entry for `name` (any accepted spelling); for `folder:PATH` the entry built from the
    folder's training split (which must exist: an out-of-distribution-only folder has no entry)."""
    if is_folder(name):
        return _folder_info(name)
    info = _REGISTRY[canonical_name(name)]
    if info.name in ("imagenet", "imagenet_o") and _folder_options.image_size is not None:
        side = _folder_options.image_size
        return dataclasses.replace(info, shape=(3, side, side))  # --image-size: smaller crops for tests
    return info


def dirty_parts(name: str) -> tuple[str, str] | None:
    """`(clean, ambiguous)` registry names of a dirty set ('dirty_mnist', 'digits'); None for other sets."""
    return None if is_folder(name) else _DIRTY_PARTS.get(canonical_name(name))
