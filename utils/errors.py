"""One kind of error for mistakes a user can make (missing data, wrong flags, bad paths).

Scripts wrap `main(args)` with `exit_on_user_error`, so such a mistake ends in one clear sentence on stderr
and a non-zero exit status instead of a traceback. So does Ctrl-C (exit status 130, as a shell reports it):
a script that can continue raises `Interrupted` saying how. Programming errors still raise normally.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT

INTERRUPTED_MESSAGE = "interrupted (Ctrl-C); every file written so far is complete"


class UserError(Exception):
    """An error the user can fix; its message says what was expected and how to fix it."""

    exit_code = USER_ERROR_EXIT_CODE


class Interrupted(UserError):
    """Ctrl-C, turned into one sentence that says what was kept and how to continue."""

    exit_code = INTERRUPTED_EXIT_CODE


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """While the block runs, SIGTERM (a `kill`, a scheduler's pre-emption) stops it as Ctrl-C does: through
    the same handlers, which wait for the writes in progress and say what was kept. Only in the main thread,
    and only where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for script entry points: print a `UserError` as one line and exit with its status (2; 130
    for `Interrupted`); a bare Ctrl-C (or SIGTERM) gets a generic line and status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_ctrl_c():
                return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:
            print(f"error: {INTERRUPTED_MESSAGE}", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None

    return wrapper
