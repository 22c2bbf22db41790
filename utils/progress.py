"""Progress bars: tqdm, quiet on non-main ranks and when stderr is not a terminal (logs stay readable)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled(rank: int = 0) -> bool:
    if rank != 0:
        return False
    if os.environ.get("DDU_PROGRESS") == "1":
        return True
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, rank: int = 0, **kwargs):
    """`tqdm(iterable, **kwargs)`, disabled where it would flood logs (set DDU_PROGRESS=1 to force it)."""
    return tqdm(iterable, disable=not progress_enabled(rank), dynamic_ncols=True, **kwargs)
