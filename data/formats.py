"""Readers for the official on-disk formats, and the md5 check against the official releases.

Every reader returns CPU tensors: images `(N, C, H, W)` uint8 (float32 in [0, 1] for Ambiguous-MNIST) and
labels `(N,)` int64, checked to lie in `0..num_classes-1` (a file that holds others is named as damaged, instead
of failing later inside the training loop). Files are read directly, without torchvision's dataset classes, so that a whole split
becomes one tensor in one step (that is what the GPU-resident loader keeps on the device).

md5 sums never gate loading: a file that differs from the official release (a re-encoded copy, another
version) is read all the same, and one `ChecksumWarning` per file and process says that results may not
be comparable with published numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError

# md5 sums of the official releases, keyed by the path relative to the data root. MNIST-style sets are
# listed both as downloaded (.gz) and as extracted by torchvision (raw IDX files).
OFFICIAL_MD5: dict[str, str] = {
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "MNIST/raw/train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "MNIST/raw/train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "MNIST/raw/t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "MNIST/raw/t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "FashionMNIST/raw/train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "FashionMNIST/raw/train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "FashionMNIST/raw/t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# Resolved paths already hashed in this process: each file is hashed, and warned about, at most once.
_CHECKED: set[Path] = set()


class ChecksumWarning(UserWarning):
    """A data file differs from the official release; loading goes on."""


def file_md5(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def warn_if_modified(dataset: str, root: Path, paths: list[Path]) -> list[Path]:
    """Compare files with `OFFICIAL_MD5` and warn once (per file and process) about those that differ.

    Files without an official sum are skipped. Returns the files this call warned about.
    """
    differing = []
    for path in paths:
        resolved = path.resolve()
        if resolved in _CHECKED:
            continue
        try:
            key = path.relative_to(root).as_posix()
        except ValueError:
            continue
        expected = OFFICIAL_MD5.get(key)
        if expected is None:
            continue
        _CHECKED.add(resolved)
        if file_md5(path) != expected:
            differing.append(path)
    if differing:
        names = ", ".join(str(p) for p in differing)
        verb = "differs" if len(differing) == 1 else "differ"
        warnings.warn(
            f"{dataset}: {names} {verb} from the official release (md5 sum), so results may not be "
            "comparable with published numbers",
            ChecksumWarning,
            stacklevel=2,
        )
    return differing


def warn_if_incomplete(dataset: str, folder: Path, count: int, official: int, what: str) -> bool:
    """Warn once (per folder and process) that `folder` holds `count` of the official release's `official`
    files: a subset on purpose, or a partly unzipped archive. Returns whether it warned."""
    resolved = Path(folder).resolve()
    if count == official or resolved in _CHECKED:
        return False
    _CHECKED.add(resolved)
    warnings.warn(
        f"{dataset}: '{folder}' holds {count:,} of the official release's {official:,} {what} (a subset, or a "
        "partly unzipped archive), so results may not be comparable with published numbers",
        ChecksumWarning,
        stacklevel=2,
    )
    return True


def _corrupt(path: Path, what: str, detail: str) -> UserError:
    return UserError(f"'{path}' is not a valid {what} ({detail}); delete it and download the data set again")


def _check_label_range(path: Path, what: str, labels: np.ndarray, low: int, high: int) -> None:
    """Every label of the file `path` in `low..high`; the first one outside is named."""
    outside = np.flatnonzero((labels < low) | (labels > high))
    if outside.size:
        first = int(outside[0])
        raise _corrupt(
            path,
            what,
            f"{outside.size} labels outside {low}..{high}, the first {int(labels.reshape(-1)[first])} at position {first}",
        )


def _numpy_internal(module: str, name: str):
    """`numpy._core.{module}.{name}` (NumPy 2), or `numpy.core.{module}.{name}` on NumPy 1."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this NumPy has no {module}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as a protocol-2 pickle of Python 3 bytes uses it, and for nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin-1 text")
    return text.encode("latin1")


# The only globals a CIFAR pickle may name, each mapped to the object it stands for. The official files
# (written by Python 2's cPickle) reference numpy's `_reconstruct`, `ndarray` and `dtype`, to rebuild the
# uint8 `data` array; everything else in them (dicts, lists, strings, bytes, ints) needs no global. Also
# admitted, as copies written by Python 3 use them: NumPy 2's module names, `scalar` (a NumPy number),
# `_frombuffer` (an array in a protocol-5 pickle) and `_codecs.encode` (bytes in a protocol-2 pickle).
# None of these runs code: they build arrays, dtypes, numbers and bytes from the file's own data.
_CIFAR_GLOBALS = {
    **{
        (f"{package}.{module}", name): (lambda module=module, name=name: _numpy_internal(module, name))
        for package in ("numpy.core", "numpy._core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    },
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class ForbiddenPickleGlobal(pickle.UnpicklingError):
    """A pickle names a global (a function or class) that the official data files never hold."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """Reads dicts, lists, strings, bytes, numbers and NumPy arrays; refuses every other global.

    `pickle.load` calls whatever callable a file names (`os.system`, `builtins.exec`, ...), so a crafted
    data file would run code; here a file can only name `_CIFAR_GLOBALS`. Persistent ids are refused by
    the base class (no `persistent_load`), and extension codes go through `find_class` as well.
    """

    def find_class(self, module: str, name: str):
        make = _CIFAR_GLOBALS.get((module, name))
        if make is None:
            raise ForbiddenPickleGlobal(module, name)
        return make()


def load_cifar_pickle(path: Path) -> object:
    """The object in the CIFAR pickle `path`, read with `_CifarUnpickler` (strings decoded as latin-1, as
    the Python 2 files need). A file that names anything else is refused in one sentence (`UserError`)."""
    try:
        with open(path, "rb") as handle:
            return _CifarUnpickler(handle, encoding="latin1").load()
    except ForbiddenPickleGlobal as err:
        raise UserError(
            f"'{path}' is not a CIFAR pickle as released: it names {err.qualified_name}, which the official "
            "files never hold and which could run code, so it was not read; delete it and download the data "
            "set again"
        ) from None
    except Exception as err:  # noqa: BLE001  (a damaged pickle raises many types)
        raise _corrupt(path, "CIFAR pickle", f"{type(err).__name__}: {err}") from None


def read_cifar(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 python pickles (`data` (N, 3072) uint8 rows in CHW order, labels under `label_key`).

    Returns images `(N, 3, 32, 32)` uint8 and labels `(N,)` int64 in `0..num_classes-1`, files concatenated
    in the given order. The pickles are read with a restricted unpickler (`load_cifar_pickle`): a data file
    never runs code.
    """
    images, labels = [], []
    for path in paths:
        entry = load_cifar_pickle(path)
        try:
            data = np.asarray(entry["data"])
            targets = np.asarray(entry[label_key])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise _corrupt(path, "CIFAR pickle", f"{type(err).__name__}: {err}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or targets.ndim != 1 or len(data) != len(targets):
            raise _corrupt(path, "CIFAR pickle", f"data of shape {data.shape} for {len(targets)} labels")
        # Floats (intensities in [0, 1], say) would become black images in a cast to uint8: refused.
        if data.dtype.kind not in "ui" or (data.size and (data.min() < 0 or data.max() > 255)):
            found = f"{data.dtype} values" + (f" in {data.min():.4g}..{data.max():.4g}" if data.size else "")
            raise _corrupt(path, "CIFAR pickle", f"its data holds {found}, not pixel values 0..255 as uint8")
        if targets.size and targets.dtype.kind not in "ui":
            raise _corrupt(path, "CIFAR pickle", f"its {label_key} are {targets.dtype}, not integer classes")
        targets = targets.astype(np.int64)
        _check_label_range(path, "CIFAR pickle", targets, 0, num_classes - 1)
        images.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN `{train,test}_32x32.mat`: `X` (32, 32, 3, N) uint8 and `y` (N, 1) with 10 meaning digit 0.

    Returns images `(N, 3, 32, 32)` uint8 and labels `(N,)` int64 in 0..9.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=["X", "y"])
        x, y = mat["X"], mat["y"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise _corrupt(path, "SVHN .mat file", f"{type(err).__name__}: {err}") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise _corrupt(path, "SVHN .mat file", f"X of shape {x.shape} for {y.size} labels")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)
    labels = y.reshape(-1).astype(np.int64)
    _check_label_range(path, "SVHN .mat file", labels, 1, 10)
    labels[labels == 10] = 0
    return torch.from_numpy(images), torch.from_numpy(labels)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST and Fashion-MNIST), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = bytearray(handle.read())
    except (OSError, EOFError) as err:
        raise _corrupt(path, "IDX file", str(err)) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise _corrupt(path, "IDX file of unsigned bytes", "wrong magic number")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", bytes(raw[4:header]))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise _corrupt(path, "IDX file", f"{data.size} bytes of data for dimensions {dims}; truncated?")
    return data.reshape(dims)


def read_mnist(
    images_path: Path, labels_path: Path, num_classes: int = 10, size: tuple[int, int] = (28, 28)
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style IDX pair. Returns images `(N, 1, 28, 28)` uint8 and labels `(N,)` int64 in 0..9.

    Images of another `size` (32x32 copies, say) are refused here, naming the file, rather than failing
    inside the network."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise _corrupt(images_path, "MNIST image file", f"images {images.shape} for labels {labels.shape}")
    if images.shape[1:] != tuple(size):
        found = "x".join(map(str, images.shape[1:]))
        raise _corrupt(
            images_path, "MNIST image file", f"images of {found} pixels, expected {size[0]}x{size[1]}"
        )
    _check_label_range(labels_path, "MNIST label file", labels, 0, num_classes - 1)
    return torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64))


AMNIST_CONTENTS = {
    "samples": "a float tensor [N, 1, 28, 28] with values in [0, 1]",
    "labels": "an integer tensor [N, K] of labels 0..9",
}


def read_amnist(
    samples_path: Path, labels_path: Path, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ambiguous-MNIST as released: samples float `(M, 1, 28, 28)` in [0, 1], labels int64 `(M, K)`.

    Each sample carries K labels drawn from its (ambiguous) label distribution; callers flatten it into
    M * K (sample, label) pairs, see `flatten_multilabel`. A file that cannot be read or holds something
    else is named in one sentence that says what it should hold (torch's own multi-line advice is dropped).
    """

    def unreadable(path: Path, kind: str, detail: str) -> UserError:
        return UserError(
            f"'{path}' is not a valid Ambiguous-MNIST {kind} file ({detail}); it should hold "
            f"{AMNIST_CONTENTS[kind]}, as `python -m tools.ambiguous_mnist` writes it or the ddu_dirty_mnist "
            "release provides it: regenerate or re-download it"
        )

    tensors = {}
    for kind, path in (("samples", samples_path), ("labels", labels_path)):
        try:
            with warnings.catch_warnings():  # torch warns about a pickle it does not expect, in several lines
                warnings.simplefilter("ignore")
                tensors[kind] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (torch.load raises many types for a damaged file)
            raise unreadable(path, kind, f"torch.load failed with {type(err).__name__}") from None
        if not isinstance(tensors[kind], torch.Tensor):
            raise unreadable(path, kind, f"it holds a {type(tensors[kind]).__name__}")
    samples, labels = tensors["samples"], tensors["labels"]
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 28, 28) or not samples.is_floating_point():
        raise unreadable(samples_path, "samples", f"a {samples.dtype} tensor of shape {list(samples.shape)}")
    finite = torch.isfinite(samples)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero()
        raise unreadable(
            samples_path,
            "samples",
            f"{len(bad)} samples hold NaN or infinite values, the first {int(bad[0])}",
        )
    if samples.numel() and (float(samples.min()) < 0 or float(samples.max()) > 1):
        low, high = float(samples.min()), float(samples.max())
        hint = ", pixel values rather than intensities: divide them by 255" if high > 1.5 else ""
        raise unreadable(samples_path, "samples", f"values in {low:g}..{high:g}, outside [0, 1]{hint}")
    if labels.ndim != 2 or labels.is_floating_point() or labels.is_complex() or len(labels) != len(samples):
        raise unreadable(
            labels_path,
            "labels",
            f"a {labels.dtype} tensor of shape {list(labels.shape)} for {len(samples)} samples",
        )
    labels = labels.to(torch.int64)
    _check_label_range(labels_path, "Ambiguous-MNIST labels file", labels.numpy(), 0, num_classes - 1)
    return samples.to(torch.float32), labels


def flatten_multilabel(
    samples: torch.Tensor, labels: torch.Tensor, start: int, stop: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs `start:stop` of the flattened (sample, label) list, as the original Ambiguous-MNIST does.

    The original repeats each of the M samples once per label (`expand` then `reshape`), giving M * K
    pairs in the order (sample 0, label 0), (sample 0, label 1), ...; only the requested slice is
    materialised here. Returns `(n, 1, 28, 28)` float32 and `(n,)` int64.
    """
    k = labels.shape[1]
    flat = torch.arange(labels.numel())[start:stop]
    return samples[flat // k], labels.reshape(-1)[flat]


def read_jpeg_folder(folder: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `*.JPEG` in `folder`, as RGB resized to `size` (H, W) with PIL's bilinear filter.

    Used for Tiny-ImageNet's test images (64x64 to 32x32). Only Pillow's JPEG decoder is used: a file of
    another format under a `.JPEG` name is refused (Pillow would otherwise pick any decoder it has, and its
    EPS decoder runs Ghostscript). Files are ordered by the number in their name
    (test_0, test_1, ...). Returns images `(N, 3, H, W)` uint8 and labels `(N,)` int64, all 0.
    """

    def order(path: Path) -> tuple[int, str]:
        digits = "".join(ch for ch in path.stem if ch.isdigit())
        return (int(digits) if digits else -1, path.name)

    paths = sorted(folder.glob("*.JPEG"), key=order)
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path, formats=("JPEG",)) as img:  # no other decoder (EPS would run Ghostscript)
                out[i] = np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))
        except OSError as err:
            raise _corrupt(path, "JPEG image", str(err)) from None
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images, torch.zeros(len(paths), dtype=torch.int64)
