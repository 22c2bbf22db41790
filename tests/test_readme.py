"""Every command shown in README.md must parse with the script's own argument parser, so none can rot.

The commands run with small settings elsewhere (train/evaluate/active-learning/plots/demo tests); here each
README line is checked against the current flags: an unknown or renamed flag fails this test.
"""

from __future__ import annotations

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
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
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
    assert "make demo" in README.read_text() and "make test" in README.read_text()


def _module_and_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = ["python"] + [w for w in words[1:] if not w.startswith("--nproc")]
    if words[1] == "-m":
        return words[2], words[3:]
    return SCRIPTS[words[1]], words[2:]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    module_name, argv = _module_and_args(command)
    module = importlib.import_module(module_name)
    args = module.get_args_parser().parse_args(argv)
    assert args is not None


def test_gpu_check_script_is_valid_bash_and_its_commands_parse():
    """benchmarks/gpu_check.sh is run on the GPU machine only; make sure it cannot rot in between."""
    import subprocess

    script = README.parent / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    commands = re.findall(r"\$PY (-m [\w.]+|\w+\.py)([^|\n]*)", text)
    assert len(commands) >= 5
    for target, rest in commands:
        module = target.split()[1] if target.startswith("-m") else SCRIPTS[target]
        argv = [w for w in shlex.split(rest.replace('"', "")) if not w.startswith("2>")]
        importlib.import_module(module).get_args_parser().parse_args(argv)
