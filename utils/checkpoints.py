"""Where evaluate.py finds checkpoints: the original README's `Run{i}` layout and naming."""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError
from utils.naming import run_name


def run_seeds(seed: int, run: int, ensemble: int | None = None) -> list[int]:
    """Seeds of run `run` (1-based): `seed + run - 1` for single models; for ensembles of size E,
    `seed + (run-1)*E ... seed + run*E - 1` (seed 1: Run1 = 1..5, Run2 = 6..10)."""
    if ensemble is None:
        return [seed + run - 1]
    return list(range(seed + (run - 1) * ensemble, seed + run * ensemble))


def locate_checkpoint(
    load_path: Path,
    run: int,
    *,
    model: str,
    seed: int,
    sn: bool,
    mod: bool,
    coeff: float,
    epoch: int,
    ensemble_naming: bool = False,
) -> Path:
    """`{load_path}/Run{run}/{name}_{epoch}.model`; with `ensemble_naming` also the original's ensemble
    name `{model}_{seed}_{epoch}.model` (which ignores -sn/-mod). A `UserError` lists what exists otherwise."""
    folder = Path(load_path) / f"Run{run}"
    candidates = [folder / f"{run_name(model, seed, sn, mod, coeff)}_{epoch}.model"]
    if ensemble_naming:
        candidates.append(folder / f"{model}_{seed}_{epoch}.model")
    for path in candidates:
        if path.is_file():
            return path
    if not folder.is_dir():
        raise UserError(
            f"expected the folder '{folder}' with run {run}'s checkpoints (layout {{load-path}}/Run{{i}}/); "
            "check --load-path and --runs"
        )
    existing = sorted(p.name for p in folder.glob("*.model"))
    shown = (
        ", ".join(existing[:10]) + (" ..." if len(existing) > 10 else "") if existing else "no .model files"
    )
    raise UserError(
        f"expected checkpoint '{candidates[0]}' but it does not exist (that folder has: {shown}); "
        "check --model, -sn, -mod, --coeff, --seed and --epoch"
    )
