"""utils/errors.py at a script's edges: SIGHUP (a closed terminal or SSH session) stops a run as Ctrl-C does,
with its state saved and one sentence, and the run continues with --resume; `nohup` keeps SIGHUP ignored.
Output into a pipe whose reader has gone (`| head -1`) ends every script quietly with status 141. A start-up
that cannot load PyTorch (a tight `ulimit -v`) or a package is one sentence. A dangling link is called one.

Waits below are upper bounds for a hung subprocess only; what the tests check never depends on timing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, eval_args, fails, train_args

import evaluate
import train
from utils.errors import (
    BROKEN_PIPE_EXIT_CODE,
    INTERRUPTED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
    starting_up,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning"),
    pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform"),
]

HANG_GUARD_S = 300  # a subprocess that takes longer than this is stuck


def run_until_signalled(script: str) -> subprocess.CompletedProcess:
    """Run `script` (Python source) that signals itself; its status and output."""
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def test_sighup_stops_as_ctrl_c_does():
    script = (
        "import os, signal\n"
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    signal.pause()\n"
        "main()\n"
    )
    result = run_until_signalled(script)
    assert result.returncode == INTERRUPTED_EXIT_CODE, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: interrupted (SIGHUP: the terminal or SSH session closed)")


def test_sighup_ignored_by_nohup_stays_ignored():
    script = (
        "import os, signal\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    print('still running')\n"
        "main()\n"
    )
    result = run_until_signalled(script)
    assert result.returncode == 0 and result.stdout == "still running\n", result.stderr


def test_the_stop_handlers_are_restored_after_main():
    from utils.errors import exit_on_user_error

    before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
    seen = []
    exit_on_user_error(lambda: seen.append(signal.getsignal(signal.SIGHUP)))()
    assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)) == before
    if before[0] is signal.SIG_DFL:
        assert seen[0] is not signal.SIG_DFL  # it was handled while main ran


@pytest.mark.slow
def test_sighup_to_train_py_saves_the_state_and_says_so_in_one_sentence(tmp_path: Path):
    """A real `python train.py` on the embedded digits, hung up after its first epochs, then resumed."""
    save = tmp_path / "run"
    log = save / "lenet_1_log.jsonl"
    command = [sys.executable, "train.py", "--seed", "1", "--dataset", "digits", "--model", "lenet",
               "--no-gpu", "-e", "100000", "-b", "16", "-tb", "128", "--steps-per-epoch", "2",
               "--save-path", str(save)]  # fmt: skip
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w+") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + HANG_GUARD_S
            while not (log.is_file() and log.read_text().count("\n") >= 2):
                assert process.poll() is None, "train.py stopped before it was hung up"
                assert time.monotonic() < deadline, "train.py wrote no epoch"
                time.sleep(0.2)
            process.send_signal(signal.SIGHUP)
            code = process.wait(timeout=HANG_GUARD_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        err.seek(0)
        stderr = err.read()
    assert code == INTERRUPTED_EXIT_CODE, (code, stderr)
    assert "Traceback" not in stderr
    sentence = stderr.strip().splitlines()[-1]
    assert sentence.startswith("error: interrupted") and "SIGHUP" in sentence and "--resume" in sentence
    assert (save / "lenet_1_resume.pt").is_file()
    saved = int(re.search(r"after epoch (\d+)", sentence).group(1))
    assert saved >= 2
    # Resumable: one more epoch continues from the saved state.
    train.main(train_args(save, "--resume", epochs=saved + 1))
    assert len(log.read_text().splitlines()) == saved + 1
    assert (save / f"lenet_1_{saved + 1}.model").is_file()


@pytest.mark.slow
def test_sighup_to_evaluate_py_keeps_the_finished_runs_and_the_rerun_continues(earlier_run, tmp_path):
    """`python evaluate.py` hung up during its second run (the hang-up sent from inside that run, so the
    moment is exact): one sentence, the first run kept in the side file, and the same command finishes."""
    for run in (1, 2):
        (tmp_path / f"Run{run}").mkdir()
        shutil.copy(earlier_run / "lenet_1_1.model", tmp_path / f"Run{run}" / f"lenet_{run}_1.model")
    argv = ["evaluate.py", "--dataset", "digits", "--ood_dataset", "digits_ood", "--load-path", str(tmp_path),
            "--output-dir", str(tmp_path / "out"), "--no-gpu", "--epoch", "1", "--runs", "2",
            "--model", "lenet", "--model-type", "softmax", "-b", "256"]  # fmt: skip
    script = (
        "import os, runpy, signal, sys\n"
        "import engine.evaluation_run as er\n"
        "evaluate_run = er.evaluate_run\n"
        "def hung_up_in_run_2(evaluator, args, run):\n"
        "    if run == 2:\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "    return evaluate_run(evaluator, args, run)\n"
        "er.evaluate_run = hung_up_in_run_2\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('evaluate.py', run_name='__main__')\n"
    )
    result = run_until_signalled(script)
    assert result.returncode == INTERRUPTED_EXIT_CODE and "Traceback" not in result.stderr, result.stderr
    sentence = result.stderr.strip().splitlines()[-1]
    assert sentence.startswith("error: interrupted during run 2 of 2") and "SIGHUP" in sentence
    assert list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "out").glob("*.json"))
    rerun = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert rerun.returncode == 0, rerun.stderr
    (final,) = (tmp_path / "out").glob("res_*.json")
    assert len(json.loads(final.read_text())["values"]["accuracy"]) == 2


# ----------------------------------------------------------------------------------------------------------
# A pipe whose reader has gone


def run_into_closed_pipe(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with stdout a pipe whose reading end is already closed: its first write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            command, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=HANG_GUARD_S
        )
    finally:
        os.close(write)


def test_output_into_a_closed_pipe_ends_quietly_with_status_141():
    script = (
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    for i in range(100000):\n"
        "        print('line', i)\n"
        "main()\n"
    )
    result = run_into_closed_pipe([sys.executable, "-c", script])
    assert (result.returncode, result.stderr) == (BROKEN_PIPE_EXIT_CODE, "")


def test_output_buffered_until_main_returns_also_ends_quietly():
    script = (
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    print('one short line')\n"
        "main()\n"
    )
    result = run_into_closed_pipe([sys.executable, "-c", script])
    assert (result.returncode, result.stderr) == (BROKEN_PIPE_EXIT_CODE, "")


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback():
    """Only a closed stdout or stderr is quiet: a pipe of the program's own is a bug to see."""
    script = (
        "import os\n"
        "from utils.errors import exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    read, write = os.pipe()\n"
        "    os.close(read)\n"
        "    os.write(write, b'x')\n"
        "main()\n"
    )
    result = run_until_signalled(script)
    assert result.returncode == 1 and "BrokenPipeError" in result.stderr


def test_a_results_table_into_a_closed_pipe_ends_quietly(tmp_path):
    result_file = tmp_path / "res.json"
    values = {"accuracy": [0.9, 0.8], "ece": [0.01, 0.02], "m1_auroc": [0.9, 0.95], "m1_auprc": [0.8, 0.85]}
    info = {
        "model": "lenet",
        "model_type": "gmm",
        "dataset": "digits",
        "ood_dataset": "digits_ood",
        "seed": 1,
        "runs": 2,
    }
    result_file.write_text(json.dumps({"values": values, "info": info}))
    result = run_into_closed_pipe([sys.executable, "-m", "tools.results", "table", str(result_file)])
    assert (result.returncode, result.stderr) == (BROKEN_PIPE_EXIT_CODE, "")


@pytest.mark.slow
def test_evaluate_piped_into_head_ends_quietly_after_writing_its_result(earlier_run, tmp_path):
    """`evaluate.py ... | head -1`: the reader takes the first line and goes; the evaluation still finishes
    and writes its result, and the next line it prints ends it quietly."""
    (tmp_path / "Run1").mkdir()
    shutil.copy(earlier_run / "lenet_1_1.model", tmp_path / "Run1")
    command = [sys.executable, "evaluate.py", "--dataset", "digits", "--ood_dataset", "digits_ood",
               "--load-path", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--no-gpu",
               "--epoch", "1", "--runs", "1", "--model", "lenet", "--model-type", "softmax",
               "-b", "256"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        process.stdout.close()  # as `head -1` does
        stderr = process.stderr.read()
        code = process.wait(timeout=HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert first.startswith("evaluate.py ")
    assert code == BROKEN_PIPE_EXIT_CODE and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert len(list((tmp_path / "out").glob("res_*.json"))) == 1


# ----------------------------------------------------------------------------------------------------------
# Start-up: too little memory for PyTorch, a package missing

# The programs that load PyTorch. `tools.results` loads none: under such a limit its first large library is
# SciPy, whose bundled OpenBLAS, when mmap fails inside its start-up allocation (more often with one thread,
# OMP_NUM_THREADS=1 as here), retries forever instead of failing, so no Python code could say anything.
SCRIPTS = [["train.py"], ["evaluate.py"], ["active_learning.py"], ["-m", "tools.plots"],
           ["-m", "tools.demo"]]  # fmt: skip


def under_ulimit(kilobytes: int, *command: str) -> subprocess.CompletedProcess:
    """`command` run by Python in a shell whose address space is limited to `kilobytes` (`ulimit -v`)."""
    line = f"ulimit -v {kilobytes} && exec {shlex.join([sys.executable, *command])}"
    return subprocess.run(
        ["bash", "-c", line], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


@pytest.fixture(scope="module")
def tight_limit() -> int:
    """An address-space limit (kB) that Python and utils.errors start under and PyTorch cannot load in (it
    maps several hundred MB of libraries): Python's own peak plus 150 MB."""
    if shutil.which("bash") is None or not Path("/proc/self/status").is_file():
        pytest.skip("needs bash and /proc to limit and measure the address space")
    probe = "import utils.errors; print(open('/proc/self/status').read())"
    status = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    peak = int(re.search(r"VmPeak:\s*(\d+) kB", status.stdout).group(1))
    limit = peak + 150_000
    if under_ulimit(limit, "-c", "import torch").returncode == 0:
        pytest.skip("this platform ignores ulimit -v (PyTorch loaded under it)")
    return limit


@pytest.mark.parametrize("command", SCRIPTS, ids=lambda command: command[-1])
def test_too_little_memory_for_pytorch_is_one_sentence(tight_limit, command):
    result = under_ulimit(tight_limit, *command, "--help")
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert (
        result.stderr.startswith("error: not enough memory to load PyTorch") and "ulimit -v" in result.stderr
    )


def test_a_missing_package_names_it_and_the_install_command():
    script = (
        "import runpy, sys\n"
        "sys.modules['tqdm'] = None  # as if tqdm were not installed\n"
        "sys.argv = ['train.py', '--help']\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = run_until_signalled(script)
    assert result.returncode == USER_ERROR_EXIT_CODE and result.stderr.count("\n") == 1, result.stderr
    assert "'tqdm' is not installed" in result.stderr and "pip install -r requirements.txt" in result.stderr


def start_up_failure(capsys, exception: BaseException) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info, starting_up("__main__"):
        raise exception
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "exception",
    [
        MemoryError(),
        ImportError("libtorch_cpu.so: failed to map segment from shared object"),
        OSError(12, "Cannot allocate memory"),
    ],  # fmt: skip
    ids=["MemoryError", "ImportError", "OSError"],
)
def test_each_form_of_too_little_memory_is_named(capsys, exception):
    code, err = start_up_failure(capsys, exception)
    assert code == USER_ERROR_EXIT_CODE and err.startswith("error: not enough memory to load PyTorch")


def test_a_package_is_named_by_its_pip_name(capsys):
    code, err = start_up_failure(capsys, ModuleNotFoundError("No module named 'sklearn'", name="sklearn"))
    assert "'scikit-learn' is not installed" in err and "pip install scikit-learn" in err


def test_a_broken_import_of_the_project_keeps_its_traceback():
    with pytest.raises(ModuleNotFoundError), starting_up("__main__"):
        raise ModuleNotFoundError("No module named 'engine.nowhere'", name="engine.nowhere")


def test_imported_as_a_module_the_guard_changes_nothing():
    with pytest.raises(MemoryError), starting_up("train"):
        raise MemoryError


def test_ctrl_c_while_starting_up_is_one_sentence(capsys):
    code, err = start_up_failure(capsys, KeyboardInterrupt())
    assert (
        code == INTERRUPTED_EXIT_CODE
        and err == "error: interrupted (Ctrl-C) while starting up; nothing was written\n"
    )


# ----------------------------------------------------------------------------------------------------------
# A link to a file that is gone


def test_a_dangling_checkpoint_link_is_called_a_link_to_a_missing_target(tmp_path, capsys):
    (tmp_path / "Run1").mkdir()
    (tmp_path / "Run1" / "lenet_1_1.model").symlink_to(tmp_path / "moved" / "lenet_1_1.model")
    err = fails(capsys, evaluate.main, eval_args(tmp_path, tmp_path / "out"))
    assert f"is a link to '{tmp_path / 'moved' / 'lenet_1_1.model'}', which does not exist" in err
    assert "that folder has" not in err


def test_a_dangling_link_above_the_file_is_named(tmp_path):
    from utils.validation import check_file

    (tmp_path / "runs").symlink_to(tmp_path / "unmounted")
    with pytest.raises(UserError) as info:
        check_file(tmp_path / "runs" / "Run1" / "lenet_1_1.model", "--load-path", "a checkpoint")
    assert f"'{tmp_path / 'runs'}' is a link to '{tmp_path / 'unmounted'}', which does not exist" in str(
        info.value
    )


def test_a_path_that_is_simply_missing_still_does_not_exist(tmp_path):
    from utils.validation import check_dir, check_file

    with pytest.raises(UserError, match="does not exist; it should be") as info:
        check_file(tmp_path / "none.model", "--load-path", "a checkpoint")
    assert "link" not in str(info.value)
    with pytest.raises(UserError, match="does not exist; it should be"):
        check_dir(tmp_path / "none", "--load-path", "checkpoints")
