# ruff: noqa: F811 (the fixtures imported from test_user_errors are arguments here)
"""Nothing already computed is lost: no rerun replaces a finished run without --overwrite, one writer per run
folder, interruptions wait for the write in progress and say what the files really hold, and experiments keep
their finished results until a rerun finishes.

Helpers and fixtures come from test_user_errors (tiny runs on the embedded digits set, on the CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, al_args, assert_kept, eval_args, fails, snapshot, train_args

import active_learning
import evaluate
import train
from engine import al_run, checkpointing, evaluation_run, training_run
from utils.errors import Interrupted, UserError
from utils.io import BackgroundWriter, exclusive_lock, lock_path

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")


def no_temporary_files(folder: Path) -> None:
    left = [p for p in Path(folder).rglob("*.tmp")]
    assert not left, f"temporary files left behind: {left}"


# ----------------------------------------------------------------------------------------------------------
# 1. train.py over an existing run


def test_train_over_an_earlier_run_is_refused_without_overwrite(save_dir, capsys):
    before = snapshot(save_dir)
    err = fails(capsys, train.main, train_args(save_dir))
    assert "earlier run of lenet_1" in err and "--resume" in err and "--overwrite" in err
    assert_kept(before)
    fails(capsys, train.main, train_args(save_dir, "--resume", "--overwrite"))
    assert_kept(before)


def test_train_overwrite_starts_again_and_leaves_model_files_until_saved_over(save_dir):
    old_model = (save_dir / "lenet_1_1.model").read_bytes()
    old_log = (save_dir / "lenet_1_log.jsonl").read_text()
    train.main(train_args(save_dir, "--overwrite", "--save-interval", "2", epochs=2))
    assert (save_dir / "lenet_1_1.model").read_bytes() == old_model  # not a save epoch of the new run
    assert (save_dir / "lenet_1_2.model").is_file()
    log = (save_dir / "lenet_1_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and log[0] != old_log.splitlines()[0] or len(log) == 2


def test_train_resume_without_its_resume_file_is_refused(save_dir, capsys):
    (save_dir / "lenet_1_resume.pt").unlink()
    before = snapshot(save_dir)
    err = fails(capsys, train.main, train_args(save_dir, "--resume"))
    assert "lenet_1_resume.pt" in err and "--overwrite" in err
    assert_kept(before)


# ----------------------------------------------------------------------------------------------------------
# 2. One writer per run folder


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys):
    with exclusive_lock(lock_path(tmp_path / "lenet_1"), "the run", "pass another --save-path"):
        err = fails(capsys, train.main, train_args(tmp_path))
    assert f"PID {os.getpid()}" in err and "--save-path" in err
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
    train.main(train_args(tmp_path))  # released: the run goes ahead, and leaves no lock behind
    assert not list(tmp_path.glob(".*lock*"))


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = (
        "import os, signal, sys; from utils.io import exclusive_lock, lock_path\n"
        f"with exclusive_lock(lock_path({str(tmp_path / 'lenet_1')!r}), 'x', 'y'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", holder], cwd=REPO, check=False)
    assert (tmp_path / ".lenet_1.lock.owner").is_file()  # the killed holder's note stays behind
    train.main(train_args(tmp_path))
    assert (tmp_path / "lenet_1_1.model").is_file() and not list(tmp_path.glob(".*lock*"))


def test_active_learning_has_one_writer_per_experiment(mnist_root, tmp_path, capsys):
    args = al_args(mnist_root, tmp_path)
    state = tmp_path / al_run.output_names(args)["state"]
    with exclusive_lock(lock_path(state), "x", "y"):
        err = fails(capsys, active_learning.main, args)
    assert f"PID {os.getpid()}" in err and "--output-dir" in err


def test_evaluate_has_one_writer_per_result_file(earlier_run, tmp_path, capsys):
    (tmp_path / "Run1").mkdir()
    (tmp_path / "Run1" / "lenet_1_1.model").write_bytes((earlier_run / "lenet_1_1.model").read_bytes())
    args = eval_args(tmp_path, tmp_path / "out")
    with exclusive_lock(lock_path(evaluation_run.result_path(args)), "x", "y"):
        err = fails(capsys, evaluate.main, args)
    assert f"PID {os.getpid()}" in err and "--output-dir" in err


def test_an_experiment_has_one_writer_per_work_folder(tmp_path, capsys):
    from experiments import dirty_mnist

    work = tmp_path / "work"
    work.mkdir()
    args = dirty_mnist.get_args_parser().parse_args(
        ["--scale", "smoke", "--work-dir", str(work), "--output-dir", str(tmp_path / "out"), "--no-gpu"]
    )
    with exclusive_lock(work / ".experiment.lock", "x", "y"):
        err = fails(capsys, dirty_mnist.main, args)
    assert f"PID {os.getpid()}" in err and "--work-dir" in err


# ----------------------------------------------------------------------------------------------------------
# 3. Ctrl-C twice during a checkpoint write


def _interrupting_job(path: Path, fail: bool = False):
    """A write job that sends the process two SIGINTs (as Ctrl-C twice), then takes a while to finish."""

    def job():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(20):
            time.sleep(0.01)
        if fail:
            raise UserError("the write failed")
        path.write_text("complete")

    return job


def test_interrupts_wait_for_the_write_in_progress(tmp_path):
    # Wherever the two interrupts land (in submit, in wait, in the exit's wait), the write finishes.
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            writer.submit(_interrupting_job(tmp_path / "a"))
            writer.wait()
    assert (tmp_path / "a").read_text() == "complete"
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            writer.submit(_interrupting_job(tmp_path / "b"))
            raise KeyboardInterrupt
    assert (tmp_path / "b").read_text() == "complete"


@pytest.mark.parametrize("epochs", [1, 2])
def test_the_stop_message_names_the_epoch_the_resume_file_holds(tmp_path, monkeypatch, capsys, epochs):
    original = checkpointing.write_epoch

    def write_epoch(files, state, history, **kwargs):
        if state["epoch"] == epochs:  # the last epoch's write: Ctrl-C twice, and the write fails
            _interrupting_job(tmp_path / "unused", fail=True)()
        return original(files, state, history, **kwargs)

    monkeypatch.setattr(checkpointing, "write_epoch", write_epoch)
    err = fails(capsys, train.main, train_args(tmp_path / "run", epochs=epochs), code=130)
    if epochs == 1:
        assert "no epoch of lenet_1 had been saved" in err and "resume.pt" not in err
    else:
        assert "after epoch 1 is in" in err
        assert torch.load(tmp_path / "run" / "lenet_1_resume.pt", weights_only=True)["epoch"] == 1
    no_temporary_files(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# 12. An ensemble interrupted at the start of member 2


def test_an_interrupted_ensemble_names_its_finished_members(tmp_path, monkeypatch, capsys):
    original, calls = training_run.setup_training_run, []

    def setup_training_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training_run, "setup_training_run", setup_training_run)
    argv = train_args(tmp_path, "--ensemble", "3", "--ensemble-mode", "sequential")
    err = fails(capsys, train.main, argv, code=130)
    assert "member 1 (lenet_1) finished" in err and "member 2 of 3 (lenet_2)" in err and "--resume" in err
    assert "nothing was saved" not in err


def _json(path: Path):
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------------------
# 4, 5. Experiments: a failed rerun keeps the finished results; reruns continue, --overwrite starts over


def _experiment_args(tmp_path: Path, *extra: str):
    from experiments import dirty_mnist

    return dirty_mnist.get_args_parser().parse_args(
        ["--scale", "smoke", "--work-dir", str(tmp_path / "work"), "--output-dir", str(tmp_path / "out"),
         "--no-gpu", *extra]
    )  # fmt: skip


def _fake_experiment(stages: int, interrupt: bool):
    """An experiment's main on `experiments.common`: a record, a stage per result, the final JSON."""
    from experiments import common

    @common.one_writer("fake")
    def main(args):
        paths = common.prepare_run(args, "fake")
        record = {"scale": args.scale, "results": {}}
        for k in range(stages):
            record["results"][str(k)] = k
            common.write_stage(paths, record)
        if interrupt:
            raise KeyboardInterrupt
        common.write_final(paths, record)
        return record

    return main


def test_an_interrupted_rerun_keeps_the_finished_experiment_record(tmp_path):
    args = _experiment_args(tmp_path)
    _fake_experiment(3, interrupt=False)(args)
    final = tmp_path / "out" / "fake_smoke.json"
    kept = final.read_bytes()
    assert json.loads(kept)["results"] == {"0": 0, "1": 1, "2": 2}
    assert not (tmp_path / "out" / "fake_smoke.partial.json").exists()
    with pytest.raises(Interrupted) as info:
        _fake_experiment(1, interrupt=True)(args)
    assert final.read_bytes() == kept  # the finished record is untouched
    assert _json(tmp_path / "out" / "fake_smoke.partial.json")["results"] == {"0": 0}
    assert "rerun the same command" in str(info.value) and "--resume" not in str(info.value)
    with pytest.raises(Interrupted) as info:
        _fake_experiment(1, interrupt=True)(_experiment_args(tmp_path, "--overwrite"))
    assert "without --overwrite" in str(info.value)


def test_inner_scripts_continue_by_default_and_start_over_with_overwrite(tmp_path):
    from experiments import al_curves as al_experiment
    from experiments import common

    preset = al_experiment.SCALES["smoke"]
    for extra, flag in (((), "--resume"), (("--overwrite",), "--overwrite")):
        args = _experiment_args(tmp_path, *extra)
        argv = al_experiment.al_argv(
            preset, "gmm", runs=1, max_samples=30, root=tmp_path, out=tmp_path, no_gpu=True,
            start=common.continue_flags(args),
        )  # fmt: skip
        parsed = active_learning.get_args_parser().parse_args([str(a) for a in argv])
        assert getattr(parsed, flag.lstrip("-")) and not (parsed.resume and parsed.overwrite)


def test_an_inner_refusal_names_the_experiments_flags_only(save_dir, tmp_path):
    from experiments import common

    argv = train_args(save_dir)  # an earlier run there, and no --resume: train.py refuses
    argv_list = ["--seed", "1", "--dataset", "digits", "--model", "lenet", "--no-gpu", "-e", "1",
                 "--steps-per-epoch", "2", "-b", "16", "--save-path", str(save_dir)]  # fmt: skip
    assert argv.save_loc == str(save_dir)
    with pytest.raises(UserError) as info:
        common.run_script(train, argv_list, save_dir)
    message = str(info.value)
    assert "--overwrite" in message and "--work-dir" in message and "--resume" not in message


# ----------------------------------------------------------------------------------------------------------
# 7, 10, 11. evaluate.py: other settings, missing runs, a side file that cannot be written


@pytest.fixture
def two_runs(earlier_run, tmp_path) -> Path:
    """Run1 (seed 1) and Run2 (seed 2) of the earlier LeNet, with checkpoints of epochs 1 and 2."""
    model = (earlier_run / "lenet_1_1.model").read_bytes()
    for run in (1, 2):
        (tmp_path / "runs" / f"Run{run}").mkdir(parents=True)
        for epoch in (1, 2):
            (tmp_path / "runs" / f"Run{run}" / f"lenet_{run}_{epoch}.model").write_bytes(model)
    return tmp_path / "runs"


def test_evaluate_refuses_to_replace_a_result_of_other_settings(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    evaluate.main(eval_args(two_runs, out))
    before = snapshot(out)
    err = fails(capsys, evaluate.main, eval_args(two_runs, out, "--epoch", "2"))
    assert "other settings" in err and "--epoch 1 there vs 2 now" in err and "--overwrite" in err
    assert_kept(before)
    evaluate.main(eval_args(two_runs, out))  # the same settings: replaced
    evaluate.main(eval_args(two_runs, out, "--epoch", "2", "--overwrite"))
    assert _json(evaluation_run.result_path(eval_args(two_runs, out)))["info"]["epoch"] == 2


def test_evaluate_checks_every_run_before_the_first_evaluation(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    err = fails(capsys, evaluate.main, eval_args(two_runs, out, runs=3))
    assert "Run3" in err
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_goes_on_when_only_its_side_file_cannot_be_written(two_runs, tmp_path, monkeypatch, capsys):
    real = evaluation_run.atomic_write_json

    def write(path, obj, *args, **kwargs):
        if str(path).endswith(".partial"):
            raise UserError("could not write the side file")
        return real(path, obj, *args, **kwargs)

    monkeypatch.setattr(evaluation_run, "atomic_write_json", write)
    result = evaluate.main(eval_args(two_runs, tmp_path / "out", runs=2))
    assert len(result["values"]["accuracy"]) == 2
    assert evaluation_run.result_path(eval_args(two_runs, tmp_path / "out")).is_file()


def test_a_full_disk_message_says_rerun_and_not_a_previous_version(tmp_path):
    from utils.io import _write_error

    message = str(_write_error(tmp_path / "new.json", OSError(28, "No space left on device")))
    assert "rerun" in message and "resume" not in message and "previous version" not in message


# ----------------------------------------------------------------------------------------------------------
# 8. The results table counts every run once and marks partial inputs


def _result(path: Path, seed: int = 1, accuracy: float = 0.9) -> Path:
    info = {"model": "lenet", "sn": False, "mod": False, "coeff": 3.0, "model_type": "softmax",
            "dataset": "digits", "ood_dataset": "digits_ood", "seed": seed, "runs": 1, "ensemble": 5}  # fmt: skip
    values = {"accuracy": [accuracy], "m1_auroc": [0.7], "m2_auroc": [0.8]}
    path.write_text(json.dumps({"info": info, "values": values}))
    return path


def test_the_results_table_counts_each_run_once(tmp_path):
    from engine.result_tables import format_table, read_results, table_rows

    a = _result(tmp_path / "a.json")
    copy = tmp_path / "copy.json"
    copy.write_text(a.read_text())
    with pytest.warns(UserWarning, match="counted once"):
        rows = table_rows(read_results([a, a, copy]))
    assert {row.runs for row in rows} == {1}
    other = _result(tmp_path / "b.json", accuracy=0.8)  # another evaluation of the seed-1 network
    with pytest.raises(UserError, match="seed 1"):
        read_results([a, other])
    partial = _result(tmp_path / "c.json.partial", seed=2)
    rows = table_rows(read_results([a, partial]))
    assert all(row.runs == 2 and row.partial for row in rows)
    assert "2, partial" in format_table(rows)


# ----------------------------------------------------------------------------------------------------------
# 13. Wording


def test_a_checkpoint_path_that_is_a_folder_is_called_a_folder(tmp_path):
    from engine.run_paths import locate_checkpoint

    (tmp_path / "Run1" / "lenet_1_1.model").mkdir(parents=True)
    with pytest.raises(UserError, match="is a folder") as info:
        locate_checkpoint(tmp_path, 1, model="lenet", seed=1, sn=False, mod=False, coeff=3.0, epoch=1)
    assert "that folder has" not in str(info.value)


def test_changed_flags_advice_names_overwrite():
    from engine.checkpointing import check_resume_compatible

    with pytest.raises(UserError) as info:
        check_resume_compatible({"seed": 1}, {"seed": 2}, keys=("seed",), output_flag="--output-dir")
    assert "--overwrite instead of --resume" in str(info.value) and "without --resume" not in str(info.value)


def test_the_nan_message_mentions_bf16_only_for_bf16_runs():
    from engine.training import _nonfinite_message

    assert "bf16" not in _nonfinite_message(0, 3, float("nan"), "fp32")
    assert "bf16 overflowed" in _nonfinite_message(0, 3, float("nan"), "bf16")


# ----------------------------------------------------------------------------------------------------------
# 15. Tracebacks turned into sentences


@pytest.mark.parametrize("out", ["blocker/fig.png", "fig.jsonl"])
def test_plots_with_an_unwritable_or_unknown_out_say_so(earlier_run, tmp_path, capsys, out):
    from tools import plots

    (tmp_path / "blocker").write_text("a file, not a folder")
    log = str(earlier_run / "lenet_1_log.jsonl")
    args = plots.get_args_parser().parse_args(["curves", log, "--out", str(tmp_path / out)])
    err = fails(capsys, plots.main, args)
    assert "--out" in err


def test_plotting_a_checkpoint_with_nan_weights_is_a_user_error(earlier_run, tmp_path):
    from tools import plots

    state = torch.load(earlier_run / "lenet_1_1.model", weights_only=True)
    next(iter(state.values())).fill_(float("nan"))
    torch.save(state, tmp_path / "lenet_1_1.model")
    with pytest.raises(UserError, match="did not diverge"):
        plots.load_model("lenet", tmp_path / "lenet_1_1.model", "digits")


def test_an_unwritable_tensorboard_folder_is_one_sentence(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    (tmp_path / "blocker").write_text("a file")
    err = fails(
        capsys, train.main, train_args(tmp_path / "run", "--tensorboard", str(tmp_path / "blocker" / "tb"))
    )
    assert "--tensorboard" in err


def test_sigterm_stops_as_ctrl_c_does(tmp_path):
    script = (
        "import os, signal\n"
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 130 and result.stderr.startswith("error: interrupted"), result.stderr
