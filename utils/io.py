"""Atomic writes: results and checkpoints are written to a temporary file and moved into place with
`os.replace`, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write_fn) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(
            f"cannot write to '{path.parent}' ({err.strerror}); choose a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write_fn(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def check_writable_dir(path: Path, what: str = "output folder") -> Path:
    """Create `path` if needed and make sure files can be written there; a `UserError` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as err:
        raise UserError(
            f"the {what} '{path}' is not writable ({err.strerror}); pass a folder you can write to"
        )
    return path


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"expected the JSON file '{path}', but it does not exist") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"'{path}' is not valid JSON ({err.msg} at line {err.lineno}); was it truncated?"
        ) from None
