"""Image folders (`folder:PATH`): decoding speed of both loaders, and training through a folder against the
built-in set on the same images (a benchmark, not a test).

    python -m benchmarks.folder_loader write --dataset cifar10 --dataset-root DATA --out /tmp/cifar10_png
    python -m benchmarks.folder_loader write --dataset mnist --dataset-root DATA --out /tmp/mnist_png --splits test
    python -m benchmarks.folder_loader decode --folder /tmp/cifar10_png --workers 2
    python -m benchmarks.folder_loader train --folder /tmp/cifar10_png --dataset-root DATA --repeats 3

`write` lays a registered set out as an image folder of PNGs (`OUT/{train,test}/LABEL/INDEX.png`, the label
zero-padded so that sorted folder names are label order), losslessly, so the folder holds exactly the pixels
of the built-in set. `decode` measures images/s of the two ways a folder is read: decoding the whole training
split once into memory (`data.folders.decode_files`, a process pool; what the device-resident loader then
serves) and one augmented epoch of the from-disk worker loader (`data.folders.FolderLoader`, decoding every
batch in `DataLoader` workers). `train` times the real training step (`engine.training.train_one_epoch`) for
`--steps` steps on `folder:PATH` and on the built-in set, interleaved `--repeats` times, after both are
decoded: once decoded, both are one uint8 tensor served by the same loader, so they should be equal within
noise. One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

import data
from data import folders
from engine.network_flags import model_config
from engine.networks import build_model
from engine.training import TrainSettings, make_optimizer, train_one_epoch
from utils.errors import UserError, exit_on_user_error


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="lay a registered data set out as a folder of PNGs")
    write.add_argument("--dataset", default="cifar10", help="registered data set to write out")
    write.add_argument("--dataset-root", default="data", help="folder holding it in its official layout")
    write.add_argument("--out", required=True, help="the image folder to create")
    write.add_argument("--splits", default="train,test", help="comma-separated: train, test")
    decode = sub.add_parser("decode", help="images/s of the in-memory decode and of the from-disk loader")
    decode.add_argument("--folder", required=True, help="an image folder with train/ and test/")
    decode.add_argument("--workers", type=int, default=folders.default_workers(), help="decoding processes")
    decode.add_argument("--batch-size", type=int, default=128, help="batch of the from-disk loader")
    decode.add_argument("--loaders", default="memory,disk", help="comma-separated: memory, disk")
    decode.add_argument("--max-images", type=int, default=0, help="time at most this many (0: all)")
    train = sub.add_parser("train", help="training steps/s through folder: against the built-in set")
    train.add_argument("--folder", required=True, help="the image folder written from --dataset")
    train.add_argument("--dataset", default="cifar10", help="the built-in set the folder was written from")
    train.add_argument("--dataset-root", default="data", help="folder holding --dataset")
    train.add_argument("--model", default="resnet18", help="network")
    train.add_argument(
        "--base-width", type=int, default=8, help="ResNet width (8: 1/8 of the paper's; 0: none)"
    )
    train.add_argument("--batch-size", type=int, default=128, help="training batch")
    train.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    train.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    train.add_argument("--repeats", type=int, default=3, help="interleaved measurements per path")
    for sub_parser in (decode, train):
        sub_parser.add_argument(
            "--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)"
        )
    return parser


def write_folder(name: str, root: str, out: Path, splits: list[str]) -> dict:
    """Write splits of registered set `name` as `out/SPLIT/LABEL/INDEX.png`; returns counts per split."""
    counts = {}
    for split in splits:
        images, labels = data.load_split(name, root, split)
        if images.dtype != torch.uint8:
            raise UserError(f"{name} is not stored as 8-bit images; pick another --dataset")
        width = len(str(int(labels.max())))
        arr = images.permute(0, 2, 3, 1).numpy()
        for label in sorted(set(labels.tolist())):
            (out / split / f"{label:0{width}d}").mkdir(parents=True, exist_ok=True)
        for index, (img, label) in enumerate(zip(arr, labels.tolist())):
            pixels = img[..., 0] if img.shape[-1] == 1 else img
            Image.fromarray(np.ascontiguousarray(pixels)).save(
                out / split / f"{label:0{width}d}" / f"{index:05d}.png", compress_level=6
            )
        counts[split] = len(labels)
    return counts


def _decode_memory(args: argparse.Namespace) -> dict:
    folders.clear_caches()
    train, _ = folders.scan_layout(Path(args.folder).resolve())
    if args.max_images:
        train = folders.ImageList(
            train.root, train.files[: args.max_images], train.labels[: args.max_images], train.classes
        )
    channels, size = 3, folders.probe_image(train.files[0])[1]
    start = time.perf_counter()
    images, _, _ = folders.decode_files(train, channels, size, workers=args.workers)
    elapsed = time.perf_counter() - start
    return {"loader": "memory (decode once)", "images": len(images), "seconds": round(elapsed, 2)}


def _decode_disk(args: argparse.Namespace) -> dict:
    folders.clear_caches()
    os.environ[folders.MEMORY_ENV] = "0"  # force the from-disk loader
    try:
        name = folders.FOLDER_PREFIX + str(Path(args.folder).resolve())
        train, _ = data.get_train_valid_loader(
            name, None, args.batch_size, augment=True, val_size=0.0, num_workers=args.workers
        )
        seen, start = 0, time.perf_counter()
        for x, _ in train:
            seen += len(x)
            if args.max_images and seen >= args.max_images:
                break
        elapsed = time.perf_counter() - start
    finally:
        del os.environ[folders.MEMORY_ENV]
    return {"loader": "disk (workers, every epoch)", "images": seen, "seconds": round(elapsed, 2)}


def decode(args: argparse.Namespace) -> list[dict]:
    results = []
    for kind in args.loaders.split(","):
        result = (_decode_memory if kind.strip() == "memory" else _decode_disk)(args)
        result.update(workers=args.workers, images_per_s=round(result["images"] / result["seconds"]))
        results.append(result)
        print(json.dumps(result), flush=True)
    return results


def _time_steps(args: argparse.Namespace, name: str, root: str | None) -> float:
    """Seconds per training step over `args.steps` steps of the real loop on `name` (after `args.warmup`)."""
    torch.manual_seed(0)
    namespace = argparse.Namespace(
        model=args.model, sn=False, mod=False, coeff=3.0, dataset=name, depth=None, widen_factor=None,
        base_width=args.base_width or None, width_divisor=None,
    )  # fmt: skip
    model = build_model(model_config(namespace))
    optimizer = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    train, _ = data.get_train_valid_loader(name, root, args.batch_size, augment=True, val_seed=1)

    def settings(steps: int) -> TrainSettings:
        return TrainSettings(device=torch.device("cpu"), precision="fp32", progress=False, max_steps=steps)

    train_one_epoch(model, train, optimizer, settings(args.warmup))
    start = time.perf_counter()
    train_one_epoch(model, train, optimizer, settings(args.steps))
    return (time.perf_counter() - start) / args.steps


def train(args: argparse.Namespace) -> list[dict]:
    folder = folders.FOLDER_PREFIX + str(Path(args.folder).resolve())
    data.get_info(folder), data.get_info(args.dataset)  # decode / read both before timing
    results = []
    for repeat in range(args.repeats):
        for name, root in ((args.dataset, args.dataset_root), (folder, None)):
            seconds = _time_steps(args, name, root)
            result = {
                "path": "folder:" if name == folder else name,
                "repeat": repeat,
                "step_s": round(seconds, 4),
                "images_per_s": round(args.batch_size / seconds, 1),
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict] | dict:
    if args.command == "write":
        counts = write_folder(args.dataset, args.dataset_root, Path(args.out), args.splits.split(","))
        print(json.dumps({"written": str(args.out), **counts}), flush=True)
        return counts
    torch.set_num_threads(args.threads)
    return decode(args) if args.command == "decode" else train(args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
