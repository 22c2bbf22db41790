"""One kind of error for mistakes a user can make (missing data, wrong flags, bad paths), and the one place
where every script meets the world outside Python: signals, closed pipes, a failed start-up.

Scripts wrap `main(args)` with `exit_on_user_error`, so such a mistake ends in one clear sentence on stderr
and a non-zero exit status instead of a traceback. So does Ctrl-C (exit status 130, as a shell reports it):
a script that can continue raises `Interrupted` saying how. SIGTERM (a `kill`, a scheduler's pre-emption)
and SIGHUP (the terminal or SSH session closed) stop a script as Ctrl-C does. Output into a pipe that closed
early (`evaluate.py ... | head -1`) ends the script quietly with status 141, the status a shell reports for a
program stopped by SIGPIPE (`cat big | head -1` gives the same), so that `set -o pipefail` still tells a cut
off run from a finished one. Scripts import PyTorch and the rest inside `starting_up(__name__)`, so a
start-up that fails for want of memory or a package is one sentence too. Programming errors still raise.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, TextIO, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT
BROKEN_PIPE_EXIT_CODE = 141  # 128 + SIGPIPE

INTERRUPTED_MESSAGE = "interrupted (Ctrl-C); every file written so far is complete"

# Signals that stop a script as Ctrl-C does, and how a message names them. SIGHUP does not exist on Windows.
STOP_SIGNALS = {
    name: text
    for name, text in (
        ("SIGTERM", "SIGTERM: a kill or a scheduler's pre-emption"),
        ("SIGHUP", "SIGHUP: the terminal or SSH session closed"),
    )
    if hasattr(signal, name)
}
_stopped_by: list[str] = []  # the stop signals received in this process, newest last

# Top-level packages of this project: an ImportError naming one of them is a bug, not a missing install.
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Import names whose pip package is spelled differently.
_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python"}


class UserError(Exception):
    """An error the user can fix; its message says what was expected and how to fix it."""

    exit_code = USER_ERROR_EXIT_CODE


class Interrupted(UserError):
    """Ctrl-C, turned into one sentence that says what was kept and how to continue."""

    exit_code = INTERRUPTED_EXIT_CODE


def _say(message: str) -> None:
    """`message` on stderr; a stderr that is gone (a closed terminal, a closed pipe) is pointed at the null
    device instead of raising, since there is nobody left to tell."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _to_devnull(sys.stderr)


def _to_devnull(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at the null device, so that what it still buffers, and the
    interpreter's final flush, go nowhere instead of failing with 'Exception ignored ... BrokenPipeError'."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _is_closed(stream: TextIO) -> bool:
    """True if writing to `stream` fails because its reader is gone: a pipe whose reading end closed (`poll`
    reports an error on the writing end) or a hung-up terminal."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a closed file: not a pipe of ours
        return False
    import select  # here: only a closed pipe needs it

    if not hasattr(select, "poll"):  # Windows: a BrokenPipeError on a standard stream is the pipe's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_on_closed_pipe() -> None:
    """Exit with status 141 and no message if the error came from stdout or stderr writing into a pipe or
    terminal whose reader is gone; return (so the caller re-raises) if it came from anything else."""
    closed = [stream for stream in (sys.stdout, sys.stderr) if _is_closed(stream)]
    if not closed:
        return
    for stream in closed:
        _to_devnull(stream)
    raise SystemExit(BROKEN_PIPE_EXIT_CODE) from None


def _stop_as_ctrl_c(signum, frame) -> None:
    _stopped_by.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_as_ctrl_c():
    """While the block runs, SIGTERM and SIGHUP stop it as Ctrl-C does: through the same handlers, which
    wait for the writes in progress and say what was kept. Only in the main thread, and only for a signal
    that still has its default action (`nohup` sets SIGHUP to be ignored, and so it stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name)
        if signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, _stop_as_ctrl_c)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


sigterm_as_ctrl_c = stop_signals_as_ctrl_c  # the earlier name


def _interrupted_message(text: str) -> str:
    """`text` (what was kept and how to continue), naming the signal when it was not Ctrl-C."""
    if not _stopped_by:
        return text
    cause = STOP_SIGNALS[_stopped_by[-1]]
    if "(Ctrl-C)" in text:
        return text.replace("Ctrl-C", cause)
    return f"{text} (stopped by {cause})"


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for script entry points: print a `UserError` as one line and exit with its status (2; 130
    for `Interrupted`); a bare Ctrl-C, SIGTERM or SIGHUP gets a generic line and status 130; output into a
    closed pipe ends quietly with status 141."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _stopped_by.clear()
        try:
            with stop_signals_as_ctrl_c():
                result = fn(*args, **kwargs)
                sys.stdout.flush()  # here, so that a closed pipe is met inside the try
                return result
        except UserError as err:
            message = _interrupted_message(str(err)) if isinstance(err, Interrupted) else str(err)
            _say(f"error: {message}")
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:
            _say(f"error: {_interrupted_message(INTERRUPTED_MESSAGE)}")
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.EIO):
                _quiet_on_closed_pipe()
            raise

    return wrapper


# --------------------------------------------------------------------------------------------------------
# Start-up: the imports of a script run as a program


def _is_memory_failure(err: BaseException) -> bool:
    """MemoryError, or a shared library (libtorch_cpu.so, ...) that could not be mapped into a process whose
    address space is limited (`ulimit -v`): the loader reports that as an ImportError or OSError."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, (ImportError, OSError)) and (
        getattr(err, "errno", None) == errno.ENOMEM
        or "failed to map segment" in text
        or "cannot allocate memory" in text
    )


def _start_up_failure(err: BaseException) -> str | None:
    """The sentence for an exception raised while a script imports its libraries, or None for a bug of
    the project (an ImportError of one of its own modules) that should keep its traceback."""
    if isinstance(err, KeyboardInterrupt):
        return _interrupted_message("interrupted (Ctrl-C) while starting up; nothing was written")
    if _is_memory_failure(err):
        cause = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        return (
            f"not enough memory to load PyTorch and the libraries this script needs ({cause}); raise the "
            "memory limit (ulimit -v, or the job's memory request) or free memory"
        )
    if not isinstance(err, ImportError):
        return None
    module = (err.name or "").split(".")[0]
    if module and (_PROJECT_ROOT / module).is_dir():
        return None
    if isinstance(err, ModuleNotFoundError) and module:
        package = _PIP_NAMES.get(module, module)
        return (
            f"the package '{package}' is not installed (no module named '{err.name}'); install the "
            f"requirements with: pip install -r requirements.txt (or: pip install {package})"
        )
    return (
        f"a library could not be loaded ({type(err).__name__}: {err}); install the pinned versions with: "
        "pip install -r requirements.txt"
    )


@contextlib.contextmanager
def starting_up(module_name: str):
    """Wrap a script's imports: `with starting_up(__name__): import torch ...`. Run as a program
    (`module_name == "__main__"`), Ctrl-C (or SIGTERM, SIGHUP) while PyTorch loads, too little memory to load
    it (a tight `ulimit -v`) and a missing package each end in one sentence and a non-zero exit status.
    Imported (by tests, by another script), the block changes nothing."""
    if module_name != "__main__":
        yield
        return
    _stopped_by.clear()
    try:
        with stop_signals_as_ctrl_c():
            yield
    except (KeyboardInterrupt, MemoryError, ImportError, OSError) as err:
        message = _start_up_failure(err)
        if message is None:
            raise
        _say(f"error: {message}")
        code = INTERRUPTED_EXIT_CODE if isinstance(err, KeyboardInterrupt) else USER_ERROR_EXIT_CODE
        raise SystemExit(code) from None
