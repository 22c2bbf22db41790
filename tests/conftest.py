"""Shared fixtures: the real data sets laid out once from ../shared/data into a cache outside the repo."""

from __future__ import annotations

import atexit
import os

# One thread per process by default: the tests use tiny networks, where a second OpenMP thread brings no
# speed, and on a busy 2-core machine (or with the DDP test's two processes) oversubscribed threads slow
# torch down 10-50x. `DDU_TEST_THREADS=2 make test` runs the suite with two threads instead (the suite
# must pass with either). Set before torch is imported so that subprocesses (torchrun, notebook kernels,
# CLI runs) inherit it.
# DDU_TEST_THREADS, when given, wins over an OMP_NUM_THREADS already in the environment.
if os.environ.get("DDU_TEST_THREADS"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = os.environ["DDU_TEST_THREADS"]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
# No test may touch the network: on a machine that is online a missing file would otherwise start a real
# download (slow, and another outcome than offline). Tests of the download path patch the lookup and the
# download themselves; subprocesses inherit this.
os.environ["DDU_NO_DOWNLOAD"] = "1"
# Default-flag runs compute in fp32 on every CPU, with or without native bf16, so that results do not depend
# on which CPU runs the suite; the bf16 CPU path is tested with explicit flags (`DDU_CPU_BF16=1` or
# `--precision bf16`), which work on any CPU (emulated where bf16 is not native). Subprocesses inherit it.
os.environ["DDU_CPU_BF16"] = "0"

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from filelock import FileLock

import train

TEST_THREADS = int(os.environ["OMP_NUM_THREADS"])
torch.set_num_threads(TEST_THREADS)

# torch.compile's kernel cache: a fresh folder for every run of the suite. A cache left by earlier runs
# crashed the compile test here (segmentation fault in a cached kernel) where a fresh folder compiles and
# runs fine; compiling anew costs about half a minute. `make test` sets the folder before Python starts,
# which is what reliably keeps inductor off its default /tmp cache; for a bare `pytest` this sets one as early
# as it can (removed at exit). Subprocesses inherit the variable.
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="ddu_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

# Operation counts per training step (benchmarks/dispatch.py) depend on how a torch release decomposes
# autograd and autocast; the bounds in the tests were checked on these releases, and are skipped on others.
COUNTED_TORCH_RELEASES = ("2.11", "2.14")
requires_counted_torch = pytest.mark.skipif(
    ".".join(torch.__version__.split(".")[:2]) not in COUNTED_TORCH_RELEASES,
    reason=f"operation counts were checked on torch {', '.join(COUNTED_TORCH_RELEASES)}, not {torch.__version__}",
)

SHARED = helpers.SHARED


def pytest_report_header(config) -> str:
    """What a run was checked on: the stack, the thread count and the CPU kernels torch dispatches to."""
    return (
        f"DDU: torch {torch.__version__}, {TEST_THREADS} torch thread(s), "
        f"CPU capability {_CAPABILITY}, compile cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}"
    )


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """A data root with real MNIST, Fashion-MNIST, CIFAR-10 and Tiny-ImageNet (test) in official layouts.

    `../shared/data/prepare.py` fills `<tmp>/ddu_real_data` once (about 30 s); later sessions find it
    there and `prepare.py` skips what exists. A file lock keeps concurrent test runs from racing.
    """
    prepare = SHARED / "data" / "prepare.py"
    if not prepare.is_file():
        pytest.skip(f"real data needs {prepare} (the shared folder beside the repository), which is absent")
    root = Path(tempfile.gettempdir()) / "ddu_real_data"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / "ddu_real_data.lock")):  # portable (no fcntl)
        subprocess.run([sys.executable, str(prepare), str(root)], check=True, stdout=subprocess.DEVNULL)
    return root


# ----------------------------------------------------------------------------------------------------------
# Runs and data that the user-error and run-safety tests share


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished train.py run (LeNet on digits, seed 1): the files a new command must leave alone."""
    folder = tmp_path_factory.mktemp("earlier")
    train.main(helpers.train_args(folder))
    return folder


@pytest.fixture
def save_dir(earlier_run, tmp_path) -> Path:
    """A copy of the earlier run's folder, to run the next command in."""
    folder = tmp_path / "runs"
    shutil.copytree(earlier_run, folder)
    return folder


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """A tiny MNIST in the official layout (300 training, 100 test images, every class)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = np.arange(n) % 10
        helpers.write_idx(
            root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), False
        )
        helpers.write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels, False)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny MNIST and Ambiguous-MNIST of `helpers.write_bar_mnist` (active learning, benchmarks)."""
    return helpers.write_bar_mnist(tmp_path_factory.mktemp("al_data"))
