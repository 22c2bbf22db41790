"""One active-learning experiment from checked flags to its files (what `active_learning.py` runs): the
shared pool, validation split and class-balanced initial set, then for every run the acquisition steps
(train on the labelled set, test, score the pool, move the top-scoring samples into the labelled set), its
state written after every step so that `--resume` continues where it stopped. The steps' pieces (training
the best epoch, the acquisition scores) are in `engine.acquisition`.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

import data
from engine import acquisition as al
from engine import stacked_ensemble, tensorboard
from engine.checkpointing import check_resume_compatible
from engine.network_flags import ARCH_FLAGS
from engine.networks import build_model, load_network
from engine.run_paths import run_name
from engine.training import TrainSettings
from utils.device import resolve_precision, select_device
from utils.errors import UserError
from utils.io import atomic_write_json, check_writable_dir, read_json
from utils.progress import progress_bar, progress_enabled
from utils.seed import seed_everything

log = logging.getLogger("active_learning")

# The pretrained model that tells ambiguous samples was trained on Dirty-MNIST; its flags are -tsn, -tmod, ...
AMBIGUITY_MODEL_DATASET = "dirty_mnist"
TRAINED_MODEL_FLAGS = {
    "model": "--trained-model",
    "sn": "-tsn",
    "mod": "-tmod",
    "coeff": "--tcoeff",
    "dataset": "--saved-model-name (a Dirty-MNIST model)",
    **{name: f"--trained-{name.replace('_', '-')}" for name in ARCH_FLAGS},  # destinations trained_{name}
}

# Arguments that define the experiment: a resume with any of them changed would mix two experiments.
RESUME_MUST_MATCH = (
    "seed",
    "model",
    "sn",
    "mod",
    "coeff",
    "al_type",
    "mi",
    "ambiguous",
    "subsample",
    "num_ensemble",
    "num_initial_samples",
    "max_training_samples",
    "acquisition_batch_size",
    "epochs",
    "train_batch_size",
    "samples_per_epoch",
    "max_pool",
    *ARCH_FLAGS,
    "threshold",
    "original_quirks",
)


def output_names(args: argparse.Namespace) -> dict[str, str]:
    suffix = f"{run_name(args.model, args.seed, args.sn, args.mod, args.coeff)}_{args.al_type}"
    if args.al_type == "ensemble" and args.mi:
        suffix += "_mi"
    suffix += f"_dirty_mnist_{args.subsample}" if args.ambiguous else "_mnist"
    return {
        "test_accs": f"test_accs_{suffix}.json",
        "ambiguous": f"ambiguous_{suffix}.json",
        "entropies": f"ambiguous_entropies_{suffix}.json",
        "state": f"al_state_{suffix}.json",
    }


def pool_dataset(args: argparse.Namespace) -> str:
    """The registered data set the pool is drawn from (its class count and input shape fix the network)."""
    return "dirty_mnist" if args.ambiguous else "mnist"


def load_ambiguity_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The pretrained Dirty-MNIST network of `--trained-model -tsn -tmod --tcoeff` and its size flags."""
    if not args.saved_model_name:
        raise UserError(
            "-ambiguous needs the pretrained Dirty-MNIST model: pass --saved-model-path and --saved-model-name"
        )
    flags = argparse.Namespace(
        model=args.trained_model,
        sn=args.tsn,
        mod=args.tmod,
        coeff=args.tcoeff,
        **{name: getattr(args, f"trained_{name}") for name in ARCH_FLAGS},
    )
    checkpoint = Path(args.saved_model_path) / args.saved_model_name
    return load_network(flags, checkpoint, device, dataset=AMBIGUITY_MODEL_DATASET, flags=TRAINED_MODEL_FLAGS)


def _load_state(
    args: argparse.Namespace, out_dir: Path, names: dict[str, str], flags: dict[str, str]
) -> dict:
    """The experiment's state: a fresh one, or with --resume the saved one if its arguments match. Files of
    an earlier experiment in `out_dir` are only replaced with --overwrite."""
    state_path = out_dir / names["state"]
    experiment = {k: getattr(args, k) for k in RESUME_MUST_MATCH}
    if args.resume and state_path.is_file():
        state = read_json(state_path)
        if not (
            isinstance(state, dict)
            and isinstance(state.get("args"), dict)
            and isinstance(state.get("runs"), dict)
        ):
            raise UserError(
                f"'{state_path}' is not a state file of active_learning.py (expected 'args' and 'runs'); move it "
                "away to start afresh, or pass another --output-dir"
            )
        check_resume_compatible(
            state["args"],
            experiment,
            keys=RESUME_MUST_MATCH,
            flag_names=flags,
            source=f"'{state_path}'",
            output_flag="--output-dir",
        )
        check_state_records(state, state_path)
        return state
    existing = [out_dir / name for name in names.values() if (out_dir / name).is_file()]
    if existing and args.resume:
        raise UserError(
            f"'{existing[0]}' holds results of an earlier run of this experiment, but its state file "
            f"'{state_path}' is missing, so it cannot be resumed; pass --overwrite instead of --resume to start "
            "over, or another --output-dir"
        )
    if existing and not args.overwrite:
        raise UserError(
            f"'{existing[0]}' holds the results of an earlier run of this experiment; pass --resume to continue "
            "it, --overwrite to replace it, or another --output-dir"
        )
    if existing:
        log.warning("--overwrite: replacing %s", ", ".join(str(p) for p in existing))
    return {"args": experiment, "runs": {}}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_state_records(state: dict, source: Path, pool_size: int | None = None) -> None:
    """A `UserError` naming the file and key where a saved state (perhaps edited by hand) holds what no run
    writes. Each record of `runs` (keyed by run number) has `labelled`: distinct whole-number pool indices,
    within `[0, pool_size)` once the pool's size is known; `test_accs`: percentages; `ambiguous_fraction`:
    fractions; `entropies`: one list of non-negative numbers per step; `done`: true or false."""
    fix = "restore the file, or move it away to start afresh"

    def refuse(key: str, problem: str) -> None:
        raise UserError(f"'{source}': {key} {problem}; {fix}")

    for run, record in state["runs"].items():
        where = f"runs.{run}"
        if not run.isdigit():
            refuse(where, "is not a run number (the runs are keyed 0, 1, ...)")
        if not isinstance(record, dict):
            refuse(where, f"is a {type(record).__name__}, not a run's record")
        for key, kind in (("labelled", list), ("test_accs", list), ("ambiguous_fraction", list),
                          ("entropies", list), ("done", bool)):  # fmt: skip
            if not isinstance(record.get(key), kind):
                refuse(f"{where}.{key}", f"is {record.get(key)!r:.40}, not a {kind.__name__}")
        seen: dict[int, int] = {}
        for i, index in enumerate(record["labelled"]):
            if not isinstance(index, int) or isinstance(index, bool):
                refuse(f"{where}.labelled[{i}]", f"is {index!r:.40}, not a whole-number index into the pool")
            if index < 0 or (pool_size is not None and index >= pool_size):
                bounds = f"0 to {pool_size - 1}" if pool_size is not None else "0 or more"
                refuse(f"{where}.labelled[{i}]", f"is {index}, outside the pool (indices {bounds})")
            if index in seen:
                refuse(f"{where}.labelled[{i}]", f"is {index}, already labelled at position {seen[index]}")
            seen[index] = i
        for key, top in (("test_accs", 100), ("ambiguous_fraction", 1)):
            for i, value in enumerate(record[key]):
                if not _is_number(value) or not 0 <= value <= top:
                    refuse(f"{where}.{key}[{i}]", f"is {value!r:.40}, not a number from 0 to {top}")
        for i, step in enumerate(record["entropies"]):
            if not isinstance(step, list) or not all(_is_number(e) and e >= 0 for e in step):
                refuse(f"{where}.entropies[{i}]", "is not a list of non-negative numbers")


def _initial_labelled(args: argparse.Namespace, pool, num_classes: int) -> list[int]:
    """The class-balanced initial labelled set of every run, drawn once from --seed as the original does."""
    generator = torch.Generator().manual_seed(args.seed)
    try:
        return al.balanced_initial_indices(pool.y, args.num_initial_samples, num_classes, generator)
    except ValueError as err:
        raise UserError(
            f"{err} for the class-balanced initial set; lower --num-initial-samples or raise --max-pool"
        ) from None


def _new_record(initial: list[int]) -> dict:
    """A run's record before its first step: the shared initial labelled set, no results yet."""
    return {
        "labelled": list(initial),
        "test_accs": [],
        "ambiguous_fraction": [],
        "entropies": [],
        "done": False,
    }


def _acquisition_step(
    args, record: dict, run_seed: int, splits, settings, ambiguity_model, num_classes, board=None
):
    """One step of a run: train on the labelled set, record the test accuracy, then move the top-scoring
    pool samples into the labelled set and, with -ambiguous, record the enlarged set's ambiguity (the
    original measures it after each acquisition, so there is none for the initial set). Returns the
    accuracy. `board` (a TensorBoard writer or None) receives the training epochs' and the step's numbers."""
    pool, validation, test = splits
    device, precision = settings.device, settings.precision
    step = len(record["test_accs"])
    # In pool order, as the original's labelled subset (a mask over the pool); `record` keeps the
    # acquisition order.
    labelled_idx = torch.as_tensor(sorted(record["labelled"]), device=device)
    labelled = pool.take(labelled_idx)
    step_seed = run_seed * 1000 + step
    seed_everything(step_seed)
    members = args.num_ensemble if args.al_type == "ensemble" else 1
    epochs_before = step * args.epochs  # TensorBoard's step: epochs trained in this run before this step

    def on_epoch_end(k: int, stats) -> None:
        prefix = f"member{k + 1}/" if members > 1 else ""
        tensorboard.add_scalars(board, stats.to_json(), step=epochs_before + stats.epoch + 1, prefix=prefix)

    models = al.train_best_models(
        lambda: build_model(args, pool_dataset(args)),
        labelled,
        validation,
        seeds=[step_seed * 10 + m for m in range(members)],
        mode=args.ensemble_mode,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        test_batch_size=args.test_batch_size,
        samples_per_epoch=args.samples_per_epoch,
        settings=settings,
        on_epoch_end=on_epoch_end if board is not None else None,
        original_quirks=args.original_quirks,
    )
    if len(models) == 1:
        accuracy = al.test_accuracy_percent(models[0], test, args.test_batch_size, settings)
    else:
        accuracy = al.ensemble_test_accuracy_percent(models, test, args.test_batch_size, device, precision)
    record["test_accs"].append(accuracy)
    tensorboard.add_scalars(
        board,
        {"test_accuracy": accuracy, "labelled": len(record["labelled"])},
        step=epochs_before + args.epochs,
        keys=("test_accuracy", "labelled"),
    )
    if len(record["labelled"]) >= args.max_training_samples:
        record["done"] = True
        return accuracy
    mask = torch.ones(len(pool), dtype=torch.bool, device=device)
    mask[labelled_idx] = False
    candidates = torch.nonzero(mask).flatten()
    # The last acquisition may be smaller, so the labelled set never exceeds --max-training-samples.
    count = min(args.acquisition_batch_size, args.max_training_samples - len(record["labelled"]))
    if args.original_quirks and args.al_type == "gmm":
        chosen = _original_ddu_choice(
            args, models[0], pool, candidates, labelled, count, step_seed, settings, num_classes
        )
    else:
        scores = al.acquisition_scores(
            args.al_type,
            models,
            pool.take(candidates),
            labelled,
            mutual_information=args.mi,
            batch_size=args.scoring_batch_size,
            device=device,
            precision=precision,
            num_classes=num_classes,
            seed=step_seed,
        )
        chosen = al.select_top(scores, candidates, count)
    record["labelled"] = record["labelled"] + chosen.tolist()
    if ambiguity_model is not None:
        acquired = pool.take(torch.as_tensor(record["labelled"], device=device))
        entropies = al.sample_entropies(ambiguity_model, acquired, args.scoring_batch_size, device)
        # In acquisition order (the initial set, then each step's picks); the original's come in the
        # order of a shuffling loader. The fraction is k / n in float64, as the original's `.item() / len`.
        record["entropies"].append(entropies.tolist())
        record["ambiguous_fraction"].append(int((entropies > args.threshold).sum()) / len(entropies))
    return accuracy


def _original_ddu_choice(
    args, model, pool, candidates, labelled, count: int, step_seed: int, settings, num_classes: int
):
    """`--original-quirks` with `--al-type gmm`: the `count` candidates (pool indices) the original's float32 density
    ranking picks (see `al.original_ddu_acquisition`), class weights counted over one
    more resampled epoch of the model's loader, as the original."""
    weights = al.original_class_weights(
        labelled, args.samples_per_epoch, step_seed * 10, args.epochs, num_classes
    )
    positions = al.original_ddu_acquisition(
        model,
        pool.take(candidates),
        labelled,
        count,
        weights,
        batch_size=args.scoring_batch_size,
        device=settings.device,
        precision=settings.precision,
        num_classes=num_classes,
    )
    return candidates[positions.to(candidates.device)]


def _write_outputs(args: argparse.Namespace, state: dict, out_dir: Path, names: dict[str, str]) -> None:
    runs = state["runs"]
    atomic_write_json(out_dir / names["test_accs"], {r: runs[r]["test_accs"] for r in runs})
    if args.ambiguous:
        atomic_write_json(out_dir / names["ambiguous"], {r: runs[r]["ambiguous_fraction"] for r in runs})
        atomic_write_json(
            out_dir / names["entropies"],
            {r: {str(i): e for i, e in enumerate(runs[r]["entropies"])} for r in runs},
        )
    atomic_write_json(out_dir / names["state"], state)


def run_experiment(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """Every run of the experiment the checked flags `args` describe, resumed from its state file with
    `--resume`; `flags` spells the flags for messages (`utils.validation.flag_names` of the script's parser).
    Writes the output files after every acquisition step and returns the state."""
    num_classes = data.get_info(pool_dataset(args)).num_classes
    device = select_device(args.no_gpu)
    precision, channels_last = resolve_precision(device, args.precision)
    settings = TrainSettings(
        device=device,
        precision=precision,
        channels_last=channels_last,
        progress=False,
        log_interval=10**9,
    )
    out_dir = check_writable_dir(Path(args.output_dir), "output folder (--output-dir)")
    names = output_names(args)
    if args.tensorboard is not None:
        tensorboard.require_tensorboard()
    if args.al_type == "ensemble" and args.ensemble_mode == "stacked":
        obstacle = stacked_ensemble.stacking_obstacle(build_model(args, pool_dataset(args)))
        if obstacle is not None:
            raise UserError(
                f"members cannot be trained stacked: {obstacle}; pass --ensemble-mode auto or sequential"
            )
    board_dir = tensorboard.resolve_folder(args.tensorboard, out_dir)
    if board_dir is not None:
        check_writable_dir(board_dir, "TensorBoard folder (--tensorboard)")
        board_dir = board_dir / Path(names["test_accs"]).stem.removeprefix("test_accs_")
    state = _load_state(args, out_dir, names, flags)
    ambiguity_model = load_ambiguity_model(args, device) if args.ambiguous else None
    num_steps = (
        args.max_training_samples - args.num_initial_samples + args.acquisition_batch_size - 1
    ) // args.acquisition_batch_size + 1

    # One pool, validation split and initial labelled set for all runs, as the original.
    splits = al.build_pool(
        args.dataset_root,
        ambiguous=args.ambiguous,
        subsample=args.subsample,
        seed=args.seed,
        device=device,
        max_pool=args.max_pool,
    )
    pool = splits[0]
    if len(pool) < args.max_training_samples:
        raise UserError(
            f"the pool has {len(pool)} samples (after the 10% validation hold-out), fewer than "
            f"--max-training-samples {args.max_training_samples}; lower it or raise --max-pool"
        )
    check_state_records(state, out_dir / names["state"], pool_size=len(pool))
    initial = _initial_labelled(args, pool, num_classes)

    total_bar = progress_bar(total=args.runs * num_steps, desc="active learning", unit="step")
    for run in range(args.runs):
        key, run_seed = str(run), args.seed + run
        record = state["runs"].get(key)
        if record is None:
            record = state["runs"][key] = _new_record(initial)
        total_bar.update(len(record["test_accs"]))
        log_dir = None if board_dir is None else board_dir / f"run{run}"
        purge = len(record["test_accs"]) * args.epochs + 1
        with tensorboard.epoch_writer(log_dir, purge_step=purge) as board:
            while not record["done"]:
                step = len(record["test_accs"])
                labelled = len(record["labelled"])
                accuracy = _acquisition_step(
                    args, record, run_seed, splits, settings, ambiguity_model, num_classes, board
                )
                _write_outputs(args, state, out_dir, names)
                total_bar.update(1)
                total_bar.set_postfix(run=run, labelled=labelled, acc=f"{accuracy:.2f}")
                if not progress_enabled():
                    log.info(
                        "run %d step %d: %d labelled, test accuracy %.2f%%", run, step, labelled, accuracy
                    )
    total_bar.close()
    _write_outputs(args, state, out_dir, names)
    return state
