"""One kind of error for mistakes a user can make (missing data, wrong flags, bad paths).

Scripts wrap `main(args)` with `exit_on_user_error`, so such a mistake ends in one clear sentence on stderr
and a non-zero exit status instead of a traceback. Programming errors still raise normally.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error the user can fix; its message says what was expected and how to fix it."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for script entry points: print a `UserError` as one line and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None

    return wrapper
