"""How often the original's DDU active-learning acquisition ranks ties (a measurement, not a test).

    python -m benchmarks.quirk_ties --dataset-root data_root --model resnet18 -sn -mod --base-width 16 \
        --epochs 3 --max-pool 10000 --json ties.json

The original code sums `exp(log q(z | c)) * w_c` in float32 to rank the pool (`--original-quirks` in
active_learning.py). For each labelled-set size in `--sizes` this script builds the labelled set the way an
experiment would hold it at that size, but without a model in the loop: the shared class-balanced initial
set (`--seed`), then uniformly random pool samples (nested: the 100 contain the 20). It trains a fresh
network on it exactly as one acquisition step does (Adam, 5,056 resampled samples per epoch, best
validation epoch), fits DDU's Gaussians on the labelled features and scores the unlabelled pool both ways.

The pool densities do not depend on the test set, and hardly on how long the network trained (the
covariances are singular because each class has fewer samples than feature dimensions), so at full width
on a CPU `--max-validation`, `--max-test` and a short `--samples-per-epoch` make a quick check of the ties.

One JSON row per size: the share of pool densities that are exactly 0 in float32 and the share tied at
the smallest value (what `topk(largest=False)` chooses among), the largest class log-density seen, the
median log feature density, the five pool positions each ranking acquires, and the network's test accuracy.
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

import engine.acquisition as al
import metrics
import net
from engine.network_flags import add_arch_flags
from engine.networks import build_model
from engine.training import TrainSettings
from utils.errors import exit_on_user_error
from utils.io import atomic_write_json

NUM_CLASSES = 10


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    parser.add_argument("--dataset-root", default="data", help="folder holding MNIST")
    parser.add_argument("--model", default="resnet18", choices=net.list_models(), help="network trained")
    parser.add_argument("-sn", action="store_true", dest="sn", help="spectral normalisation")
    parser.add_argument("-mod", action="store_true", dest="mod", help="leaky ReLU / strided shortcuts")
    parser.add_argument("--coeff", type=float, default=3.0, help="Lipschitz bound per layer for -sn")
    add_arch_flags(parser.add_argument_group("reduced network size"))
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per labelled set")
    parser.add_argument("--samples-per-epoch", type=int, default=5056, help="resampled epoch length")
    parser.add_argument("--max-pool", type=int, default=10000, help="cap the pool (as active_learning.py)")
    parser.add_argument("--sizes", default="20,100,300", help="labelled-set sizes, comma-separated")
    parser.add_argument(
        "--max-validation", type=int, default=None, help="cap the validation split (quick runs at full width)"
    )
    parser.add_argument(
        "--max-test", type=int, default=None, help="cap the test set the accuracy is taken on"
    )
    parser.add_argument("--seed", type=int, default=1, help="pool, initial set and training seed")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    return parser


def measure(args: argparse.Namespace) -> list[dict]:
    cpu = torch.device("cpu")
    pool, validation, test = al.build_pool(
        args.dataset_root, ambiguous=False, subsample=0, seed=args.seed, device=cpu, max_pool=args.max_pool
    )
    if args.max_validation is not None:
        validation = validation.take(torch.arange(min(args.max_validation, len(validation))))
    if args.max_test is not None:
        test = test.take(torch.arange(min(args.max_test, len(test))))
    initial = al.balanced_initial_indices(pool.y, 20, NUM_CLASSES, torch.Generator().manual_seed(args.seed))
    taken = set(initial)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed + 100)).tolist()
    extra = [i for i in order if i not in taken]
    settings = TrainSettings(device=cpu, precision="fp32", progress=False, log_interval=10**9)

    def make_model():
        return build_model(args, "mnist")

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        labelled_idx = sorted(initial + extra[: size - len(initial)])
        labelled = pool.take(torch.tensor(labelled_idx))
        unlabelled = torch.ones(len(pool), dtype=torch.bool)
        unlabelled[labelled_idx] = False
        candidates = pool.take(torch.nonzero(unlabelled).flatten())
        model = al.train_best_model(
            make_model, labelled, validation, epochs=args.epochs, batch_size=64, test_batch_size=512,
            samples_per_epoch=args.samples_per_epoch, settings=settings, seed=args.seed * 1000 + size,
        )  # fmt: skip
        accuracy = al.test_accuracy_percent(model, test, 512, settings)
        train = al.collect_outputs(model, al._SplitLoader(labelled, 256), cpu)
        scored = al.collect_outputs(model, al._SplitLoader(candidates, 256), cpu)
        log_densities = metrics.DDUScorer.fit_features(train.features, train.labels, NUM_CLASSES)
        log_densities = log_densities.class_log_densities(scored.features)
        weights = al.original_class_weights(labelled, args.samples_per_epoch, args.seed, 0, NUM_CLASSES)
        density = metrics.original_float32_density(log_densities, weights)
        frequencies = torch.bincount(train.labels.cpu(), minlength=NUM_CLASSES).double() / size
        log_density = torch.logsumexp(log_densities + frequencies.log(), dim=1)
        row = {
            "labelled": size,
            "feature_dim": train.features.shape[1],
            "pool": len(candidates),
            "test_accuracy": accuracy,
            "zero_share": float((density == 0).double().mean()),
            "tied_at_min_share": float((density == density.min()).double().mean()),
            "max_class_log_density": float(log_densities.max()),
            "median_log_density": float(log_density.median()),
            "original_picks": torch.topk(density, 5, largest=False).indices.tolist(),
            "paper_picks": torch.topk(-log_density, 5).indices.tolist(),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


@exit_on_user_error
def main(args: argparse.Namespace) -> list[dict]:
    rows = measure(args)
    if args.json:
        atomic_write_json(Path(args.json), rows)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
