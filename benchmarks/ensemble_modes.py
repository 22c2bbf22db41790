"""Deep-ensemble training: N members stacked into one vmapped network (`engine.stacked_ensemble`) against the same N
members trained one after another, on device-resident batches, with the training loops train.py runs.

Prints the images per second of both (all members' images counted) and their ratio:

    python -m benchmarks.ensemble_modes --model lenet --members 5 --batch-size 128                   # on a GPU
    python -m benchmarks.ensemble_modes --model resnet18 --base-width 8 --members 5 --no-gpu --steps 5

Each member sees its own batches (random images of the data set's shape) and its own seeded weights, as in
`train.py --ensemble N`. The two ways alternate `--repeats` times and the best of each is kept, which on a
shared machine is the figure least disturbed by other work.
"""

from __future__ import annotations

import argparse
import time

import torch

from engine import stacked_ensemble
from engine.network_flags import model_config, model_parser
from engine.networks import build_model
from engine.training import TrainSettings, make_optimizer, train_one_epoch
from utils.device import resolve_precision, select_device
from utils.errors import exit_on_user_error
from utils.io import atomic_write_json


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_parser(default_model="lenet")],
    )
    parser.add_argument("--dataset", default="mnist", help="fixes the input shape and class count only")
    parser.add_argument("--members", type=int, default=5, help="ensemble size N")
    parser.add_argument("--batch-size", type=int, default=128, help="batch of each member")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements; the best counts")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="default: bf16 on a GPU and on a CPU with native bf16",
    )
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def _batches(n: int, steps: int, shape, num_classes: int, batch: int, device) -> list[list[tuple]]:
    """`steps` batches `(x (B, ...), y (B,))` for each of `n` members, on the device."""
    generator = torch.Generator().manual_seed(0)
    return [
        [
            (
                torch.randn(batch, *shape, generator=generator).to(device),
                torch.randint(0, num_classes, (batch,), generator=generator).to(device),
            )
            for _ in range(steps)
        ]
        for _ in range(n)
    ]


def _members(config: dict, n: int, device) -> list[torch.nn.Module]:
    members = []
    for k in range(n):
        torch.manual_seed(k)
        members.append(build_model(config).to(device))
    return members


def _optimizer(parameters):
    return make_optimizer(parameters, "sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)


def _timed(run, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    device = select_device(args.no_gpu)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(device, args.precision)[0]
    config = model_config(args)
    shape = (1, 28, 28) if config["mnist"] else (3, 32, 32)
    obstacle = stacked_ensemble.stacking_obstacle(build_model(config))
    if obstacle is not None:
        raise SystemExit(f"error: {args.model} with these flags cannot be stacked: {obstacle}")
    settings = TrainSettings(device=device, precision=precision, progress=False, log_interval=10**9)
    n = args.members
    warm = _batches(n, args.warmup, shape, config["num_classes"], args.batch_size, device)
    timed = _batches(n, args.steps, shape, config["num_classes"], args.batch_size, device)

    members = _members(config, n, device)
    optimizers = [_optimizer(m.parameters()) for m in members]
    stack = stacked_ensemble.StackedEnsemble(_members(config, n, device)).to(device)
    stack_optimizer = _optimizer(stack.parameters())

    def sequential(batches):
        for member, optimizer, own in zip(members, optimizers, batches):
            train_one_epoch(member, own, optimizer, settings)

    def stacked(batches):
        stacked_ensemble.train_one_epoch_stacked(
            stack, stacked_ensemble.ZippedLoader(batches), stack_optimizer, settings
        )

    images = n * args.steps * args.batch_size
    best = {"stacked": 0.0, "sequential": 0.0}
    for _ in range(args.repeats):
        for name, run in (("stacked", stacked), ("sequential", sequential)):
            run(warm)
            seconds = _timed(lambda run=run: run(timed), device)
            best[name] = max(best[name], images / seconds)
    ratio = best["stacked"] / best["sequential"]
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = torch.get_num_threads()
    print(
        f"{args.model} x {n} members, batch {args.batch_size} each, {precision}, {hardware} "
        f"({threads} threads): stacked {best['stacked']:,.0f} images/s, one after another "
        f"{best['sequential']:,.0f} images/s: ratio {ratio:.2f}x",
        flush=True,
    )
    result = {
        "model": args.model,
        "config": {k: v for k, v in config.items() if k != "name"},
        "members": n,
        "batch": args.batch_size,
        "precision": precision,
        "hardware": hardware,
        "threads": threads,
        "torch": torch.__version__,
        "stacked_images_per_s": round(best["stacked"], 1),
        "sequential_images_per_s": round(best["sequential"], 1),
        "ratio": round(ratio, 3),
    }
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
