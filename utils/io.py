"""Atomic writes: results and checkpoints are written to a temporary file and moved into place with
`os.replace`, so an interrupted run never leaves a half-written file behind. One writer per output:
`exclusive_lock` refuses a second process that would write the same run's files."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import torch

from utils.errors import UserError

log = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(path: Path, err: OSError) -> UserError:
    before = "the previous version of that file is intact" if path.is_file() else "nothing was written there"
    return UserError(
        f"could not write '{path}' ({err.strerror or err}); {before}: free some space or choose another "
        "folder, then rerun"
    )


class _RecordingFile:
    """A file wrapper that remembers the `OSError` a `write` raised: `torch.save` turns it into an opaque
    `RuntimeError` ("enforce fail ... unexpected pos"), and the cause is what the user needs to hear."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def _atomic_write(path: Path, write_fn) -> None:
    """Write through `write_fn(handle)` into a temporary file beside `path`, flush it to disk, then move it
    into place; failures leave the previous `path` untouched and become a `UserError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(
            f"cannot write to '{path.parent}' ({err.strerror}); choose a writable folder"
        ) from None
    recorder = None
    try:
        with os.fdopen(fd, "wb") as handle:
            recorder = _RecordingFile(handle)
            write_fn(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException as err:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        cause = err if isinstance(err, OSError) else getattr(recorder, "error", None)
        if cause is not None:  # a full disk, a lost mount: the user's to fix, in one sentence
            raise _write_error(path, cause) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """`fig.savefig(path, **kwargs)` (a Matplotlib figure) atomically: a failed write (full disk, file-size
    limit, Ctrl-C) leaves the previous figure at `path` intact instead of a cut-off file. The format is the
    one `path`'s suffix names; one Matplotlib cannot write raises `ValueError` before anything is written."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"Matplotlib cannot write the format {fmt!r}")
    _atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **kwargs))


def cpu_snapshot(obj: Any) -> Any:
    """A copy of `obj` (nested dicts, lists, tuples) with every tensor copied to the CPU and detached, so
    that later in-place updates of the originals (the next training step) cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        copy = type(obj)((key, cpu_snapshot(value)) for key, value in obj.items())
        # A module's state dict: keep the layer versions that `load_state_dict` reads.
        if hasattr(obj, "_metadata"):
            copy._metadata = obj._metadata
        return copy
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(value) for value in obj)
    return obj


class BackgroundWriter:
    """Runs write jobs one at a time on a background thread, so that saving a checkpoint (hundreds of MB,
    flushed to disk) overlaps with the next epoch's training instead of stalling it.

    `submit(job)` first waits for the previous job, then starts `job()`; a job's exception is raised in the
    caller at the next `submit` or `wait`. Used as a context manager, the exit waits for the last job (also
    on Ctrl-C or an error, so the newest state reaches the disk); the thread is not a daemon, so even an
    interpreter that is shutting down finishes the write. Jobs must only touch data nothing else modifies
    (see `cpu_snapshot`).
    """

    def __init__(self, name: str = "checkpoint-writer") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as err:  # surfaced in the submitting thread by wait()
            self._error = err

    def _join(self) -> bool:
        """Join the job's thread even through Ctrl-C (a write cut short loses the file it replaces, and an
        interpreter leaving with the thread inside torch.save aborts); True if Ctrl-C came meanwhile."""
        interrupted = told = False
        while self._thread is not None:
            try:  # everything inside the try: a further Ctrl-C anywhere here only loops again
                if interrupted and not told:
                    told = True
                    print("waiting for the checkpoint write in progress to finish", file=sys.stderr)
                self._thread.join()
                self._thread = None
            except KeyboardInterrupt:
                interrupted = True
        return interrupted

    def wait(self) -> None:
        """Block until the pending job is done (also through Ctrl-C, which is raised after it); raise its
        exception, if any."""
        if self._join():
            raise KeyboardInterrupt
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name, daemon=False)
        self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait()
            return
        # An exception (Ctrl-C, a NaN) is already on its way: finish the write, and let neither a further
        # Ctrl-C nor the write's own error mask it.
        self._join()
        error, self._error = self._error, None
        if error is not None:
            log.error("the last checkpoint write failed too: %s", error)


def lock_path(target: Path) -> Path:
    """The lock file guarding `target` (a file or a run's name stem in its folder): `.{name}.lock` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _lock_holder(note: Path) -> str:
    """Who holds a lock, from the note its holder wrote beside it (or a vaguer phrase when it is unreadable)."""
    try:
        owner = json.loads(note.read_text())
        return f"PID {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded its PID yet"


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, advice: str) -> Iterator[None]:
    """Hold the lock file `path` while the block runs, so that only one process writes what it guards.

    Acquired without waiting: if another process holds it, a `UserError` names `what`, that process (PID and
    host, from the note `{path}.owner` it wrote) and `advice` (e.g. "pass another --save-path"). The lock is the
    operating system's (`filelock`), released when its holder exits or is killed, so a lock left by a killed
    process is taken over; the note is only read for the message and never blocks. Both files are removed on
    release (the lock file while still held, which `filelock` acquirers detect and retry).
    """
    path = Path(path)
    note = path.with_name(path.name + ".owner")
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise UserError(
            f"{what} is being written by another process ({_lock_holder(note)}); wait for it to finish or stop "
            f"it, or {advice}"
        ) from None
    except OSError as err:
        raise UserError(
            f"cannot create the lock file '{path}' ({err.strerror or err}); choose a writable folder"
        ) from None
    try:
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        atomic_write_bytes(note, json.dumps(owner).encode())
        yield
    finally:
        for leftover in (note, path):
            with contextlib.suppress(OSError):
                leftover.unlink()
        lock.release()


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


def git_revision(folder: str | os.PathLike | None = None) -> str:
    """The short git commit of the repository holding `folder` (default: this code's), or 'unknown'."""
    where = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
