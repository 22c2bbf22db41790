"""Progress bars: tqdm, quiet on non-main ranks and when stderr is not a terminal (logs stay readable)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled(rank: int = 0) -> bool:
    """Bars on rank 0 only, and only on a terminal unless DDU_PROGRESS=1."""
    if rank != 0:
        return False
    if os.environ.get("DDU_PROGRESS") == "1":
        return True
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, rank: int = 0, enabled: bool | None = None, **kwargs):
    """`tqdm(iterable, **kwargs)`, shown when `enabled`, or with `enabled=None` where it would not flood
    logs (`progress_enabled`: a terminal, or DDU_PROGRESS=1)."""
    show = progress_enabled(rank) if enabled is None else enabled
    return tqdm(iterable, disable=not show, dynamic_ncols=True, **kwargs)
