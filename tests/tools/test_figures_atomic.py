"""Every figure is written as the JSON files are: to a temporary file beside it, then renamed. A write that
fails (a full disk, a file-size limit, an error inside Matplotlib) leaves the previous figure intact and no
temporary file behind; the messages name only flags the tool that prints them has."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers import fails, file_size_limit, one_sentence  # noqa: E402

from tools import plots  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import atomic_savefig  # noqa: E402


def write_log(path: Path) -> Path:
    lines = [
        {"epoch": e, "loss": 2.0 - e / 4, "accuracy": 0.5, "lr": 0.1, "val_accuracy": None} for e in range(4)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def assert_only(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names, "a temporary file was left behind"


def test_a_figure_write_cut_off_by_a_file_size_limit_keeps_the_previous_figure(tmp_path):
    log = write_log(tmp_path / "lenet_1_log.jsonl")
    out = tmp_path / "curves.png"
    plots.main(plots.get_args_parser().parse_args(["curves", str(log), "--out", str(out)]))
    before = out.read_bytes()
    assert before.startswith(b"\x89PNG") and len(before) > 4096
    fig = plots.plot_training_curves({"other": plots.load_training_log(log)}, metrics=("loss",))
    with file_size_limit(4096), pytest.raises(UserError) as info:
        plots._save(fig, out)
    line = one_sentence(f"error: {info.value}")
    assert f"'{out}'" in line and "previous version of that file is intact" in line
    assert out.read_bytes() == before
    assert_only(tmp_path, {"lenet_1_log.jsonl", "curves.png"})


def test_an_error_inside_savefig_keeps_the_previous_figure(tmp_path, monkeypatch):
    out = tmp_path / "fig.pdf"
    fig = plt.figure()
    fig.gca().plot([0, 1], [1, 0])
    atomic_savefig(fig, out)
    before = out.read_bytes()

    def breaks_half_way(handle, **kwargs):
        handle.write(b"%PDF-1.4 cut off")
        raise RuntimeError("a Matplotlib failure half-way")

    monkeypatch.setattr(fig, "savefig", breaks_half_way)
    with pytest.raises(RuntimeError):
        atomic_savefig(fig, out)
    assert out.read_bytes() == before
    assert_only(tmp_path, {"fig.pdf"})
    plt.close(fig)


def test_an_unknown_figure_format_is_refused_before_any_work_naming_the_tools_own_flag(tmp_path, capsys):
    log = write_log(tmp_path / "lenet_1_log.jsonl")
    line = fails(
        capsys, plots.main, plots.get_args_parser().parse_args(["curves", str(log), "--out", "c.xyz"])
    )
    assert "--out ending in .png" in line
    argv = [
        "fig1",
        "--checkpoint",
        f"x=lenet::{tmp_path / 'none.model'}",
        "--fig2-out",
        str(tmp_path / "f.doc"),
    ]
    line = fails(capsys, plots.main, plots.get_args_parser().parse_args(argv))
    assert "--fig2-out ending in .png" in line and "'.doc'" in line
    assert_only(tmp_path, {"lenet_1_log.jsonl"})
