"""DDU's Gaussian fit and scoring: this project's `metrics.gmm` against the original DDU computation.

    python -m benchmarks.gmm                                   # 640x10, 2,048x10, 2,048x100 on the CPU
    python -m benchmarks.gmm --device cuda --json gmm.json     # the same on a GPU
    python -m benchmarks.gmm --shapes 2048x100 --repeats 3     # one shape, three times (for a range)
    python -m benchmarks.gmm --shapes 32x4 --train-samples 400 --test-samples 100   # seconds
    python -m benchmarks.gmm --shapes 2048x1000 --implementations ours --train-samples 20000 \
        --test-samples 500 --extrapolate-to 1281167,52000    # ImageNet (train, val + ImageNet-O), predicted

Features are random float64 (`--train-samples` training points in classes of equal size, `--test-samples`
test points), as in the paper's setting of ResNet-50 (2,048 features) and WRN-28-10 (640) on CIFAR-10/100.
For each shape, "ours" (`fit_class_gaussians` + `class_log_densities`) runs first; then "original", a
reimplementation of the DDU code's computation with the jitter ours chose: class means and unbiased
covariances, one batched `MultivariateNormal` (argument validation off, as the DDU code needs on current
PyTorch), and `log_prob` for every class on batches of `--original-batch-size` test points, as its
`gmm_evaluate` does with its loader's batches. Its jitter search (absolute jitters from 0 up) is left out.

Each (shape, implementation) runs in a fresh subprocess, so its peak memory is its own: the process's peak
resident set on a CPU (`ru_maxrss`, which also counts the Python runtime and the features), the peak of
`torch.cuda.max_memory_allocated` on a GPU. The table also gives the peak above the memory held once the
features exist, and the covariances' size `C * D^2 * 8` bytes for scale. Times are wall-clock seconds, with
CUDA synchronised; every other repeat runs the original first, and `--no-score` times the fits alone.
`--class-chunk` sets ours' classes per chunk (default `metrics.gmm.default_class_chunk`: 128 at 2,048
features, so 2,048 x 1,000 is fitted and scored in chunks; the original, 33.5 GB there, cannot run).

ImageNet's sample counts take hours on a CPU, so `--extrapolate-to TRAIN,TEST` predicts them: the worker
also measures the rates of the three kernels at the shape's `D` (a `(D, 2048) x (2048, D)` product as the
covariances' scatter, one `D x D` Cholesky, a triangular solve with 2,048 right-hand sides) and counts the
work: fit = scatter `2 N_train D^2` + factors `C D^3 / 3`; score = the same again (a chunked model
recomputes its factors) + solves `N_test C D^2` flops. The record holds the prediction at the measured
counts beside the measured times (the model's check) and at the target counts. The two implementations' log-densities are compared at the end (their covariances are
rounded differently, which moves log-densities of points off the span of a singular class's samples by up
to ~1e-5 relative: these are ~1e13 in size and depend on round-off in the jitter's null space).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from engine.result_tables import markdown_table
from metrics.gmm import class_log_densities, fit_class_gaussians
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_json

DEFAULT_SHAPES = "640x10,2048x10,2048x100"
IMPLEMENTATIONS = ("ours", "original")
GIB = 2.0**30


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=add_help
    )
    parser.add_argument(
        "--shapes", default=DEFAULT_SHAPES, help="comma-separated FEATURESxCLASSES, e.g. 2048x100"
    )
    parser.add_argument("--train-samples", type=int, default=45000, help="training points (CIFAR's 45,000)")
    parser.add_argument("--test-samples", type=int, default=20000, help="test points to score")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument(
        "--implementations", default=",".join(IMPLEMENTATIONS), help="comma-separated: ours, original"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of every case, for a range")
    parser.add_argument(
        "--original-batch-size", type=int, default=128, help="test points per log_prob call (DDU's default)"
    )
    parser.add_argument("--no-score", action="store_true", help="time the fits only (quicker)")
    parser.add_argument(
        "--class-chunk", type=int, default=None, help="ours: classes per chunk (default: metrics' budget)"
    )
    parser.add_argument(
        "--extrapolate-to",
        default=None,
        help="TRAIN,TEST sample counts to predict ours' times at from measured kernel rates, e.g. 1281167,52000",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random features")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    # Internal: one measurement, run in a subprocess by main().
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jitter", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    return parser


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            dim, classes = (int(part) for part in item.strip().lower().split("x"))
        except ValueError:
            raise UserError(
                f"--shapes expects comma-separated FEATURESxCLASSES such as 2048x100, got {item!r}."
            ) from None
        if dim < 1 or classes < 1:
            raise UserError(f"--shapes needs positive features and classes, got {item!r}.")
        shapes.append((dim, classes))
    return shapes


def make_features(dim: int, classes: int, args, device: torch.device):
    """`(N, D)` float64 training features with labels in `C` equal classes, and `(M, D)` test features."""
    gen = torch.Generator().manual_seed(args.seed)
    train = torch.randn(args.train_samples, dim, generator=gen, dtype=torch.float64).to(device)
    labels = (torch.arange(args.train_samples) * classes // args.train_samples).to(device)
    test = torch.randn(args.test_samples, dim, generator=gen, dtype=torch.float64).to(device)
    return train, labels, test


def _unbiased_covariance(centred):
    return 1.0 / (centred.shape[0] - 1) * centred.T.mm(centred)


def original_fit(features, labels, num_classes: int, jitter: float):
    """The DDU code's Gaussian fit, for one given jitter: per-class means and unbiased covariances from
    boolean masks, stacked, jitter added, and one batched `MultivariateNormal` (which factors them all)."""
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(num_classes)])
    covariances = torch.stack(
        [_unbiased_covariance(features[labels == c] - means[c]) for c in range(num_classes)]
    )
    eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
    return torch.distributions.MultivariateNormal(
        loc=means, covariance_matrix=covariances + jitter * eye[None], validate_args=False
    )


def original_score(gaussians, features, batch_size: int):
    """The DDU code's scoring: `log_prob` of a batch against every class at once, `(N, C)`."""
    out = torch.empty(
        features.shape[0], gaussians.batch_shape[0], dtype=torch.float64, device=features.device
    )
    for start in range(0, features.shape[0], batch_size):
        out[start : start + batch_size] = gaussians.log_prob(features[start : start + batch_size, None, :])
    return out


def work_flops(dim: int, classes: int, train: int, test: int) -> dict[str, float]:
    """Flops of ours' fit and scoring by kernel: covariance scatters (`2 N_train D^2`, full products),
    Cholesky factors (`C D^3 / 3`) and triangular solves (`N_test C D^2`); scoring a chunked model repeats the
    fit's scatters and factors once. Jitter attempts that fail add about one factor each, left out."""
    scatter, factor = 2.0 * train * dim**2, classes * dim**3 / 3.0
    return {
        "fit_scatter": scatter,
        "fit_factor": factor,
        "score_scatter": scatter,
        "score_factor": factor,
        "score_solve": float(test) * classes * dim**2,
    }


def kernel_rates(dim: int, device: torch.device, repeats: int = 2) -> dict[str, float]:
    """Best-of-`repeats` flop rates (flop/s) of the three kernels at `dim` features, float64 on `device`."""
    gen = torch.Generator().manual_seed(1)
    block = torch.randn(2048, dim, generator=gen, dtype=torch.float64).to(device)
    spd = block.T @ block / 2048 + torch.eye(dim, dtype=torch.float64, device=device)
    rhs = torch.randn(dim, 2048, generator=gen, dtype=torch.float64).to(device)
    factor = torch.linalg.cholesky(spd)
    kernels = {
        "scatter": (lambda: block.T @ block, 2.0 * 2048 * dim**2),
        "factor": (lambda: torch.linalg.cholesky_ex(spd), dim**3 / 3.0),
        "solve": (lambda: torch.linalg.solve_triangular(factor, rhs, upper=False), 2048.0 * dim**2),
    }
    rates = {}
    for name, (kernel, flops) in kernels.items():
        best = math.inf
        for _ in range(repeats):
            _synchronise(device)
            start = time.perf_counter()
            kernel()
            _synchronise(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = flops / best
    return rates


def predict_seconds(flops: dict[str, float], rates: dict[str, float]) -> dict[str, float]:
    """`fit_s` and `score_s` from `work_flops` and `kernel_rates`."""
    seconds = {key: value / rates[key.split("_")[1]] for key, value in flops.items()}
    return {
        "fit_s": sum(v for k, v in seconds.items() if k.startswith("fit")),
        "score_s": sum(v for k, v in seconds.items() if k.startswith("score")),
    }


def parse_counts(text: str) -> tuple[int, int]:
    try:
        train, test = (int(part) for part in text.split(","))
    except ValueError:
        raise UserError(
            f"--extrapolate-to expects TRAIN,TEST sample counts such as 1281167,52000, got {text!r}."
        ) from None
    if train < 1 or test < 1:
        raise UserError(f"--extrapolate-to needs positive counts, got {text!r}.")
    return train, test


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def run_case(args) -> dict:
    """One implementation on one shape in this process: fit and score times, jitter, peak memory."""
    dim, classes = parse_shapes(args.worker.split(":")[1])[0]
    name = args.worker.split(":")[0]
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train, labels, test = make_features(dim, classes, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronise(device)
    baseline = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else _peak_bytes(device)
    start = time.perf_counter()
    class_chunk = None
    if name == "ours":
        model = fit_class_gaussians(train, labels, classes, class_chunk=args.class_chunk)
        jitter, class_chunk = model.jitter, model.class_chunk
    else:
        model, jitter = original_fit(train, labels, classes, args.jitter), args.jitter
    _synchronise(device)
    fit_s = time.perf_counter() - start
    score_s = None
    if not args.no_score:
        start = time.perf_counter()
        if name == "ours":
            log_densities = class_log_densities(model, test)
        else:
            log_densities = original_score(model, test, args.original_batch_size)
        _synchronise(device)
        score_s = time.perf_counter() - start
        if args.save:
            torch.save(log_densities.cpu(), args.save)
    peak = _peak_bytes(device)
    extra = {}
    if name == "ours" and args.extrapolate_to:
        rates = kernel_rates(dim, device)
        target_train, target_test = parse_counts(args.extrapolate_to)
        extra = {
            "rates_gflops": {key: value / 1e9 for key, value in rates.items()},
            "predicted_here": predict_seconds(
                work_flops(dim, classes, args.train_samples, args.test_samples), rates
            ),
            "extrapolated_to": {"train_samples": target_train, "test_samples": target_test},
            "extrapolated": predict_seconds(work_flops(dim, classes, target_train, target_test), rates),
        }
    return {
        "implementation": name,
        "features": dim,
        "classes": classes,
        "train_samples": args.train_samples,
        "test_samples": args.test_samples,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "fit_s": fit_s,
        "score_s": score_s,
        "jitter": jitter,
        "peak_gib": peak / GIB,
        "peak_above_data_gib": (peak - baseline) / GIB,
        "covariances_gib": classes * dim * dim * 8 / GIB,
        "class_chunk": class_chunk,
        **extra,
    }


def _spawn(args, name: str, dim: int, classes: int, jitter: float | None, save: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.gmm", "--worker", f"{name}:{dim}x{classes}"]
    command += ["--device", args.device, "--seed", str(args.seed), "--save", str(save)]
    command += ["--train-samples", str(args.train_samples), "--test-samples", str(args.test_samples)]
    command += ["--original-batch-size", str(args.original_batch_size)]
    if args.no_score:
        command.append("--no-score")
    if args.class_chunk is not None:
        command += ["--class-chunk", str(args.class_chunk)]
    if args.extrapolate_to:
        command += ["--extrapolate-to", args.extrapolate_to]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if jitter is not None:
        command += ["--jitter", repr(jitter)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{name} at {dim}x{classes} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def _check_args(args) -> list[str]:
    names = [name.strip() for name in args.implementations.split(",") if name.strip()]
    unknown = sorted(set(names) - set(IMPLEMENTATIONS))
    if unknown or not names:
        raise UserError(
            f"--implementations takes {', '.join(IMPLEMENTATIONS)}; got {args.implementations!r}."
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda needs a GPU that torch can see; use --device cpu on this machine.")
    if args.extrapolate_to:
        parse_counts(args.extrapolate_to)
    if args.class_chunk is not None and args.class_chunk < 1:
        raise UserError(f"--class-chunk needs at least 1 class, got {args.class_chunk}.")
    if args.train_samples < 2 or args.test_samples < 1 or args.repeats < 1 or args.original_batch_size < 1:
        raise UserError(
            "--train-samples needs at least 2; --test-samples, --repeats and batch sizes at least 1."
        )
    return sorted(names, key=IMPLEMENTATIONS.index)  # ours first: the original takes its jitter


def _range(values: list[float | None], digits: int = 1) -> str:
    if None in values:
        return "-"
    low, high = min(values), max(values)
    return (
        f"{low:.{digits}f}"
        if f"{low:.{digits}f}" == f"{high:.{digits}f}"
        else f"{low:.{digits}f}-{high:.{digits}f}"
    )


SUMMARY_HEADERS = (
    "features x classes", "implementation", "fit (s)", "score (s)", "peak memory (GiB)",
    "peak above the features (GiB)", "covariances (GiB)", "jitter",
)  # fmt: skip


def summarise(records: list[dict]) -> list[str]:
    """Markdown table: per shape and implementation, the range over repeats."""
    keys = sorted({(r["features"], r["classes"], r["implementation"]) for r in records if "fit_s" in r})
    table = []
    for dim, classes, name in keys:
        rows = [
            r
            for r in records
            if (r.get("features"), r.get("classes"), r.get("implementation")) == (dim, classes, name)
        ]
        table.append([
            f"{dim} x {classes}", name, _range([r["fit_s"] for r in rows]), _range([r["score_s"] for r in rows]),
            _range([r["peak_gib"] for r in rows], 2), _range([r["peak_above_data_gib"] for r in rows], 2),
            f"{rows[0]['covariances_gib']:.2f}", f"{rows[0]['jitter']:.3g}",
        ])  # fmt: skip
    return markdown_table(SUMMARY_HEADERS, table).splitlines()


@exit_on_user_error
def main(args) -> list[dict]:
    if args.worker:
        record = run_case(args)
        print(json.dumps(record), flush=True)
        return [record]
    names = _check_args(args)
    shapes = parse_shapes(args.shapes)
    records, jitters = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for dim, classes in shapes:
                saved = {}
                # Every other repeat runs the original first, so a drift in the machine's load favours neither.
                order = names if repeat % 2 == 0 or (dim, classes) not in jitters else names[::-1]
                for name in order:
                    if name == "original" and (dim, classes) not in jitters:  # the original alone
                        train, labels, _ = make_features(dim, classes, args, torch.device(args.device))
                        jitters[dim, classes] = fit_class_gaussians(train, labels, classes).jitter
                        del train, labels
                    saved[name] = Path(scratch) / f"{name}.pt"
                    record = _spawn(args, name, dim, classes, jitters.get((dim, classes)), saved[name])
                    record["repeat"] = repeat
                    jitters[dim, classes] = record["jitter"]
                    print(json.dumps(record), flush=True)
                    records.append(record)
                if len(saved) == 2 and not args.no_score:
                    ours, original = (torch.load(saved[name], weights_only=True) for name in IMPLEMENTATIONS)
                    difference = ((ours - original).abs() / original.abs().clamp_min(1e-300)).max().item()
                    comparison = {"features": dim, "classes": classes, "repeat": repeat}
                    comparison["max_relative_difference"] = difference if math.isfinite(difference) else None
                    print(json.dumps(comparison), flush=True)
                    records.append(comparison)
    print("\n".join(summarise(records)))
    for record in records:
        if "extrapolated" in record:
            here, there = record["predicted_here"], record["extrapolated"]
            print(
                f"{record['features']} x {record['classes']}: measured fit {record['fit_s']:.1f} s, score "
                f"{record['score_s'] or 0:.1f} s (predicted {here['fit_s']:.1f} s, {here['score_s']:.1f} s); at "
                f"{record['extrapolated_to']['train_samples']:,} / {record['extrapolated_to']['test_samples']:,} "
                f"samples: fit {there['fit_s']:.0f} s, score {there['score_s']:.0f} s"
            )
    if args.json:
        atomic_write_json(Path(args.json), records)
    return records


if __name__ == "__main__":
    main(get_args_parser().parse_args())
