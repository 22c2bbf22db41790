"""utils/errors.py: user mistakes and Ctrl-C end in one sentence and a non-zero exit status."""

from __future__ import annotations

import pytest

from utils.errors import Interrupted, UserError, exit_on_user_error


def run(capsys, exception: BaseException) -> tuple[int, str]:
    @exit_on_user_error
    def main():
        raise exception

    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return info.value.code, err.strip()


def test_a_user_error_is_one_line_and_status_2(capsys):
    assert run(capsys, UserError("expected X; pass --y")) == (2, "error: expected X; pass --y")


def test_ctrl_c_is_one_line_and_status_130(capsys):
    code, err = run(capsys, KeyboardInterrupt())
    assert code == 130 and err == "error: interrupted (Ctrl-C); every file written so far is complete"


def test_a_script_can_say_how_to_continue_after_ctrl_c(capsys):
    assert run(capsys, Interrupted("interrupted; rerun with --resume")) == (
        130,
        "error: interrupted; rerun with --resume",
    )


def test_programming_errors_still_raise():
    @exit_on_user_error
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        main()
