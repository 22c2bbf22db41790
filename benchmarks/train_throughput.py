"""Training throughput (images/s) of this project's default set-up against the original DDU's, side by side.

Both configurations run the real training loop (`engine.training.train_one_epoch`, SGD as the original) on
real data for a fixed number of steps, after untimed warm-up steps, in one process:

- project: the device-resident loader (batched crop/flip on the device) with train.py's device defaults
  (bf16 autocast + channels_last on a GPU and on a CPU with native bf16, else fp32), optionally also with
  `torch.compile`;
- project-fp32 (where the default is bf16): the same loop at `--precision fp32`;
- project-fp32-channels-last (on the CPU, where the default does not already give it): the same loop in
  fp32 with channels_last (`--channels-last`, not the CPU default for fp32, see `utils/device.py`);
- original: fp32, contiguous tensors, torchvision `DataLoader` with PIL crop/flip and 4 worker processes,
  batch 128, as the original code trains.

With `--rounds R` every configuration keeps its network, optimiser and batch stream, and the timed steps
are interleaved: R rounds of `--steps` steps per configuration, in alternating order, so that a load that
comes and goes on a shared machine falls on all of them alike; each configuration reports the median of its
rounds (and every round).

    python -m benchmarks.train_throughput --dataset-root DATA --model wide_resnet -sn -mod --compile    # GPU
    python -m benchmarks.train_throughput --dataset-root DATA --model resnet18 --base-width 8 \
        --steps 10 --warmup 2 --rounds 3 --no-gpu                                                       # CPU

DATA holds CIFAR-10 in its official layout (`cifar-10-batches-py/`). cudnn autotuning is on
for both configurations, so the difference is the input pipeline and the numerics only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

import data
from engine.network_flags import arch_kwargs, model_parser
from engine.networks import build_model
from engine.training import TrainSettings, make_optimizer, prepare_model, train_one_epoch
from utils.device import cpu_model, cpu_reports_native_bf16, resolve_precision, select_device
from utils.errors import exit_on_user_error
from utils.seed import seed_everything

ORIGINAL_BATCH = 128
ORIGINAL_WORKERS = 4


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_parser(default_model="wide_resnet")],  # --model, -sn, --coeff, -mod, size overrides
    )
    parser.add_argument("--dataset", default="cifar10", help="training set (real data under --dataset-root)")
    parser.add_argument(
        "--dataset-root", default="./", help="folder with the data set in its official layout"
    )
    parser.add_argument(
        "-b", "--batch-size", type=int, default=128, help="batch of the project configuration"
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (autotuning, compilation)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of --steps per configuration (median kept)"
    )
    parser.add_argument(
        "--workers", type=int, default=ORIGINAL_WORKERS, help="workers of the original loader"
    )
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), default=None, help="project precision override"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also measure the project set-up + torch.compile"
    )
    parser.add_argument("--no-gpu", action="store_true", help="measure on the CPU")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


class _Steps:
    """`steps` batches drawn from a shared iterator that never ends (epochs roll over), so the warm-up and
    the timed slice continue one stream and the torchvision workers stay alive in between."""

    def __init__(self, source: Iterator, steps: int) -> None:
        self.source, self.steps = source, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator:
        for _ in range(self.steps):
            yield next(self.source)


def _forever(loader) -> Iterator:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class _Configuration:
    """One configuration's network, optimiser and endless batch stream, kept across the timed rounds."""

    def __init__(self, args: argparse.Namespace, device: torch.device, config: dict) -> None:
        self.config = config
        train_loader, _ = data.get_train_valid_loader(
            args.dataset,
            args.dataset_root,
            config["batch_size"],
            augment=True,
            val_seed=0,
            device=device,
            loader=config["loader"],
            seed=0,
            num_workers=config["workers"],
        )
        seed_everything(0)
        self.model = prepare_model(
            build_model(args), device, channels_last=config["channels_last"], compile=config["compile"]
        )
        self.optimizer = make_optimizer(
            self.model.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4
        )
        self.settings = TrainSettings(
            device=device,
            precision=config["precision"],
            channels_last=config["channels_last"],
            progress=False,
        )
        self.stream = _forever(train_loader)
        if args.warmup:
            train_one_epoch(self.model, _Steps(self.stream, args.warmup), self.optimizer, self.settings)
        self.rounds: list[dict] = []

    def timed(self, steps: int) -> None:
        stats = train_one_epoch(self.model, _Steps(self.stream, steps), self.optimizer, self.settings)
        self.rounds.append(
            {"images_per_s": stats.images_per_s, "seconds": stats.seconds, "images": stats.images}
        )

    def result(self) -> dict:
        rates = sorted(r["images_per_s"] for r in self.rounds)
        middle = len(rates) // 2
        median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
        return {
            **self.config,
            "images_per_s": median,
            "seconds": sum(r["seconds"] for r in self.rounds),
            "images": sum(r["images"] for r in self.rounds),
            "rounds": self.rounds,
        }


def measure(args: argparse.Namespace, device: torch.device, configs: list[dict]) -> list[dict]:
    """Images/s of `args.steps` training steps per round under each configuration (a fresh model each),
    `args.rounds` rounds interleaved in alternating order."""
    runs = [_Configuration(args, device, config) for config in configs]
    for round_index in range(args.rounds):
        for run in runs if round_index % 2 == 0 else runs[::-1]:
            run.timed(args.steps)
    return [run.result() for run in runs]


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict]:
    device = select_device(args.no_gpu)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision, channels_last = resolve_precision(device, args.precision)
    project = dict(
        name="project",
        loader="gpu",
        precision=precision,
        channels_last=channels_last,
        compile=False,
        batch_size=args.batch_size,
        workers=0,
    )
    configs = [project]
    if args.compile:
        configs.append({**project, "name": "project+compile", "compile": True})
    # The project's loop at --precision fp32, and on a CPU fp32 in both layouts: contiguous (the default
    # without bf16) and channels_last (faster, but only on request there; utils/device.py says why).
    variants = [("project-fp32", resolve_precision(device, "fp32"))]
    if device.type == "cpu":
        variants += [
            ("project-fp32-contiguous", ("fp32", False)),
            ("project-fp32-channels-last", ("fp32", True)),
        ]
    seen = {(precision, channels_last)}
    for name, setting in variants:
        if setting not in seen:
            seen.add(setting)
            configs.append({**project, "name": name, "precision": setting[0], "channels_last": setting[1]})
    configs.append(
        dict(
            name="original",
            loader="torchvision",
            precision="fp32",
            channels_last=False,
            compile=False,
            batch_size=ORIGINAL_BATCH,
            workers=args.workers,
        )
    )
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({cpu_model()}, native bf16: {cpu_reports_native_bf16()}, {torch.get_num_threads()} threads)"
    )
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    arch = arch_kwargs(args)
    flags = f"{' -sn' if args.sn else ''}{' -mod' if args.mod else ''}"
    print(
        f"{args.model}{flags} {arch or ''} on {args.dataset}, {hardware}, torch {torch.__version__}, "
        f"{args.rounds} x {args.steps} timed steps after {args.warmup} warm-up"
    )
    results = measure(args, device, configs)
    for result in results:
        print(
            f"  {result['name']:<16} loader={result['loader']:<11} {result['precision']} "
            f"channels_last={result['channels_last']!s:<5} batch={result['batch_size']:<4} "
            f"workers={result['workers']}: {result['images_per_s']:>9,.0f} images/s",
            flush=True,
        )
    rate = {r["name"]: r["images_per_s"] for r in results}
    ratios = {f"project/{name}": rate["project"] / rate[name] for name in rate if name != "project"}
    for name, ratio in ratios.items():
        print(f"  ratio {name}: {ratio:.2f}x")
    if args.json:
        record = {
            "date": datetime.date.today().isoformat(),
            "hardware": hardware,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "load_average_1min": [load_start, os.getloadavg()[0] if load_start is not None else None],
            # The data folder is a machine path, not a setting: records are committed (docs/repro).
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "dataset_root")},
            "results": results,
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
