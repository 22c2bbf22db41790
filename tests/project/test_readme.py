"""Every command shown in README.md and docs/*.md must parse with its script's own argument parser, so none can
rot.

The commands run with small settings elsewhere (train/evaluate/active-learning/plots/demo tests); here each
line of a ```bash block is checked against the current flags: an unknown or renamed flag fails this test,
and so does a `python -m MODULE` of this project that no longer exists or has no parser. Links between the
pages must point at files inside the repository.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO

ROOT = REPO
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

SCRIPTS = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "active_learning.py": "active_learning",
}
# The packages of this project: `python -m` of a module in one of them must import and have a parser.
# Modules of other packages (`python -m pip`, `python -m pytest`) are not this project's to check.
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def _page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _commands_of(text: str) -> list[str]:
    """The `python ...` and `torchrun ...` lines of the ```bash blocks, comments and leading `VAR=value`
    assignments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            while re.match(r"[A-Z_][A-Z0-9_]*=\S* ", line):
                line = line.split(" ", 1)[1].lstrip()
            if line.startswith(("python ", "torchrun ")) and _is_ours(line):
                commands.append(line)
    return commands


def _is_ours(command: str) -> bool:
    words = shlex.split(command)
    if len(words) > 2 and words[1] == "-m":
        return words[2].split(".")[0] in PACKAGES
    return True


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of this project shown in the README and in docs/*.md."""
    return [(_page_name(page), c) for page in PAGES for c in _commands_of(page.read_text(encoding="utf-8"))]


def readme_commands() -> list[str]:
    """Every command the README and the docs pages show (the README's first)."""
    return [command for _, command in documented_commands()]


def test_readme_has_commands():
    text = README.read_text(encoding="utf-8")
    commands = _commands_of(text)
    assert any(c.startswith("python train.py") for c in commands)
    assert any(c.startswith("python evaluate.py") for c in commands)
    assert any(c.startswith("python active_learning.py") for c in commands)
    assert "make demo" in text and "make test" in text


def test_docs_pages_are_read_and_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    assert DOCS, "docs/*.md holds the pages the README links to"
    for page in DOCS:
        assert f"]({_page_name(page)}" in text, f"README.md does not link {_page_name(page)}"
    assert {page for page, _ in documented_commands()} >= {"README.md", "docs/usage.md"}


@pytest.mark.parametrize("page", PAGES, ids=_page_name)
def test_links_point_inside_the_repository(page):
    """Relative links name files of this repository (no `../shared/...`: users download the data sets)."""
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{_page_name(page)}: broken link {target}"
    assert "../shared" not in text


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


@pytest.mark.parametrize(
    "page, command",
    documented_commands(),
    ids=[f"{page}: {command}" for page, command in documented_commands()],
)
def test_readme_command_parses(page, command):
    module_name, argv = _module_and_args(command)
    module = importlib.import_module(module_name)
    assert hasattr(module, "get_args_parser"), f"{page}: {module_name} has no command line"
    assert_every_word_takes_effect(module.get_args_parser(), argv)


def test_python_m_commands_of_this_project_are_collected():
    """`python -m tools.results ...` is checked, `python -m pip ...` is not; a module of a removed name
    (`python -m utils.plots`) is collected, so its parse fails on the import."""
    assert _commands_of("```bash\npython -m pip install x\n```\n") == []
    assert _commands_of("```bash\npython -m utils.plots al\n```\n") == ["python -m utils.plots al"]
    assert _commands_of("```bash\nOMP_NUM_THREADS=1 python train.py --seed 1  # one thread\n```\n") == [
        "python train.py --seed 1"
    ]
    modules = {_module_and_args(c)[0] for c in readme_commands()}
    assert {"tools.results", "tools.plots", "tools.ambiguous_mnist", "experiments.dirty_mnist"} <= modules


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

    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = re.findall(r"\$PY (-m [\w.]+|\w+\.py)([^|\n]*)", text)
    assert len(commands) >= 5
    for target, rest in commands:
        module = target.split()[1] if target.startswith("-m") else SCRIPTS[target]
        argv = [w for w in shlex.split(rest.replace('"', "")) if not w.startswith("2>")]
        assert_every_word_takes_effect(importlib.import_module(module).get_args_parser(), argv)
