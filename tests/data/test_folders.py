"""Image folders as data sets (`folder:PATH`, data/folders.py): layouts, image modes and sizes, every error
path, the cached statistics, both loaders, and train.py / evaluate.py on folders the tests write."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fails, write_mnist
from PIL import Image

import data
import evaluate
import train
from data import folders
from utils.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_folders(monkeypatch):
    """Every test starts without described folders, decoded splits or folder options."""
    monkeypatch.delenv(folders.MEMORY_ENV, raising=False)
    folders.clear_caches()
    data.set_folder_options()
    yield
    folders.clear_caches()
    data.set_folder_options()


def _rgb(rng, size=(16, 16)) -> np.ndarray:
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def write_image(path: Path, mode: str, size=(16, 16), seed: int = 0, fmt: str | None = None) -> Image.Image:
    """An image of `mode` and `size` (width, height) at `path` (format from the suffix unless `fmt`)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(_rgb(rng, size))
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(128)
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "CMYK":
        img = img.convert("CMYK")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return img


def write_folder(root: Path, classes=("ant", "bee"), per_class=(6, 3), mode="RGB", size=(16, 16)) -> Path:
    """`root/{train,test}/CLASS/i.png`: `per_class` images per class and split, all of `mode` and `size`."""
    seed = 0
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            for i in range(n):
                seed += 1
                write_image(root / split / c / f"{i}.png", mode, size, seed)
    return root


def name_of(root: Path) -> str:
    return f"folder:{root}"


# ----------------------------------------------------------------------------------------------------------
# Layout, classes, modes and sizes


def test_classes_sorted_as_imagefolder_and_labels_follow(tmp_path):
    root = write_folder(tmp_path / "set", classes=("zebra", "Ant", "bee"))
    (root / "train" / ".hidden").mkdir()  # hidden folders are not classes
    (root / "train" / "bee" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    folder = data.folder_set(name_of(root))
    assert folder.classes == ("Ant", "bee", "zebra")  # sorted(), as torchvision's ImageFolder
    assert len(folder.train) == 18 and len(folder.test) == 9
    assert [Path(f).parent.name for f in folder.train.files[:6]] == ["Ant"] * 6
    assert folder.train.labels == (0,) * 6 + (1,) * 6 + (2,) * 6
    info = data.get_info(name_of(root))
    assert (info.num_classes, info.shape, info.augmentation, info.has_train) == (
        3,
        (3, 16, 16),
        "crop_flip",
        True,
    )
    assert info.folder["classes"] == ["Ant", "bee", "zebra"] and info.folder["folder"] == str(root.resolve())


def test_spellings_of_a_folder_are_one_name(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    assert (
        data.canonical_name("folder:set/")
        == data.canonical_name(f"FOLDER:{root}")
        == f"folder:{root.resolve()}"
    )
    assert data.is_folder("folder:x") and not data.is_folder("cifar10")
    assert data.dirty_parts(name_of(root)) is None


def test_val_split_is_used_where_there_is_no_test(tmp_path):
    root = write_folder(tmp_path / "set")
    (root / "test").rename(root / "val")
    folder = data.folder_set(name_of(root))
    assert folder.test.root.name == "val" and len(folder.test) == 6


def test_pixels_are_those_of_the_files_in_label_order(tmp_path):
    root = tmp_path / "set"
    written = {}
    for split in ("train", "test"):
        for c, label in (("a", 0), ("b", 1)):
            for i in range(3):
                img = write_image(root / split / c / f"{i}.png", "RGB", (8, 8), seed=10 * label + i)
                written[(split, label, i)] = np.array(img).transpose(2, 0, 1).copy()
    images, labels = folders.load_split(data.folder_set(name_of(root)), "test")
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(images[4], torch.from_numpy(written[("test", 1, 1)]))


def test_mixed_modes_and_formats_become_rgb(tmp_path):
    """PNG and JPEG in modes L, RGB, RGBA, P and CMYK: an RGB set; each image is Pillow's convert("RGB")."""
    root = tmp_path / "set"
    kinds = [("L", "png"), ("RGB", "jpg"), ("RGBA", "png"), ("P", "png"), ("CMYK", "jpg"), ("L", "jpg")]
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i, (mode, ext) in enumerate(kinds):
                write_image(root / split / c / f"{i}_{mode}.{ext}", mode, (12, 12), seed=i)
    folder = data.folder_set(name_of(root))
    assert folder.channels == 3 and folder.augment == "crop_flip"
    images, _ = folders.load_split(folder, "train")
    for i, path in enumerate(folder.train.files[:6]):
        with Image.open(path) as img:
            expected = np.array(img.convert("RGB")).transpose(2, 0, 1).copy()
        assert torch.equal(images[i], torch.from_numpy(expected)), path


def test_greyscale_set_has_one_channel_and_no_augmentation(tmp_path):
    root = write_folder(tmp_path / "set", mode="L", size=(28, 28))
    info = data.get_info(name_of(root))
    assert info.shape == (1, 28, 28) and info.augmentation == "none"
    data.set_folder_options(augment="crop_flip")
    folders.clear_caches()
    assert data.get_info(name_of(root)).augmentation == "crop_flip"


def test_colour_images_in_a_greyscale_test_split_become_luma(tmp_path):
    root = write_folder(tmp_path / "set", mode="L")
    colour = write_image(root / "test" / "ant" / "9.jpg", "CMYK", (16, 16), seed=3)
    folder = data.folder_set(name_of(root))
    images, _ = folders.load_split(folder, "test")
    index = folder.test.files.index(str(root.resolve() / "test" / "ant" / "9.jpg"))
    with Image.open(root / "test" / "ant" / "9.jpg") as img:
        expected = np.array(img.convert("RGB").convert("L"))
    assert colour.mode == "CMYK" and torch.equal(images[index, 0], torch.from_numpy(expected))


def test_sixteen_bit_greyscale_keeps_its_high_byte(tmp_path):
    path = tmp_path / "deep.png"
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(path)
    out = folders.read_image(str(path), 1, 8)
    assert np.array_equal(out[0], (values >> 8).astype(np.uint8))


def test_sizes_that_differ_need_image_size_then_shorter_side_and_centre_crop(tmp_path, capsys):
    root = write_folder(tmp_path / "set", size=(16, 16))
    write_image(root / "train" / "ant" / "wide.png", "RGB", (24, 12), seed=5)
    with pytest.raises(UserError, match="differ in size; pass --image-size N"):
        data.get_info(name_of(root))
    data.set_folder_options(image_size=8)
    folder = data.folder_set(name_of(root))
    assert folder.shape == (3, 8, 8)
    images, _ = folders.load_split(folder, "train")
    index = folder.train.files.index(str(root.resolve() / "train" / "ant" / "wide.png"))
    with Image.open(root / "train" / "ant" / "wide.png") as img:  # 24x12 -> 16x8 -> centre 8x8
        expected = np.array(img.resize((16, 8), Image.Resampling.BILINEAR).crop((4, 0, 12, 8)))
    assert torch.equal(images[index], torch.from_numpy(expected.transpose(2, 0, 1).copy()))


def test_images_all_of_one_non_square_size_need_image_size(tmp_path):
    root = write_folder(tmp_path / "set", size=(20, 10))
    with pytest.raises(UserError, match="20 x 10 .* not square; pass --image-size N"):
        data.get_info(name_of(root))


# ----------------------------------------------------------------------------------------------------------
# Bad input: one sentence naming the file or folder


def _refused(name: str, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        data.get_info(name)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_missing_folder_and_no_train(tmp_path):
    _refused(f"folder:{tmp_path / 'nowhere'}", "'.*nowhere' of folder:.* does not exist")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", "RGB")
    _refused(f"folder:{tmp_path / 'flat'}", "'.*flat' has no train/ folder")
    _refused("folder:", "names no folder")


def test_no_test_split(tmp_path):
    root = write_folder(tmp_path / "set")
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "test").rmdir()
    _refused(name_of(root), "has no test/ \\(or val/\\) folder")


def test_class_missing_from_test_and_extra_class(tmp_path):
    root = write_folder(tmp_path / "set")
    for p in (root / "test" / "bee").iterdir():
        p.unlink()
    (root / "test" / "bee").rmdir()
    text = _refused(name_of(root), "class folder '.*test/bee' is missing")
    assert "bee" in text
    write_image(root / "test" / "bee" / "0.png", "RGB")
    write_image(root / "test" / "wasp" / "0.png", "RGB")
    folders.clear_caches()
    _refused(name_of(root), "'.*test/wasp' is a class folder that train/ does not have")


def test_empty_class(tmp_path):
    root = write_folder(tmp_path / "set")
    (root / "train" / "cow").mkdir()
    _refused(name_of(root), "class folder '.*train/cow' holds no files")


def test_non_image_file_refused_or_skipped(tmp_path, caplog):
    root = write_folder(tmp_path / "set")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    _refused(
        name_of(root),
        "'.*notes.txt' in the training split is not an image in a format read here .*; .*--skip-bad-images",
    )
    data.set_folder_options(skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        folder = data.folder_set(name_of(root))
    assert len(folder.train) == 12 and not any(f.endswith("notes.txt") for f in folder.train.files)
    assert "skipped 1 file(s)" in caplog.text and "notes.txt" in caplog.text


def test_postscript_is_never_handed_to_a_program(tmp_path, monkeypatch):
    """Pillow's EPS reader runs Ghostscript: an EPS file in a folder is refused as not an image, and no
    program is started (a `gs` on PATH would leave a marker if it were)."""
    marker = tmp_path / "ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    root = write_folder(tmp_path / "set")
    eps = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n"
    (root / "train" / "ant" / "page.eps").write_text(eps)
    _refused(name_of(root), "'.*page.eps' in the training split is not an image in a format read here")
    with pytest.raises(folders.BadImageError):
        folders.open_image(str(root / "train" / "ant" / "page.eps"))
    assert not marker.exists()


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_refused_or_skipped(tmp_path, ext):
    root = write_folder(tmp_path / "set")
    path = root / "train" / "bee" / f"cut.{ext}"
    write_image(path, "RGB", (16, 16), seed=9)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    text = _refused(name_of(root), f"'.*cut.{ext}' in .* cannot be decoded .* truncated or damaged")
    assert "--skip-bad-images" in text
    data.set_folder_options(skip_bad_images=True)
    folders.clear_caches()
    folder = data.folder_set(name_of(root))
    assert len(folder.train) == 12
    images, labels = folders.load_split(folder, "train")
    assert images.shape[0] == labels.shape[0] == 12


def test_truncated_test_image_refused(tmp_path):
    root = write_folder(tmp_path / "set")
    path = root / "test" / "ant" / "0.png"
    path.write_bytes(path.read_bytes()[:60])
    folder = data.folder_set(name_of(root))
    with pytest.raises(UserError, match="'.*test/ant/0.png' in .*test cannot be decoded"):
        folders.load_split(folder, "test")


def test_class_left_empty_by_skipping(tmp_path):
    root = write_folder(tmp_path / "set", per_class=(1, 1))
    (root / "train" / "bee" / "0.png").write_text("text")
    data.set_folder_options(skip_bad_images=True)
    _refused(name_of(root), "'.*train/bee' in .* has no readable image left")


def test_ood_folder_without_images(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="out-of-distribution folder '.*empty' holds no images"):
        data.get_test_loader(f"folder:{tmp_path / 'empty'}", None, 8, like="mnist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    data.set_folder_options(skip_bad_images=True)
    with pytest.raises(UserError, match="'.*junk' holds no image Pillow can read"):
        data.get_test_loader(f"folder:{tmp_path / 'junk'}", None, 8, like="mnist")


def test_option_values_checked():
    with pytest.raises(UserError, match="--augment must be one of none, crop_flip"):
        data.set_folder_options(augment="flip")
    with pytest.raises(UserError, match="--image-size must be at least 8"):
        data.set_folder_options(image_size=2)
    with pytest.raises(UserError, match="unknown data set 'cifar11'.*or folder:PATH"):
        data.get_info("cifar11")


# ----------------------------------------------------------------------------------------------------------
# Statistics and their cache


def test_mean_std_exact_and_cached(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "set")
    info = data.get_info(name_of(root))
    images, _ = folders.load_split(data.folder_set(name_of(root)), "train")
    x = images.double() / 255
    assert np.allclose(info.mean, x.mean(dim=(0, 2, 3)).numpy(), rtol=0, atol=1e-12)
    assert np.allclose(info.std, x.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=0, atol=1e-12)
    cache = json.loads((root / folders.CACHE_FILE).read_text())
    (entry,) = cache["entries"].values()
    assert entry["stats"]["16"]["mean"] == list(info.mean) and entry["channels"] == 3

    # A second process reads the cache: no statistics pass, no decoding.
    folders.clear_caches()
    monkeypatch.setattr(folders, "channel_histograms", lambda *a, **k: pytest.fail("statistics recomputed"))
    monkeypatch.setattr(folders, "_survey", lambda *a, **k: pytest.fail("headers read again"))
    assert data.get_info(name_of(root)).mean == info.mean


def test_cache_follows_the_files_and_ignores_a_damaged_one(tmp_path):
    root = write_folder(tmp_path / "set")
    first = data.get_info(name_of(root)).mean
    write_image(root / "train" / "ant" / "new.png", "RGB", seed=99)  # another file list: recomputed
    folders.clear_caches()
    second = data.get_info(name_of(root)).mean
    assert second != first and len(json.loads((root / folders.CACHE_FILE).read_text())["entries"]) == 2
    (root / folders.CACHE_FILE).write_text('{"format": 1, "entries": {"x": 3')  # cut off
    folders.clear_caches()
    assert data.get_info(name_of(root)).mean == second
    entries = json.loads((root / folders.CACHE_FILE).read_text())["entries"]
    key = next(iter(entries))
    entries[key]["stats"]["16"]["mean"] = ["a", 1, 2]  # hand-edited nonsense is recomputed
    (root / folders.CACHE_FILE).write_text(json.dumps({"format": 1, "entries": entries}))
    folders.clear_caches()
    assert data.get_info(name_of(root)).mean == second


def test_read_only_folder_is_not_cached(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "set")
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False)
    info = data.get_info(name_of(root))
    assert not (root / folders.CACHE_FILE).exists() and len(info.mean) == 3


# ----------------------------------------------------------------------------------------------------------
# Loaders


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_memory_and_disk_loaders_give_the_same_batches(tmp_path, monkeypatch, caplog):
    root = write_folder(tmp_path / "set", per_class=(9, 4))
    name = name_of(root)
    with caplog.at_level(logging.INFO):
        train, valid = data.get_train_valid_loader(name, None, 4, val_seed=2, seed=5)
    assert isinstance(train, data.TensorLoader) and "fit in memory" in caplog.text
    train.set_epoch(1)
    memory = _batches(train), _batches(valid), _batches(data.get_test_loader(name, None, 5))
    folders.clear_caches()
    monkeypatch.setenv(folders.MEMORY_ENV, "0")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train, valid = data.get_train_valid_loader(name, None, 4, val_seed=2, seed=5, num_workers=1)
    assert isinstance(train, folders.FolderLoader) and "decoded from disk every epoch" in caplog.text
    train.set_epoch(1)
    disk = _batches(train), _batches(valid), _batches(data.get_test_loader(name, None, 5, num_workers=0))
    for a, b in zip(memory, disk):
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert train.num_samples == 17 and len(train) == 5  # 18 less floor(0.1 * 18) for validation


def test_disk_loader_names_an_undecodable_file(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "set")
    path = root / "test" / "bee" / "2.png"
    path.write_bytes(path.read_bytes()[:-40])  # the header is intact, the pixels cut off
    monkeypatch.setenv(folders.MEMORY_ENV, "0")
    loader = data.get_test_loader(name_of(root), None, 4, num_workers=0)
    with pytest.raises(UserError, match="'.*test/bee/2.png' cannot be decoded"):
        _batches(loader)


def test_ood_folder_takes_the_in_distribution_shape_and_constants(tmp_path):
    ood = tmp_path / "ood"
    write_image(ood / "x" / "deep" / "a.png", "RGB", (40, 30), seed=1)
    write_image(ood / "b.jpg", "L", (10, 10), seed=2)
    loader = data.get_test_loader(f"folder:{ood}", None, 8, like="mnist")
    ((x, y),) = _batches(loader)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [0, 0]
    with Image.open(ood / "b.jpg") as img:
        expected = torch.from_numpy(np.array(img.resize((28, 28), Image.Resampling.BILINEAR)))
    mean, std = data.get_info("mnist").mean[0], data.get_info("mnist").std[0]
    assert torch.allclose(x[0, 0], (expected.float() / 255 - mean) / std, atol=1e-6)
    # Against a folder training set: its shape and its own mean/std.
    root = write_folder(tmp_path / "set", mode="RGB", size=(12, 12))
    ((x, _),) = _batches(data.get_test_loader(f"folder:{ood}", None, 8, like=name_of(root)))
    assert x.shape == (2, 3, 12, 12)
    # A training set passed as its own OoD set is its test split.
    assert data.get_test_loader(name_of(root), None, 8, like=name_of(root)).num_samples == 6


@pytest.mark.filterwarnings("ignore:.*differ from the official release")
def test_registered_ood_set_takes_a_folder_set_shape_and_statistics(tmp_path):
    """MNIST against a network trained on an RGB 16x16 folder: repeated to RGB, resized, the folder's mean/std."""
    mnist = write_mnist(tmp_path / "raw")
    root = write_folder(tmp_path / "set", size=(16, 16))
    info = data.get_info(name_of(root))
    ((x, _),) = _batches(data.get_test_loader("mnist", tmp_path / "raw", 64, like=name_of(root)))
    assert x.shape == (25, 3, 16, 16)
    first = Image.fromarray(mnist["test_x"][0, 0]).resize((16, 16), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.array(first)).float() / 255
    for c in range(3):
        assert torch.allclose(x[0, c], (expected - info.mean[c]) / info.std[c], atol=1e-5)


def test_config_differences_name_the_flag():
    here = {
        "folder": "/a",
        "image_size": 32,
        "channels": 3,
        "classes": ["x", "y"],
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
    }
    assert folders.config_differences(None, None) == []
    assert folders.config_differences(here, dict(here, augment="none")) == []
    assert folders.config_differences(None, here) == [
        "--dataset a registered data set there vs folder:/a here"
    ]
    assert folders.config_differences(dict(here, folder="/b"), here) == [
        "--dataset folder:/b there vs folder:/a here"
    ]
    assert folders.config_differences(dict(here, image_size=28), here) == ["--image-size 28 there vs 32 here"]
    (text,) = folders.config_differences(dict(here, classes=["x", "z"]), here)
    assert text == "the class list (2 classes: x, z) there vs (2 classes: x, y) here"
    (text,) = folders.config_differences(dict(here, mean=[0.4] * 3), here)
    assert "mean and std" in text and "changed" in text


# ----------------------------------------------------------------------------------------------------------
# The scripts on folders


def _train(root: Path, save: Path, *extra: str) -> dict:
    args = train.get_args_parser().parse_args(
        ["--seed", "1", "--dataset", f"folder:{root}", "--model", "lenet", "--no-gpu", "-e", "1", "-b", "8",
         "-tb", "64", "--save-path", str(save), *extra]
    )  # fmt: skip
    return train.main(args)


def _evaluate_args(root: Path, ood: str, runs: Path, out: Path, *extra: str):
    return evaluate.get_args_parser().parse_args(
        ["--dataset", f"folder:{root}", "--ood_dataset", ood, "--load-path", str(runs), "--output-dir", str(out),
         "--no-gpu", "--epoch", "1", "--runs", "1", "--model", "lenet", "--model-type", "gmm", "-b", "64", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A LeNet trained one epoch on a 3-class RGB 16x16 folder: (the folder, the runs folder with Run1/)."""
    base = tmp_path_factory.mktemp("folder_run")
    folders.clear_caches()
    data.set_folder_options()
    root = write_folder(base / "set", classes=("a", "b", "c"), per_class=(12, 4), size=(16, 16))
    _train(root, base / "runs" / "Run1")
    return root, base / "runs"


@pytest.mark.slow
def test_train_records_the_folder_and_evaluate_scores_folder_ood_sets(folder_run, tmp_path):
    root, runs = folder_run
    state = torch.load(runs / "Run1" / "lenet_1_resume.pt", weights_only=True)
    record = state["model_config"]["data"]
    assert record["folder"] == str(root.resolve()) and record["classes"] == ["a", "b", "c"]
    assert (record["image_size"], record["channels"], record["augment"]) == (16, 3, "crop_flip")
    assert record["mean"] == list(data.get_info(f"folder:{root}").mean)
    ood_a, ood_b = tmp_path / "scans", tmp_path / "more"
    write_image(ood_a / "x.png", "L", (20, 20), seed=3)
    write_image(ood_a / "deep" / "y.jpg", "CMYK", (30, 18), seed=4)
    write_image(ood_b / "z.png", "P", (16, 16), seed=5)
    out = tmp_path / "out"
    evaluate.main(_evaluate_args(root, f"folder:{ood_a},folder:{ood_b}", runs, out))
    results = sorted(p.name for p in out.glob("res_*.json"))
    assert results == [
        "res_lenet_1_gmm_folder-set_folder-more.json",
        "res_lenet_1_gmm_folder-set_folder-scans.json",
    ]
    result = json.loads((out / results[1]).read_text())
    assert 0 <= result["mean"]["m1_auroc"] <= 1 and result["info"]["runs"] == 1 and not result["failed_runs"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["image_size", "folder", "classes"])
def test_evaluate_refuses_a_network_of_another_folder_size_or_class_list(
    folder_run, tmp_path, capsys, change
):
    root, runs = folder_run
    ood = tmp_path / "ood"
    write_image(ood / "x.png", "RGB", (16, 16))
    extra: list[str] = []
    if change == "image_size":
        extra = ["--image-size", "20"]
    elif change == "folder":
        root = Path(shutil.copytree(root, tmp_path / "copy"))
    else:
        root = Path(shutil.copytree(root, tmp_path / "renamed"))
        for split in ("train", "test"):
            (root / split / "c").rename(root / split / "d")
    folders.clear_caches()
    text = fails(capsys, evaluate.main, _evaluate_args(root, f"folder:{ood}", runs, tmp_path / "out", *extra))
    expected = {
        "image_size": "--image-size 16 there vs 20 here",
        "folder": "--dataset folder:",
        "classes": "the class list (3 classes: a, b, c) there vs (3 classes: a, b, d) here",
    }[change]
    assert expected in text and "lenet_1_1.model" in text
