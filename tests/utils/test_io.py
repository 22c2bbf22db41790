"""utils/io.py: atomic writes, write failures as one-sentence errors, CPU snapshots and the background
checkpoint writer that train.py uses."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import torch
from helpers import file_size_limit

from utils.errors import UserError
from utils.io import BackgroundWriter, atomic_torch_save, atomic_write_bytes, cpu_snapshot


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def crash(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        from utils.io import _atomic_write

        _atomic_write(path, crash)
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


@pytest.mark.parametrize("kind", ["torch", "bytes"])
def test_a_full_disk_is_one_clear_sentence_and_keeps_the_previous_file(tmp_path, kind):
    path = tmp_path / "state.bin"
    atomic_write_bytes(path, b"old")
    with file_size_limit(1 << 16), pytest.raises(UserError) as info:
        if kind == "torch":  # torch.save alone would report "enforce fail ... unexpected pos"
            atomic_torch_save({"weight": torch.zeros(1 << 16)}, path)
        else:
            atomic_write_bytes(path, b"x" * (1 << 17))
    message = str(info.value)
    assert (
        f"could not write '{path}'" in message and os.strerror(errno.EFBIG) in message and "intact" in message
    )
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_cpu_snapshot_is_independent_of_later_in_place_updates():
    weight = torch.ones(3, requires_grad=True)
    state = {"model": {"w": weight}, "optimizer": {"state": {0: {"momentum": torch.zeros(2)}}, "lr": [0.1]}}
    snapshot = cpu_snapshot(state)
    with torch.no_grad():
        weight.add_(1.0)
    state["optimizer"]["state"][0]["momentum"].fill_(5.0)
    assert torch.equal(snapshot["model"]["w"], torch.ones(3)) and not snapshot["model"]["w"].requires_grad
    assert torch.equal(snapshot["optimizer"]["state"][0]["momentum"], torch.zeros(2))
    assert snapshot["optimizer"]["lr"] == [0.1] and isinstance(snapshot["optimizer"]["lr"], list)


def test_cpu_snapshot_of_a_state_dict_keeps_its_layer_versions():
    state = torch.nn.BatchNorm2d(3).state_dict()
    snapshot = cpu_snapshot(state)
    assert type(snapshot) is type(state) and list(snapshot) == list(state)
    assert snapshot._metadata == state._metadata and snapshot._metadata[""]["version"] == 2


def test_background_writer_runs_jobs_in_order_one_at_a_time():
    events, running = [], threading.Lock()

    def job(name):
        def run():
            assert running.acquire(blocking=False), "two jobs overlapped"
            time.sleep(0.02)
            events.append(name)
            running.release()

        return run

    with BackgroundWriter() as writer:
        for name in "abc":
            writer.submit(job(name))
    assert events == ["a", "b", "c"]


def test_background_writer_raises_a_jobs_error_at_the_next_submit_and_at_exit():
    writer = BackgroundWriter()
    writer.submit(lambda: (_ for _ in ()).throw(UserError("could not write 'x'")))
    with pytest.raises(UserError, match="could not write"):
        writer.submit(lambda: None)
    with pytest.raises(UserError, match="second"):
        with writer:
            writer.submit(lambda: (_ for _ in ()).throw(UserError("second")))


def test_background_writer_finishes_the_write_but_keeps_the_callers_exception():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            writer.submit(lambda: (time.sleep(0.05), done.append(True)))
            raise KeyboardInterrupt
    assert done == [True]
