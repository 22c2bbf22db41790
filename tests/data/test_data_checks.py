"""Bad data is caught when a data set is read, in one sentence naming the file: Ambiguous-MNIST samples with
NaN, Inf or values outside [0, 1]; CIFAR data stored as floats; MNIST images that are not 28x28; a partly
unzipped Tiny-ImageNet (truncated images, missing ones in the experiments' copies, fewer than 10,000)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    fails,
    one_sentence,
    write_amnist,
    write_cifar10,
    write_idx,
    write_mnist,
    write_tiny_imagenet,
)

import data
import train
from data import formats
from experiments.subsets import write_subset_root
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")


def refused(load, path) -> str:
    with pytest.raises(UserError) as info:
        load()
    line = one_sentence(f"error: {info.value}")
    assert f"'{path}'" in line, line
    return line


@pytest.mark.parametrize(
    "bad, expected",
    [(float("nan"), "hold NaN or infinite values, the first 3"), (float("inf"), "NaN or infinite"),
     (255.0, "outside [0, 1], pixel values rather than intensities: divide them by 255"),
     (-0.01, "values in -0.01..")],
)  # fmt: skip
def test_ambiguous_mnist_samples_must_be_finite_intensities(tmp_path, bad, expected):
    samples, _ = write_amnist(tmp_path, num_samples=6)
    samples[3, 0, 5, 7] = bad
    torch.save(samples, tmp_path / "amnist_samples.pt")
    line = refused(
        lambda: data.load_split("ambiguous_mnist", tmp_path, "train"), tmp_path / "amnist_samples.pt"
    )
    assert expected in line


def test_cifar_data_stored_as_floats_is_refused_not_read_as_black_images(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    floats = np.random.default_rng(0).random((4, 3072), dtype=np.float32)
    path.write_bytes(pickle.dumps({"data": floats, "labels": [0, 1, 2, 3]}))
    line = refused(lambda: data.load_split("cifar10", tmp_path, "test"), path)
    assert "float32 values in" in line and "not pixel values 0..255 as uint8" in line
    path.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0.0, 1.5, 2.0, 3.0]}))
    assert "float64, not integer classes" in refused(
        lambda: data.load_split("cifar10", tmp_path, "test"), path
    )
    path.write_bytes(pickle.dumps({"data": np.full((4, 3072), 256, np.int64), "labels": [0, 1, 2, 3]}))
    assert "int64 values in 256..256" in refused(lambda: data.load_split("cifar10", tmp_path, "test"), path)


def test_cifar_data_as_other_integer_types_in_range_still_loads(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    pixels = np.arange(4 * 3072).reshape(4, 3072) % 256
    path.write_bytes(pickle.dumps({"data": pixels.astype(np.int64), "labels": np.arange(4)}))
    images, labels = data.load_split("cifar10", tmp_path, "test")
    assert images.dtype == torch.uint8 and torch.equal(
        images.reshape(4, -1), torch.from_numpy(pixels).to(torch.uint8)
    )
    assert labels.tolist() == [0, 1, 2, 3]


def test_mnist_images_of_another_size_are_refused_naming_the_file(tmp_path, capsys):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((40, 32, 32), np.uint8), gz=False)
    line = refused(lambda: data.load_split("mnist", tmp_path, "train"), path)
    assert "images of 32x32 pixels, expected 28x28" in line
    args = train.get_args_parser().parse_args(
        ["--seed", "1", "--dataset", "mnist", "--dataset-root", str(tmp_path), "--model", "lenet", "--no-gpu",
         "-e", "1", "-b", "8", "--save-path", str(tmp_path / "run")]
    )  # fmt: skip
    assert "32x32" in fails(capsys, train.main, args)  # was a traceback from inside the network


def test_a_truncated_tiny_imagenet_image_is_named(tmp_path):
    write_tiny_imagenet(tmp_path, numbers=(0, 1, 2))
    path = tmp_path / "tiny-imagenet-200" / "test" / "images" / "test_2.JPEG"
    path.write_bytes(path.read_bytes()[:300])  # an unzip cut off in the middle of the last file
    refused(lambda: data.load_split("tiny_imagenet", tmp_path, "test"), path)
    path.write_bytes(b"")
    refused(lambda: data.load_split("tiny_imagenet", tmp_path, "test"), path)


def test_fewer_tiny_imagenet_images_than_released_warn_once(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_CHECKED", set())
    write_tiny_imagenet(tmp_path, numbers=(0, 1, 2))
    with pytest.warns(formats.ChecksumWarning, match="holds 3 of the official release's 10,000 test images"):
        images, _ = data.load_split("tiny_imagenet", tmp_path, "test")
    assert len(images) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", formats.ChecksumWarning)
        data.load_split("tiny_imagenet", tmp_path, "test")  # once per folder


def test_the_experiments_copy_of_a_partly_unzipped_tiny_imagenet_names_the_missing_file(tmp_path):
    write_tiny_imagenet(tmp_path / "source", numbers=(0, 1, 2))
    missing = tmp_path / "source" / "tiny-imagenet-200" / "test" / "images" / "test_3.JPEG"
    line = refused(
        lambda: write_subset_root(tmp_path / "source", tmp_path / "copy", {"tiny_imagenet": (5,)}), missing
    )
    assert "holds 3 of Tiny-ImageNet's 10,000 test images" in line and "unzip" in line
