"""Training-step throughput (images/s) of a registered network on a device-resident batch, and the
arithmetic rate that achieves (TFLOP/s, from an exact count of the step's floating-point operations), to set
against the GPU's measured ceiling.

Measures fp32, bf16 autocast + channels_last, and optionally + torch.compile, each with spectral
normalisation on and off, so the cost of SN can be read off directly.

    python -m benchmarks.throughput --model wide_resnet -mod --batch-size 128 --compile          # on a GPU
    python -m benchmarks.throughput --model wide_resnet -mod --depth 10 --widen-factor 2 \
        --batch-size 32 --steps 5 --no-gpu                                                      # small, on CPU
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import net
from engine.network_flags import arch_kwargs
from engine.networks import build_model
from utils.device import autocast_context, select_device
from utils.errors import exit_on_user_error
from utils.io import atomic_write_json


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="wide_resnet", choices=net.list_models())
    parser.add_argument("-mod", "--mod", action="store_true", help="leaky ReLU + average-pool shortcuts")
    parser.add_argument("--coeff", type=float, default=3.0)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--mnist", action="store_true", help="1x28x28 inputs")
    parser.add_argument("--depth", type=int, default=None, help="Wide-ResNet depth (default 28)")
    parser.add_argument(
        "--widen-factor", type=int, default=None, help="Wide-ResNet widen factor (default 10)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--compile", action="store_true", help="also measure bf16 + channels_last + compile")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def training_flops(model, x, y) -> tuple[float, float]:
    """`(per_image, per_step)` floating-point operations of one training step (forward and backward;
    `torch.utils.flop_counter` counts a multiply-add as 2): the cost of a step of batch B is
    `B * per_image + per_step`, where `per_step` is the batch-independent part (SN's power iteration).
    Counted with batches of 2 and 4 (BatchNorm needs two samples); the network's state is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(batch: int) -> int:
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x[:batch]), y[:batch]).backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    state = {k: v.clone() for k, v in model.state_dict().items()}  # the power iteration refreshes buffers
    two, four = count(2), count(4)
    model.load_state_dict(state)
    per_image = (four - two) / 2
    return float(per_image), float(two - 2 * per_image)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, precision: str) -> None:
    """One step as `engine.training.train_one_epoch` runs it: forward under autocast, fp32 loss, update."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(x.device, precision):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    optimizer.step()


def measure(model, x, y, steps, warmup, precision, device) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(warmup):
        training_step(model, optimizer, x, y, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, optimizer, x, y, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict]:
    device = select_device(args.no_gpu)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    config = dict(
        name=args.model, num_classes=args.num_classes, mod=args.mod, coeff=args.coeff, mnist=args.mnist
    )
    config.update(arch_kwargs(args))
    shape = (1, 28, 28) if args.mnist else (3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, *shape, generator=generator).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    configs = [("fp32", False, False), ("bf16+channels_last", True, False)]
    if args.compile:
        configs.append(("bf16+channels_last+compile", True, True))
    results = []
    for sn in (True, False):
        for label, fast, compiled in configs:
            torch.manual_seed(0)
            model = build_model({**config, "spectral_normalization": sn}).to(device)
            inputs = x
            if fast:
                model = model.to(memory_format=torch.channels_last)
                inputs = x.to(memory_format=torch.channels_last)
            if label == "fp32":  # the same network in every configuration: count once per SN setting
                per_image, per_step = training_flops(model, inputs, y)
            runner = torch.compile(model) if compiled else model
            rate = measure(runner, inputs, y, args.steps, args.warmup, "bf16" if fast else "fp32", device)
            tflops = (per_image * rate + per_step * rate / args.batch_size) / 1e12
            row = dict(
                model=args.model,
                sn=sn,
                mod=args.mod,
                config=label,
                batch=args.batch_size,
                # Significant digits, not decimals: a slow CPU must not round its rate to 0.
                images_per_s=float(f"{rate:.4g}"),
                gflop_per_image=float(f"{per_image / 1e9:.4g}"),
                achieved_tflop_s=float(f"{tflops:.4g}"),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            )
            results.append(row)
            print(
                f"{args.model:12s} sn={str(sn):5s} {label:28s} batch {args.batch_size:4d}: {rate:10.1f} images/s"
                f" = {tflops:8.3g} TFLOP/s",
                flush=True,
            )
    by_key = {(r["sn"], r["config"]): r["images_per_s"] for r in results}
    for label, _, _ in configs:
        print(f"SN cost ({label}): {by_key[(False, label)] / by_key[(True, label)]:.2f}x slower with SN")
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
