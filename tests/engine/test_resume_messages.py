"""Advice never destroys data: a finished `.model` given to --resume, and a resume file of a newer format,
are named for what they are, with what to pass instead, instead of "delete it to start afresh"."""

from __future__ import annotations

import torch
from helpers import assert_kept, fails, snapshot, train_args

import train


def test_a_finished_model_passed_to_resume_says_it_is_a_checkpoint_and_names_the_resume_file(
    save_dir, capsys
):
    model = save_dir / "lenet_1_1.model"
    before = snapshot(save_dir)
    line = fails(capsys, train.main, train_args(save_dir, "--resume", str(model), epochs=2))
    assert f"'{model}' is a model checkpoint" in line and "lenet_1_resume.pt" in line
    assert "delete" not in line
    assert_kept(before)


def test_a_resume_file_of_a_newer_format_says_to_update_the_code(save_dir, capsys):
    resume = save_dir / "lenet_1_resume.pt"
    state = torch.load(resume, weights_only=True)
    torch.save({**state, "format": state["format"] + 1}, resume)
    before = snapshot(save_dir)
    line = fails(capsys, train.main, train_args(save_dir, "--resume", epochs=2))
    assert "written by a newer version" in line and "update the code" in line and "delete" not in line
    assert_kept(before)


def test_another_file_passed_to_resume_names_the_resume_file_to_pass(save_dir, capsys):
    other = save_dir / "notes.pt"
    torch.save({"format": "mine", "step": 3}, other)
    line = fails(capsys, train.main, train_args(save_dir, "--resume", str(other), epochs=2))
    assert "is not a resume file" in line and "_resume.pt" in line and "delete" not in line


def test_a_resume_file_with_a_changed_byte_is_refused_before_loading(save_dir, capsys):
    """The zip CRC-32s are checked, as for checkpoints: a changed weight would otherwise continue silently."""
    import zipfile

    resume = save_dir / "lenet_1_resume.pt"
    with zipfile.ZipFile(resume) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    raw = bytearray(resume.read_bytes())
    start = (
        record.header_offset
        + 30
        + int.from_bytes(raw[record.header_offset + 26 : record.header_offset + 28], "little")
    )
    start += int.from_bytes(raw[record.header_offset + 28 : record.header_offset + 30], "little")
    raw[start + record.file_size // 2] ^= 0x01
    resume.write_bytes(bytes(raw))
    before = snapshot(save_dir)
    line = fails(capsys, train.main, train_args(save_dir, "--resume", epochs=2))
    assert f"'{resume}' is damaged" in line and "CRC-32" in line and "delete" not in line
    assert_kept(before)
