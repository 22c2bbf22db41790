"""Shared fixtures: the real data sets laid out once from ../shared/data into a cache outside the repo."""

from __future__ import annotations

import os

# One thread per process: the tests use tiny networks, where a second OpenMP thread brings no speed, and on a
# busy 2-core machine (or with the DDP test's two processes) oversubscribed threads slow torch down 10-50x.
# Set before torch is imported so that subprocesses (torchrun, notebook kernels, CLI runs) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import fcntl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
    with open(root.parent / "ddu_real_data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, str(prepare), str(root)], check=True, stdout=subprocess.DEVNULL)
    return root
