"""Where each data set lives under `--dataset-root`, and `load_split`, which reads one split of it.

Layouts are those of the official downloads (and of torchvision's `download=True`), so a root prepared for
the original DDU code works unchanged. When files are missing, the sets torchvision can download are
downloaded into the root; offline that fails within seconds (a DNS probe with a timeout runs first) and
the user gets one sentence naming the expected path and how to place the files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import torch

from data import digits, formats
from data.registry import get_info
from utils.errors import UserError

log = logging.getLogger(__name__)

# Ambiguous-MNIST: the first 60,000 flattened (sample, label) pairs are training data, the rest test data.
AMNIST_TRAIN_PAIRS = 60_000
AMNIST_MANIFEST = "amnist_manifest.json"
AMNIST_FILES = ("amnist_samples.pt", "amnist_labels.pt")
AMNIST_URL = "https://github.com/BlackHC/ddu_dirty_mnist/releases/download/data-v1.0.0/"

# Tiny-ImageNet's official test split: test_0.JPEG to test_9999.JPEG.
TINY_IMAGENET_TEST_IMAGES = 10_000

# Seconds to wait for the download host's name to resolve before treating the machine as offline, and
# the socket timeout while downloading (per operation, so a slow but live download still finishes).
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
# Set DDU_NO_DOWNLOAD=1 to never try a download (clusters where the login node has the data).
NO_DOWNLOAD_ENV = "DDU_NO_DOWNLOAD"


def _host_resolves(url: str, timeout: float) -> bool:
    """Whether the URL's host resolves within `timeout` s; a thread bounds the (untimed) DNS lookup."""
    host = urllib.parse.urlparse(url).hostname or ""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def try_download(dataset: str, url: str, download: Callable[[], object]) -> str:
    """Run `download()` if allowed and the host is reachable; never raises.

    Returns "" when the download finished without error, otherwise why it did not happen or failed.
    """
    if os.environ.get(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        return f"no download tried, {NO_DOWNLOAD_ENV} is set"
    host = urllib.parse.urlparse(url).hostname
    if not _host_resolves(url, PROBE_TIMEOUT_S):
        return f"could not download, {host} is not reachable"
    log.warning("%s: files missing, downloading from %s", dataset, url)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        download()
        return ""
    except Exception as err:  # noqa: BLE001  (any failure ends in the UserError with instructions)
        return f"the download from {host} failed with {type(err).__name__}"
    finally:
        socket.setdefaulttimeout(previous)


def _find(candidates: tuple[Path, ...]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _require(
    dataset: str,
    required: list[tuple[Path, ...]],
    how: str,
    url: str | None = None,
    download: Callable[[], object] | None = None,
) -> list[Path]:
    """Paths of the required files (each given as alternatives, e.g. raw or .gz), downloading if allowed.

    Raises `UserError` naming the first missing file and `how` to place it.
    """
    found = [_find(c) for c in required]
    why = ""
    if None in found and download is not None and url is not None:
        why = try_download(dataset, url, download)
        found = [_find(c) for c in required]
    if None in found:
        missing = required[found.index(None)][0]
        why = f" ({why})" if why else ""
        raise UserError(f"{dataset} data not found: expected '{missing}'{why}; {how}")
    return found


def _torchvision_download(cls_name: str, root: Path, **kwargs) -> Callable[[], object]:
    def run() -> object:
        import torchvision.datasets

        return getattr(torchvision.datasets, cls_name)(str(root), download=True, **kwargs)

    return run


def _archive_download(cls_name: str, root: Path) -> Callable[[], object]:
    """Fetch and unpack the official archive that torchvision's `cls_name` downloads (md5-checked) without
    building torchvision's data set, which would read every CIFAR batch with a plain `pickle.load`."""

    def run() -> object:
        import torchvision.datasets
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(torchvision.datasets, cls_name)
        return download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)

    return run


_CIFAR = {
    # name: (folder, label key, files per split, torchvision class, official archive)
    "cifar10": (
        "cifar-10-batches-py",
        "labels",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "CIFAR10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": (
        "cifar-100-python",
        "fine_labels",
        {"train": ["train"], "test": ["test"]},
        "CIFAR100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _cifar(dataset: str, root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder, label_key, names, cls_name, archive = _CIFAR[dataset]
    paths = _require(
        dataset,
        [(root / folder / name,) for name in names[split]],
        f"download {archive} and extract it into '{root}', or pass the {flag} that holds '{folder}'",
        archive,
        _archive_download(cls_name, root),
    )
    formats.warn_if_modified(dataset, root, paths)
    return formats.read_cifar(paths, label_key, get_info(dataset).num_classes)


def svhn_file(root: str | os.PathLike, split: str) -> Path:
    """Where SVHN's official `{split}_32x32.mat` lies under `root` (it may be absent)."""
    return Path(root) / f"{split}_32x32.mat"


def _svhn(root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    url = f"http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
    (path,) = _require(
        "svhn",
        [(svhn_file(root, split),)],
        f"download {url} into '{root}', or pass the {flag} that holds it",
        url,
        _torchvision_download("SVHN", root, split=split),
    )
    formats.warn_if_modified("svhn", root, [path])
    return formats.read_svhn(path)


def _mnist_family(dataset: str, root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder, cls_name, url = {
        "mnist": ("MNIST", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        "fashion_mnist": (
            "FashionMNIST",
            "FashionMNIST",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
    }[dataset]
    raw = root / folder / "raw"
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = _require(
        dataset,
        [(raw / stem, raw / f"{stem}.gz") for stem in stems],
        f"place the IDX files (raw or .gz) in '{raw}' (torchvision.datasets.{cls_name}('{root}', "
        f"download=True) does this), or pass the {flag} that holds it",
        url,
        _torchvision_download(cls_name, root),
    )
    formats.warn_if_modified(dataset, root, paths)
    return formats.read_mnist(*paths)


def _amnist(root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened Ambiguous-MNIST pairs of one split: `(n, 1, 28, 28)` float32 in [0, 1], `(n,)`."""

    def download() -> None:
        from torchvision.datasets.utils import download_url

        for name in AMNIST_FILES:
            if not (root / name).is_file():
                download_url(AMNIST_URL + name, str(root), name)

    paths = _require(
        "ambiguous_mnist",
        [(root / name,) for name in AMNIST_FILES],
        f"generate it with 'python -m tools.ambiguous_mnist --mnist-root {root} --out {root}', or put the "
        f"released {' and '.join(AMNIST_FILES)} (from the ddu_dirty_mnist release) directly in '{root}'",
        AMNIST_URL,
        download,
    )
    samples, labels = formats.read_amnist(*paths)
    train_pairs = amnist_train_pairs(root, labels.numel())
    if split == "train":
        return formats.flatten_multilabel(samples, labels, 0, train_pairs)
    return formats.flatten_multilabel(samples, labels, train_pairs, None)


def amnist_train_pairs(root: Path, total_pairs: int | None = None) -> int:
    """How many flattened (sample, label) pairs are training data: 60,000 for the released files (as the
    original reads them; they come without a manifest), or `train_pairs` from the `amnist_manifest.json`
    that `tools.ambiguous_mnist` writes next to a regenerated set of another size.

    A manifest that is there but unusable (not JSON, not an object, `train_pairs` missing or not a positive
    integer, or more than the `total_pairs` the files hold) raises `UserError`: falling back to 60,000
    would silently give the set another split than the one it was generated with.
    """
    path = Path(root) / AMNIST_MANIFEST
    if not path.is_file():
        return AMNIST_TRAIN_PAIRS
    fix = (
        f"regenerate the set with 'python -m tools.ambiguous_mnist --mnist-root {root} --out {root} "
        "--overwrite', or delete the manifest to use the released split (the first 60,000 pairs for training)"
    )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"'{path}' is not valid JSON ({err.msg} at line {err.lineno}; was it truncated?); {fix}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"'{path}' cannot be read as JSON text ({type(err).__name__}); {fix}") from None
    if not isinstance(manifest, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(manifest), "a number"
        )
        raise UserError(f"'{path}' holds {kind}, expected a JSON object with 'train_pairs'; {fix}")
    value = manifest.get("train_pairs")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        found = f"train_pairs {json.dumps(value)}" if "train_pairs" in manifest else "no train_pairs"
        raise UserError(f"'{path}' has {found}, expected a positive integer count of training pairs; {fix}")
    if total_pairs is not None and value > total_pairs:
        raise UserError(
            f"'{path}' has train_pairs {value}, but {' and '.join(AMNIST_FILES)} hold only {total_pairs} "
            f"(sample, label) pairs; {fix}"
        )
    return value


def _dirty_mnist(root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST followed by Ambiguous-MNIST, as one float32 tensor in [0, 1] (the original's ConcatDataset)."""
    mnist_x, mnist_y = _mnist_family("mnist", root, split, flag)
    amnist_x, amnist_y = _amnist(root, split, flag)
    return torch.cat([mnist_x.to(torch.float32).div(255), amnist_x]), torch.cat([mnist_y, amnist_y])


def _tiny_imagenet(root: Path, split: str, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / "tiny-imagenet-200" / "test" / "images"
    if not folder.is_dir() or next(folder.glob("*.JPEG"), None) is None:
        raise UserError(
            f"tiny_imagenet data not found: expected the test images in '{folder}'; download "
            f"http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into '{root}', or pass the "
            f"{flag} that holds 'tiny-imagenet-200'"
        )
    images, labels = formats.read_jpeg_folder(folder, (32, 32))
    formats.warn_if_incomplete("tiny_imagenet", folder, len(images), TINY_IMAGENET_TEST_IMAGES, "test images")
    return images, labels


# Each reader takes the root, the split and the command-line flag that names the root (for its messages).
_READERS: dict[str, Callable[[Path, str, str], tuple[torch.Tensor, torch.Tensor]]] = {
    "cifar10": lambda root, split, flag: _cifar("cifar10", root, split, flag),
    "cifar100": lambda root, split, flag: _cifar("cifar100", root, split, flag),
    "svhn": _svhn,
    "mnist": lambda root, split, flag: _mnist_family("mnist", root, split, flag),
    "fashion_mnist": lambda root, split, flag: _mnist_family("fashion_mnist", root, split, flag),
    "dirty_mnist": _dirty_mnist,
    "ambiguous_mnist": _amnist,
    "tiny_imagenet": _tiny_imagenet,
}


def load_split(
    name: str, root: str | os.PathLike | None, split: str, *, root_flag: str = "--dataset-root"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a data set as raw CPU tensors, read from the official files under `root`.

    Returns images `(N, C, H, W)` uint8 (float32 in [0, 1] for dirty_mnist and ambiguous_mnist) in the
    data set's native shape, and labels `(N,)` int64. `split` is "train" or "test"; the validation part
    is carved out of "train" by the loaders. The embedded digits sets ignore `root`. `root_flag` is the
    caller's command-line flag for `root`, named in the messages of missing files (the Ambiguous-MNIST
    generator's is `--mnist-root`).
    """
    info = get_info(name)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r} for {info.name}; use 'train' or 'test'")
    if split == "train" and not info.has_train:
        raise UserError(f"{info.name} has only a test split (it is an out-of-distribution set)")
    if info.name.startswith("digits"):
        return digits.load(info.name, split)
    if root is None or str(root) == "":
        raise UserError(f"{info.name} is read from files; pass {root_flag} with the folder that holds them")
    return _READERS[info.name](Path(root).expanduser(), split, root_flag)
