"""The package layers only point down, and no import cycle or hidden (function-local) import exists.

From the bottom: `utils` (plumbing) < `metrics`, `net`, `data` (independent of each other; `data` imports
only `utils`) < `engine` < the scripts (`train`, `evaluate`, `active_learning`) < `tools` (among them the
Ambiguous-MNIST generator, which trains networks) < `experiments`, `benchmarks`. A module may import its own
package and any lower layer, never a higher one or a sibling of its own layer. The test reads every
module's source (nothing is imported), so it holds for code added later too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

LAYERS = {
    "utils": 0,
    "metrics": 1,
    "net": 1,
    "data": 1,
    "engine": 3,
    "train": 4,
    "evaluate": 4,
    "active_learning": 4,
    "tools": 5,
    "experiments": 6,
    "benchmarks": 6,
}
SCRIPTS = {"train", "evaluate", "active_learning"}


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] not in LAYERS or any(p.startswith(".") for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """`(imported project module, at module level)` for every import statement of the file; an import in a
    module-level block (`try:` around the imports, `if __name__ == ...`) is at module level, one inside a
    function or class is not."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from engine import training` imports engine.training; `from engine.x import f`, engine.x.
                names = [
                    f"{child.module}.{alias.name}"
                    if f"{child.module}.{alias.name}" in MODULES
                    else child.module
                    for alias in child.names
                ]
            else:
                visit(child, inner)
                continue
            found.extend((name, not in_function) for name in names if name.split(".")[0] in LAYERS)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def package(module: str) -> str:
    return module.split(".")[0]


def test_the_layer_table_knows_every_package():
    assert {package(m) for m in MODULES} == set(LAYERS)
    assert {"engine.training", "engine.networks", "utils.io", "tools.plots"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    here = package(module)
    for name, _ in imports_of(MODULES[module]):
        there = package(name)
        if there == here:
            continue
        assert LAYERS[there] < LAYERS[here], f"{module} imports {name}: {there} is not below {here}"


def test_data_imports_only_utils():
    """Data sets and loaders know nothing of networks, metrics or training (the generator is in tools/)."""
    wrong = {
        (module, name)
        for module, path in MODULES.items()
        if package(module) == "data"
        for name, _ in imports_of(path)
        if package(name) not in {"data", "utils"}
    }
    assert not wrong, f"data/ imports beyond utils/: {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_project_imports_are_at_module_level(module):
    hidden = [name for name, top in imports_of(MODULES[module]) if not top]
    assert not hidden, f"{module} imports {hidden} inside a function or block; import at the top"


def test_no_import_cycle():
    graph = {
        m: {n if n in MODULES else n.rsplit(".", 1)[0] for n, _ in imports_of(p)} & set(MODULES)
        for m, p in MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if target == module or MODULES[target].name == "__init__.py" and module.startswith(target + "."):
                continue  # a package's own __init__ re-exporting its modules is not a cycle of theirs
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_a_violation(tmp_path):
    """The walker finds a function-local import and an upward one (so the tests above can fail)."""
    source = tmp_path / "probe.py"
    source.write_text("import net\n\ndef f():\n    from engine import training\n")
    found = imports_of(source)
    assert ("net", True) in found and ("engine.training", False) in found
