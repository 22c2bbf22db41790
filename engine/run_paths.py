"""How a run's files are named and found again; what they hold and how they are written is
`engine.checkpointing`.

Names follow the original DDU code, so its README's commands and its checkpoints work here:

* a run is `{model}_sn_{coeff}_mod_{seed}`, `{model}_sn_{coeff}_{seed}`, `{model}_mod_{seed}` or
  `{model}_{seed}` (`run_name`); train.py writes `{name}_{epoch}.model` (a plain state dict of the bare
  network) and `{name}_train_loss.json` into `--save-path`, plus `{name}_log.jsonl` and `{name}_resume.pt`
  (`RunFiles`; `RunFiles.of_checkpoint` goes from a checkpoint back to its run's other files);
* evaluate.py reads run `i` from `{load-path}/Run{i}/` (`locate_checkpoint`, `run_seeds`).
"""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError
from utils.validation import dangling_link, missing_reason

# --------------------------------------------------------------------------------------------------------
# Names


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


def checkpoint_file_name(name: str, epoch: int) -> str:
    """The checkpoint of run `name` after `epoch` epochs (counting from 1): `{name}_{epoch}.model`."""
    return f"{name}_{epoch}.model"


# --------------------------------------------------------------------------------------------------------
# Finding checkpoints (evaluate.py)


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
    candidates = [folder / checkpoint_file_name(run_name(model, seed, sn, mod, coeff), epoch)]
    if ensemble_naming:
        candidates.append(folder / checkpoint_file_name(f"{model}_{seed}", epoch))
    for path in candidates:
        if path.is_file():
            return path
        if path.is_dir():
            raise UserError(
                f"expected the checkpoint file '{path}', but that is a folder; move it away or check --load-path"
            )
    for path in candidates:
        if dangling_link(path) is not None:
            raise UserError(
                f"expected the checkpoint '{path}', but it {missing_reason(path)}; restore the link's target "
                "or check --load-path"
            )
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


# --------------------------------------------------------------------------------------------------------
# The files of one training run


class RunFiles:
    """The files of one run under `save_dir`, named as the original: `{name}_{epoch}.model` (a plain state
    dict of the bare network), `{name}_train_loss.json`, plus `{name}_log.jsonl` (one line per epoch) and
    `{name}_resume.pt` (everything `--resume` needs).

    Only names live here; writing them and resuming from them is `engine.checkpointing`.
    """

    def __init__(self, save_dir: Path, name: str) -> None:
        self.save_dir, self.name = Path(save_dir), name
        # The epoch whose state this run has in its resume file (None: none yet), for the stop messages: set
        # by `engine.checkpointing.write_epoch` once the file is in place, and to the start epoch by a resume.
        self.saved_epoch: int | None = None

    @property
    def resume(self) -> Path:
        return self.save_dir / f"{self.name}_resume.pt"

    @property
    def train_loss(self) -> Path:
        return self.save_dir / f"{self.name}_train_loss.json"

    @property
    def log(self) -> Path:
        return self.save_dir / f"{self.name}_log.jsonl"

    def model(self, epoch: int) -> Path:
        """The checkpoint after `epoch` epochs (counting from 1, as the original's file names)."""
        return self.save_dir / checkpoint_file_name(self.name, epoch)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunFiles | None:
        """The files of the run that wrote `checkpoint` (`{name}_{epoch}.model`, `checkpoint_file_name`'s
        inverse), or None when the file is not named that way."""
        checkpoint = Path(checkpoint)
        stem, _, epoch = checkpoint.name.removesuffix(".model").rpartition("_")
        if not checkpoint.name.endswith(".model") or not stem or not epoch.isdigit():
            return None
        return cls(checkpoint.parent, stem)


__all__ = ["RunFiles", "checkpoint_file_name", "format_coeff", "locate_checkpoint", "run_name", "run_seeds"]
