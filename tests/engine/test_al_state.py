"""engine/al_run.py resuming from a state file edited by hand: its contents are checked, not only its syntax.
An index outside the pool, of the wrong type or labelled twice, and a record of the wrong shape, are one
sentence naming the file and the key (never a traceback, never a silent resume); an untouched state resumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import al_args, fails

import active_learning
from engine import al_run

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")

BUDGET = 25  # 20 initial samples and one acquisition of 5: a finished run with two steps


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """The output folder of a finished tiny experiment (LeNet, softmax acquisition, one run)."""
    out = tmp_path_factory.mktemp("al_finished")
    active_learning.main(al_args(data_root, out, max_samples=BUDGET))
    return out


@pytest.fixture
def edit(finished, data_root, tmp_path, capsys):
    """`edit(change)`: a copy of the finished experiment whose state `change(state)` edits, resumed; the
    sentence it fails with (the state file's name in it is checked here)."""

    copies = iter(range(100))

    def run(change) -> str:
        out = tmp_path / f"out{next(copies)}"
        shutil.copytree(finished, out)
        args = al_args(data_root, out, "--resume", max_samples=BUDGET)
        path = out / al_run.output_names(args)["state"]
        state = json.loads(path.read_text())
        change(state)
        path.write_text(json.dumps(state))
        err = fails(capsys, active_learning.main, args)
        assert str(path) in err
        return err

    return run


def labelled(state) -> list:
    return state["runs"]["0"]["labelled"]


def test_an_untouched_state_resumes(finished, data_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    state = active_learning.main(al_args(data_root, out, "--resume", max_samples=BUDGET))
    assert len(state["runs"]["0"]["labelled"]) == BUDGET and state["runs"]["0"]["done"] is True


def test_an_index_outside_the_pool_is_named(edit):
    err = edit(lambda s: labelled(s).__setitem__(3, 10**6))
    assert "runs.0.labelled[3] is 1000000, outside the pool (indices 0 to " in err


def test_a_negative_index_is_named(edit):
    assert "runs.0.labelled[0] is -1, outside the pool" in edit(lambda s: labelled(s).__setitem__(0, -1))


@pytest.mark.parametrize("value", [3.0, "3", True, [3], None], ids=["float", "str", "bool", "nested", "null"])
def test_an_index_of_the_wrong_type_is_named(edit, value):
    err = edit(lambda s: labelled(s).__setitem__(2, value))
    assert "runs.0.labelled[2] is " in err and "not a whole-number index into the pool" in err


def test_a_duplicate_index_is_refused(edit):
    err = edit(lambda s: labelled(s).__setitem__(-1, labelled(s)[4]))
    assert f"runs.0.labelled[{BUDGET - 1}]" in err and "already labelled at position 4" in err


@pytest.mark.parametrize(
    "key, value, expected",
    [("labelled", {"0": 1}, "runs.0.labelled is {'0': 1}, not a list"),
     ("test_accs", "90", "runs.0.test_accs is '90', not a list"),
     ("test_accs", [90.0, 170.0], "runs.0.test_accs[1] is 170.0, not a number from 0 to 100"),
     ("ambiguous_fraction", [1.5], "runs.0.ambiguous_fraction[0] is 1.5, not a number from 0 to 1"),
     ("entropies", [[0.1, -2.0]], "runs.0.entropies[0] is not a list of non-negative numbers"),
     ("done", "yes", "runs.0.done is 'yes', not a bool")],
    ids=["labelled", "test_accs", "accuracy", "fraction", "entropy", "done"],
)  # fmt: skip
def test_a_record_of_the_wrong_shape_is_named(edit, key, value, expected):
    assert expected in edit(lambda s: s["runs"]["0"].__setitem__(key, value))


def test_a_run_that_is_not_a_record_is_named(edit):
    assert "runs.0 is a list, not a run's record" in edit(lambda s: s["runs"].__setitem__("0", [1, 2]))
    assert "runs.first is not a run number" in edit(lambda s: s["runs"].__setitem__("first", {}))
