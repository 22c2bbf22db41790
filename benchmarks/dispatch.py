"""Operations dispatched per training step: the host-side cost of an eager step on a GPU.

In eager PyTorch every non-view ATen operation is (at least) one kernel launch, and the host spends several
microseconds on each. At batch 128 a Wide-ResNet-28-10 step does only a few milliseconds of H200 work, so
with spectral normalisation (a power iteration and a rescale per layer, on every step) the host can
become the bottleneck: the number of operations per step is then what bounds the step rate. This counts
them exactly (a `TorchDispatchMode` sees every operation, backward and optimiser included, below autograd),
on the CPU and at a reduced width, since the count does not depend on width, batch or device.

    python -m benchmarks.dispatch --model wide_resnet -mod                  # WRN-28 topology, SN on and off
    python -m benchmarks.dispatch --model resnet18 --json ops.json

`torch.compile` removes most of this overhead by fusing the small operations; the count is for the default
eager path.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import net
from benchmarks.throughput import training_step
from engine.networks import build_model
from utils.errors import exit_on_user_error
from utils.io import atomic_write_json


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations that reach the kernels, by name; views (no kernel, no data) are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_step_operations(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "bf16", warmup: int = 2
) -> OperationCounter:
    """The operations of one training step of `model` on `(x, y)` (after `warmup` steps, once the optimiser
    state exists)."""
    model.train()
    # foreach: the multi-tensor update that SGD uses by default on a GPU (on the CPU it loops over tensors).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    for _ in range(warmup):
        training_step(model, optimizer, x, y, precision)
    with OperationCounter() as counter:
        training_step(model, optimizer, x, y, precision)
    return counter


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="wide_resnet", choices=net.list_models())
    parser.add_argument("-mod", "--mod", action="store_true", help="leaky ReLU + average-pool shortcuts")
    parser.add_argument("--mnist", action="store_true", help="1x28x28 inputs")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


# A narrow width per family with the same layers (widen 2 keeps every shortcut convolution of
# widen 10): the operation count is the same as at full width.
NARROW = {"wide_resnet": {"widen_factor": 2}, "resnet18": {"base_width": 4}, "resnet50": {"base_width": 4}}


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    shape = (1, 28, 28) if args.mnist else (3, 32, 32)
    x = torch.randn(2, *shape)
    y = torch.randint(0, args.num_classes, (2,))
    results = []
    for sn in (False, True):
        torch.manual_seed(0)
        config = dict(name=args.model, num_classes=args.num_classes, mod=args.mod, mnist=args.mnist)
        model = build_model({**config, "spectral_normalization": sn, **NARROW.get(args.model, {})})
        counter = count_step_operations(model, x, y, args.precision)
        layers = sum(isinstance(m, (net.SpectralNormConv2d, net.SpectralNormLinear)) for m in model.modules())
        row = dict(
            model=args.model,
            sn=sn,
            mod=args.mod,
            sn_layers=layers,
            operations_per_step=counter.total,
            most_common=counter.counts.most_common(8),
        )
        results.append(row)
        print(
            f"{args.model:12s} sn={str(sn):5s} {counter.total:6d} operations per training step "
            f"({layers} SN layers)"
        )
    plain, normalised = results
    extra = normalised["operations_per_step"] - plain["operations_per_step"]
    print(
        f"spectral normalisation adds {extra} operations ({extra / max(normalised['sn_layers'], 1):.1f} per layer)"
    )
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
