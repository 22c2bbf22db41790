"""A rerun of a finished experiments.dirty_mnist, experiments.al_curves or experiments.cifar10 without --overwrite reports
the finished result and keeps it byte for byte (how Ambiguous-MNIST was made, the original timings); a cut-off
later run (a stage record beside it) is continued, and --overwrite runs the experiment again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_sentence

from experiments import al_curves, cifar10, dirty_mnist

EXPERIMENTS = [(dirty_mnist, "dirty_mnist"), (al_curves, "active_learning"), (cifar10, "cifar10")]


def finished(out: Path, name: str) -> Path:
    """A finished record as the experiment writes it (abridged), with what a rerun must not lose."""
    record = {
        "experiment": name,
        "scale": "smoke",
        "ambiguous_mnist": {"source": "generated", "flags": ["--max-mnist", "1000"], "seconds": 312.4},
        "environment": {"date_utc": "2026-12-03 09:00", "wall_time_s": 1234.5},
        "results": {"ResNet-18+SN": {"aleatoric_entropy_auroc": 0.91}},
        "table": "| network | AUROC |\n|---|---|\n| ResNet-18+SN | 91.0 |",
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_smoke.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{name}_smoke.png").write_bytes(b"\x89PNG the earlier figure")
    return path


def argv(tmp_path: Path, *extra: str) -> list[str]:
    # The data root is empty: anything beyond reporting the finished result would stop with missing data.
    return ["--scale", "smoke", "--dataset-root", str(tmp_path / "no_data"), "--work-dir", str(tmp_path / "work"),
            "--output-dir", str(tmp_path / "out"), "--no-gpu", *extra]  # fmt: skip


@pytest.mark.parametrize("module, name", EXPERIMENTS, ids=[n for _, n in EXPERIMENTS])
def test_a_rerun_of_a_finished_experiment_reports_and_keeps_its_result(tmp_path, capsys, module, name):
    path = finished(tmp_path / "out", name)
    before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    record = module.main(module.get_args_parser().parse_args(argv(tmp_path)))
    assert (
        record["ambiguous_mnist"]["source"] == "generated" and record["environment"]["wall_time_s"] == 1234.5
    )
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    out = capsys.readouterr().out
    assert f"'{path}' holds the finished result" in out and "--overwrite" in out and "| ResNet-18+SN |" in out


@pytest.mark.parametrize("module, name", EXPERIMENTS, ids=[n for _, n in EXPERIMENTS])
@pytest.mark.parametrize("why", ["--overwrite", "cut-off rerun"])
def test_overwrite_or_a_cut_off_rerun_goes_on_past_the_finished_result(tmp_path, capsys, module, name, why):
    path = finished(tmp_path / "out", name)
    extra = ["--overwrite"] if why == "--overwrite" else []
    if why == "cut-off rerun":
        path.with_name(f"{name}_smoke.partial.json").write_text(
            json.dumps({"experiment": name, "scale": "smoke"})
        )
    before = path.read_bytes()
    with pytest.raises(SystemExit) as info:  # it runs, and stops at the missing data
        module.main(module.get_args_parser().parse_args(argv(tmp_path, *extra)))
    assert info.value.code == 2 and "not found" in one_sentence(capsys.readouterr().err)
    assert path.read_bytes() == before  # only a run that finishes replaces it
