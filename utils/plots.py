"""Figures of the paper, importable and usable without Jupyter.

* Fig. 1: per model, the density of softmax entropy and of feature log-density for Dirty-MNIST test samples
  (MNIST and Ambiguous-MNIST) and an OoD set (Fashion-MNIST).
* Fig. 2: softmax entropy of MNIST versus Ambiguous-MNIST test samples.
* Active learning: test accuracy versus number of labelled samples (mean and standard-error band over runs),
  and the fraction of ambiguous samples acquired.
* Two moons: maps of softmax entropy and of feature density over the plane.

Command line (writes PNGs):

    python -m utils.plots fig1 --dataset-root DATA --out fig1.png \
        --checkpoint "LeNet=lenet::runs/lenet_1_350.model" --checkpoint "ResNet-18+SN=resnet18:sn,mod:runs/m.model"
    python -m utils.plots al --out al.png --curve "DDU=results/test_accs_resnet18_gmm_mnist.json" ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

GROUP_COLOURS = {"clean": "tab:blue", "ambiguous": "tab:orange", "ood": "tab:green"}


def _density_hist(ax, values: dict[str, np.ndarray], colours: dict[str, str], xlabel: str) -> None:
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values() if len(v)])
    low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    bins = np.linspace(low, high, 50)
    for (label, v), colour in zip(values.items(), colours.values()):
        ax.hist(np.clip(v[np.isfinite(v)], low, high), bins=bins, density=True, alpha=0.5, color=colour, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def plot_fig1(scores: dict[str, dict[str, dict[str, np.ndarray]]], group_names: dict[str, str] | None = None,
              out: str | Path | None = None):
    """`scores[model][group] = {"entropy": (N,), "log_density": (N,)}` with groups 'clean', 'ambiguous', 'ood'.

    One row per model: softmax entropy (left) and feature log-density (right), as the paper's Fig. 1.
    """
    group_names = group_names or {"clean": "MNIST", "ambiguous": "Ambiguous-MNIST", "ood": "Fashion-MNIST"}
    fig, axes = plt.subplots(len(scores), 2, figsize=(10, 3.2 * len(scores)), squeeze=False)
    for row, (model_name, groups) in enumerate(scores.items()):
        colours = {group_names[g]: GROUP_COLOURS[g] for g in groups}
        for col, (key, label) in enumerate((("entropy", "softmax entropy"), ("log_density", "feature log-density"))):
            values = {group_names[g]: np.asarray(groups[g][key], dtype=np.float64) for g in groups}
            _density_hist(axes[row, col], values, colours, label)
            axes[row, col].set_title(f"{model_name}: {label}")
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_fig2(clean_entropy: np.ndarray, ambiguous_entropy: np.ndarray, title: str = "ResNet-18+SN",
              out: str | Path | None = None):
    """Softmax entropy of MNIST versus Ambiguous-MNIST test samples (paper Fig. 2)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    _density_hist(
        ax,
        {"MNIST": np.asarray(clean_entropy), "Ambiguous-MNIST": np.asarray(ambiguous_entropy)},
        {"MNIST": GROUP_COLOURS["clean"], "Ambiguous-MNIST": GROUP_COLOURS["ambiguous"]},
        "softmax entropy",
    )
    ax.set_title(f"{title}: aleatoric uncertainty")
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def load_al_runs(path: str | Path) -> np.ndarray:
    """An active-learning JSON (run -> list per step) as an array (runs, steps), truncated to the shortest run."""
    runs = json.loads(Path(path).read_text())
    lists = [np.asarray(v, dtype=np.float64) for _, v in sorted(runs.items(), key=lambda kv: int(kv[0]))]
    if not lists:
        raise ValueError(f"{path} holds no runs")
    steps = min(len(v) for v in lists)
    return np.stack([v[:steps] for v in lists])


def plot_active_learning(curves: dict[str, np.ndarray], *, initial: int = 20, batch: int = 5,
                         ylabel: str = "test accuracy (%)", title: str = "", out: str | Path | None = None):
    """`curves[label]` is (runs, steps); x = labelled-set size `initial + step * batch`; mean and s.e. band."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        values = np.atleast_2d(values)
        x = initial + batch * np.arange(values.shape[1])
        mean = values.mean(0)
        sem = values.std(0, ddof=1) / np.sqrt(values.shape[0]) if values.shape[0] > 1 else np.zeros_like(mean)
        ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - sem, mean + sem, alpha=0.25)
    ax.set_xlabel("number of labelled samples")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def plot_two_moons(xx: np.ndarray, yy: np.ndarray, maps: dict[str, np.ndarray], points: np.ndarray,
                   labels: np.ndarray, out: str | Path | None = None):
    """Maps over the plane (`maps[title]` shaped like `xx`), with the training points on top."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.6), squeeze=False)
    for ax, (title, values) in zip(axes[0], maps.items()):
        image = ax.contourf(xx, yy, values, levels=30, cmap="viridis")
        ax.scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="coolwarm", edgecolors="none")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


def dirty_scores(model: torch.nn.Module, dataset: str, ood: str, root: str | Path, device=None,
                 batch_size: int = 512) -> dict[str, dict[str, np.ndarray]]:
    """Softmax entropy and DDU feature log-density of the clean, ambiguous and OoD test samples.

    The GMM is fitted as in evaluate.py: on the features of the 90% training split (no augmentation).
    """
    import data
    import metrics
    from utils.features import collect_outputs

    device = device or torch.device("cpu")
    model = model.to(device).eval()
    parts = data.dirty_parts(dataset)
    if parts is None:
        raise ValueError(f"{dataset} has no clean/ambiguous parts; use dirty_mnist or digits")
    train_loader, _ = data.get_train_valid_loader(dataset, root, batch_size, augment=False, val_seed=1,
                                                  device=device, shuffle=False)
    train = collect_outputs(model, train_loader, device)
    gaussians = metrics.fit_class_gaussians(train.features, train.labels, data.get_info(dataset).num_classes)
    result = {}
    for group, name in (("clean", parts[0]), ("ambiguous", parts[1]), ("ood", ood)):
        loader = data.get_test_loader(name, root, batch_size, device=device, like=dataset)
        out = collect_outputs(model, loader, device)
        density = metrics.ddu_scores(metrics.class_log_densities(gaussians, out.features))["log_density"]
        result[group] = {
            "entropy": metrics.softmax_entropy(out.logits).cpu().numpy(),
            "log_density": density.cpu().numpy(),
        }
    return result


def _parse_checkpoint(spec: str):
    """'LABEL=MODEL:FLAGS:PATH' with FLAGS a comma list of sn, mod (may be empty)."""
    label, rest = spec.split("=", 1)
    model, flags, path = rest.split(":", 2)
    flags = {f for f in flags.split(",") if f}
    return label, model, "sn" in flags, "mod" in flags, path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    fig1 = sub.add_parser("fig1", help="Fig. 1 (and Fig. 2 for the last model) from checkpoints")
    fig1.add_argument("--checkpoint", action="append", required=True, help="LABEL=MODEL:FLAGS:PATH, repeatable")
    fig1.add_argument("--dataset", default="dirty_mnist")
    fig1.add_argument("--ood-dataset", default="fashion_mnist")
    fig1.add_argument("--dataset-root", default="data_root")
    fig1.add_argument("--coeff", type=float, default=3.0)
    fig1.add_argument("--base-width", type=int, default=None, help="ResNet width used in training, if reduced")
    fig1.add_argument("--out", default="fig1.png")
    fig1.add_argument("--fig2-out", default=None, help="also write Fig. 2 for the last checkpoint here")
    al = sub.add_parser("al", help="active-learning curves from JSON files")
    al.add_argument("--curve", action="append", required=True, help="LABEL=PATH.json, repeatable")
    al.add_argument("--initial", type=int, default=20)
    al.add_argument("--batch", type=int, default=5)
    al.add_argument("--ylabel", default="test accuracy (%)")
    al.add_argument("--title", default="")
    al.add_argument("--out", default="al.png")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.figure == "al":
        curves = {}
        for spec in args.curve:
            label, path = spec.split("=", 1)
            curves[label] = load_al_runs(path)
        plot_active_learning(curves, initial=args.initial, batch=args.batch, ylabel=args.ylabel,
                             title=args.title, out=args.out)
        print(f"wrote {args.out}")
        return
    import data
    import net

    info = data.get_info(args.dataset)
    scores = {}
    for spec in args.checkpoint:
        label, model_name, sn, mod, path = _parse_checkpoint(spec)
        extra = {"base_width": args.base_width} if args.base_width and model_name.startswith("resnet") else {}
        model = net.create_model(model_name, num_classes=info.num_classes, spectral_normalization=sn, mod=mod,
                                 coeff=args.coeff, mnist=info.shape[0] == 1, **extra)
        net.load_state_dict(model, path)
        scores[label] = dirty_scores(model, args.dataset, args.ood_dataset, args.dataset_root)
    plot_fig1(scores, out=args.out)
    print(f"wrote {args.out}")
    if args.fig2_out:
        last = scores[list(scores)[-1]]
        plot_fig2(last["clean"]["entropy"], last["ambiguous"]["entropy"], title=list(scores)[-1], out=args.fig2_out)
        print(f"wrote {args.fig2_out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
