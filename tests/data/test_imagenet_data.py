"""ImageNet and ImageNet-O from folders (data/imagenet.py): layouts and their errors, the transforms, the
per-image seeds and the GPU path's CPU-side half, on tiny ImageNet-shaped folders of JPEGs the tests write
(`imagenet.write_synthetic`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import data
from data import imagenet
from data.loaders import Schedule, epoch_generator, get_test_loader, get_train_valid_loader
from utils.errors import UserError

CLASSES = imagenet.SYNTHETIC_CLASSES


def _image(path: Path, width: int, height: int, fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)


@pytest.fixture
def tiny(tmp_path):
    root = imagenet.write_synthetic(tmp_path)
    data.set_folder_options(image_size=16)
    yield root
    data.set_folder_options()


def test_registry_entries_follow_the_image_size_flag(tiny):
    assert data.get_info("imagenet").shape == (3, 16, 16) and data.get_info("imagenet").num_classes == 1000
    assert data.get_info("ImageNet-O").shape == (3, 16, 16) and not data.get_info("imagenet_o").has_train
    data.set_folder_options()
    assert data.get_info("imagenet").shape == (3, 224, 224)
    assert data.get_info("imagenet").mean == imagenet.IMAGENET_MEAN


def test_layouts_are_scanned_with_sorted_classes(tiny):
    train = imagenet.scan_imagenet(tiny, "train")
    val = imagenet.scan_imagenet(tiny, "val")
    assert train.classes == val.classes == CLASSES
    assert len(train) == 12 and len(val) == 6 and sorted(set(val.labels)) == [0, 1, 2]
    assert len(imagenet.scan_imagenet_o(tiny)) == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "imagenet").rename(r / "elsewhere"), "ImageNet is not at"),
        (lambda r: (r / "imagenet" / "val").rename(r / "imagenet" / "valid"), "has no val/ folder"),
        (lambda r: (r / "imagenet" / "val" / CLASSES[1]).rename(r / "moved"), "is missing"),
        (lambda r: (r / "imagenet-o").rename(r / "other"), "ImageNet-O is not at"),
    ],
)
def test_layout_errors_are_one_sentence(tiny, damage, message):
    damage(tiny)
    with pytest.raises(UserError, match=message) as info:
        imagenet.scan_imagenet(tiny, "val")
        imagenet.scan_imagenet_o(tiny)
    assert "\n" not in str(info.value)


def test_no_dataset_root_is_one_sentence():
    with pytest.raises(UserError, match="--dataset-root"):
        imagenet.scan_imagenet(None, "train")


def test_evaluation_transform_is_torchvisions(tiny):
    path = imagenet.scan_imagenet(tiny, "val").files[0]
    ours = imagenet.ImageNetDecoder(16)(path, None)
    reference = T.Compose([T.Resize(imagenet.resize_size(16)), T.CenterCrop(16), T.PILToTensor()])
    assert torch.equal(ours, reference(Image.open(path).convert("RGB")))
    assert imagenet.resize_size(224) == 256


def test_random_resized_crops_stay_inside_and_flip_about_half_the_time():
    flips = 0
    for seed in range(200):
        crop = imagenet.random_resized_crop(30, 50, torch.Generator().manual_seed(seed))
        assert (
            0 <= crop.top and crop.top + crop.height <= 30 and 0 <= crop.left and crop.left + crop.width <= 50
        )
        assert crop.height > 0 and crop.width > 0
        flips += crop.flip
    assert 60 < flips < 140
    same = [imagenet.random_resized_crop(30, 50, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert same[0] == same[1]


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_training_epochs_are_reproducible_and_independent_of_workers(tiny):
    files = imagenet.scan_imagenet(tiny, "train")
    schedule = Schedule(len(files), True, False, False, seed=3)
    loaders = [
        imagenet.ImageNetLoader(
            files,
            None,
            schedule,
            5,
            16,
            torch.device("cpu"),
            train=True,
            num_workers=n,
            seed=3,
            epoch_rng=epoch_generator,
        )
        for n in (0, 1)
    ]
    first, again = _batches(loaders[0], 2), _batches(loaders[1], 2)
    assert [x.shape for x, _ in first] == [(5, 3, 16, 16), (5, 3, 16, 16), (2, 3, 16, 16)]
    for (x0, y0), (x1, y1) in zip(first, again):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other = _batches(loaders[0], 3)
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in other]))


def test_ranks_share_out_the_single_process_epoch(tiny):
    files = imagenet.scan_imagenet(tiny, "train")
    single = imagenet.ImageNetLoader(
        files,
        None,
        Schedule(12, True, False, False, seed=1),
        12,
        16,
        "cpu",
        train=True,
        num_workers=0,
        seed=1,
        epoch_rng=epoch_generator,
    )
    ranks = [
        imagenet.ImageNetLoader(
            files,
            None,
            Schedule(12, True, False, False, 1, r, 2),
            6,
            16,
            "cpu",
            train=True,
            num_workers=0,
            seed=1,
            epoch_rng=epoch_generator,
        )
        for r in range(2)
    ]
    (whole,) = _batches(single, 0)
    parts = [_batches(loader, 0)[0] for loader in ranks]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])


def test_the_gpu_paths_cpu_half_matches_the_pillow_path(tiny):
    """Workers read bytes, `decode_batch` decodes them in one `decode_jpeg` call and crops them with the same
    per-image seeds; on the CPU it gives the Pillow path's images up to resampling differences."""
    files = imagenet.scan_imagenet(tiny, "train").files[:6]
    seeds = [11, 12, None, 14, None, 16]
    raw = [imagenet.ImageNetDecoder(16, bytes_only=True)(f, s) for f, s in zip(files, seeds)]
    assert all(item.dim() == 1 for item in raw)  # JPEG bytes, not decoded in the worker
    batch = imagenet.decode_batch(raw, seeds, 16, torch.device("cpu"))
    pillow = torch.stack([imagenet.ImageNetDecoder(16)(f, s) for f, s in zip(files, seeds)])
    assert batch.shape == pillow.shape == (6, 3, 16, 16) and batch.dtype == torch.uint8
    difference = (batch.float() - pillow.float()).abs()
    assert difference.mean() < 4 and difference.max() < 64


def test_a_png_named_jpeg_is_decoded_in_the_worker(tmp_path):
    path = tmp_path / "n02105855_2933.JPEG"
    _image(path, 40, 30, "PNG")
    item = imagenet.ImageNetDecoder(16, bytes_only=True)(str(path), 5)
    assert item.shape == (3, 16, 16)
    batch = imagenet.decode_batch([item], [5], 16, torch.device("cpu"))
    assert torch.equal(batch[0], item)


def test_a_damaged_file_stops_the_loader_with_its_name(tiny):
    bad = tiny / "imagenet" / "val" / CLASSES[0] / "ILSVRC2012_val_000000.JPEG"
    bad.write_bytes(b"not a jpeg")
    loader = get_test_loader("imagenet", tiny, 4, num_workers=0)
    with pytest.raises(UserError, match="ILSVRC2012_val_000000.JPEG"):
        list(loader)


def test_the_scripts_loaders_serve_imagenet_and_imagenet_o(tiny):
    train, valid = get_train_valid_loader("imagenet", tiny, 4, val_size=0.25, num_workers=0)
    assert train.num_samples == 9 and valid.num_samples == 3
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.max() < 3
    assert abs(float(x.mean())) < 3
    test = get_test_loader("imagenet", tiny, 4, num_workers=0)
    assert test.num_samples == 6
    ood = get_test_loader("imagenet_o", tiny, 4, like="imagenet", num_workers=0)
    (x, _) = next(iter(ood))
    assert x.shape == (3, 3, 16, 16)
