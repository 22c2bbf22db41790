"""`make demo` succeeds every time: a second run reuses the trained network and prints the same numbers, a
run after Ctrl-C continues, a folder of other settings is started over (refused with --resume), a folder of
other files is never written into; every message names only the demo's own flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import one_sentence

from tools import demo

TINY = ["--epochs", "2", "--base-width", "4", "--no-gpu"]
DEMO_FLAGS = {option for action in demo.get_args_parser()._actions for option in action.option_strings}


def run_demo(out: Path, *extra: str) -> dict:
    return demo.main(demo.get_args_parser().parse_args(["--out", str(out), *TINY, *extra]))


def flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", text))


def report_lines(stdout: str) -> list[str]:
    """The printed numbers: accuracy, ECE and the AUROC table."""
    return [
        line for line in stdout.splitlines() if line.startswith(("accuracy", "softmax entropy", "feature"))
    ]


def stopped(capsys, out: Path, *extra: str, code: int) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_demo(out, *extra)
    assert info.value.code == code
    line = one_sentence(capsys.readouterr().err)
    assert flags_in(line) <= DEMO_FLAGS, line
    return line


@pytest.mark.slow
def test_a_second_demo_reuses_the_network_and_prints_the_same_numbers(tmp_path, capsys):
    out = tmp_path / "demo"
    first = run_demo(out)
    printed = capsys.readouterr().out
    model = out / "runs" / "Run1" / "resnet18_sn_3.0_mod_1_2.model"
    trained = model.read_bytes()
    second = run_demo(out)
    again = capsys.readouterr().out
    assert "reusing the network trained before" in again
    assert model.read_bytes() == trained  # not trained again
    assert report_lines(again) == report_lines(printed) and len(report_lines(printed)) == 3
    assert second["table"] == first["table"]
    assert flags_in(printed + again) <= DEMO_FLAGS | {"-sn", "-mod"}  # the docstring-like summary lines aside


@pytest.mark.slow
def test_a_demo_after_ctrl_c_in_training_continues_from_the_saved_epoch(tmp_path, capsys, monkeypatch):
    import engine.training

    out = tmp_path / "demo"
    calls = []
    original = engine.training.train_one_epoch

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.training, "train_one_epoch", interrupted_in_the_second_epoch)
    line = stopped(capsys, out, code=130)
    assert "while training" in line and "the same command continues" in line
    log = out / "runs" / "Run1" / "resnet18_sn_3.0_mod_1_log.jsonl"
    first_epoch = log.read_text().splitlines()
    assert len(first_epoch) == 1 and (out / "runs" / "Run1" / "resnet18_sn_3.0_mod_1_resume.pt").is_file()
    rerun = []
    monkeypatch.setattr(
        engine.training, "train_one_epoch", lambda *a, **k: rerun.append(1) or original(*a, **k)
    )
    result = run_demo(out)
    assert "continuing" in capsys.readouterr().out
    assert len(rerun) == 1  # only the second epoch: the first was not trained again
    assert log.read_text().splitlines()[:1] == first_epoch and len(log.read_text().splitlines()) == 2
    assert (out / "fig1_demo.png").is_file() and set(result["table"]) == {
        "softmax entropy",
        "feature density (DDU)",
    }
    assert json.loads((out / "demo.json").read_text())["finished"] is True


def write_demo_folder(out: Path, settings: dict, finished: bool) -> Path:
    run = out / "runs" / "Run1"
    run.mkdir(parents=True)
    (run / "resnet18_sn_3.0_mod_1_log.jsonl").write_text('{"epoch": 0}\n')
    (out / "demo.json").write_text(json.dumps({"settings": settings, "finished": finished}))
    return out


def parse(out: Path, *extra: str):
    return demo.get_args_parser().parse_args(["--out", str(out), *TINY, *extra])


def files_of(args):
    return demo.RunFiles(Path(args.out) / "runs" / "Run1", "resnet18_sn_3.0_mod_1")


def test_a_demo_folder_of_other_settings_is_started_over_or_refused_with_resume(tmp_path, capsys):
    args = parse(tmp_path / "demo")
    other = {**demo.settings(args), "epochs": 7}
    out = write_demo_folder(tmp_path / "demo", other, finished=True)
    assert demo.plan_training(args, out, files_of(args)) == "start over"
    assert (
        "holds a demo of other settings (seed 1, model resnet18, base_width 4, epochs 7, batch_size 64): "
        "starting it over" in capsys.readouterr().out
    )
    args = parse(out, "--resume")
    with pytest.raises(demo.UserError) as info:
        demo.plan_training(args, out, files_of(args))
    line = one_sentence(f"error: {info.value}")
    assert "--overwrite" in line and flags_in(line) <= DEMO_FLAGS
    assert demo.plan_training(parse(out, "--overwrite"), out, files_of(args)) == "start over"


def test_a_folder_with_files_the_demo_does_not_write_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = parse(out)
    with pytest.raises(demo.UserError) as info:
        demo.plan_training(args, out, files_of(args))
    line = one_sentence(f"error: {info.value}")
    assert "notes.txt" in line and "another --out" in line and flags_in(line) <= DEMO_FLAGS
    assert demo.plan_training(parse(out, "--overwrite"), out, files_of(args)) == "fresh"


def test_the_scripts_messages_are_told_in_the_demos_flags():
    text = demo.in_demo_terms(
        "'r.pt' is already after epoch 5, beyond -e 3; pass -e 5 or more to continue it"
    )
    assert (
        text == "'r.pt' is already after epoch 5, beyond --epochs 3; pass --epochs 5 or more to continue it"
    )
    assert demo.in_demo_terms("another process holds the run; pass another --save-path") == (
        "another process holds the run; pass another --out"
    )
    nan = "the loss became NaN in epoch 3; rerun with --resume and a lower --lr"
    assert demo.in_demo_terms(nan, "start over") == "the loss became NaN in epoch 3; start over"


def test_the_demo_flags_resume_and_overwrite_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        demo.get_args_parser().parse_args(["--resume", "--overwrite"])


def test_a_demo_folder_of_an_earlier_version_without_its_record_is_started_over(tmp_path, capsys):
    out = write_demo_folder(tmp_path / "demo", {}, finished=True)
    (out / "demo.json").unlink()
    (out / "res_resnet18_sn_3.0_mod_1_softmax_digits_digits_ood.json").write_text("{}")
    (out / "fig1_demo.png").write_bytes(b"\x89PNG")
    args = parse(out)
    assert demo.plan_training(args, out, files_of(args)) == "start over"
    assert "without its record demo.json" in capsys.readouterr().out
