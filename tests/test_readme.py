"""Every command shown in README.md must parse with the script's own argument parser, so none can rot.

The commands run with small settings elsewhere (train/evaluate/active-learning/plots/demo tests); here each
README line is checked against the current flags: an unknown or renamed flag fails this test.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

SCRIPTS = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "active_learning.py": "active_learning",
}


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("python ", "torchrun ")):
                commands.append(line)
    return commands


def test_readme_has_commands():
    commands = readme_commands()
    assert any(c.startswith("python train.py") for c in commands)
    assert any(c.startswith("python evaluate.py") for c in commands)
    assert any(c.startswith("python active_learning.py") for c in commands)
    assert "make demo" in README.read_text(encoding="utf-8") and "make test" in README.read_text(
        encoding="utf-8"
    )


def _module_and_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = ["python"] + [w for w in words[1:] if not w.startswith("--nproc")]
    if words[1] == "-m":
        return words[2], words[3:]
    return SCRIPTS[words[1]], words[2:]


def assert_every_word_takes_effect(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Parse `argv` and check that each flag set its destination to what the command says: a switch to its
    constant, an option to its value (converted by its type), a sub-command to its name. A flag that another
    swallows as its value, or a value that lands elsewhere, fails here although the parse succeeds."""
    args = parser.parse_args(argv)
    words = list(argv)
    while words:
        word = words.pop(0)
        flag, _, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        action = parser._option_string_actions.get(flag)
        if action is None:  # a sub-command (the rest of the words are its flags), a positional argument,
            # or an abbreviated flag
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if sub is None or word not in sub.choices:
                positional = [a.dest for a in parser._actions if not a.option_strings and a is not sub]
                values = [getattr(args, dest) for dest in positional]
                assert not word.startswith("-") and any(word == v or word in (v or []) for v in values), (
                    f"{word!r} is not a flag of {parser.prog} as written"
                )
                continue
            assert getattr(args, sub.dest) == word, (word, args)
            parser = sub.choices[word]
            continue
        if action.nargs == 0:
            boolean = isinstance(action, argparse.BooleanOptionalAction)
            expected = not flag.startswith("--no-") if boolean else action.const
        else:
            if inline:
                value = inline
            elif action.nargs == "?" and (not words or words[0].startswith("-")):
                value = action.const
            else:
                value = words.pop(0)
            expected = action.type(value) if action.type is not None and isinstance(value, str) else value
        got = getattr(args, action.dest)
        if isinstance(action, argparse._AppendAction):
            assert expected in got, (word, got)
        else:
            assert got == expected, (word, got, expected)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    module_name, argv = _module_and_args(command)
    module = importlib.import_module(module_name)
    assert_every_word_takes_effect(module.get_args_parser(), argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed", "1", "-e", "2", "--epochs", "3"],  # the later flag overrides the first
        [
            "--seed",
            "1",
            "--epoch",
            "2",
        ],  # argparse takes the abbreviation; a new flag could make it ambiguous
        ["--seed", "1", "--lr", "0.1", "--learning-rate", "0.2"],  # two spellings of one destination
    ],
)
def test_the_effect_check_catches_commands_that_parse_but_do_not_say_what_they_do(argv):
    parser = importlib.import_module("train").get_args_parser()
    parser.parse_args(argv)
    with pytest.raises(AssertionError):
        assert_every_word_takes_effect(parser, argv)
    assert_every_word_takes_effect(parser, ["--seed", "1", "--resume", "-sn", "--no-data-aug"])


def test_gpu_check_script_is_valid_bash_and_its_commands_parse():
    """benchmarks/gpu_check.sh is run on the GPU machine only; make sure it cannot rot in between."""
    import subprocess

    script = README.parent / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = re.findall(r"\$PY (-m [\w.]+|\w+\.py)([^|\n]*)", text)
    assert len(commands) >= 5
    for target, rest in commands:
        module = target.split()[1] if target.startswith("-m") else SCRIPTS[target]
        argv = [w for w in shlex.split(rest.replace('"', "")) if not w.startswith("2>")]
        assert_every_word_takes_effect(importlib.import_module(module).get_args_parser(), argv)
