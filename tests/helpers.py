"""What several test files share: the devices to test on, writers of every data set's official format
(small, into a temporary folder), the argument lists of tiny script runs, and the checks that a command
failed in one sentence and left the files before it alone. Fixtures built from these are in conftest.py."""

from __future__ import annotations

import contextlib
import gzip
import pickle
import re
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import active_learning
import evaluate
import train

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = REPO.parent / "shared"  # ../shared beside the checkout, as CI has it
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------------------------------------
# Writers of the official formats


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with 5 training batches; returns the images (N,3,32,32) and labels per split."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names, n in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)], per_batch),
        ("test", ["test_batch"], n_test),
    ):
        images, labels = [], []
        for name in names:
            x = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
            y = rng.integers(0, 10, size=n).tolist()
            with open(folder / name, "wb") as handle:
                pickle.dump({"batch_label": name, "labels": y, "data": x, "filenames": [""] * n}, handle)
            images.append(x.reshape(n, 3, 32, 32))
            labels.extend(y)
        out[split + "_x"], out[split + "_y"] = np.concatenate(images), np.asarray(labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, handle)
    return out


def write_cifar100(root: Path, n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = [f // 5 for f in fine]
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": x, "fine_labels": fine, "coarse_labels": coarse}, handle)
        out[split + "_x"], out[split + "_y"] = x.reshape(n, 3, 32, 32), np.asarray(fine)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, handle)
    return out


def write_svhn(root: Path, split: str, n: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """`{split}_32x32.mat` with X (32,32,3,N) uint8 and y (N,1) in 1..10; returns X and y as written."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.arange(1, n + 1, dtype=np.uint8).reshape(n, 1) % 10 + 1  # 1..10, includes 10
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return x, y


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 25, gz: bool = False):
    rng = np.random.default_rng(3)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[split + "_x"], out[split + "_y"] = x[:, None], y.astype(np.int64)
    return out


def write_amnist(root: Path, num_samples: int, num_labels: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    samples = torch.rand(num_samples, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (num_samples, num_labels), generator=gen)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(samples, root / "amnist_samples.pt")
    torch.save(labels, root / "amnist_labels.pt")
    return samples, labels


def write_tiny_imagenet(root: Path, numbers=(0, 1, 2, 10, 3)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(5)
    folder = root / "tiny-imagenet-200" / "test" / "images"
    folder.mkdir(parents=True)
    written = {}
    for i in numbers:
        arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"test_{i}.JPEG", quality=90)
        written[i] = arr
    return written


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float batch back to raw 0..255 values (rounded)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round()


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@contextlib.contextmanager
def file_size_limit(num_bytes: int):
    """Writes past `num_bytes` fail with EFBIG, as on a full disk (Python ignores the SIGXFSZ signal)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# ----------------------------------------------------------------------------------------------------------
# Tiny script runs and the one-sentence checks


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file under `roots` (recursively) and its bytes."""
    return {p: p.read_bytes() for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_kept(before: dict[Path, bytes], *, nothing_added: bool = True) -> None:
    """The files of `before` are all still there, byte for byte (and, by default, no file was added)."""
    for path, content in before.items():
        assert path.is_file() and path.read_bytes() == content, f"{path} was changed or removed"
    if nothing_added:
        roots = {p.parent for p in before}
        added = [p for root in roots for p in root.iterdir() if p.is_file() and p not in before]
        assert not added, f"files were written: {added}"


def one_sentence(text: str) -> str:
    """`text` (stderr) is exactly one line `error: ...` holding one sentence and no traceback."""
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert not re.search(r"[.!?]\s+[A-Z]", lines[0]), f"more than one sentence: {lines[0]}"
    return lines[0]


def fails(capsys, main, args, code: int = 2) -> str:
    """Run `main(args)` expecting exit status `code` and one sentence on stderr; return that sentence."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out
    return one_sentence(captured.err)


def train_args(save: Path, *extra: str, seed: int = 1, epochs: int = 1, model: str = "lenet"):
    """Two steps of batch 16 per epoch on the embedded digits, on the CPU."""
    return train.get_args_parser().parse_args(
        ["--seed", str(seed), "--dataset", "digits", "--model", model, "--no-gpu", "-e", str(epochs),
         "-b", "16", "-tb", "128", "--steps-per-epoch", "2", "--save-path", str(save), *extra]
    )  # fmt: skip


def eval_args(load_path: Path, out: Path, *extra: str, model_type: str = "softmax", runs: int = 1):
    return evaluate.get_args_parser().parse_args(
        ["--dataset", "digits", "--ood_dataset", "digits_ood", "--load-path", str(load_path), "--output-dir",
         str(out), "--no-gpu", "--epoch", "1", "--runs", str(runs), "--model", "lenet", "--model-type",
         model_type, "-b", "256", *extra]
    )  # fmt: skip


def al_args(root: Path, out: Path, *extra: str, max_samples: int = 20):
    return active_learning.get_args_parser().parse_args(
        ["--seed", "1", "--model", "lenet", "--al-type", "softmax", "--epochs", "1", "--samples-per-epoch", "32",
         "-b", "32", "-tb", "256", "-sb", "64", "--num-initial-samples", "20", "--max-training-samples",
         str(max_samples), "--acquisition-batch-size", "5", "--runs", "1", "--no-gpu", "--dataset-root", str(root),
         "--output-dir", str(out), *extra]
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# A tiny MNIST whose classes a LeNet learns in a few steps (the active-learning tests)

TRAIN_IMAGES, TEST_IMAGES, AMBIGUOUS_SAMPLES = 300, 100, 40


def bar_images(labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """`(N, 28, 28)` uint8: faint noise plus a bright 10x4 bar whose position encodes the class."""
    images = rng.randint(0, 40, size=(len(labels), 28, 28))
    for i, c in enumerate(labels):
        top, left = 2 + (c // 5) * 13, 2 + (c % 5) * 5
        images[i, top : top + 10, left : left + 4] = rng.randint(200, 256, size=(10, 4))
    return images.astype(np.uint8)


def write_bar_mnist(root: Path) -> Path:
    """MNIST (IDX, official layout) and Ambiguous-MNIST (`amnist_*.pt`) in miniature, into `root`.

    Ambiguous-MNIST's first 60,000 flattened (sample, label) pairs are its training split, so all pairs
    here are training data (its test split is empty; active learning never reads it).
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, count in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", bar_images(labels, rng), False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), False)
    first = rng.randint(0, 10, AMBIGUOUS_SAMPLES)
    second = (first + 1 + rng.randint(0, 10 - 1, AMBIGUOUS_SAMPLES)) % 10
    blends = (bar_images(first, rng).astype(np.float32) + bar_images(second, rng)) / (2 * 255)
    torch.save(torch.from_numpy(blends[:, None].copy()), root / "amnist_samples.pt")
    labels = torch.from_numpy(np.stack([first, second], axis=1).astype(np.int64))
    torch.save(labels, root / "amnist_labels.pt")
    return root
