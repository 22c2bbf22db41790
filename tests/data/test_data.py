"""data/: every official format written small into tmp_path, the split, both loaders, the digits set.

Each test writes its own files in the official layout, so it checks what the readers make of the real
formats (pickles, .mat, IDX raw and gzipped, .pt, a JPEG folder) without any download.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    collect,
    denormalize,
    write_amnist,
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_svhn,
    write_tiny_imagenet,
)
from PIL import Image

import data
from data import digits, formats, sources
from data.loaders import Schedule, TensorLoader, TorchvisionLoader
from data.registry import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD
from data.transforms import crop_flip, resize, rgb_to_gray, to_shape
from utils.errors import UserError

# The files written here are not the official ones; the warning itself is tested in test_md5_*.
pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")

# ----------------------------------------------------------------------------------------------------------
# Writers of the official formats


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: a missing file goes straight to the error (see test_missing_*)."""
    monkeypatch.setenv(sources.NO_DOWNLOAD_ENV, "1")


@pytest.fixture
def cifar_root(tmp_path):
    return tmp_path, write_cifar10(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_constants():
    names = data.list_datasets()
    for name in (
        "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "dirty_mnist", "tiny_imagenet",
        "ambiguous_mnist", "digits", "digits_clean", "digits_ambiguous", "digits_ood",
    ):  # fmt: skip
        assert name in names
    assert data.canonical_name("dirty-mnist") == "dirty_mnist"
    assert data.canonical_name("Fashion-MNIST") == "fashion_mnist"
    for name in ("cifar10", "cifar100", "svhn", "tiny_imagenet"):
        info = data.get_info(name)
        assert info.shape == (3, 32, 32) and info.mean == CIFAR_MEAN and info.std == CIFAR_STD
    assert CIFAR_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR_STD == (0.2023, 0.1994, 0.2010)
    for name in ("mnist", "fashion_mnist", "dirty_mnist", "ambiguous_mnist", "digits", "digits_ood"):
        info = data.get_info(name)
        assert info.shape == (1, 28, 28) and info.mean == (0.1307,) and info.std == (0.3081,)
        assert info.augmentation == "none"
    assert data.get_info("cifar100").num_classes == 100
    assert data.get_info("cifar10").augmentation == "crop_flip"
    assert data.get_info("svhn").augmentation == "none"
    assert not data.get_info("tiny_imagenet").has_train and not data.get_info("digits_ood").has_train
    assert data.get_info("dirty-mnist") is data.get_info("dirty_mnist")
    assert data.dirty_parts("dirty-mnist") == ("mnist", "ambiguous_mnist")
    assert (
        data.dirty_parts("digits") == ("digits_clean", "digits_ambiguous")
        and data.dirty_parts("mnist") is None
    )
    for parts in (data.dirty_parts("dirty_mnist"), data.dirty_parts("digits")):
        assert all(part in names for part in parts)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="cifar10.*dirty_mnist"):
        data.canonical_name("imagenet21k")


# ----------------------------------------------------------------------------------------------------------
# The validation split


@pytest.mark.parametrize(
    "n, val_size, val_seed", [(100, 0.1, 1), (50000, 0.1, 1), (60000, 0.1, 3), (7, 0.5, 0)]
)
def test_split_matches_original_numpy_shuffle(n, val_size, val_seed):
    state = np.random.get_state()
    train, valid = data.split_indices(n, val_size, val_seed)
    assert np.array_equal(np.random.get_state()[1], state[1]), "the global NumPy state must stay untouched"
    # The original code, verbatim in spirit.
    indices = list(range(n))
    np.random.seed(val_seed)
    np.random.shuffle(indices)
    split = int(np.floor(val_size * n))
    np.random.set_state(state)
    assert valid.tolist() == indices[:split] and train.tolist() == indices[split:]


def test_split_rejects_bad_fraction():
    with pytest.raises(UserError):
        data.split_indices(10, 1.5)


# ----------------------------------------------------------------------------------------------------------
# Readers of each format


def test_cifar10_reads_batches_in_order(cifar_root):
    root, ref = cifar_root
    for split in ("train", "test"):
        x, y = data.load_split("cifar10", root, split)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[split + "_y"]), 3, 32, 32)
        assert y.dtype == torch.int64
        assert np.array_equal(x.numpy(), ref[split + "_x"]) and np.array_equal(y.numpy(), ref[split + "_y"])


def test_cifar100_uses_fine_labels(tmp_path):
    ref = write_cifar100(tmp_path)
    x, y = data.load_split("cifar100", tmp_path, "test")
    assert x.shape == (12, 3, 32, 32) and np.array_equal(x.numpy(), ref["test_x"])
    assert np.array_equal(y.numpy(), ref["test_y"]) and y.max() >= 20  # coarse labels stop at 19


def test_svhn_layout_and_label_10_is_zero(tmp_path):
    x_mat, y_mat = write_svhn(tmp_path, "test")
    x, y = data.load_split("svhn", tmp_path, "test")
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x.numpy()[4, 2, 7, 9], x_mat[7, 9, 2, 4])
    assert np.array_equal(x.numpy(), x_mat.transpose(3, 2, 0, 1))
    expected = y_mat.reshape(-1).astype(np.int64)
    assert (expected == 10).any()
    expected[expected == 10] = 0
    assert np.array_equal(y.numpy(), expected) and y.min() == 0 and y.max() <= 9


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_idx_raw_and_gz(tmp_path, gz, name, folder):
    ref = write_mnist(tmp_path, folder, gz=gz)
    for split in ("train", "test"):
        x, y = data.load_split(name, tmp_path, split)
        assert x.shape == (len(ref[split + "_y"]), 1, 28, 28) and x.dtype == torch.uint8
        assert np.array_equal(x.numpy(), ref[split + "_x"]) and np.array_equal(y.numpy(), ref[split + "_y"])


def test_corrupt_idx_is_a_user_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        data.load_split("mnist", tmp_path, "test")


def test_ambiguous_mnist_flattening_and_60k_boundary(tmp_path):
    samples, labels = write_amnist(tmp_path, num_samples=6001)  # 60,010 pairs: 60,000 train, 10 test
    x, y = data.load_split("ambiguous_mnist", tmp_path, "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (60000,)
    # The original: data.expand(-1, K, 28, 28).reshape(-1, 1, 28, 28), targets.reshape(-1), then [:60000].
    flat_x = samples.expand(-1, 10, 28, 28).reshape(-1, 1, 28, 28)
    assert torch.equal(x[:50], flat_x[:50]) and torch.equal(x[-30:], flat_x[59970:60000])
    assert torch.equal(y, labels.reshape(-1)[:60000])
    tx, ty = data.load_split("ambiguous_mnist", tmp_path, "test")
    assert torch.equal(tx, samples[6000:].expand(-1, 10, 28, 28).reshape(-1, 1, 28, 28))
    assert torch.equal(ty, labels[6000])


def test_dirty_mnist_is_mnist_then_ambiguous(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "AMNIST_TRAIN_PAIRS", 30)
    ref = write_mnist(tmp_path)
    samples, labels = write_amnist(tmp_path, num_samples=5)  # 50 pairs: 30 train, 20 test
    x, y = data.load_split("dirty_mnist", tmp_path, "train")
    assert x.dtype == torch.float32 and x.shape == (40 + 30, 1, 28, 28)
    assert torch.equal(x[:40], torch.from_numpy(ref["train_x"]).float().div(255))
    assert torch.equal(x[40:], samples.repeat_interleave(10, dim=0)[:30])
    assert torch.equal(y, torch.cat([torch.from_numpy(ref["train_y"]), labels.reshape(-1)[:30]]))
    tx, ty = data.load_split("dirty-mnist", tmp_path, "test")
    assert tx.shape == (25 + 20, 1, 28, 28) and torch.equal(ty[25:], labels.reshape(-1)[30:])
    # Loaders keep the split as float and normalise it with the MNIST constants.
    train, valid = data.get_train_valid_loader("dirty_mnist", tmp_path, 16, shuffle=False)
    xb, _ = collect(valid)
    _, valid_idx = data.split_indices(70)
    assert torch.allclose(xb, (x[valid_idx] - 0.1307) / 0.3081, atol=1e-6)
    assert train.images.dtype == torch.float32


def test_tiny_imagenet_resized_and_ordered(tmp_path):
    written = write_tiny_imagenet(tmp_path)
    x, y = data.load_split("tiny_imagenet", tmp_path, "test")
    assert (
        x.shape == (5, 3, 32, 32)
        and x.dtype == torch.uint8
        and torch.equal(y, torch.zeros(5, dtype=torch.int64))
    )
    folder = tmp_path / "tiny-imagenet-200" / "test" / "images"
    for row, number in enumerate(sorted(written)):  # 0, 1, 2, 3, 10: by number, not by name
        with Image.open(folder / f"test_{number}.JPEG") as img:
            expected = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
        assert np.array_equal(x[row].permute(1, 2, 0).numpy(), expected)
    with pytest.raises(UserError, match="only a test split"):
        data.load_split("tiny_imagenet", tmp_path, "train")
    with pytest.raises(UserError, match="only a test split"):
        data.get_train_valid_loader("tiny_imagenet", tmp_path, 4)


# ----------------------------------------------------------------------------------------------------------
# md5 warning, missing data


def test_md5_warns_once_per_file_and_loading_goes_on(cifar_root):
    root, ref = cifar_root
    with pytest.warns(formats.ChecksumWarning, match="test_batch.*published numbers"):
        x, _ = data.load_split("cifar10", root, "test")
    assert np.array_equal(x.numpy(), ref["test_x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", formats.ChecksumWarning)
        data.load_split("cifar10", root, "test")  # the same file again: no second warning


def test_md5_silent_for_official_files(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    monkeypatch.setitem(formats.OFFICIAL_MD5, "cifar-10-batches-py/test_batch", formats.file_md5(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", formats.ChecksumWarning)
        data.load_split("cifar10", tmp_path, "test")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("svhn", "train_32x32.mat"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("dirty_mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("ambiguous_mnist", "amnist_samples.pt"),
    ],
)
def test_missing_files_name_the_expected_path(tmp_path, name, expected):
    with pytest.raises(UserError) as err:
        data.get_train_valid_loader(name, tmp_path / "empty", 8)
    message = str(err.value)
    assert str(tmp_path / "empty" / expected) in message and "\n" not in message
    assert "DDU_NO_DOWNLOAD is set" in message
    if name == "ambiguous_mnist":
        assert "python -m tools.ambiguous_mnist" in message


def test_missing_tiny_imagenet_and_missing_root(tmp_path):
    with pytest.raises(UserError, match="tiny-imagenet-200"):
        data.get_test_loader("tiny_imagenet", tmp_path, 8)
    with pytest.raises(UserError, match="--dataset-root"):
        data.load_split("cifar10", None, "train")


def test_missing_files_with_download_fail_fast_offline(tmp_path, monkeypatch):
    """The real download path offline: a host that does not resolve ends in the UserError, no download."""
    monkeypatch.delenv(sources.NO_DOWNLOAD_ENV)

    def offline(*args, **kwargs):
        raise socket.gaierror("no network")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(sources, "_torchvision_download", lambda *a, **k: lambda: 1 / 0)  # must not run
    with pytest.raises(UserError, match="could not download, .* is not reachable"):
        data.load_split("svhn", tmp_path, "test")


def test_a_hanging_name_lookup_does_not_block_the_probe(monkeypatch):
    """DNS has no timeout of its own: the probe gives up after its timeout while the lookup still hangs."""
    release = threading.Event()
    finished = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(60)
        finished.set()
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        assert sources._host_resolves("https://example.invalid/x", timeout=0.01) is False
        assert not finished.is_set()  # it returned while the lookup was still blocked
    finally:
        release.set()


def test_download_then_read(tmp_path, monkeypatch):
    """When the download succeeds, the freshly placed files are read in the same call."""
    monkeypatch.delenv(sources.NO_DOWNLOAD_ENV)
    monkeypatch.setattr(sources, "_host_resolves", lambda url, timeout: True)
    calls = []

    def fake(cls_name, root, **kwargs):
        return lambda: calls.append(cls_name) or write_svhn(root, kwargs["split"])

    monkeypatch.setattr(sources, "_torchvision_download", fake)
    x, _ = data.load_split("svhn", tmp_path, "train")
    assert calls == ["SVHN"] and x.shape == (15, 3, 32, 32)


def test_bad_loader_and_batch_size(cifar_root):
    root, _ = cifar_root
    with pytest.raises(UserError, match="torchvision"):
        data.get_test_loader("cifar10", root, 8, loader="dali")
    with pytest.raises(UserError, match="batch size"):
        data.get_test_loader("cifar10", root, 0)


# ----------------------------------------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("kind", ["gpu", "torchvision"])
def test_loaders_split_shapes_and_normalisation(cifar_root, kind):
    root, ref = cifar_root
    train, valid = data.get_train_valid_loader("cifar10", root, 16, augment=False, shuffle=False, loader=kind)
    train_idx, valid_idx = data.split_indices(100, 0.1, 1)
    assert (train.num_samples, valid.num_samples) == (90, 10)
    assert (len(train), len(valid)) == (math.ceil(90 / 16), 1)
    sizes = [len(y) for _, y in train]
    assert sizes == [16] * 5 + [10]  # the last batch is smaller, nothing dropped
    x, y = collect(train)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (90, 3, 32, 32)
    expected = torch.from_numpy(ref["train_x"][train_idx]).float().div(255)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (expected - mean) / std, atol=1e-6)
    assert torch.equal(y, torch.from_numpy(ref["train_y"][train_idx]))
    vx, _ = collect(valid)
    assert torch.equal(
        denormalize(vx, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(ref["train_x"][valid_idx]).float()
    )
    test = data.get_test_loader("cifar10", root, 7, loader=kind)
    tx, ty = collect(test)
    assert len(test) == 5 and torch.equal(ty, torch.from_numpy(ref["test_y"]))
    assert torch.equal(denormalize(tx, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(ref["test_x"]).float())


@pytest.mark.parametrize("kind", ["gpu", "torchvision"])
def test_validation_never_augmented_nor_shuffled(cifar_root, kind):
    root, ref = cifar_root
    _, valid = data.get_train_valid_loader("cifar10", root, 4, augment=True, loader=kind, test_batch_size=3)
    _, valid_idx = data.split_indices(100)
    assert len(valid) == 4
    for epoch in (0, 5):
        valid.set_epoch(epoch)
        vx, _ = collect(valid)
        assert torch.equal(
            denormalize(vx, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(ref["train_x"][valid_idx]).float()
        )


def test_shuffle_is_a_permutation_of_the_training_part(cifar_root):
    root, ref = cifar_root
    train, _ = data.get_train_valid_loader("cifar10", root, 32, augment=False, seed=3)
    x, _ = collect(train)
    raw = denormalize(x, CIFAR_MEAN, CIFAR_STD).reshape(90, -1)
    train_idx, _ = data.split_indices(100)
    reference = torch.from_numpy(ref["train_x"][train_idx]).float().reshape(90, -1)
    assert not torch.equal(raw, reference)  # shuffled ...
    assert torch.equal(raw.sort(dim=0).values, reference.sort(dim=0).values)  # ... but the same images


def _marker_images(n: int) -> torch.Tensor:
    """Uint8 CIFAR-shaped images with background 50 and an asymmetric marker at row 16, cols 16/17."""
    images = torch.full((n, 3, 32, 32), 50, dtype=torch.uint8)
    images[:, :, 16, 16], images[:, :, 16, 17] = 200, 100
    return images


def test_augmentation_statistics():
    n = 4000
    images = _marker_images(n)
    loader = TensorLoader(
        images,
        torch.zeros(n, dtype=torch.int64),
        None,
        Schedule(n, True, True, True, seed=1),
        512,
        (0.0,) * 3,
        (1.0,) * 3,
    )
    x, _ = collect(loader)
    raw = (x * 255).round()
    rows, shifts_y, shifts_x, flips = [], [], [], []
    for img in raw[:, 0]:
        r, c = torch.nonzero(img == 200)[0].tolist()
        c_second = torch.nonzero(img == 100)[0, 1].item()
        flipped = c_second < c
        shifts_y.append(r - 16)
        shifts_x.append((31 - c if flipped else c) - 16)
        flips.append(flipped)
        # zero padding: as many all-zero rows as the vertical shift, and zero columns as the horizontal one
        zero_rows = int((img == 0).all(dim=1).sum())
        zero_cols = int((img == 0).all(dim=0).sum())
        rows.append((zero_rows == abs(r - 16), zero_cols == abs(shifts_x[-1])))
    assert all(a and b for a, b in rows)
    flip_rate = np.mean(flips)
    assert 0.46 < flip_rate < 0.54
    for shifts in (shifts_y, shifts_x):
        counts = np.bincount(np.asarray(shifts) + 4, minlength=9)
        assert len(counts) == 9 and counts.min() > n / 9 * 0.75 and counts.max() < n / 9 * 1.25


def test_crop_flip_matches_pil_reference():
    """Batched crop/flip equals torchvision's per-image PIL ops for the same parameters."""
    from torchvision.transforms import functional as TF

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    top, left = torch.randint(0, 9, (12,), generator=gen), torch.randint(0, 9, (12,), generator=gen)
    flip = torch.rand(12, generator=gen) < 0.5
    out = crop_flip(images, top, left, flip, 4)
    for i in range(12):
        img = TF.crop(
            TF.pad(Image.fromarray(images[i].permute(1, 2, 0).numpy()), 4), int(top[i]), int(left[i]), 32, 32
        )
        if flip[i]:
            img = TF.hflip(img)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(img))
    assert torch.equal(crop_flip(images, None, None, flip, 4)[flip], images[flip].flip(3))


def test_determinism_per_seed_and_epoch(cifar_root):
    root, _ = cifar_root

    def make(seed):
        return data.get_train_valid_loader("cifar10", root, 32, seed=seed)[0]

    a, b = make(7), make(7)
    first = [collect(a) for _ in range(3)]  # epochs 0, 1, 2 without set_epoch
    b.set_epoch(2)
    assert all(torch.equal(u, v) for u, v in zip(collect(b), first[2]))
    b.set_epoch(0)
    assert all(torch.equal(u, v) for u, v in zip(collect(b), first[0]))
    assert not torch.equal(first[0][0], first[1][0])
    c = make(8)
    c.set_epoch(0)
    assert not torch.equal(collect(c)[0], first[0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_torchvision_and_gpu_loaders_give_identical_batches(cifar_root, workers):
    root, _ = cifar_root
    gpu, _ = data.get_train_valid_loader("cifar10", root, 16, seed=5)
    tv, _ = data.get_train_valid_loader(
        "cifar10", root, 16, seed=5, loader="torchvision", num_workers=workers
    )
    assert isinstance(tv, TorchvisionLoader) and len(tv) == len(gpu)
    for epoch in (0, 4):
        gpu.set_epoch(epoch)
        tv.set_epoch(epoch)
        for (x1, y1), (x2, y2) in zip(gpu, tv):
            assert torch.equal(y1, y2) and torch.equal(x1, x2)


@pytest.mark.parametrize("kind", ["gpu", "torchvision"])
def test_ddp_shards_are_disjoint_equal_and_cover_the_epoch(kind):
    n, world = 100, 3
    images = (
        torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 3, 32, 32).to(torch.uint8).contiguous()
    )
    images[:, :, 0, 0] = 255  # a corner marker so that crops and flips are visible in the comparison
    labels = torch.arange(n)
    indices = np.arange(10, 10 + 80)  # the loader serves a subset, as the training part of a split

    def build(rank, world_size):
        schedule = Schedule(len(indices), True, True, True, seed=2, rank=rank, world_size=world_size)
        cls = TensorLoader if kind == "gpu" else TorchvisionLoader
        extra = () if kind == "gpu" else (torch.device("cpu"),)
        return cls(images, labels, indices, schedule, 8, (0.0,) * 3, (1.0,) * 3, *extra)

    full = build(0, 1)
    full.set_epoch(3)
    full_x, full_y = collect(full)
    shards = []
    for rank in range(world):
        shard = build(rank, world)
        shard.set_epoch(3)
        shards.append(collect(shard))
        assert shard.num_samples == 80 // 3 and len(shard) == math.ceil(26 / 8)
    ys = [y.tolist() for _, y in shards]
    assert all(len(y) == 26 for y in ys)
    assert not set(ys[0]) & set(ys[1]) and not set(ys[1]) & set(ys[2]) and not set(ys[0]) & set(ys[2])
    assert {i for y in ys for i in y} <= set(indices.tolist())
    # Together the shards are the single-process epoch, augmentation included.
    assert torch.equal(torch.cat([y for _, y in shards]), full_y[:78])
    assert torch.equal(torch.cat([x for x, _ in shards]), full_x[:78])


def test_mnist_training_is_not_augmented(tmp_path):
    ref = write_mnist(tmp_path)
    train, _ = data.get_train_valid_loader("mnist", tmp_path, 8, augment=True, shuffle=False)
    x, _ = collect(train)
    train_idx, _ = data.split_indices(40)
    assert torch.equal(
        denormalize(x, MNIST_MEAN, MNIST_STD), torch.from_numpy(ref["train_x"][train_idx]).float()
    )


# ----------------------------------------------------------------------------------------------------------
# Out-of-distribution conversion (like=)


def test_gray_and_resize_match_pil():
    gen = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    gray = rgb_to_gray(rgb)
    small = resize(rgb, (28, 28))
    for i in range(6):
        pil = Image.fromarray(rgb[i].permute(1, 2, 0).numpy())
        assert np.array_equal(gray[i, 0].numpy(), np.asarray(pil.convert("L")))
        assert np.array_equal(
            small[i].permute(1, 2, 0).numpy(), np.asarray(pil.resize((28, 28), Image.Resampling.BILINEAR))
        )
    floats = torch.rand(2, 1, 28, 28, generator=gen)
    assert to_shape(floats, (3, 32, 32)).dtype == torch.float32


def test_like_converts_shape_and_uses_in_distribution_constants(tmp_path):
    ref = write_mnist(tmp_path, "FashionMNIST")
    loader = data.get_test_loader("fashion_mnist", tmp_path, 10, like="cifar10")
    x, _ = collect(loader)
    assert x.shape == (25, 3, 32, 32)
    raw = denormalize(x, CIFAR_MEAN, CIFAR_STD)
    assert torch.equal(raw[:, 0], raw[:, 1]) and torch.equal(raw[:, 1], raw[:, 2])  # grayscale repeated
    expected = np.asarray(Image.fromarray(ref["test_x"][3, 0]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(raw[3, 0].numpy(), expected)

    cifar = write_cifar10(tmp_path)
    x, _ = collect(data.get_test_loader("cifar10", tmp_path, 10, like="mnist", loader="torchvision"))
    assert x.shape == (30, 1, 28, 28)
    pil = (
        Image.fromarray(cifar["test_x"][0].transpose(1, 2, 0))
        .convert("L")
        .resize((28, 28), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(denormalize(x, MNIST_MEAN, MNIST_STD)[0, 0].numpy(), np.asarray(pil))
    # Same shape as the in-distribution set: only the constants change (SVHN for a CIFAR-10 model).
    write_svhn(tmp_path, "test")
    x, _ = collect(data.get_test_loader("svhn", tmp_path, 10, like="cifar10"))
    assert x.shape == (15, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------------
# Embedded digits


def test_digits_build_deterministic_and_mnist_like():
    import sklearn.datasets  # noqa: F401  (its import time is not the build's)

    digits._build.cache_clear()
    first = {name: data.load_split(name, None, "test") for name in ("digits", "digits_ood")}
    digits._build.cache_clear()
    assert all(torch.equal(first[k][0], data.load_split(k, "ignored", "test")[0]) for k in first)
    x, y = data.load_split("digits_clean", None, "train")
    assert x.shape == (1198, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.bincount(y.numpy()).min() > 100  # every class well represented
    pixels = x.float() / 255
    assert 0.1 < pixels.mean() < 0.2  # MNIST: 0.13
    border = torch.ones(28, 28, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert pixels[:, 0, border].max() == 0  # white strokes on black, and as in MNIST the edge stays black
    border[2:-2, 2:-2] = False
    assert (pixels[:, 0, border].amax(dim=1) > 0).float().mean() < 0.02
    assert (pixels.amax(dim=(1, 2, 3)) == 1).all()
    mass = pixels[:, 0].sum(dim=(1, 2))
    rows = (pixels[:, 0].sum(dim=2) * torch.arange(28)).sum(dim=1) / mass
    cols = (pixels[:, 0].sum(dim=1) * torch.arange(28)).sum(dim=1) / mass
    assert (rows - 13.5).abs().max() < 1 and (cols - 13.5).abs().max() < 1  # centred by centre of mass


def test_digits_splits_are_disjoint_and_composed():
    train_x, _ = data.load_split("digits_clean", None, "train")
    test_x, _ = data.load_split("digits_clean", None, "test")
    seen = {img.numpy().tobytes() for img in train_x}
    assert not any(img.numpy().tobytes() in seen for img in test_x)
    pools = digits.split_pools(1797, np.random.RandomState(digits.SEED))
    assert not set(pools["train"]) & set(pools["test"]) and len(pools["train"]) + len(pools["test"]) == 1797
    amb_x, amb_y = data.load_split("digits_ambiguous", None, "train")
    assert len(amb_x) == 2 * (len(train_x) // 2)
    assert torch.equal(amb_x[0::2], amb_x[1::2]) and (amb_y[0::2] != amb_y[1::2]).all()
    all_x, all_y = data.load_split("digits", None, "train")
    assert torch.equal(all_x, torch.cat([train_x, amb_x])) and len(all_y) == len(all_x)
    ood_x, ood_y = data.load_split("digits_ood", None, "test")
    assert ood_x.shape == (1000, 1, 28, 28) and (ood_y == 0).all() and ood_x.float().std() > 20
    with pytest.raises(UserError):
        data.load_split("digits_ood", None, "train")


def test_digit_blends_use_only_their_pool():
    from sklearn.datasets import load_digits

    raw = load_digits()
    clean = digits.mnistify(raw.images)
    pool = np.arange(0, 1797, 3)
    x, y, sources_ = digits.blends(clean, raw.target, pool, 50, np.random.RandomState(0))
    assert x.shape == (100, 28, 28) and set(sources_.ravel()) <= set(pool.tolist())
    assert (raw.target[sources_[:, 0]] != raw.target[sources_[:, 1]]).all()
    assert y.view(-1, 2).tolist() == raw.target[sources_].tolist()


def test_digits_loaders_use_mnist_constants():
    train, valid = data.get_train_valid_loader("digits", None, 64)
    assert train.num_samples + valid.num_samples == 2396 and valid.num_samples == 239
    x, y = next(iter(train))
    assert x.shape == (64, 1, 28, 28) and y.max() <= 9
    ood = data.get_test_loader("digits_ood", None, 100, like="digits")
    x, _ = next(iter(ood))
    assert x.shape == (100, 1, 28, 28) and x.mean() > 0.5  # brighter than digits after MNIST normalisation


def test_amnist_manifest_sets_the_train_test_boundary(tmp_path):
    """A regenerated set of another size carries its split in amnist_manifest.json; the released files
    (no manifest) keep the original's first-60,000-pairs rule."""
    samples, labels = write_amnist(tmp_path, num_samples=5)  # 50 pairs
    assert len(data.load_split("ambiguous_mnist", tmp_path, "test")[1]) == 0  # all 50 < 60,000 are train
    (tmp_path / "amnist_manifest.json").write_text(json.dumps({"train_pairs": 30}))
    x, y = data.load_split("ambiguous_mnist", tmp_path, "train")
    tx, ty = data.load_split("ambiguous_mnist", tmp_path, "test")
    assert len(y) == 30 and len(ty) == 20
    assert torch.equal(torch.cat([y, ty]), labels.reshape(-1))


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"train_pairs": 30', "not valid JSON"),  # truncated
        ("[30]", "holds an array"),
        ('{"seed": 1}', "has no train_pairs"),
        ('{"train_pairs": "30"}', 'train_pairs "30"'),
        ('{"train_pairs": 0}', "train_pairs 0"),
        ('{"train_pairs": true}', "train_pairs true"),
        ('{"train_pairs": 999999}', r"train_pairs 999999, but .* hold only 50 \(sample, label\) pairs"),
    ],
    ids=["truncated", "not_an_object", "missing", "string", "zero", "boolean", "more_than_the_files"],
)
def test_unusable_amnist_manifest_is_one_sentence_naming_file_and_value(tmp_path, text, expected):
    """A manifest that is there but unusable would silently give another split (60,000 pairs, or more pairs
    than exist), so every loader that reads it stops with the file, the value and the fix."""
    write_mnist(tmp_path)
    write_amnist(tmp_path, num_samples=5)  # 50 pairs
    (tmp_path / "amnist_manifest.json").write_text(text)
    for name, split in (("ambiguous_mnist", "train"), ("ambiguous_mnist", "test"), ("dirty_mnist", "train")):
        with pytest.raises(UserError, match=expected) as err:
            data.load_split(name, tmp_path, split)
        message = str(err.value)
        assert "amnist_manifest.json" in message and "--overwrite" in message and "\n" not in message


def test_amnist_manifest_may_claim_every_pair_for_training(tmp_path):
    write_amnist(tmp_path, num_samples=5)
    (tmp_path / "amnist_manifest.json").write_text(json.dumps({"train_pairs": 50, "seed": 1}))
    assert len(data.load_split("ambiguous_mnist", tmp_path, "train")[1]) == 50
    assert len(data.load_split("ambiguous_mnist", tmp_path, "test")[1]) == 0


def test_missing_files_name_the_callers_root_flag(tmp_path):
    with pytest.raises(UserError, match="pass the --mnist-root that holds it"):
        data.load_split("mnist", tmp_path, "train", root_flag="--mnist-root")
    with pytest.raises(UserError, match="pass the --dataset-root that holds it"):
        data.load_split("mnist", tmp_path, "train")
