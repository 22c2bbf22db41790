"""ImageNet decoding speed (data/imagenet.py): images/s of the CPU path per core, and of the GPU path.

    python -m benchmarks.imagenet_decode                       # CPU path, one process (= one core)
    python -m benchmarks.imagenet_decode --device cuda         # also the GPU path (nvJPEG, batched)
    python -m benchmarks.imagenet_decode --images 64 --json out.json

Writes `--images` synthetic JPEGs of ImageNet's typical size (500 x 375, quality 90; ImageNet's median file is
about 110 KB, these are smaller, so decoding is somewhat faster than on the real files) into a temporary
folder, then times, best of `--repeats`:

- `cpu_train` / `cpu_eval`: what one worker process does per image (`ImageNetDecoder`: Pillow decode,
  random-resized crop and flip, or resize 256 and centre crop, to 224), with one torch thread, per second
  of the process's CPU time: images/s per core, which times the cores given to `--workers` is the
  loader's rate while decoding bounds it;
- `gpu_train` (CUDA only): the GPU path's main-process half (`decode_batch`: one batched
  `torchvision.io.decode_jpeg(device="cuda")` call per batch of `--batch-size`, then the crops on the GPU),
  the file bytes read beforehand as the workers would.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from data import imagenet
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_json


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=120, help="synthetic JPEGs to decode")
    parser.add_argument("--repeats", type=int, default=2, help="passes; the best is reported")
    parser.add_argument("--batch-size", type=int, default=256, help="GPU path: images per decode_jpeg call")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time the GPU path as well")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return parser


def write_jpegs(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        coarse = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        path = folder / f"{i}.JPEG"
        Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
        files.append(str(path))
    return files


def best_rate(
    fn, count: int, repeats: int, device: torch.device | None = None, clock=time.perf_counter
) -> float:
    """`count` over the best of `repeats` timings of `fn` by `clock` (wall clock by default; the process's CPU
    time for the per-core rates, which a machine shared with other work does not slow down)."""
    best = float("inf")
    for _ in range(repeats):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, clock() - start)
    return count / best


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        raise UserError("--images, --repeats and --batch-size must be at least 1.")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a GPU that torch can see; leave it out on this machine.")
    torch.set_num_threads(1)
    record = {"images": args.images, "image_size": 224, "source_size": [500, 375]}
    with tempfile.TemporaryDirectory() as scratch:
        files = write_jpegs(Path(scratch), args.images)
        decoder = imagenet.ImageNetDecoder(224)
        cpu = time.process_time
        record["cpu_train_per_core"] = best_rate(
            lambda: [decoder(f, i) for i, f in enumerate(files)], len(files), args.repeats, clock=cpu
        )
        record["cpu_eval_per_core"] = best_rate(
            lambda: [decoder(f, None) for f in files], len(files), args.repeats, clock=cpu
        )
        if device.type == "cuda":
            reader = imagenet.ImageNetDecoder(224, bytes_only=True)
            raw = [reader(f, i) for i, f in enumerate(files)]
            batches = [
                range(s, min(len(raw), s + args.batch_size)) for s in range(0, len(raw), args.batch_size)
            ]

            def gpu_pass():
                for batch in batches:
                    imagenet.decode_batch([raw[i] for i in batch], list(batch), 224, device)

            gpu_pass()  # warm-up: nvJPEG handles and kernels
            record["gpu_train"] = best_rate(gpu_pass, len(files), args.repeats, device)
            record["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(record, indent=1))
    if args.json:
        atomic_write_json(Path(args.json), record)
    return record


if __name__ == "__main__":
    main(get_args_parser().parse_args())
