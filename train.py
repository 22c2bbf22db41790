"""Train a DDU network (Mukhoti et al. 2021): the original `train.py` command line, faster and resumable.

The original flags, defaults and file names all work, so the original README's commands run as written:

    python train.py --seed 1 --dataset cifar10 --model wide_resnet -sn -mod --coeff 3.0
    python train.py --seed 1 --dataset cifar10 --model resnet18 -sn -mod --coeff 3.0
    python train.py --seed 1 --dataset dirty-mnist --model lenet

Useful additions:

    python train.py ... --resume                                   # continue after a crash or pre-emption
    python train.py ... --resume --lr 0.01                         # continue with a lower rate (after a NaN)
    python train.py ... --precision fp32 --loader torchvision      # the original's numerics and pipeline
    torchrun --nproc_per_node=4 train.py --seed 1 ...              # DistributedDataParallel, -b stays global
    python train.py --seed 1 --dataset digits --model resnet18 --base-width 8 -e 3 --no-gpu --save-path runs
                                                                   # a small run on the embedded demo set
    python train.py --seed 1 ... --ensemble 5 --save-path runs/Run1/   # a deep ensemble: seeds 1..5, each
                                                                   # member under its own name (lenet_3_...)
    python train.py ... --tensorboard                              # scalars in {save-path}/stats_logging

Outputs in `--save-path` (`{name}` is the original naming, e.g. `wide_resnet_sn_3.0_mod_1`):
`{name}_{epoch}.model` every `--save-interval` epochs and at the end (plain state dicts of the network),
`{name}_train_loss.json` as the original, `{name}_log.jsonl` (one JSON line per epoch: `epoch` from 0,
`loss`, `original_loss`, `accuracy`, `lr`, `images`, `seconds`, `images_per_s`, `val_accuracy`) and
`{name}_resume.pt` (the full state `--resume` continues from).

On a GPU the defaults are the fast path: the GPU-resident loader, bf16 autocast and channels_last
(cudnn autotuning on). On the CPU: bf16 autocast + channels_last where the CPU computes bf16 natively,
fp32 and contiguous tensors elsewhere (`--channels-last` is faster there, see utils/device.py for why it is
not the default).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from utils.errors import starting_up

with starting_up(__name__):  # torch takes seconds and much memory to load: a failure is one sentence
    import torch

    import data
    from engine import stacked_ensemble, tensorboard, training_run
    from engine.network_flags import ARCH_FLAGS, arch_values, check_network_flags, model_parser
    from engine.training import LOSSES, OPTIMIZERS
    from utils import distributed
    from utils.device import resolve_precision, select_device
    from utils.errors import UserError, exit_on_user_error
    from utils.io import check_writable_dir, git_revision
    from utils.seed import deterministic_kernels
    from utils.validation import check_count, check_milestones, check_number, check_seed, flag_names

log = logging.getLogger("train")

DEFAULT_RESUME = "auto"

# Flags that change what is trained; a resume with any of them changed would silently be another run.
# Flags that only change speed, logging or where files go (epochs, workers, compile, channels_last,
# loader, dataset root, intervals, device) may differ on resume, and so may the learning rate (--lr): the
# way on after a non-finite loss is to resume with a lower one; the schedule then continues from it.
RESUME_MUST_MATCH = (
    "seed",
    "dataset",
    "data_aug",
    "image_size",
    "augment",
    "skip_bad_images",
    "val_seed",
    "model",
    "sn",
    "mod",
    "coeff",
    *ARCH_FLAGS,
    "train_batch_size",
    "per_rank_batch",
    "momentum",
    "nesterov",
    "weight_decay",
    "optimiser",
    "loss_function",
    "loss_mean",
    "first_milestone",
    "second_milestone",
    "precision",
    "steps_per_epoch",
    "world_size",
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original flags (names, defaults, destinations) plus this project's speed and robustness flags."""
    parser = argparse.ArgumentParser(
        "DDU training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
        # --model, -sn, --coeff, -mod, size overrides; --image-size, --augment, --skip-bad-images (folder:PATH)
        parents=[model_parser(default_model="resnet50"), data.folder_parser()],
    )
    _add_run_flags(parser.add_argument_group("run (original flags)"))
    _add_speed_flags(parser.add_argument_group("speed (results do not depend on these except in rounding)"))
    _add_robustness_flags(parser.add_argument_group("robustness and checks"))
    _add_ensemble_flags(parser.add_argument_group("deep ensembles and logs"))
    return parser


def _add_ensemble_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--ensemble",
        type=int,
        default=None,
        metavar="N",
        help="train a deep ensemble of N members with seeds seed..seed+N-1 and validation splits val_seed+k "
        "(the original's train_ensemble.py), each under its own run name, as evaluate.py --model-type "
        "ensemble finds them",
    )
    g.add_argument(
        "--ensemble-mode",
        choices=stacked_ensemble.MODES,
        default="auto",
        help="stacked: all members in one vmapped network (exact; not with -sn or dropout); sequential: one "
        "after another; auto (default): stacked on a GPU where exact, else sequential",
    )
    g.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help=f"also write the per-epoch numbers as TensorBoard scalars into DIR/{{name}} (default DIR: "
        f"{{save-path}}/{tensorboard.DEFAULT_FOLDER}), the original's {{name}}_train_loss among them; needs the "
        "tensorboard package",
    )


def _add_run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--seed", type=int, required=True, help="seed of the weights, data order and run name")
    g.add_argument(
        "--dataset",
        default="cifar10",
        help=f"training set; one of: {', '.join(data.list_datasets())}, or folder:PATH (PATH/train/CLASS/*, "
        "PATH/test/CLASS/*: docs/own_data.md)",
    )
    g.add_argument(
        "--dataset-root", default="./", help="folder holding the data sets in their official layout"
    )
    g.add_argument(
        "--data-aug",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="augment the training split (CIFAR: crop with padding 4 + flip); --no-data-aug switches it off",
    )
    g.add_argument(
        "-b", "--batch-size", dest="train_batch_size", type=int, default=128, help="training batch size"
    )
    g.add_argument(
        "-tb", "--test-batch-size", dest="test_batch_size", type=int, default=128, help="validation batch"
    )
    g.add_argument(
        "--no-gpu", dest="gpu", action="store_false", help="train on the CPU even if a GPU is present"
    )
    g.add_argument("-e", "--epochs", dest="epoch", type=int, default=350, help="number of epochs")
    g.add_argument(
        "--lr", "--learning-rate", dest="learning_rate", type=float, default=0.1, help="initial rate"
    )
    g.add_argument("--mom", "--momentum", dest="momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    g.add_argument(
        "--decay", "--weight-decay", dest="weight_decay", type=float, default=5e-4, help="weight decay"
    )
    g.add_argument(
        "--opt", "--optimiser", dest="optimiser", default="sgd", choices=OPTIMIZERS, help="optimiser"
    )
    g.add_argument("--loss", dest="loss_function", default="cross_entropy", choices=list(LOSSES), help="loss")
    g.add_argument(
        "--loss-mean",
        action="store_true",
        help="divide the (mean) loss by the batch size once more, as the original's flag does",
    )
    g.add_argument("--log-interval", type=int, default=50, help="steps between progress updates / NaN checks")
    g.add_argument("--save-interval", type=int, default=25, help="save {name}_{epoch}.model every N epochs")
    g.add_argument(
        "--save-path", dest="save_loc", default="./", help="folder for models, logs and resume file"
    )
    g.add_argument(
        "--saved_model_name",
        "--saved-model-name",
        dest="saved_model_name",
        default="resnet50_350.model",
        help="accepted for the original's command lines, no effect (the original's train.py never reads it "
        "either): checkpoints are named {name}_{epoch}.model from the run's flags",
    )
    g.add_argument("--first-milestone", type=int, default=150, help="epoch of the first tenfold lr drop")
    g.add_argument("--second-milestone", type=int, default=250, help="epoch of the second tenfold lr drop")


def _add_speed_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="bf16 autocast (default on a GPU and on a CPU with native bf16: AVX512-BF16 or AMX) or fp32 "
        "(default elsewhere; the original's numerics)",
    )
    g.add_argument(
        "--loader",
        choices=("gpu", "torchvision"),
        default="gpu",
        help="gpu: the split on the device, batched augmentation (fast); torchvision: the original pipeline",
    )
    g.add_argument("--workers", type=int, default=4, help="worker processes of --loader torchvision")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory layout (default on a GPU and with bf16; faster for fp32 on a CPU too, but oneDNN "
        "crashes there on strided 1x1 convolutions with under 8 input channels)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the network (minutes of warm-up)")
    g.add_argument(
        "--per-rank-batch",
        action="store_true",
        help="with torchrun, make -b the batch of each process (global batch: -b x processes)",
    )


def _add_robustness_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--resume",
        nargs="?",
        const=DEFAULT_RESUME,
        default=None,
        metavar="PATH",
        help="continue from {save-path}/{name}_resume.pt (or PATH); without that file the run starts afresh",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start a run again although --save-path holds its files (its log, resume and loss files are "
        "replaced after the first epoch, its .model files as the new run saves them); without it train.py "
        "refuses",
    )
    g.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels: bit-identical reruns on CPU"
    )
    g.add_argument(
        "--val-seed",
        type=int,
        default=None,
        help="seed of the train/validation split (default: --seed, as the original)",
    )
    g.add_argument(
        "--validate-every",
        type=int,
        default=0,
        help="validation accuracy every N epochs (0: after the last one only); logged, never used to train",
    )
    g.add_argument(
        "--steps-per-epoch",
        type=int,
        default=0,
        help="cut every epoch after N steps (0: full epochs; smoke tests)",
    )


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, checked before anything is read or written: a bad one ends in one sentence."""
    data.set_folder_options(args.image_size, args.augment, args.skip_bad_images)  # how folder:PATH is read
    check_seed(args.seed)
    if args.val_seed is not None:
        check_seed(args.val_seed, "--val-seed")
    if not data.get_info(args.dataset).has_train:  # an unknown name is a UserError listing the valid ones
        raise UserError(
            f"{args.dataset} has no training split (it is an out-of-distribution set); pick another --dataset"
        )
    check_network_flags(args.model, args.coeff, arch_values(args))
    check_count(args.train_batch_size, "-b")
    check_count(args.test_batch_size, "-tb")
    check_count(args.epoch, "-e")
    check_number(args.learning_rate, "--lr", above=0)
    check_number(args.momentum, "--mom", at_least=0, below=1)
    check_number(args.weight_decay, "--decay", at_least=0)
    if args.nesterov and args.optimiser != "sgd":
        raise UserError(f"--nesterov applies to --opt sgd only, not {args.optimiser}; drop --nesterov")
    if args.nesterov and args.momentum == 0:
        raise UserError("--nesterov needs a momentum above 0; pass --mom (e.g. 0.9) or drop --nesterov")
    check_milestones(args.first_milestone, args.second_milestone)
    check_count(args.log_interval, "--log-interval")
    check_count(args.save_interval, "--save-interval")
    check_count(args.workers, "--workers", at_least=0)
    check_count(args.validate_every, "--validate-every", at_least=0)
    check_count(args.steps_per_epoch, "--steps-per-epoch", at_least=0)
    if args.ensemble is not None:
        check_count(args.ensemble, "--ensemble")
        if args.resume not in (None, DEFAULT_RESUME):
            raise UserError(
                "--resume PATH names one run's file; with --ensemble pass --resume alone, and each member "
                "continues from its own {name}_resume.pt in --save-path"
            )
    if args.resume is not None and args.overwrite:
        raise UserError("--resume continues the run and --overwrite starts it again; pass one of them")
    if args.resume not in (None, DEFAULT_RESUME) and not Path(args.resume).is_file():
        raise UserError(
            f"the resume file '{args.resume}' given to --resume does not exist; pass the {{name}}_resume.pt of "
            "the run to continue, or --resume alone to continue from --save-path"
        )


def _resolve(
    args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo
) -> argparse.Namespace:
    """Validate names and fill the device-dependent defaults; user mistakes become one-sentence errors."""
    args = argparse.Namespace(**vars(args))
    args.dataset = data.canonical_name(args.dataset)
    if args.val_seed is None:
        args.val_seed = args.seed
    if args.tensorboard is not None:
        tensorboard.require_tensorboard()
        folder = tensorboard.resolve_folder(args.tensorboard, args.save_loc)
        check_writable_dir(folder, "TensorBoard folder (--tensorboard)")
    args.precision, args.channels_last = resolve_precision(device, args.precision, args.channels_last)
    args.world_size = dist_info.world_size
    if args.per_rank_batch or dist_info.world_size == 1:
        args.rank_batch_size = args.train_batch_size
    elif args.train_batch_size % dist_info.world_size:
        raise UserError(
            f"-b {args.train_batch_size} does not split evenly over {dist_info.world_size} processes; pass a "
            "multiple of the process count, or --per-rank-batch to make -b the batch of each process"
        )
    else:
        args.rank_batch_size = args.train_batch_size // dist_info.world_size
    return args


@exit_on_user_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the original `train.py` does.

    Returns `{"history": [EpochStats], "model": the bare network, "files": RunFiles}` for tests and callers.
    """
    check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dist_info = distributed.read_env()
    device = select_device(not args.gpu, dist_info.local_rank if dist_info.enabled else None)
    dist_info = distributed.init_distributed(device)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _train(args, device, dist_info)
    finally:
        distributed.cleanup()


def _train(args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo) -> dict[str, Any]:
    args = _resolve(args, device, dist_info)
    if dist_info.is_main:
        _log_run(args, dist_info)
        check_writable_dir(Path(args.save_loc), "save path (--save-path)")
    if not args.deterministic and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rule = training_run.ResumeRule(
        latest=DEFAULT_RESUME,
        keys=RESUME_MUST_MATCH,
        flag_names={**flag_names(get_args_parser()), "world_size": "the process count"},
    )
    with deterministic_kernels(args.deterministic), training_run.claim_runs(args, rule, dist_info.is_main):
        if args.ensemble is None:
            return training_run.train_network(
                training_run.setup_training_run(args, device, dist_info, rule), device, dist_info
            )
        return training_run.train_ensemble(args, device, dist_info, rule)


def _log_run(args: argparse.Namespace, dist_info: distributed.DistInfo) -> None:
    """The git revision, the process count and the sorted arguments, first in the log (as DINO does)."""
    processes = f"{dist_info.world_size} processes" if dist_info.enabled else "1 process"
    log.info("git revision %s; %s", git_revision(), processes)
    for key, value in sorted(vars(args).items()):
        log.info("%s: %s", key, value)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
