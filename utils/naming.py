"""The original DDU run naming, shared by train.py, evaluate.py and active_learning.py.

`{model}_sn_{coeff}_mod_{seed}`, `{model}_sn_{coeff}_{seed}`, `{model}_mod_{seed}` or `{model}_{seed}`;
checkpoints are `{name}_{epoch}.model`.
"""

from __future__ import annotations


def format_coeff(coeff: float) -> str:
    """`3.0` as the original prints it (Python's str of a float)."""
    return str(float(coeff))


def run_name(model: str, seed: int | None, spectral_normalization: bool, mod: bool, coeff: float) -> str:
    """Name prefix of a run; `seed=None` gives the prefix without the seed (for result files)."""
    name = model
    if spectral_normalization:
        name += f"_sn_{format_coeff(coeff)}"
    if mod:
        name += "_mod"
    if seed is not None:
        name += f"_{seed}"
    return name


def checkpoint_name(
    model: str, seed: int, spectral_normalization: bool, mod: bool, coeff: float, epoch: int
) -> str:
    return f"{run_name(model, seed, spectral_normalization, mod, coeff)}_{epoch}.model"
