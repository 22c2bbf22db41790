"""The checks every script runs on its flags before doing anything: each raises a `UserError` (one sentence
naming the flag, the valid values and the value given) before any data is read or file written.

Each script has one `check_args(args)` next to its `get_args_parser()`, built from these (`check_number`,
`check_count`, `check_seed`, `check_milestones`, `check_file`, `check_dir`) and, for the network flags,
`engine.network_flags.check_network_flags`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from utils.errors import UserError

SEED_MAX = 2**32 - 1  # NumPy's RandomState (the original's validation split) takes seeds in [0, 2**32)


def _range_text(above, at_least, below, at_most) -> str:
    parts = []
    if above is not None:
        parts.append(f"greater than {above:g}")
    if at_least is not None:
        parts.append(f"at least {at_least:g}")
    if below is not None:
        parts.append(f"below {below:g}")
    if at_most is not None:
        parts.append(f"at most {at_most:g}")
    return " and ".join(parts)


def check_number(
    value: float,
    flag: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    hint: str = "",
) -> None:
    """A finite number within the given bounds (`above`/`below` strict, `at_least`/`at_most` inclusive)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        bounds = _range_text(above, at_least, below, at_most)
        raise UserError(
            f"{flag} must be a finite number{' ' + bounds if bounds else ''}, got {value}"
            + (f" ({hint})" if hint else "")
        )


def check_count(
    value: int, flag: str, *, at_least: int = 1, at_most: int | None = None, hint: str = ""
) -> None:
    """A whole number in `[at_least, at_most]`."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= at_least
    if not ok or (at_most is not None and value > at_most):
        bounds = f"between {at_least} and {at_most}" if at_most is not None else f"at least {at_least}"
        raise UserError(
            f"{flag} must be a whole number {bounds}, got {value}" + (f" ({hint})" if hint else "")
        )


def check_seed(value: int, flag: str = "--seed", *, seeds_used: int = 1) -> None:
    """A seed the generators take: `value ... value + seeds_used - 1` all in `[0, 2**32)`."""
    check_count(value, flag, at_least=0, at_most=SEED_MAX - (seeds_used - 1))


def check_milestones(
    first: int, second: int, flags: tuple[str, str] = ("--first-milestone", "--second-milestone")
) -> None:
    """Two learning-rate drops at epochs `1 <= first < second`. A milestone beyond the last epoch is allowed:
    that drop simply does not happen in this run (short runs keep the defaults; a resumed run may reach it)."""
    check_count(first, flags[0])
    check_count(second, flags[1])
    if second <= first:
        raise UserError(
            f"{flags[1]} {second} must come after {flags[0]} {first}; pass increasing epochs (defaults: 150 and 250)"
        )


def check_file(path: str | Path, flag: str, expected: str) -> Path:
    """`path` names an existing file; `expected` says what it should hold."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else missing_reason(path)
        raise UserError(f"{flag} '{path}' {what}; it should be {expected}")
    return path


def check_dir(path: str | Path, flag: str, expected: str) -> Path:
    """`path` names an existing folder; `expected` says what it should hold."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file" if path.is_file() else missing_reason(path)
        raise UserError(f"{flag} '{path}' {what}; it should be a folder holding {expected}")
    return path


def dangling_link(path: str | Path) -> Path | None:
    """The symbolic link along `path` (the path itself or a folder above it) whose target does not exist,
    or None. Such a path "does not exist", but the link does, and a listing of its folder shows its name."""
    path = Path(path)
    for candidate in (*reversed(path.parents), path):
        if candidate.is_symlink() and not candidate.exists():
            return candidate
    return None


def missing_reason(path: str | Path) -> str:
    """Why a path that is neither a file nor a folder is missing, to follow its name in a message: "does not
    exist", or, for a dangling link (`dangling_link`), that it is a link and where the link points."""
    path = Path(path)
    link = dangling_link(path)
    if link is None:
        return "does not exist"
    target = f"a link to '{os.readlink(link)}', which does not exist"
    return f"is {target}" if link == path else f"does not exist: '{link}' is {target}"


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the flag a user types (the original's spelling first), for messages."""
    return {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
