"""Active learning with DDU on MNIST and Dirty-MNIST (paper Sec. 6.2), as the original script.

The original README's commands work as written:

    python active_learning.py --seed 1 --model resnet18 -sn -mod --al-type gmm
    python active_learning.py --seed 1 --model resnet18 -sn -mod --al-type gmm -ambiguous \
        --trained-model resnet18 -tsn -tmod --saved-model-path runs/ --saved-model-name resnet18_sn_3.0_mod_1_350.model

A pretrained model of reduced size takes its sizes as `--trained-base-width 8` (and `--trained-depth`,
`--trained-widen-factor`, `--trained-width-divisor`), as train.py's `--base-width` and the rest.

Quick run on the CPU (small model, small pool, two epochs):

    python active_learning.py --seed 1 --model lenet --al-type softmax --epochs 2 --max-pool 5000 \
        --max-training-samples 40 --runs 1 --no-gpu --dataset-root DATA --output-dir al_out

Outputs (`{name}` as train.py names runs, e.g. `resnet18_sn_3.0_mod_1`), written atomically after every step:
`test_accs_{name}_{al-type}[_mi]_mnist.json` (or `..._dirty_mnist_{subsample}.json` with -ambiguous): run index
to the list of MNIST test accuracies (percent) per step; with -ambiguous also `ambiguous_{...}.json` (run to the
fraction of ambiguous samples in the labelled set after each acquisition) and `ambiguous_entropies_{...}.json`
(run to acquisition to the entropies of the labelled samples). `--resume` continues an interrupted experiment
from its state file; an experiment already in --output-dir is never replaced unless `--overwrite` is given.

The pool, validation split and initial labelled set are built once from --seed and shared by the runs, as the
original; run r trains with seed + r. `--original-quirks` keeps the last epoch's model and ranks the DDU
acquisition by float32 densities (ties at 0), as the original code does; the default follows the paper.
`--tensorboard [DIR]` also writes TensorBoard scalars (per epoch and per step); `--al-type ensemble` trains its
members stacked where that is exact on a GPU (`--ensemble-mode`, as train.py --ensemble).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import data
import engine.active_learning
import engine.ensemble
import engine.tensorboard
import net
from engine.models import (
    ARCH_FLAGS,
    add_arch_flags,
    arch_values,
    build_model,
    check_network_flags,
    load_checkpoint,
    model_config,
    model_parser,
)
from engine.run_files import check_resume_compatible, run_name
from engine.training import TrainSettings
from utils.device import resolve_precision, select_device
from utils.errors import Interrupted, UserError, exit_on_user_error
from utils.io import atomic_write_json, check_writable_dir, read_json
from utils.progress import progress_bar, progress_enabled
from utils.seed import seed_everything
from utils.validation import check_count, check_file, check_number, check_seed, flag_names

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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_parser("resnet18")],
    )
    parser.add_argument("--seed", type=int, required=True, help="run r uses seed + r")
    parser.add_argument(
        "-ambiguous",
        "--ambiguous",
        dest="ambiguous",
        action="store_true",
        help="Dirty-MNIST pool: --subsample MNIST digits plus Ambiguous-MNIST",
    )
    parser.add_argument(
        "--dataset-root", default="./", help="folder with MNIST (and amnist_*.pt), as the original"
    )
    parser.add_argument(
        "--trained-model",
        default="resnet18",
        choices=net.list_models(),
        help="architecture of the pretrained Dirty-MNIST model that tells ambiguous samples",
    )
    parser.add_argument("-tsn", "--tsn", dest="tsn", action="store_true", help="that model uses -sn")
    parser.add_argument("--tcoeff", type=float, default=3.0, help="that model's --coeff")
    parser.add_argument("-tmod", "--tmod", dest="tmod", action="store_true", help="that model uses -mod")
    add_arch_flags(
        parser.add_argument_group("size of the pretrained Dirty-MNIST model, if reduced"),
        prefix="trained-",
        whose="that model's ",
    )
    parser.add_argument("--saved-model-path", default="", help="folder of the pretrained Dirty-MNIST model")
    parser.add_argument("--saved-model-name", default="", help="file name of that model's checkpoint")
    parser.add_argument(
        "--threshold", type=float, default=1.0, help="softmax entropy above which a sample is ambiguous"
    )
    parser.add_argument("--subsample", type=int, default=1000, help="MNIST digits in the Dirty-MNIST pool")
    parser.add_argument(
        "--al-type",
        default="softmax",
        choices=["softmax", "ensemble", "gmm", "random"],
        help="acquisition (random: a uniformly random batch, a baseline the original lacks)",
    )
    parser.add_argument(
        "-mi", "--mi", dest="mi", action="store_true", help="ensemble: mutual information, not PE"
    )
    parser.add_argument("--num-ensemble", type=int, default=5, help="ensemble members")
    parser.add_argument(
        "--num-initial-samples", type=int, default=20, help="class-balanced initial labelled set"
    )
    parser.add_argument(
        "--max-training-samples", type=int, default=300, help="stop at this labelled-set size"
    )
    parser.add_argument("--acquisition-batch-size", type=int, default=5, help="samples acquired per step")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per step")
    parser.add_argument("-b", "--train-batch-size", dest="train_batch_size", type=int, default=64)
    parser.add_argument("-tb", "--test-batch-size", dest="test_batch_size", type=int, default=512)
    parser.add_argument("-sb", "--scoring-batch-size", dest="scoring_batch_size", type=int, default=128)
    parser.add_argument(
        "--samples-per-epoch", type=int, default=5056, help="labelled set resampled to this length"
    )
    parser.add_argument("--runs", type=int, default=5, help="independent runs (hard-coded 5 in the original)")
    parser.add_argument(
        "--max-pool", type=int, default=None, help="cap the pool size (quick runs; not in the original)"
    )
    parser.add_argument(
        "--original-quirks",
        action="store_true",
        help="as the original code: keep the last epoch's model (not the best on validation) and rank the "
        "gmm acquisition by densities summed in float32, which underflow to 0 and tie; default: as the paper",
    )
    parser.add_argument("--no-gpu", action="store_true", help="run on the CPU")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="default: bf16 on a GPU and on a CPU with native bf16",
    )
    parser.add_argument("--output-dir", default=".", help="where the JSON files go")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    parser.add_argument(
        "--ensemble-mode",
        choices=engine.ensemble.MODES,
        default="auto",
        help="--al-type ensemble: members stacked into one vmapped network (exact; not with -sn), one after "
        "another (sequential), or auto (default): stacked on a GPU where exact, else sequential",
    )
    parser.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="also write TensorBoard scalars (per epoch: loss, accuracy, lr, validation accuracy, images/s; "
        f"per step: test accuracy, labelled-set size) into DIR/{{name}}/run{{r}} (default DIR: "
        f"{{output-dir}}/{engine.tensorboard.DEFAULT_FOLDER}); needs the tensorboard package",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over even though --output-dir holds this experiment's files (they are replaced)",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, checked before anything is read or written: a bad one ends in one sentence."""
    check_count(args.runs, "--runs")
    check_seed(args.seed, seeds_used=args.runs)
    check_network_flags(args.model, args.coeff, arch_values(args))
    num_classes = data.get_info(pool_dataset(args)).num_classes
    if args.num_initial_samples % num_classes or args.num_initial_samples < num_classes:
        raise UserError(
            f"--num-initial-samples must be a positive multiple of {num_classes} (a class-balanced set), got "
            f"{args.num_initial_samples}"
        )
    if args.max_training_samples < args.num_initial_samples:
        raise UserError(
            f"--max-training-samples {args.max_training_samples} must be at least --num-initial-samples "
            f"{args.num_initial_samples}"
        )
    check_count(args.acquisition_batch_size, "--acquisition-batch-size")
    to_acquire = args.max_training_samples - args.num_initial_samples
    if 0 < to_acquire < args.acquisition_batch_size:
        raise UserError(
            f"--acquisition-batch-size {args.acquisition_batch_size} is more than the {to_acquire} samples between "
            f"--num-initial-samples {args.num_initial_samples} and --max-training-samples "
            f"{args.max_training_samples}; pass at most {to_acquire}, or raise --max-training-samples"
        )
    for flag, value in (
        ("--epochs", args.epochs), ("--num-ensemble", args.num_ensemble), ("-b", args.train_batch_size),
        ("-tb", args.test_batch_size), ("-sb", args.scoring_batch_size), ("--samples-per-epoch", args.samples_per_epoch),
        ("--subsample", args.subsample),
    ):  # fmt: skip
        check_count(value, flag)
    if args.max_pool is not None:
        check_count(args.max_pool, "--max-pool")
    if args.mi and args.al_type != "ensemble":
        raise UserError(f"-mi applies to --al-type ensemble only, not {args.al_type}; drop -mi")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the experiment and --overwrite replaces it; pass one of them")
    if args.ambiguous:
        check_number(args.threshold, "--threshold", at_least=0, hint="a softmax entropy in nats")
        check_network_flags(
            args.trained_model, args.tcoeff, arch_values(args, "trained_"), TRAINED_MODEL_FLAGS
        )
        if not args.saved_model_name:
            raise UserError(
                "-ambiguous needs the pretrained Dirty-MNIST model: pass --saved-model-path and --saved-model-name"
            )
        check_file(
            Path(args.saved_model_path) / args.saved_model_name,
            "--saved-model-path / --saved-model-name",
            "the checkpoint of a network trained on Dirty-MNIST (train.py --dataset dirty_mnist)",
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
    model = build_model(flags, AMBIGUITY_MODEL_DATASET, flags=TRAINED_MODEL_FLAGS)
    load_checkpoint(
        model,
        Path(args.saved_model_path) / args.saved_model_name,
        flags=TRAINED_MODEL_FLAGS,
        config=model_config(flags, AMBIGUITY_MODEL_DATASET),
    )
    return model.to(device).eval()


def _load_state(args: argparse.Namespace, out_dir: Path, names: dict[str, str]) -> dict:
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
            flag_names=flag_names(get_args_parser()),
            source=f"'{state_path}'",
            output_flag="--output-dir",
        )
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


def _initial_labelled(args: argparse.Namespace, pool, num_classes: int) -> list[int]:
    """The class-balanced initial labelled set of every run, drawn once from --seed as the original does."""
    generator = torch.Generator().manual_seed(args.seed)
    try:
        return engine.active_learning.balanced_initial_indices(
            pool.y, args.num_initial_samples, num_classes, generator
        )
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
        engine.tensorboard.add_scalars(
            board, stats.to_json(), step=epochs_before + stats.epoch + 1, prefix=prefix
        )

    models = engine.active_learning.train_best_models(
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
        accuracy = engine.active_learning.test_accuracy_percent(
            models[0], test, args.test_batch_size, settings
        )
    else:
        accuracy = engine.active_learning.ensemble_test_accuracy_percent(
            models, test, args.test_batch_size, device, precision
        )
    record["test_accs"].append(accuracy)
    engine.tensorboard.add_scalars(
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
        scores = engine.active_learning.acquisition_scores(
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
        chosen = engine.active_learning.select_top(scores, candidates, count)
    record["labelled"] = record["labelled"] + chosen.tolist()
    if ambiguity_model is not None:
        acquired = pool.take(torch.as_tensor(record["labelled"], device=device))
        entropies = engine.active_learning.sample_entropies(
            ambiguity_model, acquired, args.scoring_batch_size, device
        )
        record["entropies"].append(entropies.tolist())
        record["ambiguous_fraction"].append(float((entropies > args.threshold).float().mean()))
    return accuracy


def _original_ddu_choice(
    args, model, pool, candidates, labelled, count: int, step_seed: int, settings, num_classes: int
):
    """`--original-quirks` with `--al-type gmm`: the `count` candidates (pool indices) the original's float32 density
    ranking picks (see `engine.active_learning.original_ddu_acquisition`), class weights counted over one
    more resampled epoch of the model's loader, as the original."""
    weights = engine.active_learning.original_class_weights(
        labelled, args.samples_per_epoch, step_seed * 10, args.epochs, num_classes
    )
    positions = engine.active_learning.original_ddu_acquisition(
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


def run_experiment(args: argparse.Namespace) -> dict:
    check_args(args)
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
        engine.tensorboard.require_tensorboard()
    if args.al_type == "ensemble" and args.ensemble_mode == "stacked":
        obstacle = engine.ensemble.stacking_obstacle(build_model(args, pool_dataset(args)))
        if obstacle is not None:
            raise UserError(
                f"members cannot be trained stacked: {obstacle}; pass --ensemble-mode auto or sequential"
            )
    board_dir = engine.tensorboard.resolve_folder(args.tensorboard, out_dir)
    if board_dir is not None:
        board_dir = board_dir / Path(names["test_accs"]).stem.removeprefix("test_accs_")
    state = _load_state(args, out_dir, names)
    ambiguity_model = load_ambiguity_model(args, device) if args.ambiguous else None
    num_steps = (
        args.max_training_samples - args.num_initial_samples + args.acquisition_batch_size - 1
    ) // args.acquisition_batch_size + 1

    # One pool, validation split and initial labelled set for all runs, as the original.
    splits = engine.active_learning.build_pool(
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
        with engine.tensorboard.epoch_writer(log_dir, purge_step=purge) as board:
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


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("active_learning.py " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    try:
        return run_experiment(args)
    except KeyboardInterrupt:
        state = Path(args.output_dir) / output_names(args)["state"]
        raise Interrupted(
            f"interrupted; the finished acquisition steps are in {state}: rerun the same command with --resume "
            "to continue"
        ) from None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
