"""Image folders as data sets: `--dataset folder:PATH` and `--ood_dataset folder:PATH`.

A training set is laid out as torchvision's `ImageFolder` expects it, one folder per class::

    PATH/train/CLASS/**/IMAGE      the training split (the validation part is cut from it, as for CIFAR-10)
    PATH/test/CLASS/**/IMAGE       the test split (`PATH/val/` is used where there is no `PATH/test/`)

The class list is the sorted names of the folders in `train/` (class `i` is the `i`-th name, as
`ImageFolder`); `test/` must have the same class folders. An out-of-distribution folder is every image
below `PATH` (any depth, labels ignored). Any file Pillow reads is an image; hidden files and folders (a
name starting with ".") are ignored, every other file must be one (`skip_bad_images` skips the others with
a warning).

What the network sees, decided from the training split (`describe`):

- Channels: 1 when every training image is greyscale (Pillow modes 1, L, LA, I, I;16, F), else 3. Colour
  images (RGB, RGBA, P, CMYK, ...) become RGB with Pillow's `convert("RGB")` (alpha is dropped, not
  composited), and luma with `convert("L")` for a greyscale set; greyscale images in an RGB set repeat their
  channel. 16-bit greyscale keeps its 8 high bits.
- Size: every image becomes `image_size` x `image_size`. Default: the size all training images share (a
  set whose images differ, or are not square, needs `image_size`). Resize policy: an image already of that
  size is untouched, a square one is resized with Pillow's bilinear filter (antialiased when shrinking, as
  `data.transforms.resize`), any other is resized so that its shorter side is `image_size` and then
  centre-cropped (torchvision's `Resize(n)` then `CenterCrop(n)`, so the aspect ratio is kept).
- Normalisation: the per-channel mean and standard deviation of the training split's pixels in [0, 1]
  after those conversions, computed exactly from integer histograms (so in-memory and from-disk passes
  give identical numbers) once per folder and image size, and cached in `PATH/.ddu_folder_stats.json`, keyed
  by a fingerprint of the training files (relative paths, sizes, modification times) and written atomically;
  a read-only folder is simply not cached. Checkpoints record them (`FolderSet.config`).
- Augmentation: `crop_flip` (random crop with zero padding 4 and horizontal flip, CIFAR-10's) by default for
  RGB sets, `none` for greyscale ones.

Loading: when the decoded training and test splits fit in memory (N x C x H x W bytes against half the
available RAM, or `DDU_FOLDER_MEMORY_BYTES`), every image is decoded once per run by a process pool into
one uint8 tensor (`decode_files`), and the device-resident `data.loaders.TensorLoader` batches and augments
it exactly as it does CIFAR-10. Otherwise `FolderLoader` decodes each batch from disk in `DataLoader`
worker processes and then crops, flips and normalises it in the same batched way, so both paths give the
same batches for the same seed and epoch. The log says which one a run uses.

Reuse (an ImageNet-style set with other transforms): `scan_layout` / `scan_split` / `scan_images` give the
file lists with every layout check, `open_image` the decoding with its error sentences, and `FolderDataset`
takes any picklable per-file decoder, so a worker loader with other per-image transforms needs only a
decoder. Nothing here unpickles anything: images are read by Pillow, the cache is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from data.transforms import crop_flip, normalize
from utils.errors import UserError
from utils.io import atomic_write_json, read_json
from utils.progress import progress_bar

log = logging.getLogger(__name__)

FOLDER_PREFIX = "folder:"
TRAIN_SPLIT = "train"
TEST_SPLITS = ("test", "val")  # the first that exists is the test split
CACHE_FILE = ".ddu_folder_stats.json"
CACHE_FORMAT = 1
CACHE_KEEP = 8  # fingerprints kept in one cache file (older ones are dropped)
AUGMENTATIONS = ("none", "crop_flip")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MEMORY_ENV = "DDU_FOLDER_MEMORY_BYTES"
MEMORY_FRACTION = 0.5  # of the available RAM, for the decoded splits of one data set
SERIAL_BELOW = 256  # files; fewer are decoded in this process (a pool costs more than it saves)


# --------------------------------------------------------------------------------------------------------
# Names and layout


def is_folder_name(name: object) -> bool:
    """Whether `name` is a `folder:PATH` data set name."""
    return isinstance(name, str) and name.strip().lower().startswith(FOLDER_PREFIX)


def folder_path(name: str) -> Path:
    """The resolved folder of `folder:PATH`; a missing or non-folder PATH is a `UserError`."""
    text = name.strip()[len(FOLDER_PREFIX) :]
    if not text:
        raise UserError(f"'{name}' names no folder; write folder:PATH, e.g. folder:data/my_images")
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"the image folder '{path}' of {name} does not exist; check the path after folder:")
    if not path.is_dir():
        raise UserError(
            f"'{path}' of {name} is a file, not a folder; pass the folder that holds train/ and test/"
        )
    return path.resolve()


def canonical_folder_name(name: str) -> str:
    """`folder:` followed by the resolved absolute path, so that two spellings of a folder are one set."""
    return FOLDER_PREFIX + str(folder_path(name))


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_classes(split_dir: Path) -> tuple[str, ...]:
    """The class folders of a split, sorted by name as `ImageFolder` sorts them (hidden folders ignored)."""
    with os.scandir(split_dir) as entries:
        return tuple(sorted(e.name for e in entries if _visible(e.name) and e.is_dir()))


def _walk_files(folder: Path) -> list[tuple[str, int, int]]:
    """`(path, size, mtime_ns)` of every visible file below `folder`, sorted by path (links followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in filenames:
            if not _visible(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling link: kept, and reported when it is read
                found.append((path, -1, 0))
                continue
            found.append((path, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


@dataclass(frozen=True)
class ImageList:
    """The files of one split and their labels (`labels[i]` indexes `classes`; all 0 for an OoD folder).

    `stats` holds `(size, mtime_ns)` per file, for the cache's fingerprint.
    """

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    stats: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.files)

    def without(self, bad: Iterable[str]) -> ImageList:
        """This list less the files in `bad` (paths as in `files`)."""
        drop = set(bad)
        keep = [i for i, f in enumerate(self.files) if f not in drop]
        stats = tuple(self.stats[i] for i in keep) if self.stats else ()
        return ImageList(
            self.root,
            tuple(self.files[i] for i in keep),
            tuple(self.labels[i] for i in keep),
            self.classes,
            stats,
        )

    def fingerprint(self) -> str:
        """sha256 of the class list and every file's relative path, size and modification time."""
        digest = hashlib.sha256(json.dumps(list(self.classes)).encode())
        stats = self.stats or ((0, 0),) * len(self.files)
        for path, (size, mtime) in zip(self.files, stats):
            digest.update(f"{os.path.relpath(path, self.root)}\t{size}\t{mtime}\n".encode())
        return digest.hexdigest()[:32]


def scan_split(split_dir: Path, classes: Sequence[str] | None = None) -> ImageList:
    """Every visible file below `split_dir/CLASS/` with its class index.

    `classes` (the training split's, for a test split) fixes the class list: a class folder missing from
    `split_dir`, or one that is not in `classes`, is a `UserError`; so is a class folder without files.
    """
    found = find_classes(split_dir)
    if classes is None:
        classes = found
        if not classes:
            raise UserError(
                f"'{split_dir}' has no class folders; put each class's images in a folder of its own, "
                f"{split_dir}/CLASS_NAME/IMAGE"
            )
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise UserError(
                f"the class folder '{split_dir / missing[0]}' is missing ({len(missing)} of the "
                f"{len(classes)} training classes are); the test split needs a folder for every class of train/"
            )
        extra = [c for c in found if c not in classes]
        if extra:
            raise UserError(
                f"'{split_dir / extra[0]}' is a class folder that train/ does not have; remove it or add "
                "the class to train/"
            )
    files, labels, stats = [], [], []
    for index, name in enumerate(classes):
        entries = _walk_files(split_dir / name)
        if not entries:
            raise UserError(
                f"the class folder '{split_dir / name}' holds no files; add its images or remove it"
            )
        for path, size, mtime in entries:
            files.append(path)
            labels.append(index)
            stats.append((size, mtime))
    return ImageList(split_dir, tuple(files), tuple(labels), tuple(classes), tuple(stats))


def scan_layout(path: Path) -> tuple[ImageList, ImageList]:
    """The training and test splits of an image-folder data set at `path` (see the module docstring)."""
    train_dir = path / TRAIN_SPLIT
    if not train_dir.is_dir():
        raise UserError(
            f"the image folder '{path}' has no train/ folder; lay a training set out as "
            f"{path}/train/CLASS/IMAGE and {path}/test/CLASS/IMAGE (or pass it as an --ood_dataset, which "
            "takes every image below it)"
        )
    test_dir = next((path / s for s in TEST_SPLITS if (path / s).is_dir()), None)
    if test_dir is None:
        raise UserError(
            f"the image folder '{path}' has no test/ (or val/) folder next to train/; add "
            f"{path}/test/CLASS/IMAGE with the same class folders as train/"
        )
    train = scan_split(train_dir)
    return train, scan_split(test_dir, train.classes)


def scan_images(path: Path) -> ImageList:
    """Every visible file below `path`, labelled 0: an out-of-distribution folder."""
    entries = _walk_files(path)
    if not entries:
        raise UserError(
            f"the out-of-distribution folder '{path}' holds no images; check the path after folder:"
        )
    return ImageList(
        path,
        tuple(e[0] for e in entries),
        (0,) * len(entries),
        (),
        tuple((e[1], e[2]) for e in entries),
    )


# --------------------------------------------------------------------------------------------------------
# Reading one image (runs in worker processes: plain functions of picklable arguments)


class BadImageError(Exception):
    """A file Pillow cannot read (`reason` says how), raised by `open_image`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}' {reason}")
        self.path, self.reason = path, reason


# The raster formats Pillow decodes in-process. Formats whose readers start another program (EPS and PS run
# Ghostscript) are left out on purpose: opening a data set must never execute anything.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "JPEG2000", "ICO", "PCX", "SGI")


def _reason(err: BaseException) -> str:
    """Why Pillow could not read a file, as the end of a sentence that starts with the file's name."""
    if isinstance(err, UnidentifiedImageError):
        return f"is not an image in a format read here ({', '.join(IMAGE_FORMATS)})"
    if isinstance(err, PermissionError):
        return "cannot be read (permission denied)"
    if isinstance(err, FileNotFoundError):
        return "disappeared or is a dangling link"
    return f"cannot be decoded ({type(err).__name__}: {err}); it is truncated or damaged"


def open_image(path: str) -> Image.Image:
    """The decoded image at `path` (pixels loaded, file closed); `BadImageError` says why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb and palette-transparency notices
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                img.load()
                return img
    except Exception as err:  # noqa: BLE001  (truncated files raise OSError, SyntaxError, ValueError, ...)
        raise BadImageError(path, _reason(err)) from None


def _is_grey(mode: str) -> bool:
    return mode in GREY_MODES


def probe_image(path: str) -> tuple[bool, int, int] | str:
    """`(greyscale, width, height)` from the file's header (no decoding), or why it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                return _is_grey(img.mode), img.width, img.height
    except Exception as err:  # noqa: BLE001
        return _reason(err)


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """`img` as mode "L" (channels 1) or "RGB" (channels 3); see the module docstring for the rules."""
    if img.mode.startswith("I;16"):  # 16-bit greyscale: the high byte (convert("L") would saturate)
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    if channels == 1:
        if _is_grey(img.mode):
            return img if img.mode == "L" else img.convert("L")
        return (img if img.mode == "RGB" else img.convert("RGB")).convert("L")
    if _is_grey(img.mode):
        return img if img.mode == "L" else img.convert("L")  # repeated to 3 channels by `to_array`
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_size(img: Image.Image, size: int) -> Image.Image:
    """`img` at `size` x `size`: untouched, resized (square images) or shorter side resized, then centre-cropped."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    if width == height:
        return img.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def read_image(path: str, channels: int, size: int) -> np.ndarray:
    """The image at `path` as `(channels, size, size)` uint8; `BadImageError` when it cannot be read."""
    img = fit_size(convert_channels(open_image(path), channels), size)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, owned by the caller
    if arr.ndim == 2:
        return np.repeat(arr[None], channels, axis=0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageReader:
    """A picklable `read_image` with fixed `channels` and `size`, the default decoder of `FolderDataset`."""

    channels: int
    size: int

    def __call__(self, path: str) -> np.ndarray:
        return read_image(path, self.channels, self.size)


def _read_or_reason(task: tuple[Callable[[str], np.ndarray], str]) -> np.ndarray | str:
    decode, path = task
    try:
        return decode(path)
    except BadImageError as err:
        return err.reason


def _histogram_or_reason(task: tuple[Callable[[str], np.ndarray], str]) -> np.ndarray | str:
    out = _read_or_reason(task)
    return out if isinstance(out, str) else channel_histograms(torch.from_numpy(out[None])).numpy()


def default_workers() -> int:
    """Processes for decoding: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def quiet_worker(*_: object) -> None:
    """Start of a decoding process: the main process alone answers Ctrl-C (it then stops the workers), and
    a stop signal ends a worker at once instead of running the scripts' inherited stop handlers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def _pool_map(fn: Callable, tasks: Sequence, workers: int | None, desc: str) -> Iterator:
    """`map(fn, tasks)` in order, in a process pool (or here for few tasks), with a progress bar."""
    workers = default_workers() if workers is None else workers
    bar = progress_bar(total=len(tasks), desc=desc, unit="img", leave=False)
    try:
        if workers <= 1 or len(tasks) < SERIAL_BELOW:
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        chunk = max(1, min(256, len(tasks) // (workers * 8)))
        with multiprocessing.get_context().Pool(workers, initializer=quiet_worker) as pool:
            for out in pool.imap(fn, tasks, chunksize=chunk):
                yield out
                bar.update()
            pool.close()
            pool.join()
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------------------
# Decoding whole splits, and their statistics


def _bad_file_error(path: str, reason: str, what: str) -> UserError:
    return UserError(
        f"'{path}' in {what} {reason}; remove or replace it, or pass --skip-bad-images to leave such files out"
    )


def _report_skipped(bad: dict[str, str], what: str) -> None:
    if bad:
        first = next(iter(bad))
        log.warning(
            "%s: skipped %d file(s) Pillow cannot read (--skip-bad-images), e.g. '%s' %s",
            what, len(bad), first, bad[first],
        )  # fmt: skip


def decode_files(
    images: ImageList,
    channels: int,
    size: int,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    what: str = "the image folder",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Decode every file of `images` once: `(N, channels, size, size)` uint8, labels `(N,)` int64 and the
    files left out (`{path: reason}`, only with `skip_bad`; otherwise the first bad file is a `UserError`)."""
    n = len(images)
    out = torch.empty((n, channels, size, size), dtype=torch.uint8)
    decode = ImageReader(channels, size)
    bad: dict[str, str] = {}
    tasks = [(decode, path) for path in images.files]
    results = _pool_map(_read_or_reason, tasks, workers, f"decoding {what}")
    try:
        for i, result in enumerate(results):
            if isinstance(result, str):
                if not skip_bad:
                    raise _bad_file_error(images.files[i], result, what)
                bad[images.files[i]] = result
            else:
                out[i] = torch.from_numpy(result)
    finally:
        results.close()  # stops the pool at once when a bad file ends the pass
    labels = torch.tensor(images.labels, dtype=torch.int64)
    if bad:
        keep = torch.tensor([f not in bad for f in images.files])
        out, labels = out[keep], labels[keep]
    return out, labels, bad


def channel_histograms(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`(C, 256)` int64 counts of each uint8 value per channel of `(N, C, H, W)` uint8 images."""
    c = images.shape[1]
    hist = torch.zeros((c, 256), dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].cpu()
        for ch in range(c):
            hist[ch] += torch.bincount(part[:, ch].reshape(-1).to(torch.int64), minlength=256)
    return hist


def stats_from_histograms(hist: torch.Tensor | np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of pixels in [0, 1] from `(C, 256)` counts.

    Exact: with n pixels of sum s1 and sum of squares s2 (integers), mean = s1 / (255 n) and
    var = (n s2 - s1^2) / (255 n)^2, evaluated in integers before the one division, so the result does not
    depend on the order in which images were counted.
    """
    values = list(range(256))
    means, stds = [], []
    for row in np.asarray(hist).tolist():
        n = sum(row)
        s1 = sum(v * c for v, c in zip(values, row))
        s2 = sum(v * v * c for v, c in zip(values, row))
        means.append(s1 / (255 * n))
        stds.append(math.sqrt((n * s2 - s1 * s1) / (255 * n) ** 2))
    return tuple(means), tuple(stds)


def histograms_from_disk(
    images: ImageList,
    channels: int,
    size: int,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    what: str = "the image folder",
) -> tuple[torch.Tensor, dict[str, str]]:
    """`channel_histograms` of the decoded files without keeping them (sets too large for memory)."""
    hist = np.zeros((channels, 256), dtype=np.int64)
    bad: dict[str, str] = {}
    tasks = [(ImageReader(channels, size), path) for path in images.files]
    results = _pool_map(_histogram_or_reason, tasks, workers, f"statistics of {what}")
    try:
        for i, result in enumerate(results):
            if isinstance(result, str):
                if not skip_bad:
                    raise _bad_file_error(images.files[i], result, what)
                bad[images.files[i]] = result
            else:
                hist += result
    finally:
        results.close()
    return torch.from_numpy(hist), bad


# --------------------------------------------------------------------------------------------------------
# Memory


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux, else physical pages free)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_budget() -> int:
    """Bytes the decoded splits of one data set may take: `DDU_FOLDER_MEMORY_BYTES`, else half the
    available RAM."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            return max(0, int(float(text)))
        except ValueError:
            raise UserError(
                f"{MEMORY_ENV}={text!r} is not a number of bytes; unset it or pass e.g. 4e9"
            ) from None
    return int(MEMORY_FRACTION * available_memory())


# --------------------------------------------------------------------------------------------------------
# The cache of statistics next to the data


def _valid_entry(entry: Any) -> bool:
    """Whether a cache entry read from JSON has the shape `_describe` writes (a hand-edited one may not)."""
    if not isinstance(entry, dict) or entry.get("channels") not in (1, 3):
        return False
    native = entry.get("native_size")
    if native is not None and not (
        isinstance(native, list) and len(native) == 2 and all(isinstance(v, int) and v > 0 for v in native)
    ):
        return False
    bad = entry.get("bad", {})
    if not isinstance(bad, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in bad.items()
    ):
        return False
    stats = entry.get("stats", {})
    if not isinstance(stats, dict):
        return False
    for key, value in stats.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(value, dict)):
            return False
        for name, low in (("mean", 0.0), ("std", 0.0)):
            seq = value.get(name)
            if not (
                isinstance(seq, list)
                and len(seq) == entry["channels"]
                and all(isinstance(v, (int, float)) and math.isfinite(v) and low <= v <= 1 for v in seq)
            ):
                return False
    return True


def read_cache(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The cache entry of `fingerprint` in `path/CACHE_FILE`, or None (absent, unreadable or malformed)."""
    file = path / CACHE_FILE
    if not file.is_file():
        return None
    try:
        content = read_json(file)
    except (UserError, OSError, ValueError):
        log.warning("ignoring the unreadable statistics cache %s; it will be rewritten", file)
        return None
    entries = content.get("entries") if isinstance(content, dict) else None
    entry = entries.get(fingerprint) if isinstance(entries, dict) else None
    if entry is None:
        return None
    if content.get("format") != CACHE_FORMAT or not _valid_entry(entry):
        log.warning("ignoring a malformed entry of the statistics cache %s; it will be recomputed", file)
        return None
    return entry


def write_cache(path: Path, fingerprint: str, entry: dict[str, Any]) -> bool:
    """Store `entry` under `fingerprint` in `path/CACHE_FILE` atomically (keeping the newest `CACHE_KEEP`
    fingerprints); a folder that cannot be written is left alone. Returns whether it was written."""
    file = path / CACHE_FILE
    entries: dict[str, Any] = {}
    try:
        content = read_json(file) if file.is_file() else {}
        if isinstance(content, dict) and content.get("format") == CACHE_FORMAT:
            entries = {k: v for k, v in (content.get("entries") or {}).items() if _valid_entry(v)}
    except (UserError, OSError, ValueError, AttributeError):
        entries = {}
    entries.pop(fingerprint, None)
    entries[fingerprint] = entry
    entries = dict(list(entries.items())[-CACHE_KEEP:])
    if not os.access(path, os.W_OK):
        log.info("%s is read-only: the image statistics are not cached", path)
        return False
    try:
        atomic_write_json(file, {"format": CACHE_FORMAT, "entries": entries}, indent=1)
    except UserError as err:
        log.info("the image statistics are not cached (%s)", err)
        return False
    return True


# --------------------------------------------------------------------------------------------------------
# A described training set


@dataclass(frozen=True)
class FolderSet:
    """An image-folder training set as a network sees it (see the module docstring for every rule).

    `train` and `test` are the files used (bad ones left out with `skip_bad_images`); `in_memory` says
    whether the splits are decoded into one tensor (else decoded from disk every epoch).
    """

    path: Path
    classes: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    train: ImageList
    test: ImageList
    skip_bad_images: bool
    in_memory: bool

    @property
    def name(self) -> str:
        return FOLDER_PREFIX + str(self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def config(self) -> dict[str, Any]:
        """What a checkpoint records of the data (its saved configuration): enough to refuse another folder,
        image size or class list, and the normalisation the network was trained with."""
        return {
            "folder": str(self.path),
            "image_size": self.image_size,
            "channels": self.channels,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment,
        }


def _classes_text(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{len(classes)} classes: {shown}"


def config_differences(saved: dict[str, Any] | None, here: dict[str, Any] | None) -> list[str]:
    """How the data a network was trained on (`saved`, the `FolderSet.config` its run recorded; None for a
    registered set) differs from this run's (`here`), as phrases naming the flag to change. Augmentation is
    not compared: it does not change what a trained network computes."""
    if saved is None and here is None:
        return []
    if saved is None or here is None:
        there_text = f"folder:{saved['folder']}" if saved else "a registered data set"
        here_text = f"folder:{here['folder']}" if here else "a registered data set"
        return [f"--dataset {there_text} there vs {here_text} here"]
    out = []
    if saved.get("folder") != here.get("folder"):
        out.append(f"--dataset folder:{saved.get('folder')} there vs folder:{here.get('folder')} here")
    if saved.get("image_size") != here.get("image_size"):
        out.append(f"--image-size {saved.get('image_size')} there vs {here.get('image_size')} here")
    if list(saved.get("classes") or []) != list(here.get("classes") or []):
        there_classes, here_classes = list(saved.get("classes") or []), list(here.get("classes") or [])
        out.append(
            f"the class list ({_classes_text(there_classes)}) there vs ({_classes_text(here_classes)}) here"
        )
    if not out and saved.get("channels") != here.get("channels"):
        out.append(f"{saved.get('channels')} image channels there vs {here.get('channels')} here")
    if not out:
        pairs = list(zip(saved.get("mean", []), here.get("mean", []))) + list(
            zip(saved.get("std", []), here.get("std", []))
        )
        if len(pairs) != 2 * len(here.get("mean", [])) or any(abs(a - b) > 1e-9 for a, b in pairs):
            out.append(
                "the training images' mean and std "
                f"({_rounded(saved)} there vs {_rounded(here)} here: the images in train/ changed since)"
            )
    return out


def _rounded(config: dict[str, Any]) -> str:
    return (
        "mean "
        + "/".join(f"{v:.4f}" for v in config.get("mean", []))
        + ", std "
        + "/".join(f"{v:.4f}" for v in config.get("std", []))
    )


def split_bytes(count: int, shape: tuple[int, int, int]) -> int:
    return count * shape[0] * shape[1] * shape[2]


# Per-process caches: a folder is described, and each split decoded, once per run.
_DESCRIBED: dict[tuple, FolderSet] = {}
_DECODED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_caches() -> None:
    """Forget the folders described and the splits decoded in this process (tests; freeing memory)."""
    _DESCRIBED.clear()
    _DECODED.clear()
    _ANNOUNCED.clear()


def _survey(train: ImageList, skip_bad: bool, workers: int | None) -> dict[str, Any]:
    """Channels, common size and unreadable files of the training split, from the file headers."""
    results = list(_pool_map(probe_image, list(train.files), workers, "reading image headers"))
    bad = {f: r for f, r in zip(train.files, results) if isinstance(r, str)}
    if bad and not skip_bad:
        first = next(iter(bad))
        raise _bad_file_error(first, bad[first], "the training split")
    good = [r for r in results if not isinstance(r, str)]
    sizes = {(w, h) for _, w, h in good}
    native = list(next(iter(sizes))[::-1]) if len(sizes) == 1 else None  # [height, width]
    channels = 1 if good and all(g for g, _, _ in good) else 3
    return {"channels": channels, "native_size": native, "bad": bad, "stats": {}}


def _image_size(entry: dict[str, Any], image_size: int | None, train: ImageList) -> int:
    if image_size is not None:
        if image_size < 8:
            raise UserError(f"--image-size must be at least 8 pixels, got {image_size}")
        return int(image_size)
    native = entry["native_size"]
    if native is None:
        raise UserError(
            f"the training images in '{train.root}' differ in size; pass --image-size N to bring them all to "
            "N x N (shorter side resized to N, then centre-cropped)"
        )
    if native[0] != native[1]:
        raise UserError(
            f"the training images in '{train.root}' are {native[1]} x {native[0]} (width x height), not square; "
            "pass --image-size N to bring them to N x N (shorter side resized to N, then centre-cropped)"
        )
    return int(native[0])


def _check_classes_left(images: ImageList, what: str) -> None:
    present = set(images.labels)
    for index, name in enumerate(images.classes):
        if index not in present:
            raise UserError(
                f"the class folder '{images.root / name}' in {what} has no readable image left after "
                "--skip-bad-images; add images to it or remove it"
            )


def describe(
    name: str,
    *,
    image_size: int | None = None,
    augment: str | None = None,
    skip_bad_images: bool = False,
    workers: int | None = None,
) -> FolderSet:
    """The training set `folder:PATH` (scanned, surveyed, its statistics computed or read from the cache),
    once per process and options. When its splits fit in memory, the training split is decoded here if the
    statistics are not cached (the decoded tensor is kept for `load_split`, so it is decoded once)."""
    path = folder_path(name)
    if augment is not None and augment not in AUGMENTATIONS:
        raise UserError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    key = (path, image_size, augment, bool(skip_bad_images))
    if key in _DESCRIBED:
        return _DESCRIBED[key]
    train, test = scan_layout(path)
    fingerprint = train.fingerprint()
    entry = read_cache(path, fingerprint)
    cached = entry is not None
    if entry is None:
        entry = _survey(train, skip_bad_images, workers)
    elif entry["bad"] and not skip_bad_images:
        first = next(iter(entry["bad"]))
        raise _bad_file_error(str(path / TRAIN_SPLIT / first), entry["bad"][first], "the training split")
    root = train.root
    bad_paths = {str(root / rel) if not os.path.isabs(rel) else rel: why for rel, why in entry["bad"].items()}
    train = train.without(bad_paths)
    _report_skipped(bad_paths, f"{path}/train")
    size = _image_size(entry, image_size, train)
    channels = int(entry["channels"])
    shape = (channels, size, size)
    total = split_bytes(len(train) + len(test), shape)
    budget = memory_budget()
    in_memory = total <= budget
    stats = entry["stats"].get(str(size))
    changed = not cached
    if stats is None:
        what = f"{path}/train"
        if in_memory:
            images, labels, more_bad = decode_files(
                train, channels, size, skip_bad=skip_bad_images, workers=workers, what=what
            )
            hist = channel_histograms(images)
        else:
            hist, more_bad = histograms_from_disk(
                train, channels, size, skip_bad=skip_bad_images, workers=workers, what=what
            )
        _report_skipped(more_bad, what)
        if more_bad:
            bad_paths.update(more_bad)
            train = train.without(more_bad)
        if in_memory:
            _DECODED[(train.root, channels, size, bool(skip_bad_images))] = (images, labels)
        mean, std = stats_from_histograms(hist)
        stats = {"mean": list(mean), "std": list(std)}
        entry["stats"][str(size)] = stats
        entry["bad"] = {os.path.relpath(p, root): why for p, why in bad_paths.items()}
        changed = True
    if changed:
        write_cache(path, fingerprint, entry)
    if skip_bad_images:
        _check_classes_left(train, f"{path}/train")
    mean, std = tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])
    flat = [i for i, s in enumerate(std) if s == 0]
    if flat:
        raise UserError(
            f"every training image in '{path}/train' has the same value in channel {flat[0]} everywhere, so "
            "it cannot be normalised; check that the images are not blank"
        )
    folder = FolderSet(
        path=path,
        classes=train.classes,
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        augment=augment or ("crop_flip" if channels == 3 else "none"),
        train=train,
        test=test,
        skip_bad_images=bool(skip_bad_images),
        in_memory=in_memory,
    )
    _DESCRIBED[key] = folder
    return folder


_ANNOUNCED: set[tuple] = set()


def announce(folder: FolderSet) -> None:
    """Log, once per process, which loader serves `folder` and why (its decoded size against the budget).

    Called when its loaders are built rather than when it is described: the scripts describe it while
    checking their flags, before logging is set up."""
    key = (folder.path, folder.image_size, folder.channels, folder.in_memory)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    c, s = folder.channels, folder.image_size
    total = split_bytes(len(folder.train) + len(folder.test), folder.shape)
    sizes = f"{len(folder.train):,} training and {len(folder.test):,} test images of {c}x{s}x{s}"
    if folder.in_memory:
        log.info(
            "%s: %s (%.1f MB decoded) fit in memory: decoded once into a uint8 tensor, served by the "
            "device-resident loader", folder.name, sizes, total / 1e6,
        )  # fmt: skip
    else:
        log.info(
            "%s: %s (%.1f MB decoded) exceed the memory budget of %.1f MB (%s): decoded from disk every epoch "
            "by DataLoader worker processes", folder.name, sizes, total / 1e6, memory_budget() / 1e6, MEMORY_ENV,
        )  # fmt: skip


def load_split(
    folder: FolderSet, split: str, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoded `split` ("train" or "test") of `folder`: `(N, C, S, S)` uint8 and `(N,)` int64 labels,
    decoded once per process."""
    images = folder.train if split == "train" else folder.test
    key = (images.root, folder.channels, folder.image_size, folder.skip_bad_images)
    if key not in _DECODED:
        what = f"{folder.path}/{images.root.name}"
        x, y, bad = decode_files(
            images,
            folder.channels,
            folder.image_size,
            skip_bad=folder.skip_bad_images,
            workers=workers,
            what=what,
        )
        _report_skipped(bad, what)
        if bad:
            _check_classes_left(images.without(bad), what)
        _DECODED[key] = (x, y)
    return _DECODED[key]


def ood_images(
    name: str, shape: tuple[int, int, int], *, skip_bad_images: bool = False, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | FolderDataset:
    """Every image below the folder of `folder:PATH` at the in-distribution `shape` (labels 0): decoded
    into a tensor when it fits in memory, else a `FolderDataset` decoding from disk."""
    path = folder_path(name)
    images = scan_images(path)
    c, h, w = shape
    if h != w:
        raise UserError(f"image folders are read as square images, not {h} x {w}")
    budget = memory_budget()
    if split_bytes(len(images), shape) > budget:
        log.info(
            "%s%s: %d out-of-distribution images of %dx%dx%d exceed the memory budget; decoded from disk",
            FOLDER_PREFIX, path, len(images), c, h, w,
        )  # fmt: skip
        return FolderDataset(images, ImageReader(c, h))
    key = (path, "ood", c, h, bool(skip_bad_images))
    if key not in _DECODED:
        what = f"the out-of-distribution folder {path}"
        x, y, bad = decode_files(images, c, h, skip_bad=skip_bad_images, workers=workers, what=what)
        _report_skipped(bad, what)
        if len(y) == 0:
            raise UserError(f"the out-of-distribution folder '{path}' holds no image Pillow can read")
        log.info(
            "%s%s: %d out-of-distribution images decoded into memory as %dx%dx%d",
            FOLDER_PREFIX,
            path,
            len(y),
            c,
            h,
            w,
        )
        _DECODED[key] = (x, y)
    return _DECODED[key]


# --------------------------------------------------------------------------------------------------------
# The worker loader


class FolderDataset(Dataset):
    """Decodes one file per item, in a `DataLoader` worker: `(image, label, "")`, or a zero image, the label
    and the reason when the file cannot be read (the loader turns that into a sentence in the main process).

    `decode` is any picklable callable from a path to a `(C, H, W)` uint8 array or tensor (`ImageReader` by
    default; a data set with other per-image transforms passes its own).
    """

    def __init__(self, images: ImageList, decode: Callable[[str], np.ndarray | torch.Tensor]) -> None:
        self.images, self.decode = images, decode
        self.labels = torch.tensor(images.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path = self.images.files[index]
        try:
            return torch.as_tensor(self.decode(path)), self.images.labels[index], ""
        except BadImageError as err:
            shape = getattr(self.decode, "channels", 1), getattr(self.decode, "size", 1)
            return (
                torch.zeros((shape[0], shape[1], shape[1]), dtype=torch.uint8),
                -1,
                f"'{path}' {err.reason}",
            )


class FolderLoader:
    """The from-disk loader: batches of `dataset` decoded by `num_workers` processes, then cropped, flipped
    and normalised on `device` with the batched ops of `data.loaders.TensorLoader` and the same epoch plan
    (`schedule`, a `data.loaders.Schedule`), so it yields what the in-memory loader would.

    indices: `(M,)` positions into `dataset` this loader serves (None: all). Same interface as the other
    loaders: `len()` (batches), `num_samples`, `set_epoch(e)`.
    """

    def __init__(
        self,
        dataset: FolderDataset,
        indices: np.ndarray | None,
        schedule,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        num_workers: int | None = None,
    ) -> None:
        self.dataset, self.schedule, self.batch_size = dataset, schedule, batch_size
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.device = torch.device(device)
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return self.schedule.num_samples

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        plan = self.schedule.plan(epoch)
        order = plan.positions.numpy()
        if self.indices is not None:
            order = self.indices[order]
        batches = [order[s : s + self.batch_size].tolist() for s in range(0, len(order), self.batch_size)]
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=cuda,
            worker_init_fn=quiet_worker,
        )
        pad = self.schedule.pad
        for number, (x, y, errors) in enumerate(loader):
            failed = next((e for e in errors if e), None)
            if failed:
                raise UserError(f"{failed}; remove or replace it, then rerun")
            part = slice(number * self.batch_size, (number + 1) * self.batch_size)
            x, y = x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)
            top, left, flip = (
                None if t is None else t[part].to(self.device) for t in (plan.top, plan.left, plan.flip)
            )
            if top is not None or flip is not None:
                x = crop_flip(x, top, left, flip, pad)
            yield normalize(x, self.mean, self.std), y
