"""Figures of the paper, importable and usable without Jupyter.

* Fig. 1: per model, the density of softmax entropy and of feature log-density for Dirty-MNIST test samples
  (MNIST and Ambiguous-MNIST) and an OoD set (Fashion-MNIST).
* Fig. 2: softmax entropy of MNIST versus Ambiguous-MNIST test samples.
* Active learning: test accuracy versus number of labelled samples (mean and standard-error band over runs),
  and the fraction of ambiguous samples acquired.
* Two moons: maps of softmax entropy and of feature density over the plane (the model is in `tools.two_moons`).
* Training curves: loss, accuracy and validation accuracy per epoch from train.py's `{name}_log.jsonl`, for
  several runs (or ensemble members) at once.

Command line (writes PNGs; a checkpoint is LABEL=MODEL:FLAGS:PATH, FLAGS a comma list of `sn`, `mod` and size
overrides such as `base_width=8`, possibly empty):

    python -m tools.plots fig1 --dataset-root DATA --out fig1.png --fig2-out fig2.png \
        --checkpoint "LeNet=lenet::runs/lenet_1_350.model" \
        --checkpoint "ResNet-18+SN=resnet18:sn,mod:runs/resnet18_sn_3.0_mod_1_350.model"
    python -m tools.plots al --out al.png \
        --curve "DDU=results/test_accs_resnet18_sn_3.0_mod_1_gmm_mnist.json" --curve ...
    python -m tools.plots curves runs/Run1/*_log.jsonl --out curves.png         # or LABEL=PATH per log
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from utils.errors import UserError, exit_on_user_error, starting_up

with starting_up(__name__):  # PyTorch takes seconds and much memory to load: a failure is one sentence
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    import data
    from engine.evaluation import dirty_scores
    from engine.network_flags import ARCH_FLAGS, MODEL_FLAGS, check_network_flags
    from engine.networks import RunFailedError, load_network
    from engine.result_tables import curve_standard_errors
    from utils.device import select_device
    from utils.io import atomic_savefig
    from utils.validation import check_count, check_number

GROUP_COLOURS = {"clean": "tab:blue", "ambiguous": "tab:orange", "ood": "tab:green"}
# How the figures name data sets: the dirty sets' (clean, ambiguous) parts, and every set used as OoD.
DIRTY_DISPLAY = {"dirty_mnist": ("MNIST", "Ambiguous-MNIST"), "digits": ("clean digits", "ambiguous digits")}
DISPLAY = {
    "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
    "svhn": "SVHN", "tiny_imagenet": "Tiny-ImageNet", "digits_ood": "photo patches",
}  # fmt: skip
# Histogram x-axes span the first group's 1-99% range widened this many times its width on each side.
AXIS_WIDEN = 5.0


def group_names(dataset: str, ood: str) -> dict[str, str]:
    """Legend names of the 'clean', 'ambiguous' and 'ood' groups of
    `engine.evaluation.dirty_scores(..., dataset, ood, ...)`."""

    dataset, ood = data.canonical_name(dataset), data.canonical_name(ood)
    clean, ambiguous = DIRTY_DISPLAY.get(dataset, (f"{dataset} (clean)", f"{dataset} (ambiguous)"))
    return {"clean": clean, "ambiguous": ambiguous, "ood": DISPLAY.get(ood, ood)}


def _axis_range(groups: list[np.ndarray]) -> tuple[float, float]:
    """Histogram range: the first group's 1-99% range widened `AXIS_WIDEN` times each side, cut to the data.

    OoD log-densities can lie 1e7 below the in-distribution ones (LeNet on photo patches): a linear axis over
    all values would squash every other group into one bin. Values outside are drawn in the edge bins.
    """
    pooled = np.concatenate(groups)
    if pooled.size == 0:
        return 0.0, 1.0
    reference = groups[0] if groups[0].size else pooled
    low, high = np.percentile(reference, [1, 99])
    width = high - low
    low, high = max(pooled.min(), low - AXIS_WIDEN * width), min(pooled.max(), high + AXIS_WIDEN * width)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


def _density_hist(ax, values: dict[str, np.ndarray], colours: dict[str, str], xlabel: str) -> None:
    """Overlaid normalised histograms per group; the legend says how much of a group lies off the axis."""
    finite = {label: v[np.isfinite(v)] for label, v in values.items()}
    low, high = _axis_range(list(finite.values()))
    bins = np.linspace(low, high, 50)
    for label, v in finite.items():
        below, above = np.mean(v < low) if v.size else 0.0, np.mean(v > high) if v.size else 0.0
        notes = ([f"{below:.1%} < {low:.4g}"] if below else []) + (
            [f"{above:.1%} > {high:.4g}"] if above else []
        )
        text = f"{label} ({', '.join(notes)}, at the edge)" if notes else label
        ax.hist(np.clip(v, low, high), bins=bins, density=True, alpha=0.5, color=colours[label], label=text)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def _save(fig, out: str | Path | None) -> None:
    """Write `fig` to `out` atomically (`utils.io.atomic_savefig`): a failed write keeps the previous figure.

    The messages name the file, not a flag: callers other than `main` (the demo, the experiments) have their
    own flags, and `main` checks its --out and --fig2-out before computing anything (`check_figure_path`).
    """
    if out is None:
        return
    out = Path(out)
    try:
        atomic_savefig(fig, out, dpi=110)
    except ValueError:  # matplotlib knows no such format
        raise UserError(
            f"cannot write a figure as '{out.suffix or out.name}' ('{out}'); name a file ending in .png, .pdf "
            "or .svg"
        ) from None


def check_figure_path(flag: str, out: str | Path | None) -> None:
    """Refuse, before any work, a figure file `out` (given as `flag`) of a format Matplotlib cannot write or
    in a folder that cannot be made or written (the nearest existing folder above it is a file, say)."""
    from matplotlib.backend_bases import FigureCanvasBase

    if out is None:
        return
    out = Path(out)
    if out.suffix[1:].lower() not in FigureCanvasBase.get_supported_filetypes():
        raise UserError(
            f"cannot write a figure as '{out.suffix or out.name}' ('{out}'); pass a {flag} ending in .png, .pdf "
            "or .svg"
        )
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(
            f"cannot write the figure '{out}' ('{existing}' is not a writable folder); pass a {flag} in a "
            "writable folder"
        )


def plot_fig1(
    scores: dict[str, dict[str, dict[str, np.ndarray]]],
    group_names: dict[str, str] | None = None,
    out: str | Path | None = None,
    title: str = "",
):
    """The paper's Fig. 1: one row per model, softmax entropy (left) and feature log-density (right).

    `scores[model][group] = {"entropy": (N,), "log_density": (N,)}`, groups 'clean', 'ambiguous' and 'ood'
    (`engine.evaluation.dirty_scores` output). `group_names` maps groups to legend names (default:
    Dirty-MNIST's parts and Fashion-MNIST; `group_names(dataset, ood)` gives them for any pair).
    """
    names = group_names or {"clean": "MNIST", "ambiguous": "Ambiguous-MNIST", "ood": "Fashion-MNIST"}
    fig, axes = plt.subplots(
        len(scores), 2, figsize=(10, 3.2 * len(scores) + (0.4 if title else 0)), squeeze=False
    )
    for row, (model_name, groups) in enumerate(scores.items()):
        colours = {names[g]: GROUP_COLOURS[g] for g in groups}
        for col, (key, label) in enumerate(
            (("entropy", "softmax entropy"), ("log_density", "feature log-density"))
        ):
            values = {names[g]: np.asarray(groups[g][key], dtype=np.float64) for g in groups}
            _density_hist(axes[row, col], values, colours, label)
            axes[row, col].set_title(f"{model_name}: {label}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out)
    return fig


def plot_fig2(
    clean_entropy: np.ndarray,
    ambiguous_entropy: np.ndarray,
    title: str = "ResNet-18+SN",
    out: str | Path | None = None,
    group_names: dict[str, str] | None = None,
):
    """Softmax entropy of MNIST versus Ambiguous-MNIST test samples (paper Fig. 2): aleatoric uncertainty."""
    names = group_names or {"clean": "MNIST", "ambiguous": "Ambiguous-MNIST"}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    _density_hist(
        ax,
        {
            names["clean"]: np.asarray(clean_entropy, dtype=np.float64),
            names["ambiguous"]: np.asarray(ambiguous_entropy, dtype=np.float64),
        },
        {names["clean"]: GROUP_COLOURS["clean"], names["ambiguous"]: GROUP_COLOURS["ambiguous"]},
        "softmax entropy",
    )
    ax.set_title(f"{title}: aleatoric uncertainty")
    fig.tight_layout()
    _save(fig, out)
    return fig


AL_JSON_EXPECTED = (
    "an object mapping run indices ('0', '1', ...) to lists of numbers per step, as active_learning.py "
    "writes in test_accs_*.json and ambiguous_*.json"
)


def load_al_runs(path: str | Path) -> np.ndarray:
    """An active-learning JSON (run -> list per step) as an array (runs, steps), cut to the shortest run.

    A file that is not such a JSON (unreadable, another structure, no runs) is a `UserError` naming it."""
    path = Path(path)

    def bad(detail: str) -> UserError:
        return UserError(f"'{path}' is not an active-learning result ({detail}); expected {AL_JSON_EXPECTED}")

    try:
        runs = json.loads(path.read_bytes())
    except OSError as err:
        raise bad(f"it cannot be read: {err.strerror}") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not text
        raise bad(f"not valid JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(runs, dict):
        raise bad(f"it holds a JSON {type(runs).__name__}")
    if not runs:
        raise bad("it holds no runs")
    lists = []
    for key, values in runs.items():
        if not key.isdigit():
            raise bad(f"the key {key!r} is not a run index")
        if not (
            isinstance(values, list)
            and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise bad(f"run {key} is not a non-empty list of numbers")
        lists.append((int(key), np.asarray(values, dtype=np.float64)))
    lists.sort(key=lambda item: item[0])
    steps = min(len(v) for _, v in lists)
    return np.stack([v[:steps] for _, v in lists])


def load_al_curves(folder: str | Path, files: dict[str, str]) -> dict[str, np.ndarray]:
    """`files[label]` names a JSON in `folder`; labels whose file is absent or empty are skipped with a note,
    so a figure can be drawn while some experiments are still missing."""
    curves = {}
    for label, name in files.items():
        path = Path(folder) / name
        if not path.is_file():
            print(f"note: skipping {label}: {path} does not exist")
            continue
        try:
            curves[label] = load_al_runs(path)
        except UserError as err:
            print(f"note: skipping {label}: {err}")
    return curves


def plot_active_learning(
    curves: dict[str, np.ndarray],
    *,
    initial: int = 20,
    batch: int = 5,
    ylabel: str = "test accuracy (%)",
    title: str = "",
    out: str | Path | None = None,
    ax=None,
    colours: dict[str, str] | None = None,
):
    """`curves[label]` is (runs, steps); x = labelled-set size `initial + step * batch`; mean and s.e. band.

    Draws into `ax` when given (to compose panels), else into a new figure; returns the figure. `colours`
    fixes a colour per label, so a method keeps its colour across figures even when some curves are absent.
    """
    colours = colours or {}
    fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    for label, values in curves.items():
        values = np.atleast_2d(values)
        x = initial + batch * np.arange(values.shape[1])
        mean = values.mean(0)
        sem = curve_standard_errors(values)
        runs = values.shape[0]
        (line,) = ax.plot(
            x, mean, color=colours.get(label), label=f"{label} ({runs} run{'s' if runs > 1 else ''})"
        )
        ax.fill_between(x, mean - sem, mean + sem, alpha=0.25, color=line.get_color(), linewidth=0)
    ax.set_xlabel("number of labelled samples")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no runs found", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    return fig


CURVE_METRICS = ("loss", "accuracy", "val_accuracy")


def load_training_log(path: str | Path) -> list[dict]:
    """train.py's `{name}_log.jsonl`: one JSON object per epoch (`epoch` from 0, `loss`, `accuracy`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the training log '{path}' does not exist; pass train.py's {{name}}_log.jsonl files")
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(
            f"'{path}' is not a JSON-lines training log; pass train.py's {{name}}_log.jsonl"
        ) from None
    if not lines or not all(isinstance(line, dict) and "epoch" in line for line in lines):
        raise UserError(f"'{path}' holds no epochs of a training log; pass train.py's {{name}}_log.jsonl")
    return lines


def plot_training_curves(
    logs: dict[str, list[dict]], *, metrics: tuple[str, ...] = CURVE_METRICS, out: str | Path | None = None
):
    """One panel per metric (x: epochs done), one line per run (`logs[label]` from `load_training_log`);
    epochs without the metric (validation runs only every few epochs) are skipped. Returns the figure."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for label, lines in logs.items():
        for ax, metric in zip(axes[0], metrics):
            points = [(line["epoch"] + 1, line[metric]) for line in lines if line.get(metric) is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o" if len(points) <= 30 else None, markersize=3, label=label)
    for ax, metric in zip(axes[0], metrics):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    return fig


def plot_two_moons(
    xx: np.ndarray,
    yy: np.ndarray,
    maps: dict[str, np.ndarray],
    points: np.ndarray,
    labels: np.ndarray,
    out: str | Path | None = None,
    ncols: int | None = None,
):
    """Maps over the plane (`maps[title]` shaped like `xx`) with the training points on top, `ncols` a row."""
    ncols = ncols or len(maps)
    nrows = -(-len(maps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (title, values) in zip(axes.flat, maps.items(), strict=False):
        image = ax.contourf(xx, yy, values, levels=30, cmap="viridis")
        ax.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="coolwarm", edgecolors="none")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(maps) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, out)
    return fig


def load_model(
    model: str,
    path: str | Path,
    dataset: str,
    *,
    sn: bool = False,
    mod: bool = False,
    coeff: float = 3.0,
    **arch,
) -> torch.nn.Module:
    """The network of a checkpoint trained on `dataset` with these flags and size overrides (`base_width`),
    in eval mode (`engine.networks.load_network`, as the scripts load theirs)."""

    unknown = sorted(set(arch) - set(ARCH_FLAGS))
    if unknown:
        raise UserError(f"unknown size overrides {unknown} for model {model}; use {', '.join(ARCH_FLAGS)}")
    flags = argparse.Namespace(model=model, sn=sn, mod=mod, coeff=coeff, **arch)
    try:
        return load_network(flags, path, dataset=dataset)
    except RunFailedError as err:  # NaN/inf weights: nothing to plot
        raise UserError(f"{err}; plot a checkpoint of a run that did not diverge") from None


def _parse_checkpoint(spec: str) -> tuple[str, str, dict, str]:
    """'LABEL=MODEL:FLAGS:PATH' -> (label, model, keyword arguments of `load_model`, path)."""
    try:
        label, rest = spec.split("=", 1)
        model, flags, path = rest.split(":", 2)
    except ValueError:
        raise UserError(
            f"--checkpoint {spec!r} is not LABEL=MODEL:FLAGS:PATH (e.g. 'SN=resnet18:sn,mod:m.model')"
        ) from None
    kwargs: dict = {}
    for flag in filter(None, flags.split(",")):
        if flag in ("sn", "mod"):
            kwargs[flag] = True
        elif "=" in flag and flag.split("=")[1].isdigit():
            key, value = flag.split("=")
            kwargs[key] = int(value)
        else:
            raise UserError(
                f"unknown flag {flag!r} in --checkpoint {spec!r}; use sn, mod or NAME=INT (base_width=8)"
            )
    return label, model, kwargs, path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    fig1 = sub.add_parser("fig1", help="Fig. 1 (and Fig. 2 for the last model) from checkpoints")
    fig1.add_argument(
        "--checkpoint", action="append", required=True, help="LABEL=MODEL:FLAGS:PATH, repeatable"
    )
    fig1.add_argument("--dataset", default="dirty_mnist", help="the dirty set the models were trained on")
    fig1.add_argument(
        "--ood-dataset",
        "--ood_dataset",
        dest="ood_dataset",
        default="fashion_mnist",
        help="out-of-distribution set",
    )
    fig1.add_argument("--dataset-root", default="./", help="folder holding the data sets")
    fig1.add_argument("--coeff", type=float, default=3.0, help="--coeff the SN models were trained with")
    fig1.add_argument(
        "--base-width",
        type=int,
        default=None,
        help="ResNet width used in training, if reduced (or base_width=N in a checkpoint's FLAGS)",
    )
    fig1.add_argument("--no-gpu", action="store_true", help="compute on the CPU even if a GPU is available")
    fig1.add_argument("--out", default="fig1.png", help="PNG of Fig. 1")
    fig1.add_argument("--fig2-out", default=None, help="also write Fig. 2 for the last checkpoint here")
    al = sub.add_parser("al", help="active-learning curves from JSON files")
    al.add_argument("--curve", action="append", required=True, help="LABEL=PATH.json, repeatable")
    al.add_argument(
        "--initial",
        type=int,
        default=20,
        help="labelled-set size of the first value: --num-initial-samples for test_accs_*.json, that plus "
        "--acquisition-batch-size for ambiguous_*.json (measured after each acquisition)",
    )
    al.add_argument(
        "--batch", type=int, default=5, help="samples acquired per step (--acquisition-batch-size)"
    )
    al.add_argument("--ylabel", default="test accuracy (%)", help="e.g. 'fraction of ambiguous samples'")
    al.add_argument("--title", default="")
    al.add_argument("--out", default="al.png", help="PNG to write")
    curves = sub.add_parser("curves", help="training curves from train.py's JSON-lines logs")
    curves.add_argument("logs", nargs="+", help="{name}_log.jsonl files, or LABEL=PATH (label: the run name)")
    curves.add_argument(
        "--metric",
        action="append",
        default=None,
        help=f"a key of the log to plot, repeatable (default: {', '.join(CURVE_METRICS)})",
    )
    curves.add_argument("--out", default="curves.png", help="PNG to write")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, checked before anything is read or written: a bad one ends in one sentence."""
    check_figure_path("--out", args.out)
    check_figure_path("--fig2-out", getattr(args, "fig2_out", None))
    if args.figure == "al":
        check_count(args.initial, "--initial", at_least=0)
        check_count(args.batch, "--batch")
        for spec in args.curve:
            label, sep, path = spec.partition("=")
            if not sep or not label or not path:
                raise UserError(
                    f"--curve {spec!r} should be LABEL=PATH with PATH an active-learning JSON file"
                )
            if not Path(path).is_file():
                raise UserError(
                    f"--curve {spec!r}: '{path}' does not exist; it should be an active-learning JSON file"
                )
        return
    if args.figure == "curves":
        for spec in args.logs:
            label, sep, path = spec.partition("=")
            path = path if sep else spec
            if sep and not label:
                raise UserError(f"{spec!r} should be LOG or LABEL=LOG with LOG a train.py JSON-lines log")
            if not Path(path).is_file():
                raise UserError(
                    f"the training log '{path}' does not exist; pass train.py's {{name}}_log.jsonl files"
                )
        return
    check_number(args.coeff, "--coeff", above=0)
    if args.base_width is not None:
        check_count(args.base_width, "--base-width")
    for spec in args.checkpoint:
        label, model, kwargs, path = _parse_checkpoint(spec)
        where = f"in --checkpoint {spec!r}"
        flags = {
            **MODEL_FLAGS,
            "model": f"MODEL {where}",
            **{name: f"{name}= {where}" for name in ARCH_FLAGS},
        }
        unknown = sorted(set(kwargs) - {"sn", "mod", *ARCH_FLAGS})
        if unknown:
            raise UserError(f"unknown size override {unknown[0]}= {where}; use {', '.join(ARCH_FLAGS)}")
        check_network_flags(model, args.coeff, {name: kwargs.get(name) for name in ARCH_FLAGS}, flags)
        if not Path(path).is_file():
            raise UserError(f"the checkpoint '{path}' {where} does not exist; check its PATH")


@exit_on_user_error
def main(args: argparse.Namespace) -> None:
    check_args(args)
    matplotlib.use("Agg")  # the command line only writes files; importers (notebooks) keep their backend
    if args.figure == "curves":
        logs = {}
        for spec in args.logs:
            label, sep, path = spec.partition("=")
            if not sep:
                label, path = Path(spec).name.removesuffix(".jsonl").removesuffix("_log"), spec
            logs[label] = load_training_log(path)
        plot_training_curves(logs, metrics=tuple(args.metric or CURVE_METRICS), out=args.out)
        print(f"wrote {args.out}")
        return
    if args.figure == "al":
        curves = {}
        for spec in args.curve:
            label, _, path = spec.partition("=")
            curves[label] = load_al_runs(path)
        plot_active_learning(
            curves, initial=args.initial, batch=args.batch, ylabel=args.ylabel, title=args.title, out=args.out
        )
        print(f"wrote {args.out}")
        return

    device = select_device(args.no_gpu)
    scores = {}
    for spec in args.checkpoint:
        label, model_name, kwargs, path = _parse_checkpoint(spec)
        if args.base_width and model_name.startswith("resnet"):
            kwargs.setdefault("base_width", args.base_width)
        model = load_model(model_name, path, args.dataset, coeff=args.coeff, **kwargs)
        scores[label] = dirty_scores(
            model, args.dataset, args.ood_dataset, args.dataset_root, device=device
        ).scores
    names = group_names(args.dataset, args.ood_dataset)
    plot_fig1(scores, group_names=names, out=args.out)
    print(f"wrote {args.out}")
    if args.fig2_out:
        last = list(scores)[-1]
        plot_fig2(
            scores[last]["clean"]["entropy"],
            scores[last]["ambiguous"]["entropy"],
            title=last,
            out=args.fig2_out,
            group_names=names,
        )
        print(f"wrote {args.fig2_out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
