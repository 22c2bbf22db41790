"""An embedded dirty-digits set for the demo: real data, no download, no files, built in about a second.

scikit-learn ships 1,797 real handwritten digits as 8x8 images (`load_digits`, the UCI optdigits test
set) and two real photographs (`load_sample_images`). From them we build a miniature Dirty-MNIST:

- `digits_clean`: the digits made to look like MNIST (white stroke on black; upsampled smoothly to a
  20x20 box, strokes brought to full intensity, placed in 28x28 and centred by centre of mass, which is
  how MNIST itself was made), so that networks and uncertainty scores behave as on MNIST.
- `digits_ambiguous`: blends `a * x_i + (1 - a) * x_j` (a in [0.4, 0.6]) of two digits of different
  classes, each listed twice, once with each label, as Ambiguous-MNIST lists a sample once per label:
  their aleatoric uncertainty is high by construction.
- `digits`: clean followed by ambiguous, as dirty_mnist is MNIST followed by Ambiguous-MNIST.
- `digits_ood`: grayscale 28x28 patches of the two photographs (test only, labels 0): epistemic
  uncertainty should be high on them.

The train/test split is a fixed permutation of the source digits (2/3 train); blends of a split use only
that split's digits, so no test digit is seen in training, not even inside a blend. All splits are
uint8 `(N, 1, 28, 28)` with int64 labels `(N,)` and are built once per process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from data.transforms import crop_flip

SEED = 20210406  # fixes the split, the blend pairs and the patch positions
TEST_FRACTION = 1 / 3
BLEND_RANGE = (0.4, 0.6)
OOD_PATCHES_PER_PHOTO = 500


def _stretch(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Linear contrast stretch so that stroke cores reach 1 and faint halos fall to 0, as in MNIST."""
    return ((x - low) / (high - low)).clamp_(0.0, 1.0)


def _center_of_mass_shift(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (dy, dx) per image `(N, H, W)` that moves its centre of mass to the image centre."""
    _, h, w = x.shape
    mass = x.sum(dim=(1, 2)).clamp_min(1e-6)
    cy = (x.sum(dim=2) * torch.arange(h, dtype=x.dtype)).sum(dim=1) / mass
    cx = (x.sum(dim=1) * torch.arange(w, dtype=x.dtype)).sum(dim=1) / mass
    return torch.round((h - 1) / 2 - cy).long(), torch.round((w - 1) / 2 - cx).long()


def mnistify(images: np.ndarray) -> torch.Tensor:
    """sklearn digits `(N, 8, 8)` with values 0..16 to MNIST-like float images `(N, 28, 28)` in [0, 1]."""
    x = torch.from_numpy(images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bicubic", align_corners=False)[:, 0]
    x = _stretch(x, 0.3, 0.8)
    x = F.pad(x, (4, 4, 4, 4))
    dy, dx = _center_of_mass_shift(x)
    # Shift by (dy, dx) = crop at offset (4 - dy, 4 - dx) of the image zero-padded by 4 on each side.
    return crop_flip(x[:, None], (4 - dy).clamp(0, 8), (4 - dx).clamp(0, 8), None, pad=4)[:, 0]


def blends(
    clean: torch.Tensor, labels: np.ndarray, pool: np.ndarray, count: int, rng: np.random.RandomState
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """`count` blends of digit pairs from `pool` with different labels, each listed once per label.

    Returns `(2 * count, 28, 28)` float images, `(2 * count,)` labels (a blend's two copies adjacent, like
    the flattened Ambiguous-MNIST) and the `(count, 2)` source indices of each blend.
    """
    first = rng.choice(pool, size=count)
    second = rng.choice(pool, size=count)
    clash = labels[first] == labels[second]
    while clash.any():
        second[clash] = rng.choice(pool, size=int(clash.sum()))
        clash = labels[first] == labels[second]
    alpha = torch.from_numpy(rng.uniform(*BLEND_RANGE, size=count).astype(np.float32))[:, None, None]
    mixed = alpha * clean[first] + (1 - alpha) * clean[second]
    mixed = _stretch(mixed, 0.0, 0.7)  # blended strokes are fainter; bring them back towards full ink
    pairs = np.stack([labels[first], labels[second]], axis=1).reshape(-1)
    sources = np.stack([first, second], axis=1)
    return mixed.repeat_interleave(2, dim=0), torch.from_numpy(pairs.astype(np.int64)), sources


def split_pools(num_digits: int, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """Disjoint sorted index pools of the source digits: a random third for "test", the rest "train"."""
    order = rng.permutation(num_digits)
    n_test = round(TEST_FRACTION * num_digits)
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def _photo_patches(rng: np.random.RandomState) -> torch.Tensor:
    """Grayscale square patches (side 28..140 px) of the two sample photos, resized to `(N, 28, 28)`."""
    from sklearn.datasets import load_sample_images

    patches = []
    for photo in load_sample_images().images:
        rgb = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0)
        gray = rgb @ torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's convert("L")
        h, w = gray.shape
        for _ in range(OOD_PATCHES_PER_PHOTO):
            side = int(rng.randint(28, 141))
            top, left = int(rng.randint(0, h - side + 1)), int(rng.randint(0, w - side + 1))
            patch = gray[top : top + side, left : left + side][None, None]
            patches.append(F.interpolate(patch, size=(28, 28), mode="bilinear", antialias=True)[0, 0])
    return torch.stack(patches)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round_().to(torch.uint8)[:, None]


@functools.lru_cache(maxsize=1)
def _build() -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    labels = raw.target.astype(np.int64)
    clean = mnistify(raw.images)
    rng = np.random.RandomState(SEED)
    pools = split_pools(len(labels), rng)
    sets = {}
    for split, pool in pools.items():
        clean_x, clean_y = _to_uint8(clean[pool]), torch.from_numpy(labels[pool])
        amb_x, amb_y, _ = blends(clean, labels, pool, len(pool) // 2, rng)
        amb_x = _to_uint8(amb_x)
        sets["digits_clean", split] = (clean_x, clean_y)
        sets["digits_ambiguous", split] = (amb_x, amb_y)
        sets["digits", split] = (torch.cat([clean_x, amb_x]), torch.cat([clean_y, amb_y]))
    ood = _to_uint8(_photo_patches(rng))
    sets["digits_ood", "test"] = (ood, torch.zeros(len(ood), dtype=torch.int64))
    return sets


def load(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an embedded set: images `(N, 1, 28, 28)` uint8, labels `(N,)` int64 (fresh copies)."""
    images, labels = _build()[name, split]
    return images.clone(), labels.clone()
