"""Throughput of the two data loaders over augmented CIFAR-10 training epochs (a benchmark, not a test).

    python -m benchmarks.loader --dataset-root data/ --device cpu
    python -m benchmarks.loader --dataset-root data/ --device cuda --epochs 3
    python benchmarks/loader.py --dataset-root data/ --loaders gpu --batch-size 512

CIFAR-10 must be in its official layout under data/. For each loader it prints
the set-up time (reading the files, moving the split to the device) and images/s over `--epochs` full
training epochs (45,000 images each, random crop + flip, normalised, on `--device`), after a few
untimed warm-up batches. CUDA work is synchronised before each clock reading. The GPU-resident loader
should deliver an epoch in well under a second on a GPU; the torchvision loader is the original
per-image PIL pipeline with `--workers` processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import data
from utils.errors import exit_on_user_error

WARMUP_BATCHES = 5


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    parser.add_argument(
        "--dataset-root", "--dataset_root", default="data", help="folder holding cifar-10-batches-py"
    )
    parser.add_argument(
        "--dataset", default="cifar10", help="training set to stream (augmented as in training)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where batches are delivered"
    )
    parser.add_argument("--batch-size", "--batch_size", type=int, default=128, help="the paper's batch size")
    parser.add_argument(
        "--workers", type=int, default=4, help="DataLoader processes for the torchvision loader"
    )
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per loader")
    parser.add_argument("--loaders", default="gpu,torchvision", help="comma-separated: gpu, torchvision")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads in the main process (0: torch's default); 1 avoids thrashing on a "
        "CPU shared with other jobs",
    )
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(args: argparse.Namespace, kind: str) -> dict:
    """Set-up seconds and images/s of one loader kind over `args.epochs` augmented training epochs."""
    device = torch.device(args.device)
    _sync(device)
    start = time.perf_counter()
    train, _ = data.get_train_valid_loader(
        args.dataset,
        args.dataset_root,
        args.batch_size,
        augment=True,
        device=device,
        loader=kind,
        num_workers=args.workers,
    )
    _sync(device)
    setup_s = time.perf_counter() - start
    for i, _batch in enumerate(train):  # warm-up: CUDA kernels, worker start-up, page cache
        if i + 1 == WARMUP_BATCHES:
            break
    checksum = torch.zeros((), device=device)
    _sync(device)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        for x, _y in train:
            checksum += x[0, 0, 0, 0]  # touch every batch so that nothing is skipped
    _sync(device)
    elapsed = time.perf_counter() - start
    images = args.epochs * train.num_samples
    return {
        "loader": kind,
        "device": str(device),
        "batch_size": args.batch_size,
        "workers": args.workers if kind == "torchvision" else 0,
        "threads": torch.get_num_threads(),
        "setup_s": round(setup_s, 3),
        "epoch_s": round(elapsed / args.epochs, 3),
        "images_per_s": float(f"{images / elapsed:.4g}"),
    }


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = []
    for kind in args.loaders.split(","):
        result = benchmark(args, kind.strip())
        results.append(result)
        print(
            f"{result['loader']:>11} loader on {result['device']}: {result['images_per_s']:>11,.0f} images/s "
            f"({result['epoch_s']:.3f} s per augmented epoch, set-up {result['setup_s']:.2f} s)",
            flush=True,
        )
        print(json.dumps(result), flush=True)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
