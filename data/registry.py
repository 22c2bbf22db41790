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
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set looks like to the network.

    `shape` is `(C, H, W)` as fed to the network; `augmentation` is "crop_flip" or "none" and says what
    `augment=True` does; `has_train` is False for test-only (out-of-distribution) sets.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    has_train: bool


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
    )
}


# Dirty sets and their (clean, ambiguous) parts, each also a registered set: evaluation scores the parts
# separately (the paper's Figure 1 / Table 1 split of aleatoric and epistemic uncertainty).
_DIRTY_PARTS: dict[str, tuple[str, str]] = {
    "dirty_mnist": ("mnist", "ambiguous_mnist"),
    "digits": ("digits_clean", "digits_ambiguous"),
}


def list_datasets() -> list[str]:
    """Canonical names of every registered data set, in registry order."""
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """Map a user-typed name to its canonical form: 'Dirty-MNIST' and 'dirty-mnist' become 'dirty_mnist'.

    Raises `UserError` listing the valid names when the name is unknown.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return key


def get_info(name: str) -> DatasetInfo:
    """The registry entry for `name` (any accepted spelling)."""
    return _REGISTRY[canonical_name(name)]


def dirty_parts(name: str) -> tuple[str, str] | None:
    """`(clean, ambiguous)` registry names of a dirty set ('dirty_mnist', 'digits'); None for other sets."""
    return _DIRTY_PARTS.get(canonical_name(name))
