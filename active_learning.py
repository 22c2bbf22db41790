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
fraction of ambiguous samples in the labelled set after each acquisition, exactly k / n) and
`ambiguous_entropies_{...}.json` (run to acquisition to the entropies of the labelled samples, in acquisition
order: the initial set, then each step's picks; the original's are in a shuffled loader's order). `--resume` continues an interrupted experiment
from its state file; an experiment already in --output-dir is never replaced unless `--overwrite` is given.

The pool, validation split and initial labelled set are built once from --seed and shared by the runs, as the
original; run r trains with seed + r. `--original-quirks` keeps the last epoch's model, fits the DDU
Gaussians with the original's jitter search and ranks by float32 densities (ties at 0), as the original code
does; the default follows the paper.
`--tensorboard [DIR]` also writes TensorBoard scalars (per epoch and per step); `--al-type ensemble` trains its
members stacked where that is exact on a GPU (`--ensemble-mode`, as train.py --ensemble).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from utils.errors import Interrupted, UserError, exit_on_user_error, starting_up

with starting_up(__name__):  # PyTorch takes seconds and much memory to load: a failure is one sentence
    import data
    import engine.stacked_ensemble
    import engine.tensorboard
    import net
    from engine import al_run
    from engine.al_run import TRAINED_MODEL_FLAGS, pool_dataset
    from engine.checkpointing import RERUN_WITH_RESUME
    from engine.network_flags import add_arch_flags, arch_values, check_network_flags, model_parser
    from utils.io import check_writable_dir, exclusive_lock, lock_path
    from utils.validation import check_count, check_file, check_number, check_seed, flag_names

log = logging.getLogger("active_learning")


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
        help="architecture of the pretrained Dirty-MNIST model that tells ambiguous samples (the original's "
        "default resnet18_sn is no model name; -tsn gives its spectral normalisation)",
    )
    parser.add_argument("-tsn", "--tsn", dest="tsn", action="store_true", help="that model uses -sn")
    parser.add_argument("--tcoeff", type=float, default=3.0, help="that model's --coeff")
    parser.add_argument("-tmod", "--tmod", dest="tmod", action="store_true", help="that model uses -mod")
    add_arch_flags(
        parser.add_argument_group("size of the pretrained Dirty-MNIST model, if reduced"),
        prefix="trained-",
        whose="that model's ",
    )
    parser.add_argument(
        "--saved-model-path", default="./", help="folder of the pretrained Dirty-MNIST model (default ./)"
    )
    parser.add_argument(
        "--saved-model-name",
        default="",
        help="file name of that model's checkpoint; required with -ambiguous (the original's default "
        "resnet18_sn_3.0_50.model, a name its train.py never writes, is not assumed)",
    )
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
    parser.add_argument(
        "-e", "--epochs", dest="epochs", type=int, default=20, help="training epochs per step"
    )
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
        help="as the original code: keep the last epoch's model (not the best on validation), fit the gmm "
        "acquisition's Gaussians with the original's jitter search and rank by densities summed in float32, "
        "which underflow to 0 and tie; default: as the paper",
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
        choices=engine.stacked_ensemble.MODES,
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


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("active_learning.py " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    check_args(args)
    state = Path(args.output_dir) / al_run.output_names(args)["state"]
    check_writable_dir(state.parent, "output folder (--output-dir)")
    try:
        with exclusive_lock(lock_path(state), f"the experiment of '{state}'", "pass another --output-dir"):
            return al_run.run_experiment(args, flag_names(get_args_parser()))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the finished acquisition steps are in {state}: {RERUN_WITH_RESUME}"
        ) from None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
