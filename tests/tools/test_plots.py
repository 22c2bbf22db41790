"""tools/plots.py: the figures on hand-made inputs, the DDU scores of a tiny model, and the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import REPO

import data
from engine.evaluation import dirty_scores
from tools import plots
from utils.errors import UserError


def assert_png(path: Path) -> None:
    raw = Path(path).read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) > 5_000, f"{path} is not a PNG with content"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 200 and width > 200


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def fake_scores(rng: np.random.Generator, far_ood: bool) -> dict[str, dict[str, np.ndarray]]:
    """Entropies in [0, log 10]; log densities around 100, OoD ones far below when `far_ood`."""
    ood_density = np.where(np.arange(300) < 90, -1e7, rng.normal(-400 if far_ood else 90, 50, 300))  # 30% far
    return {
        "clean": {"entropy": rng.uniform(0, 0.5, 200), "log_density": rng.normal(100, 10, 200)},
        "ambiguous": {"entropy": rng.uniform(0.5, 2.0, 200), "log_density": rng.normal(95, 10, 200)},
        "ood": {"entropy": rng.uniform(1.0, math.log(10), 300), "log_density": ood_density},
    }


def test_group_names():
    assert plots.group_names("Dirty-MNIST", "fashion-mnist") == {
        "clean": "MNIST", "ambiguous": "Ambiguous-MNIST", "ood": "Fashion-MNIST"
    }  # fmt: skip
    assert plots.group_names("digits", "digits_ood")["ood"] == "photo patches"
    with pytest.raises(UserError):
        plots.group_names("dirty_mnist", "no_such_set")


def test_axis_range_keeps_in_distribution_readable():
    reference = np.linspace(0.0, 100.0, 1001)
    outliers = np.concatenate([np.full(300, -1e7), np.linspace(-300, 50, 700)])
    low, high = plots._axis_range([reference, outliers])
    assert low == pytest.approx(1.0 - plots.AXIS_WIDEN * 98.0)  # the reference's 1-99% range, widened
    assert high == 100.0  # cut to the data
    assert plots._axis_range([reference, reference + 10]) == (0.0, 110.0)  # everything fits: the data's range
    assert plots._axis_range([np.array([]), np.array([])]) == (0.0, 1.0)
    assert plots._axis_range([np.full(5, 3.0)]) == (2.5, 3.5)


def test_fig1_and_fig2_write_pngs_and_report_clipped_values(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"LeNet": fake_scores(rng, far_ood=False), "ResNet-18+SN": fake_scores(rng, far_ood=True)}
    names = plots.group_names("dirty_mnist", "fashion_mnist")
    fig = plots.plot_fig1(scores, group_names=names, out=tmp_path / "sub" / "fig1.png", title="test")
    assert_png(tmp_path / "sub" / "fig1.png")
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[1, 1].get_title() == "ResNet-18+SN: feature log-density"
    assert axes[1, 1].get_xlabel() == "feature log-density" and axes[0, 0].get_xlabel() == "softmax entropy"
    entropy_legend, density_legend = legend_texts(axes[0, 0]), legend_texts(axes[0, 1])
    assert entropy_legend == ["MNIST", "Ambiguous-MNIST", "Fashion-MNIST"]  # nothing clipped
    assert density_legend[2].startswith("Fashion-MNIST (30.0% < ")  # the -1e7 values, drawn at the edge
    assert axes[0, 1].get_xlim()[0] > -1e4
    colours = [tuple(p.get_facecolor()[:3]) for p in axes[0, 0].patches[::49]]
    assert len(set(colours)) == 3  # three groups, three colours

    fig2 = plots.plot_fig2(scores["LeNet"]["clean"]["entropy"], scores["LeNet"]["ambiguous"]["entropy"],
                           title="LeNet", out=tmp_path / "fig2.png", group_names=names)  # fmt: skip
    assert_png(tmp_path / "fig2.png")
    assert legend_texts(fig2.axes[0]) == ["MNIST", "Ambiguous-MNIST"]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_load_al_runs_orders_runs_and_cuts_to_the_shortest(tmp_path):
    path = write_json(tmp_path / "a.json", {"10": [3, 4], "2": [1, 2, 9], "0": [0, 0, 0]})
    np.testing.assert_array_equal(plots.load_al_runs(path), [[0, 0], [1, 2], [3, 4]])
    with pytest.raises(UserError, match="empty.json.*no runs"):
        plots.load_al_runs(write_json(tmp_path / "empty.json", {}))
    for name, content in (
        ("list", [1, 2]),
        ("key", {"a": [1]}),
        ("values", {"0": "x"}),
        ("nested", {"0": {"0": [1]}}),
    ):
        with pytest.raises(UserError, match=f"{name}.json' is not an active-learning result"):
            plots.load_al_runs(write_json(tmp_path / f"{name}.json", content))


def test_load_al_curves_skips_absent_and_empty_files(tmp_path, capsys):
    write_json(tmp_path / "a.json", {"0": [50, 60]})
    write_json(tmp_path / "empty.json", {})
    curves = plots.load_al_curves(tmp_path, {"A": "a.json", "B": "b.json", "C": "empty.json"})
    assert list(curves) == ["A"]
    out = capsys.readouterr().out
    assert "note: skipping B" in out and "b.json does not exist" in out and "note: skipping C" in out


def test_active_learning_curve_mean_band_and_colours(tmp_path):
    runs = np.array([[50.0, 60.0, 70.0], [52.0, 64.0, 72.0]])
    fig = plots.plot_active_learning({"DDU": runs, "single": runs[:1]}, initial=20, batch=5,
                                     colours={"DDU": "tab:red"}, out=tmp_path / "al.png")  # fmt: skip
    assert_png(tmp_path / "al.png")
    ax = fig.axes[0]
    ddu, single = ax.get_lines()
    np.testing.assert_array_equal(ddu.get_xdata(), [20, 25, 30])
    np.testing.assert_allclose(ddu.get_ydata(), [51.0, 62.0, 71.0])
    assert ddu.get_color() == "tab:red"
    assert legend_texts(ax) == ["DDU (2 runs)", "single (1 run)"]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(50.0) and band.max() == pytest.approx(72.0)  # mean -+ s.e. (= 1, 2, 1)

    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    assert plots.plot_active_learning({}, ax=ax) is ax.figure
    assert [t.get_text() for t in ax.texts] == ["no runs found"]


def test_two_moons_grid(tmp_path):
    xx, yy = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 20))
    maps = {"a": xx, "b": yy, "c": xx * yy}
    points, labels = np.random.default_rng(0).normal(size=(30, 2)), np.arange(30) % 2
    fig = plots.plot_two_moons(xx, yy, maps, points, labels, ncols=2, out=tmp_path / "moons.png")
    assert_png(tmp_path / "moons.png")
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]


def test_parse_checkpoint():
    assert plots._parse_checkpoint("SN=resnet18:sn,mod,base_width=8:runs/a:b.model") == (
        "SN", "resnet18", {"sn": True, "mod": True, "base_width": 8}, "runs/a:b.model"
    )  # fmt: skip
    assert plots._parse_checkpoint("LeNet=lenet::x.model") == ("LeNet", "lenet", {}, "x.model")
    for bad in ("no-equals", "L=lenet", "L=lenet:spectral:x.model", "L=lenet:base_width=x:x.model"):
        with pytest.raises(UserError):
            plots._parse_checkpoint(bad)


@pytest.fixture(scope="module")
def tiny_lenet(tmp_path_factory) -> Path:
    """A LeNet trained two steps on the embedded digits."""
    import train

    folder = tmp_path_factory.mktemp("runs")
    argv = ["--seed", "1", "--dataset", "digits", "--model", "lenet", "-e", "1", "-b", "16", "--no-gpu",
            "--steps-per-epoch", "2", "--save-path", str(folder)]  # fmt: skip
    train.main(train.get_args_parser().parse_args(argv))
    return folder / "lenet_1_1.model"


def test_dirty_scores_of_a_tiny_model(tiny_lenet):
    model = plots.load_model("lenet", tiny_lenet, "digits")
    result = dirty_scores(model, "digits", "digits_ood", None)
    scores = result.scores
    assert 0.0 <= result.clean_accuracy <= 1.0 and result.gmm_jitter >= 0.0
    for group, name in (("clean", "digits_clean"), ("ambiguous", "digits_ambiguous"), ("ood", "digits_ood")):
        size = len(data.load_split(name, None, "test")[1])
        assert scores[group]["entropy"].shape == scores[group]["log_density"].shape == (size,)
        assert np.isfinite(scores[group]["log_density"]).all()
        assert ((scores[group]["entropy"] >= 0) & (scores[group]["entropy"] <= math.log(10) + 1e-9)).all()
    with pytest.raises(UserError, match="no clean/ambiguous parts"):
        dirty_scores(model, "mnist", "digits_ood", None)
    with pytest.raises(UserError):
        plots.load_model("resnet18", tiny_lenet, "digits", sn=True, mod=True)  # not this checkpoint


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}  # the suite's thread count (conftest) is inherited
    command = [sys.executable, "-m", "tools.plots", *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace")


@pytest.mark.slow
def test_cli_al(tmp_path):
    a = write_json(tmp_path / "test_accs_a_mnist.json", {"0": [50, 60, 70], "1": [55, 65, 72]})
    b = write_json(tmp_path / "test_accs_b_mnist.json", {"0": [40, 50, 80]})
    out = tmp_path / "al.png"
    result = run_cli("al", "--curve", f"A={a}", "--curve", f"B={b}", "--initial", "10", "--batch", "10",
                     "--title", "MNIST", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert_png(out)


def test_cli_al_missing_file_is_one_line_error(tmp_path, capsys):
    args = plots.get_args_parser().parse_args(["al", "--curve", f"A={tmp_path / 'nope.json'}"])
    with pytest.raises(SystemExit) as info:
        plots.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --curve") and "\n" not in err


@pytest.mark.slow
def test_cli_fig1(tiny_lenet, tmp_path):
    out, fig2 = tmp_path / "fig1.png", tmp_path / "fig2.png"
    result = run_cli("fig1", "--dataset", "digits", "--ood-dataset", "digits_ood", "--no-gpu",
                     "--checkpoint", f"LeNet=lenet::{tiny_lenet}", "--checkpoint", f"L2=lenet::{tiny_lenet}",
                     "--out", str(out), "--fig2-out", str(fig2))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert_png(fig2)


def test_cli_fig1_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    argv = ["fig1", "--dataset", "digits", "--checkpoint", f"x=lenet::{tmp_path / 'none.model'}"]
    with pytest.raises(SystemExit) as info:
        plots.main(plots.get_args_parser().parse_args(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the checkpoint") and "none.model" in err and "\n" not in err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_both_scores(tmp_path, capsys):
    """`make demo` in miniature: real train.py + evaluate.py on the embedded set, JSONs, PNG and table."""
    from tools import demo

    result = demo.main(
        demo.get_args_parser().parse_args(["--out", str(tmp_path), "--epochs", "2", "--no-gpu"])
    )
    assert (tmp_path / "fig1_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in tmp_path.glob("res_*.json")} == {
        "res_resnet18_sn_3.0_mod_1_softmax_digits_digits_ood.json",
        "res_resnet18_sn_3.0_mod_1_gmm_digits_digits_ood.json",
    }
    # The table scores the checkpoint evaluate.py scored, on the same data with the same GMM fit (90%
    # training split, uniform class weights): both sides' AUROCs must agree, up to rounding of the features
    # between batchings. Entropy: OoD positive and ambiguous positive; density: in-distribution positive.
    table = result["table"]
    softmax, gmm = (result["results"][model_type]["mean"] for model_type in ("softmax", "gmm"))
    columns = ["ambiguous vs clean", "OoD vs clean", "OoD vs clean+ambiguous"]
    assert [list(row) for row in table.values()] == [columns, columns]
    entropy, density = table["softmax entropy"], table["feature density (DDU)"]
    assert entropy["OoD vs clean+ambiguous"] == pytest.approx(softmax["m2_auroc"], abs=1e-3)
    assert entropy["ambiguous vs clean"] == pytest.approx(softmax["aleatoric_entropy_auroc"], abs=1e-3)
    assert density["OoD vs clean+ambiguous"] == pytest.approx(gmm["m1_auroc"], abs=1e-3)
    out = capsys.readouterr().out
    assert "AUROC of each score" in out
    for label, row in table.items():  # the printed table is the returned one
        assert f"{label:26s}" + "".join(f"{row[c]:26.3f}" for c in columns) in out


# ----------------------------------------------------------------------------------------------------
# Training curves from train.py's JSON-lines logs


def write_log(path: Path, losses: list[float], val_every: int = 2) -> Path:
    lines = [
        {"epoch": e, "loss": loss, "accuracy": 1 - loss / 3, "lr": 0.1,
         "val_accuracy": (1 - loss / 4) if (e + 1) % val_every == 0 else None}
        for e, loss in enumerate(losses)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_training_curves_one_line_per_run_and_validation_only_where_logged(tmp_path):
    first = write_log(tmp_path / "lenet_1_log.jsonl", [2.0, 1.5, 1.0, 0.8])
    second = write_log(tmp_path / "lenet_2_log.jsonl", [2.2, 1.2, 0.9, 0.7])
    out = tmp_path / "curves.png"
    args = plots.get_args_parser().parse_args(["curves", str(first), f"member 2={second}", "--out", str(out)])
    plots.main(args)
    assert_png(out)
    fig = plots.plot_training_curves(
        {"a": plots.load_training_log(first), "b": plots.load_training_log(second)}
    )
    loss_ax, _, val_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["a", "b"]
    assert list(loss_ax.get_lines()[1].get_xdata()) == [1, 2, 3, 4]
    assert list(loss_ax.get_lines()[1].get_ydata()) == [2.2, 1.2, 0.9, 0.7]
    assert list(val_ax.get_lines()[0].get_xdata()) == [2, 4]  # validated every second epoch


def test_training_curves_reject_what_is_not_a_training_log(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    for path in (tmp_path / "missing_log.jsonl", tmp_path / "bad.jsonl"):
        with pytest.raises(SystemExit):
            plots.main(plots.get_args_parser().parse_args(["curves", str(path)]))
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "_log.jsonl" in err
