"""data/ on the real sets laid out by ../shared/data/prepare.py: sizes, label counts, md5 behaviour."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import data
from data import formats

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def counts(labels: torch.Tensor, num_classes: int = 10) -> list[int]:
    return np.bincount(labels.numpy(), minlength=num_classes).tolist()


def test_real_mnist_is_official(real_data_root, monkeypatch):
    monkeypatch.setattr(formats, "_CHECKED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", formats.ChecksumWarning)  # byte-identical files: no warning
        x, y = data.load_split("mnist", real_data_root, "train")
        tx, ty = data.load_split("mnist", real_data_root, "test")
    assert x.shape == (60000, 1, 28, 28) and tx.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert counts(y) == MNIST_TRAIN_COUNTS and counts(ty) == MNIST_TEST_COUNTS
    assert abs(x.float().div(255).mean().item() - 0.1307) < 1e-3  # the normalisation constants' source


def test_real_fashion_mnist(real_data_root):
    x, y = data.load_split("fashion_mnist", real_data_root, "train")
    tx, ty = data.load_split("fashion-mnist", real_data_root, "test")
    assert x.shape == (60000, 1, 28, 28) and tx.shape == (10000, 1, 28, 28)
    assert counts(y) == [6000] * 10 and counts(ty) == [1000] * 10


def test_real_cifar10_warns_about_jpeg_copies_and_loads(real_data_root, monkeypatch):
    monkeypatch.setattr(formats, "_CHECKED", set())
    with pytest.warns(formats.ChecksumWarning, match="data_batch_1.*published numbers"):
        x, y = data.load_split("cifar10", real_data_root, "train")
    with pytest.warns(formats.ChecksumWarning, match="test_batch"):
        tx, ty = data.load_split("cifar10", real_data_root, "test")
    assert x.shape == (50000, 3, 32, 32) and tx.shape == (10000, 3, 32, 32)
    assert counts(y) == [5000] * 10 and counts(ty) == [1000] * 10
    train, valid = data.get_train_valid_loader("cifar10", real_data_root, 1000)
    assert (train.num_samples, valid.num_samples) == (45000, 5000) and len(train) == 45
    xb, yb = next(iter(train))
    assert xb.shape == (1000, 3, 32, 32) and yb.dtype == torch.int64
    xb, _ = next(iter(valid))  # not augmented, so no zero padding pulls the mean down
    assert xb.mean(dim=(0, 2, 3)).abs().max() < 0.1  # centred by the CIFAR-10 constants


def test_real_tiny_imagenet_as_cifar_ood(real_data_root):
    loader = data.get_test_loader("tiny_imagenet", real_data_root, 2500, like="cifar10")
    assert loader.num_samples == 10000 and len(loader) == 4
    x, y = next(iter(loader))
    assert x.shape == (2500, 3, 32, 32) and (y == 0).all()
