"""One evaluate.py command against three OoD sets against three single-OoD commands on the same checkpoint.

    python -m benchmarks.multi_ood --no-gpu                                  # the embedded digits, seconds
    python -m benchmarks.multi_ood --no-gpu --dataset-root DATA --dataset cifar10 \
        --ood tiny_imagenet,mnist,fashion_mnist --model resnet18 --base-width 8 --json multi_ood.json

DATA holds the data sets in their official layouts (docs/usage.md). The checkpoint is trained here first
(train.py, one epoch of `--steps` batches: its numbers do not matter, only the work evaluation does) into a
temporary `Run1/`. Then, `--repeats` times and alternating which comes first, evaluate.py's `main` is timed
once with all OoD sets (`--ood_dataset a,b,c`) and once per OoD set; every call writes into a fresh folder.
Times are wall-clock and CPU (process) seconds of the in-process calls, so the three single commands'
interpreter and PyTorch start-ups (seconds each on a CPU) are not counted: the saving measured is a lower
bound. On a shared machine the CPU seconds of a one-thread run (`--threads 1`) are the steadier figure. A
multi-OoD evaluation runs the network over the test, validation and training splits once plus each OoD set,
the single ones over the three splits once per OoD set, so the expected ratio is about (T + O) / (3 T + O),
T the in-distribution images and O those of the three OoD sets together.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import evaluate
import train
from engine.result_tables import markdown_table
from utils.device import cpu_model
from utils.errors import exit_on_user_error
from utils.io import atomic_write_json


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=add_help
    )
    parser.add_argument(
        "--dataset", default="digits", help="in-distribution set (default: the embedded digits)"
    )
    parser.add_argument(
        "--ood",
        default="digits_ood,digits_ambiguous,digits_clean",
        help="the comma-separated OoD sets (default: three embedded sets, no files needed)",
    )
    parser.add_argument("--dataset-root", default="./", help="data root for sets read from files")
    parser.add_argument("--model", default="lenet", help="network (a registered name)")
    parser.add_argument("--base-width", type=int, default=None, help="ResNet stem width (smaller: faster)")
    parser.add_argument("--model-type", default="gmm", choices=["softmax", "gmm"], help="method evaluated")
    parser.add_argument("--steps", type=int, default=2, help="training batches of the checkpoint")
    parser.add_argument("-b", "--batch-size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="inference precision")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (alternating which comes first)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-gpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument(
        "--work-dir", default=None, help="where the checkpoint and results go (default: temp)"
    )
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    return parser


def _network_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, *(["--base-width", str(args.base_width)] if args.base_width else [])]


def _train_checkpoint(args: argparse.Namespace, work: Path) -> None:
    argv = [
        "--seed", "1", "--dataset", args.dataset, "--dataset-root", args.dataset_root, "-e", "1",
        "--steps-per-epoch", str(args.steps), "-b", "32", "--save-path", str(work / "Run1"),
        "--precision", "fp32", *_network_flags(args), *(["--no-gpu"] if args.no_gpu else []),
    ]  # fmt: skip
    train.main(train.get_args_parser().parse_args(argv))


def _evaluate_seconds(args: argparse.Namespace, work: Path, oods: str, out: Path) -> tuple[float, float]:
    """`(wall-clock, CPU)` seconds of one evaluate.py call."""
    argv = [
        "--seed", "1", "--dataset", args.dataset, "--ood_dataset", oods, "--dataset-root", args.dataset_root,
        "--load-path", str(work), "--runs", "1", "--epoch", "1", "--model-type", args.model_type,
        "--output-dir", str(out), "-b", str(args.batch_size), "--precision", args.precision,
        *_network_flags(args), *(["--no-gpu"] if args.no_gpu else []),
    ]  # fmt: skip
    parsed = evaluate.get_args_parser().parse_args(argv)
    wall, cpu = time.perf_counter(), time.process_time()
    evaluate.main(parsed)
    return time.perf_counter() - wall, time.process_time() - cpu


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    oods = [name.strip() for name in args.ood.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        work = Path(folder)
        _train_checkpoint(args, work)
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {"multi": [], "singles": []}
        for repeat in range(args.repeats):
            for kind in ("multi", "singles") if repeat % 2 == 0 else ("singles", "multi"):
                out = work / f"out_{repeat}_{kind}"
                if kind == "multi":
                    wall, cpu = _evaluate_seconds(args, work, ",".join(oods), out)
                else:
                    each = [_evaluate_seconds(args, work, ood, out / ood) for ood in oods]
                    wall, cpu = sum(t[0] for t in each), sum(t[1] for t in each)
                times[kind].append((wall, cpu))
                print(f"round {repeat + 1}, {kind}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        load_after = os.getloadavg()
    record = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "load_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "device": "cpu" if args.no_gpu or not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "work_dir")},
    }
    rows = []
    for index, clock in enumerate(("wall", "cpu")):
        multi = [t[index] for t in times["multi"]]
        singles = [t[index] for t in times["singles"]]
        record[f"multi_{clock}_s"] = [round(t, 2) for t in multi]
        record[f"three_singles_{clock}_s"] = [round(t, 2) for t in singles]
        record[f"{clock}_ratio_of_medians"] = round(statistics.median(multi) / statistics.median(singles), 3)
        rows.append(
            [clock, statistics.median(multi), statistics.median(singles), record[f"{clock}_ratio_of_medians"]]
        )
    print(f"OoD sets: {', '.join(oods)}")
    print(markdown_table(("seconds", "one command", "one command per set", "ratio"), rows))
    print(f"{record['cpu']}, {record['threads']} threads, load {record['load_1min_before_after']}")
    if args.json:
        atomic_write_json(Path(args.json), record)
    return record


if __name__ == "__main__":
    main(get_args_parser().parse_args())
