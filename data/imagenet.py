"""ImageNet (ILSVRC-2012) and ImageNet-O from their extracted folders, with the standard augmentation.

Layout below `--dataset-root` (that of torchvision's reference scripts, and of the ImageNet-O release)::

    imagenet/train/nXXXXXXXX/*.JPEG     1,000 class folders (WordNet ids), 1,281,167 images
    imagenet/val/nXXXXXXXX/*.JPEG       the same class folders, 50,000 images (the test split here)
    imagenet-o/nXXXXXXXX/*.jpg          2,000 out-of-distribution images (labels ignored)

Classes are the sorted folder names of `train/` (as `ImageFolder`); `val/` must have the same folders (the
flat validation release needs its images moved into class folders first, as for torchvision). A folder
with another number of classes than 1,000 is read with a warning, so that small ImageNet-shaped folders
serve tests and smoke runs; the network still has 1,000 outputs.

Transforms (torchvision's ResNet recipe): training images get a random-resized crop to `image_size`
(scale 0.08-1 of the area, aspect ratio 3/4-4/3, bilinear) and a horizontal flip with probability 1/2;
evaluation images are resized so that their shorter side is `round(image_size * 256 / 224)` (256 at 224)
and centre-cropped to `image_size`. Both are normalised with ImageNet's mean and std. `image_size` is 224;
the scripts' `--image-size` changes it (crop and resize alike) for cheap tests.

Randomness: each epoch draws, from one generator seeded by `(seed, epoch)` (`data.loaders.Schedule`), the
order and a 63-bit seed per image, from which the crop and the flip of that image are drawn wherever it
is decoded. So an epoch is the same for any number of workers, on any device, and split over DDP ranks
it is the single-process epoch, as for the built-in sets.

Two decoding paths, with the same crops:

- CPU (`ImageNetLoader(gpu_decode=False)`): `DataLoader` worker processes read, decode (Pillow), crop and
  resize each image and return uint8 `(3, S, S)` tensors; the batch is normalised on the device. Decoding
  is the cost: see `docs/speed.md` for the images/s per core.
- GPU (`gpu_decode=True`, a CUDA device): workers only read the files' bytes; the main process decodes a
  whole batch at once with `torchvision.io.decode_jpeg(..., device="cuda")` (nvJPEG), then crops and
  resizes each image on the GPU. Files that are not baseline JPEG (ImageNet has a PNG and a few CMYK files
  named .JPEG) are decoded by Pillow in the worker instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from data import folders
from data.transforms import normalize
from utils.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
IMAGENET_IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224  # evaluation: resize the shorter side to this times the crop, then centre-crop
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
IMAGENET_DIR = "imagenet"
IMAGENET_O_DIR = "imagenet-o"
JPEG_MAGIC = b"\xff\xd8"
_SEED_SALT = 0x1A6E  # separates the per-image seeds from the order drawn by the same (seed, epoch)


def resize_size(image_size: int) -> int:
    """The shorter side an evaluation image is resized to before its centre crop (256 for 224)."""
    return round(image_size * RESIZE_RATIO)


# --------------------------------------------------------------------------------------------------------
# Layout


def _root(root: str | Path | None, what: str) -> Path:
    if root is None:
        raise UserError(f"{what} is read from folders; pass --dataset-root, the folder that holds {what}")
    return Path(root).expanduser()


def scan_imagenet(root: str | Path | None, split: str) -> folders.ImageList:
    """The files of `root/imagenet/{split}` ("train" or "val") with their labels, every layout error one
    sentence; the classes are the sorted folders of `train/` either way."""
    base = _root(root, f"{IMAGENET_DIR}/")
    top = base / IMAGENET_DIR
    if not top.is_dir():
        raise UserError(
            f"ImageNet is not at '{top}'; extract ILSVRC-2012 as {top}/train/nXXXXXXXX/*.JPEG and "
            f"{top}/val/nXXXXXXXX/*.JPEG, or pass the --dataset-root that holds imagenet/"
        )
    for needed in ("train", split):
        if not (top / needed).is_dir():
            raise UserError(
                f"ImageNet at '{top}' has no {needed}/ folder; it needs {top}/{needed}/nXXXXXXXX/*.JPEG "
                "(the validation images sorted into class folders, as torchvision's scripts expect)"
            )
    classes = folders.find_classes(top / "train")
    if not classes:
        raise UserError(f"'{top / 'train'}' has no class folders; it needs {top}/train/nXXXXXXXX/*.JPEG")
    if len(classes) != IMAGENET_CLASSES:
        log.warning(
            "%s has %d class folders, not ImageNet's %d: reading it as a small ImageNet-shaped set "
            "(the network keeps %d outputs)",
            top / "train",
            len(classes),
            IMAGENET_CLASSES,
            IMAGENET_CLASSES,
        )
    return folders.scan_split(top / split, classes)


def scan_imagenet_o(root: str | Path | None) -> folders.ImageList:
    """Every image below `root/imagenet-o` (labels 0)."""
    base = _root(root, f"{IMAGENET_O_DIR}/")
    top = base / IMAGENET_O_DIR
    if not top.is_dir():
        raise UserError(
            f"ImageNet-O is not at '{top}'; extract its release as {top}/nXXXXXXXX/*.jpg, or pass the "
            "--dataset-root that holds imagenet-o/"
        )
    return folders.scan_images(top)


# --------------------------------------------------------------------------------------------------------
# Crops (pure functions of the image size and a generator, shared by both decoding paths)


@dataclass(frozen=True)
class Crop:
    """A box `(top, left, height, width)` of the decoded image, resized to the output size, then flipped."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def random_resized_crop(height: int, width: int, gen: torch.Generator) -> Crop:
    """RandomResizedCrop's box (Szegedy et al. 2015): up to 10 draws of an area fraction in `CROP_SCALE`
    and a log-uniform aspect ratio in `CROP_RATIO`, the first box that fits; else the largest centred box
    of a clamped ratio. Then a flip with probability 1/2. All draws from `gen`."""
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    box = None
    for _ in range(10):
        draws = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[0])
        ratio = math.exp(log_low + (log_high - log_low) * draws[1])
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            box = (top, left, h, w)
            break
    if box is None:
        ratio = width / height
        if ratio < CROP_RATIO[0]:
            w, h = width, round(width / CROP_RATIO[0])
        elif ratio > CROP_RATIO[1]:
            h, w = height, round(height * CROP_RATIO[1])
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(torch.rand(1, generator=gen) < 0.5)
    return Crop(*box, flip=flip)


def crop_for(height: int, width: int, seed: int | None) -> Crop | None:
    """The training crop of an image with per-image `seed`; None (the evaluation transform: resize the
    shorter side to `resize_size`, centre-crop) when `seed` is None."""
    if seed is None:
        return None
    return random_resized_crop(height, width, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------
# Decoding


def open_rgb(path: str) -> Image.Image:
    """The image at `path` in RGB (greyscale and CMYK converted); `folders.BadImageError` says why not."""
    img = folders.open_image(path)
    return img if img.mode == "RGB" else img.convert("RGB")


def transform(image: Image.Image | torch.Tensor, crop: Crop | None, image_size: int):
    """torchvision's transforms through its functional ops, on a PIL image or a uint8 `(3, H, W)` tensor
    on any device (the GPU path): `crop` resized (bilinear) to `image_size` square and flipped, or with
    `crop=None` the evaluation resize and centre crop."""
    if crop is None:
        out = TF.resize(image, resize_size(image_size), antialias=True)
        return TF.center_crop(out, [image_size, image_size])
    out = TF.resized_crop(
        image, crop.top, crop.left, crop.height, crop.width, [image_size, image_size], antialias=True
    )
    return TF.hflip(out) if crop.flip else out


def pil_transform(img: Image.Image, seed: int | None, image_size: int) -> torch.Tensor:
    """The CPU path: `transform` of a PIL image with the crop of `seed`, as uint8 `(3, S, S)`."""
    out = transform(img, crop_for(img.height, img.width, seed), image_size)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ImageNetDecoder:
    """Picklable per-file work of a worker: decode, crop and resize (CPU path) or read bytes (GPU path)."""

    image_size: int
    bytes_only: bool = False

    def __call__(self, path: str, seed: int | None) -> torch.Tensor:
        if self.bytes_only:
            with open(path, "rb") as handle:
                data = handle.read()
            if data[:2] == JPEG_MAGIC:
                return torch.frombuffer(bytearray(data), dtype=torch.uint8)
            # Not a JPEG (ImageNet's PNG named .JPEG): decoded here, then cropped like the others.
        return pil_transform(open_rgb(path), seed, self.image_size)


def decode_batch(
    items: Sequence[torch.Tensor], seeds: Sequence[int | None], image_size: int, device: torch.device
) -> torch.Tensor:
    """The GPU path's main-process half: uint8 `(B, 3, S, S)` on `device` from what `ImageNetDecoder(
    bytes_only=True)` returned (1-d JPEG bytes, or an already cropped image), the JPEGs decoded in one
    batched `torchvision.io.decode_jpeg` call on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg = [i for i, item in enumerate(items) if item.dim() == 1]
    decoded = {}
    if jpeg:
        images = decode_jpeg([items[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        decoded = dict(zip(jpeg, images))
    out = torch.empty(len(items), 3, image_size, image_size, dtype=torch.uint8, device=device)
    for i, item in enumerate(items):
        if i in decoded:
            image = decoded[i]
            out[i] = transform(image, crop_for(image.shape[1], image.shape[2], seeds[i]), image_size)
        else:
            out[i] = item.to(device)
    return out


class ImageNetDataset(Dataset):
    """Item `(index, seed)` -> `(tensor, label, error)`: the decoder's output for file `index` (seed None:
    evaluation crop), or an empty tensor, the label -1 and the reason when the file cannot be read."""

    def __init__(self, images: folders.ImageList, decoder: ImageNetDecoder) -> None:
        self.images, self.decoder = images, decoder
        self.labels = torch.tensor(images.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int, str]:
        index, seed = key
        path = self.images.files[index]
        try:
            return self.decoder(path, seed), self.images.labels[index], ""
        except folders.BadImageError as err:
            return torch.zeros(0, dtype=torch.uint8), -1, f"'{path}' {err.reason}"
        except OSError as err:
            return torch.zeros(0, dtype=torch.uint8), -1, f"'{path}' cannot be read ({err})"


def _collate(batch):
    tensors, labels, errors = zip(*batch)
    return list(tensors), torch.tensor(labels, dtype=torch.int64), list(errors)


class ImageNetLoader:
    """Batches of ImageNet-style files, in the epoch plan of `schedule` (a `data.loaders.Schedule`; its
    crop and flip are off, the random-resized crop takes their place when `train`), normalised on `device`.

    indices: `(M,)` positions into `dataset` this loader serves (None: all). `gpu_decode` decodes JPEGs on
    `device` (a CUDA device); otherwise workers decode with Pillow. `epoch_rng(seed, epoch)` is the
    project's per-epoch generator (`data.loaders.epoch_generator`, passed in: that module imports this
    one), from which a training loader draws its per-image seeds. Same interface as the other loaders:
    `len()` (batches), `num_samples`, `set_epoch(e)`.
    """

    def __init__(
        self,
        images: folders.ImageList,
        indices: np.ndarray | None,
        schedule,
        batch_size: int,
        image_size: int,
        device: torch.device,
        *,
        train: bool,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        num_workers: int | None = None,
        gpu_decode: bool | None = None,
        seed: int = 0,
        epoch_rng: Callable[[int, int], torch.Generator] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.gpu_decode = self.device.type == "cuda" if gpu_decode is None else bool(gpu_decode)
        self.dataset = ImageNetDataset(images, ImageNetDecoder(image_size, bytes_only=self.gpu_decode))
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.schedule, self.batch_size, self.image_size = schedule, batch_size, image_size
        if train and epoch_rng is None:
            raise ValueError("a training loader needs epoch_rng (data.loaders.epoch_generator)")
        self.train, self.seed, self.epoch_rng = train, seed, epoch_rng
        self.num_workers = folders.default_workers() if num_workers is None else num_workers
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._next_epoch = 0

    @property
    def labels(self) -> torch.Tensor:
        labels = self.dataset.labels
        return labels if self.indices is None else labels[torch.from_numpy(self.indices)]

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return self.schedule.num_samples

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def image_seeds(self, epoch: int) -> torch.Tensor | None:
        """`(size,)` int64 per-image seeds of `epoch` for the whole subset (None when not training)."""
        if not self.train:
            return None
        gen = self.epoch_rng(self.seed ^ _SEED_SALT, epoch)
        return torch.randint(0, 2**63 - 1, (self.schedule.size,), generator=gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        positions = self.schedule.plan(epoch).positions
        seeds = self.image_seeds(epoch)
        order = positions.numpy()
        files = order if self.indices is None else self.indices[order]
        keys = [
            (int(f), None if seeds is None else int(seeds[p])) for f, p in zip(files.tolist(), order.tolist())
        ]
        batches = [keys[s : s + self.batch_size] for s in range(0, len(keys), self.batch_size)]
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=cuda and not self.gpu_decode,
            persistent_workers=False,
        )
        for batch_keys, (tensors, y, errors) in zip(batches, loader):
            failed = next((e for e in errors if e), None)
            if failed:
                raise UserError(f"{failed}; remove or replace it, then rerun")
            if self.gpu_decode:
                x = decode_batch(tensors, [k[1] for k in batch_keys], self.image_size, self.device)
            else:
                x = torch.stack(tensors).to(self.device, non_blocking=cuda)
            yield normalize(x, self.mean, self.std), y.to(self.device, non_blocking=cuda)


# --------------------------------------------------------------------------------------------------------
# A synthetic ImageNet-shaped folder, for tests and smoke runs

SYNTHETIC_CLASSES = ("n01440764", "n01443537", "n01484850")
_SYNTHETIC_SIZES = ((40, 30), (30, 44), (36, 36), (50, 28))


def write_synthetic(
    root: str | Path,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    train_per_class: int = 4,
    val_per_class: int = 2,
    ood: int = 3,
    seed: int = 0,
) -> Path:
    """Write `root/imagenet/{train,val}/WNID/*.JPEG` and `root/imagenet-o/WNID/*.jpg`: smooth random colour
    images of assorted small sizes and aspect ratios (one greyscale JPEG among the training images), the
    layout `scan_imagenet` reads. A class is told apart by its mean colour, so a network can learn something.
    Returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)

    def save(path: Path, size: tuple[int, int], tint: np.ndarray, mode: str = "RGB") -> None:
        width, height = size
        coarse = rng.integers(0, 96, (height // 4 + 1, width // 4 + 1, 3)) + tint
        img = Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.convert(mode).save(path, "JPEG", quality=90)

    tints = rng.integers(0, 160, (len(classes), 3))
    for c, wnid in enumerate(classes):
        for i in range(train_per_class):
            mode = "L" if (c, i) == (0, 1) else "RGB"
            path = root / IMAGENET_DIR / "train" / wnid / f"{wnid}_{i}.JPEG"
            save(path, _SYNTHETIC_SIZES[i % len(_SYNTHETIC_SIZES)], tints[c], mode)
        for i in range(val_per_class):
            save(
                root / IMAGENET_DIR / "val" / wnid / f"ILSVRC2012_val_{c:04d}{i:02d}.JPEG", (34, 40), tints[c]
            )
    for i in range(ood):
        save(
            root / IMAGENET_O_DIR / classes[i % len(classes)] / f"o_{i}.jpg", (32 + 4 * i, 30), tints[0][::-1]
        )
    return root
