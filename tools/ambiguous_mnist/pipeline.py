"""The generator's command line and its pipeline: `generate` runs the stages in order, one function each
(`python -m tools.ambiguous_mnist`, see the package docstring for the commands)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import net
from data.sources import amnist_train_pairs, load_split
from tools.ambiguous_mnist.candidates import draw_labels, generate_split
from tools.ambiguous_mnist.classifiers import Ensemble, build_ensemble
from tools.ambiguous_mnist.report import (
    build_manifest,
    evaluate_quality,
    label_entropy_summary,
    run_settings,
    write_files,
)
from tools.ambiguous_mnist.shared import (
    GRID_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    NUM_CLASSES,
    SAMPLES_FILE,
    SEED_CANDIDATES,
    SEED_ENSEMBLE,
    SEED_EVAL,
    SEED_LABELS,
    SEED_SPLIT,
    SEED_VAE,
)
from tools.ambiguous_mnist.vae import ConvVAE, train_vae
from utils.device import autocast_context, resolve_precision
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write_json, check_writable_dir, read_json
from utils.seed import seed_everything
from utils.validation import check_count, check_number

log = logging.getLogger(__name__)

# Every file a run writes; the first two are also the released set's names (`data.sources.AMNIST_FILES`).
OUTPUT_FILES = (SAMPLES_FILE, LABELS_FILE, MANIFEST_FILE, GRID_FILE)


def load_mnist(root: Path, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST `split` as float images `(N, 1, 28, 28)` in [0, 1] and int64 labels `(N,)` on `device`.

    Missing files end in the data package's one-sentence `UserError`, which names this command's
    `--mnist-root`.
    """
    images, labels = load_split("mnist", root, split, root_flag="--mnist-root")
    return images.to(device=device, dtype=torch.float32).div_(255), labels.to(device)


def random_subset(
    images: torch.Tensor, labels: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits in a seeded random order, cut to the first `size` (0 = all): the order also decides
    which half of the digits feeds the training samples and which the test samples."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    if size:
        order = order[:size]
    order = order.to(images.device)
    return images[order], labels[order]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ambiguous_mnist",
        description="Generate Ambiguous-MNIST (this project's regeneration) from MNIST.",
        add_help=add_help,
    )
    parser.add_argument(
        "--mnist-root",
        "--dataset-root",
        dest="mnist_root",
        type=Path,
        default=Path("data"),
        help="folder holding MNIST/raw/*-ubyte[.gz] (the suite's --dataset-root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder; default --mnist-root, where the dirty_mnist loader looks",
    )
    parser.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replace a set already in --out (generated, or the released files); without it the run "
        "stops before training, so a finished set is never lost by a rerun",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of every stage. Rerunning with the same seed and --num-threads on the same machine (same CPU "
        "instruction set, e.g. AVX-512) with the same library build (torch, MKL, oneDNN) gives byte-identical "
        "files; another thread count, instruction set or library version changes float rounding in training, "
        "which gives other samples of the same quality, not the same files",
    )
    parser.add_argument(
        "--train",
        type=int,
        default=6000,
        help="training samples; 6000 x 10 labels = the 60,000 pairs the loader's train split "
        "takes, as in the released set",
    )
    parser.add_argument("--test", type=int, default=6000, help="test samples (after the training ones)")
    parser.add_argument(
        "--labels-per-sample", type=int, default=10, help="labels drawn per sample (released: 10)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="'cpu', 'cuda', 'cuda:1', ...; default: CUDA if available. Byte-identical reruns are promised "
        "on the CPU only (see --seed for what must stay the same); GPU kernels may round differently per run",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="bf16 autocast for the VAE and the classifiers (default on a GPU and on a CPU with native bf16) "
        "or fp32; byte-identical reruns need the same choice",
    )
    parser.add_argument(
        "--max-mnist",
        type=int,
        default=0,
        help="use only this many MNIST training digits (a seeded random subset) for the VAE, "
        "the classifiers and the sources (and another subset for --evaluate's classifier); "
        "0 = all 60,000. For quick runs",
    )
    _add_vae_args(parser)
    _add_ensemble_args(parser)
    _add_selection_args(parser)
    _add_evaluation_args(parser)
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="CPU threads for torch; 0 keeps torch's default (all cores, so the files then depend on the core "
        "count). On a CPU shared with other jobs, 1 can be several times faster than oversubscribed cores. "
        "Files are byte-identical only for the same thread count (see --seed)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars; default: only when writing to a terminal",
    )
    return parser


def _add_vae_args(parser: argparse.ArgumentParser) -> None:
    """Stage 1: the VAE whose latent space the candidates are mixed in."""
    group = parser.add_argument_group("VAE")
    group.add_argument("--vae-epochs", type=int, default=10, help="passes over the digits")
    group.add_argument(
        "--vae-latent",
        type=int,
        default=16,
        help="latent size; small keeps interpolations on the digit manifold, large sharpens them",
    )
    group.add_argument("--vae-batch-size", type=int, default=128, help="mini-batch size")
    group.add_argument("--vae-lr", type=float, default=1e-3, help="Adam learning rate")


def _add_ensemble_args(parser: argparse.ArgumentParser) -> None:
    """Stage 2: the classifiers that judge the candidates."""
    group = parser.add_argument_group("ensemble")
    group.add_argument(
        "--ensemble-size", type=int, default=5, help="classifiers (at least 3, different seeds)"
    )
    group.add_argument(
        "--classifier-model",
        default="lenet",
        help="a name from the net registry; LeNet is fast and accurate enough on MNIST",
    )
    group.add_argument("--classifier-epochs", type=int, default=3, help="passes over the digits per member")
    group.add_argument("--classifier-batch-size", type=int, default=128, help="mini-batch size")
    group.add_argument("--classifier-lr", type=float, default=1e-3, help="Adam learning rate")


def _add_selection_args(parser: argparse.ArgumentParser) -> None:
    """Stage 3: how candidates are mixed and which are kept."""
    group = parser.add_argument_group("candidates and selection")
    group.add_argument(
        "--triple-fraction",
        type=float,
        default=0.5,
        help="share of candidates mixing 3 classes instead of 2 (3-way ambiguity gives label "
        "entropy above log 2)",
    )
    group.add_argument(
        "--mix-concentration",
        type=int,
        default=3,
        help="integer Dirichlet concentration of the mixing weights; larger = nearer the middle",
    )
    group.add_argument(
        "--min-entropy",
        type=float,
        default=0.6,
        help="keep candidates whose ensemble predictive entropy (nats) is at least this; the default 0.6 is "
        "about a 70/30 split of two classes (0.611): lower admits nearly certain digits, higher needs more "
        "candidates",
    )
    group.add_argument(
        "--max-mi",
        type=float,
        default=0.1,
        help="keep candidates whose ensemble mutual information (nats) is at most this: the members must "
        "agree that the digit is ambiguous (disagreement is epistemic, not aleatoric, uncertainty)",
    )
    group.add_argument(
        "--density-quantile",
        type=float,
        default=0.05,
        help="keep candidates whose feature log-density is above this quantile of MNIST's "
        "own; 0 switches the density filter off",
    )
    group.add_argument(
        "--candidate-batch", type=int, default=8192, help="candidates decoded and scored at once"
    )
    group.add_argument(
        "--max-candidates-per-sample",
        type=int,
        default=200,
        help="give up (with an error) after this many candidates per requested sample",
    )
    group.add_argument("--grid-columns", type=int, default=16, help="samples per class in the PNG grid")


def _add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    """The independent quality check."""
    group = parser.add_argument_group("independent evaluation")
    group.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after generating, train an independent classifier on clean MNIST and record the "
        "entropy AUROC of generated test samples versus MNIST test digits in the manifest",
    )
    group.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip generation; evaluate the test samples already in --out (the loader's split: after the "
        "manifest's train_pairs, else after the released first 60,000 pairs); never refused by existing files",
    )
    group.add_argument(
        "--eval-model", default="resnet18", help="independent classifier from the net registry"
    )
    group.add_argument(
        "--eval-base-width",
        type=int,
        default=8,
        help="base width when --eval-model is a ResNet (8 keeps it fast on a CPU)",
    )
    group.add_argument(
        "--eval-epochs", type=int, default=2, help="passes over MNIST for the independent classifier"
    )


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, checked before anything is read or written: a bad one ends in one sentence."""
    for flag, value in (
        ("--train", args.train), ("--test", args.test), ("--labels-per-sample", args.labels_per_sample),
        ("--vae-epochs", args.vae_epochs), ("--vae-latent", args.vae_latent),
        ("--vae-batch-size", args.vae_batch_size), ("--classifier-epochs", args.classifier_epochs),
        ("--classifier-batch-size", args.classifier_batch_size), ("--mix-concentration", args.mix_concentration),
        ("--candidate-batch", args.candidate_batch), ("--max-candidates-per-sample", args.max_candidates_per_sample),
        ("--grid-columns", args.grid_columns), ("--eval-epochs", args.eval_epochs),
        ("--eval-base-width", args.eval_base_width),
    ):  # fmt: skip
        check_count(value, flag)
    check_count(
        args.ensemble_size, "--ensemble-size", at_least=3, hint="mutual information needs several members"
    )
    check_count(args.num_threads, "--num-threads", at_least=0)
    if args.max_mnist != 0:
        check_count(args.max_mnist, "--max-mnist", at_least=100, hint="or 0 for all 60,000 digits")
    for flag, value in (("--vae-lr", args.vae_lr), ("--classifier-lr", args.classifier_lr)):
        check_number(value, flag, above=0)
    check_number(args.triple_fraction, "--triple-fraction", at_least=0, at_most=1)
    check_number(args.density_quantile, "--density-quantile", at_least=0, below=1)
    check_number(args.min_entropy, "--min-entropy", at_least=0, hint="a predictive entropy in nats")
    check_number(args.max_mi, "--max-mi", at_least=0, hint="a mutual information in nats")
    for flag, name in (("--classifier-model", args.classifier_model), ("--eval-model", args.eval_model)):
        if name not in net.list_models():
            raise UserError(f"unknown {flag} '{name}'; choose one of: {', '.join(net.list_models())}")


def _resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def _with_precision(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """A copy of `args` with `--precision` resolved for `device`, so the manifest records what ran."""
    args = argparse.Namespace(**vars(args))
    args.precision = resolve_precision(device, args.precision)[0]
    return args


def _numerics(device: torch.device, args: argparse.Namespace):
    """The autocast context of every network stage, at the resolved `args.precision`."""
    return autocast_context(device, args.precision)


def _eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"base_width": args.eval_base_width} if args.eval_model.startswith("resnet") else {}


class _StageClock:
    """Wall-clock seconds of each stage, in the order run, and the total since the clock was made."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - started

    def summary(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {k: round(v, 1) for k, v in {**self.seconds, "total": total}.items()}


def check_no_existing_set(out: Path) -> None:
    """Refuse to write into `out` when it already holds any file of a set (ours or the released one):
    hours of generation, or the released files, would otherwise be replaced without a word."""
    found = [name for name in OUTPUT_FILES if (out / name).exists()]
    if found:
        raise UserError(
            f"'{out}' already holds {', '.join(found)}; pass --overwrite to replace them, or choose another "
            "--out (--evaluate-only re-checks existing files without replacing them)"
        )


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline; writes the four files into `args.out` and returns the manifest."""
    check_args(args)
    device = _resolve_device(args.device)
    args = _with_precision(args, device)
    out = args.out if args.out is not None else args.mnist_root
    if not args.overwrite:
        check_no_existing_set(out)
    seed_everything(args.seed)
    clock = _StageClock()
    with clock("load"):
        # MNIST first: a wrong --mnist-root should not leave a new empty output folder behind.
        mnist_train = load_mnist(args.mnist_root, "train", device)
        out = check_writable_dir(out)
        images, labels = random_subset(*mnist_train, args.max_mnist, args.seed + SEED_SPLIT)
    with clock("vae"), _numerics(device, args):
        vae, vae_neg_elbo = _vae_stage(images, args)
    with clock("ensemble"), _numerics(device, args):
        ensemble = _ensemble_stage(images, labels, args)
    with clock("generation"), _numerics(device, args):
        samples, probs, candidates = _candidate_stage(vae, ensemble, images, labels, args)
        multi_labels = draw_labels(
            probs, args.labels_per_sample, torch.Generator().manual_seed(args.seed + SEED_LABELS)
        )
    write_files(out, samples, multi_labels, args.grid_columns)
    manifest = build_manifest(
        args,
        device=device,
        probs=probs,
        labels=multi_labels,
        vae_neg_elbo=vae_neg_elbo,
        log_density_threshold=ensemble.log_density_threshold,
        candidates=candidates,
    )
    if args.evaluate:
        with clock("evaluate"), _numerics(device, args):
            manifest["quality"] = _quality_check(samples[args.train :].to(device), mnist_train, args, device)
    manifest["time_s"] = clock.summary()
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def _vae_stage(images: torch.Tensor, args: argparse.Namespace) -> tuple[ConvVAE, float]:
    """Stage 1: the VAE on the digits `(N, 1, 28, 28)`; returns it and its final negative ELBO."""
    return train_vae(
        images,
        epochs=args.vae_epochs,
        latent_dim=args.vae_latent,
        batch_size=args.vae_batch_size,
        lr=args.vae_lr,
        seed=args.seed + SEED_VAE,
        progress=args.progress,
    )


def _ensemble_stage(images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> Ensemble:
    """Stage 2: the classifiers, their feature Gaussians and the density threshold."""
    return build_ensemble(
        images,
        labels,
        size=args.ensemble_size,
        model_name=args.classifier_model,
        epochs=args.classifier_epochs,
        batch_size=args.classifier_batch_size,
        lr=args.classifier_lr,
        density_quantile=args.density_quantile,
        seed=args.seed + SEED_ENSEMBLE,
        progress=args.progress,
    )


def _candidate_stage(
    vae: ConvVAE, ensemble: Ensemble, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Stage 3: `args.train` then `args.test` kept samples -> samples `(N, 1, 28, 28)` float32 in [0, 1],
    the ensemble's mean softmax `(N, C)` and the candidate counts per split.

    The source digits are disjoint: the first half of the (already shuffled) subset feeds the training
    samples, the second half the test samples.
    """
    with torch.no_grad():
        codes = torch.cat([vae.encode(chunk)[0] for chunk in images.split(4096)])
    half = len(images) // 2
    generator = torch.Generator().manual_seed(args.seed + SEED_CANDIDATES)
    split_samples, split_probs, split_stats = [], [], {}
    for name, part, target in (("train", slice(0, half), args.train), ("test", slice(half, None), args.test)):
        samples, probs, split_stats[name] = generate_split(
            vae,
            ensemble,
            codes[part],
            labels[part].cpu(),
            target,
            generator=generator,
            min_entropy=args.min_entropy,
            max_mi=args.max_mi,
            triple_fraction=args.triple_fraction,
            concentration=args.mix_concentration,
            candidate_batch=args.candidate_batch,
            max_candidates=args.max_candidates_per_sample * target,
            name=name,
            progress=args.progress,
            training_steps=(
                args.vae_epochs * math.ceil(len(images) / args.vae_batch_size),
                args.classifier_epochs * math.ceil(len(images) / args.classifier_batch_size),
            ),
        )
        split_samples.append(samples)
        split_probs.append(probs)
    samples = torch.cat(split_samples).to(torch.float32).clamp_(0.0, 1.0).contiguous()
    return samples, torch.cat(split_probs), split_stats


def _quality_check(
    generated_test: torch.Tensor,
    mnist_train: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """`report.evaluate_quality` with the command line's classifier, on its own subset of the MNIST
    training digits and on MNIST's test split."""
    return evaluate_quality(
        generated_test,
        random_subset(*mnist_train, args.max_mnist, args.seed + SEED_EVAL),
        load_mnist(args.mnist_root, "test", device),
        model_name=args.eval_model,
        epochs=args.eval_epochs,
        seed=args.seed + SEED_EVAL,
        progress=args.progress,
        **_eval_kwargs(args),
    )


def evaluate_existing(args: argparse.Namespace) -> dict[str, Any]:
    """`--evaluate-only`: the independent check on files already in `--out` (ours or the released ones)."""
    device = _resolve_device(args.device)
    args = _with_precision(args, device)
    out = args.out if args.out is not None else args.mnist_root
    paths = [out / SAMPLES_FILE, out / LABELS_FILE]
    if not all(p.is_file() for p in paths):
        raise UserError(f"expected {SAMPLES_FILE} and {LABELS_FILE} in '{out}'; generate them first")
    samples = torch.load(paths[0], map_location="cpu", weights_only=True)
    labels = torch.load(paths[1], map_location="cpu", weights_only=True)
    # The loader's split, so a broken manifest ends here in the same sentence as in training.
    first_test = amnist_train_pairs(out, labels.numel()) // labels.shape[1]
    manifest_path = out / MANIFEST_FILE
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    seed_everything(args.seed)
    with _numerics(device, args):
        quality = _quality_check(
            samples[first_test:].to(device=device, dtype=torch.float32),
            load_mnist(args.mnist_root, "train", device),
            args,
            device,
        )
    quality["label_entropy_test"] = label_entropy_summary(
        F.one_hot(labels[first_test:], NUM_CLASSES).double().mean(dim=1), labels[first_test:]
    )["empirical"]
    if manifest:
        manifest["quality"] = quality
        atomic_write_json(manifest_path, manifest)
    return quality


@exit_on_user_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    log.info("%s", json.dumps(run_settings(args), sort_keys=True))
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        result = evaluate_existing(args) if args.evaluate_only else generate(args)
    finally:
        torch.set_num_threads(threads)
    log.info("%s", json.dumps({k: result[k] for k in ("quality", "time_s", "candidates") if k in result}))
    return result
