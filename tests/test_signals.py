"""utils/errors.py at a script's edges: SIGHUP (a closed terminal or SSH session) stops a run as Ctrl-C does,
with its state saved and one sentence, and the run continues with --resume; `nohup` keeps SIGHUP ignored.

Waits below are upper bounds for a hung subprocess only; what the tests check never depends on timing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, train_args

import train
from utils.errors import INTERRUPTED_EXIT_CODE

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
    command = [sys.executable, "train.py", "--seed", "1", "--dataset", "digits", "--model", "lenet", "--no-gpu",
               "-e", "100000", "-b", "16", "-tb", "128", "--steps-per-epoch", "2", "--save-path", str(save)]  # fmt: skip
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
