"""The notebooks: committed clean and parameterised, and each one runs headless on tiny artifacts.

Execution uses nbclient with the `python3` kernel; jupyter_client starts a kernelspec whose command is
`python` with this interpreter (`sys.executable`), so the notebooks see the same environment as the tests
(checked below). Parameters are injected as papermill does: a cell tagged `injected-parameters` right after
the cell tagged `parameters`, so defaults the test does not override stay in force.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import REPO

NOTEBOOKS = REPO / "notebooks"
NAMES = ("fig_1_plot", "al_plot", "two_moons")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def parameters_cell(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def parameter_names(nb: nbformat.NotebookNode) -> set[str]:
    tree = ast.parse(nb.cells[parameters_cell(nb)].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def execute(name: str, params: dict, cwd: Path = NOTEBOOKS) -> nbformat.NotebookNode:
    """Run a copy of notebook `name` with `params` injected; the copy is never written back."""
    from nbclient import NotebookClient

    nb = read(name)
    unknown = set(params) - parameter_names(nb)
    assert not unknown, f"{name} has no parameters {unknown}"
    source = "\n".join(f"{key} = {value!r}" for key, value in params.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(parameters_cell(nb) + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    # The kernel inherits the suite's thread count (conftest: one, or DDU_TEST_THREADS). No time limit per
    # cell (timeout=None): how long a cell takes depends on the machine, not on whether the notebook works.
    env = {**os.environ, "MPLBACKEND": "Agg"}
    client = NotebookClient(
        nb, kernel_name="python3", timeout=None, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)  # the kernel's environment goes here; NotebookClient(env=...) is ignored
    assert os.path.realpath(stream_text(nb.cells[-1]).strip()) == os.path.realpath(sys.executable)
    return nb


def stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def all_text(nb: nbformat.NotebookNode) -> str:
    return "".join(stream_text(c) for c in nb.cells if c.cell_type == "code")


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    raw = path.read_bytes()
    assert raw.startswith(PNG_MAGIC) and len(raw) > 5_000, f"{path} is not a PNG with content"
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 200 and width > 200


@pytest.mark.parametrize("name", NAMES)
def test_committed_clean_and_parameterised(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} is committed with outputs"
    assert nb.cells.index(code[0]) == parameters_cell(nb), "the first code cell must be the parameters"
    assert {"OUTPUT_DIR"} <= parameter_names(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    """LeNet, VGG-16 (widths / 16) and ResNet-18+SN (base width 2) trained 2 steps on the embedded digits."""

    import train

    runs = tmp_path_factory.mktemp("runs")
    common = ["--seed", "1", "--dataset", "digits", "-e", "1", "-b", "16", "-tb", "256", "--no-gpu"]
    for model in (
        ["lenet"],
        ["vgg16", "--width-divisor", "16"],
        ["resnet18", "-sn", "-mod", "--base-width", "2"],
    ):
        argv = [*common, "--steps-per-epoch", "2", "--save-path", str(runs), "--model", *model]
        train.main(train.get_args_parser().parse_args(argv))
    return runs


@pytest.mark.slow
def test_fig_1_plot(tiny_runs, tmp_path):
    checkpoints = {
        "LeNet": {"model": "lenet", "path": str(tiny_runs / "lenet_1_1.model")},
        "VGG-16": {
            "model": "vgg16", "arch": {"width_divisor": 16}, "path": str(tiny_runs / "vgg16_1_1.model"),
        },
        "ResNet-18+SN": {
            "model": "resnet18", "sn": True, "mod": True, "arch": {"base_width": 2},
            "path": str(tiny_runs / "resnet18_sn_3.0_mod_1_1.model"),
        },
        "absent": {"model": "lenet", "path": str(tmp_path / "missing.model")},
    }  # fmt: skip
    out = tmp_path / "figures"
    nb = execute(
        "fig_1_plot",
        {"DATASET_ROOT": None, "DATASET": "digits", "OOD_DATASET": "digits_ood", "CHECKPOINTS": checkpoints,
         "OUTPUT_DIR": str(out), "DEVICE": "cpu"},
    )  # fmt: skip
    text = all_text(nb)
    assert "note: skipping absent" in text
    for label in ("LeNet", "VGG-16", "ResNet-18+SN"):
        assert label in text  # a row of the AUROC table
    assert_png(out / "fig1.png")
    assert_png(out / "fig2.png")


def write_runs(path: Path, runs: int, steps: int, start: float, gain: float) -> None:
    curves = {str(r): [min(100.0, start + gain * s + r) for s in range(steps)] for r in range(runs)}
    path.write_text(json.dumps(curves))


@pytest.mark.slow
def test_al_plot(tmp_path):
    results = tmp_path / "al"
    results.mkdir()
    methods = {"Softmax": "lenet_1_softmax", "Ensemble (PE)": "lenet_1_ensemble", "DDU": "lenet_1_gmm"}
    for i, name in enumerate(methods.values()):
        write_runs(results / f"test_accs_{name}_mnist.json", 3, 6, 50 + i, 4.0)
        if name != "lenet_1_ensemble":  # a Dirty-MNIST experiment not run yet
            write_runs(results / f"test_accs_{name}_dirty_mnist_100.json", 2, 6, 40 + i, 5.0)
            fractions = {str(r): [0.1 * s / (i + 1) for s in range(6)] for r in range(2)}
            (results / f"ambiguous_{name}_dirty_mnist_100.json").write_text(json.dumps(fractions))
    out = tmp_path / "figures"
    nb = execute(
        "al_plot",
        {"AL_DIR": str(results), "METHODS": {**methods, "Ensemble (MI)": "lenet_1_ensemble_mi"},
         "SUBSAMPLE": 100, "OUTPUT_DIR": str(out)},
    )  # fmt: skip
    text = all_text(nb)
    assert "note: skipping Ensemble (MI)" in text
    assert "note: skipping Ensemble (PE)" in text  # only on Dirty-MNIST
    for png in ("al_mnist.png", "al_dirty_mnist.png", "al_ambiguous_fraction.png"):
        assert_png(out / png)


@pytest.mark.slow
def test_two_moons(tmp_path):
    out = tmp_path / "figures"
    nb = execute("two_moons", {"STEPS": 150, "RESOLUTION": 50, "N_SAMPLES": 200, "OUTPUT_DIR": str(out)})
    text = all_text(nb)
    assert "with SN" in text and "without SN" in text
    assert_png(out / "two_moons.png")
