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
(cudnn autotuning on). On the CPU: fp32 and contiguous tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import data
from utils import distributed, ensemble, tensorboard
from utils.cli import (
    ARCH_FLAGS,
    arch_values,
    build_model,
    check_count,
    check_milestones,
    check_network_flags,
    check_number,
    check_seed,
    flag_names,
    model_config,
    model_parser,
)
from utils.device import select_device
from utils.errors import UserError, exit_on_user_error
from utils.io import BackgroundWriter, check_writable_dir
from utils.progress import progress_enabled
from utils.run_files import (
    EpochCheckpointer,
    RunFiles,
    explain_ensemble_stops,
    resume_training,
    run_name,
    sanitize_args,
)
from utils.seed import seed_everything, set_deterministic
from utils.training import (
    LOSSES,
    OPTIMIZERS,
    EpochStats,
    TrainSettings,
    make_optimizer,
    make_scheduler,
    prepare_model,
    train_epochs,
)

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
        parents=[model_parser(default_model="resnet50")],  # --model, -sn, --coeff, -mod, size overrides
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
        choices=ensemble.MODES,
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
        f"{{save-path}}/{tensorboard.DEFAULT_FOLDER}); needs the tensorboard package",
    )


def _add_run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--seed", type=int, required=True, help="seed of the weights, data order and run name")
    g.add_argument(
        "--dataset", default="cifar10", help=f"training set; one of: {', '.join(data.list_datasets())}"
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
    g.add_argument("--first-milestone", type=int, default=150, help="epoch of the first tenfold lr drop")
    g.add_argument("--second-milestone", type=int, default=250, help="epoch of the second tenfold lr drop")


def _add_speed_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="bf16 autocast (default on a GPU) or fp32 (default on the CPU; the original's numerics)",
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
        help="NHWC memory layout (default on a GPU, where convolutions are faster with it)",
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
    if args.resume not in (None, DEFAULT_RESUME) and not Path(args.resume).is_file():
        raise UserError(
            f"the resume file '{args.resume}' given to --resume does not exist; pass the {{name}}_resume.pt of "
            "the run to continue, or --resume alone to continue from --save-path"
        )


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    if args.channels_last is None:
        args.channels_last = device.type == "cuda"
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
    if args.deterministic:
        set_deterministic(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.ensemble is None:
        return _train_run(_prepare_run(args, device, dist_info), device, dist_info)
    return _train_ensemble(args, device, dist_info)


@dataclass
class _Run:
    """One network's training run, ready to train: its flags, files, loaders, network and optimiser state."""

    args: argparse.Namespace
    files: RunFiles
    train_loader: Any
    valid_loader: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: dict[str, Any]
    saved_args: dict[str, Any]
    history: list[EpochStats]
    start_epoch: int

    @property
    def tensorboard_dir(self) -> Path | None:
        folder = tensorboard.resolve_folder(self.args.tensorboard, self.args.save_loc)
        return None if folder is None else folder / self.files.name


def _prepare_run(args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo) -> _Run:
    """Loaders, the seeded network, optimiser and schedule of the run `args` describes, resumed if asked."""
    files = RunFiles(Path(args.save_loc), run_name(args.model, args.seed, args.sn, args.mod, args.coeff))
    train_loader, valid_loader = data.get_train_valid_loader(
        args.dataset,
        args.dataset_root,
        args.rank_batch_size,
        augment=args.data_aug,
        val_seed=args.val_seed,
        val_size=0.1,
        device=device,
        loader=args.loader,
        seed=args.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        test_batch_size=args.test_batch_size,
        num_workers=args.workers,
    )
    seed_everything(args.seed)
    config = model_config(args)
    model = build_model(config).to(device)
    optimizer = make_optimizer(
        model.parameters(),
        args.optimiser,
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
    )
    scheduler = make_scheduler(optimizer, (args.first_milestone, args.second_milestone))
    saved_args = sanitize_args(args)
    history, start_epoch = _resume(args, files, model, optimizer, scheduler, saved_args, dist_info)
    return _Run(args, files, train_loader, valid_loader, model, optimizer, scheduler, config, saved_args,
                history, start_epoch)  # fmt: skip


def _settings(
    args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo
) -> TrainSettings:
    return TrainSettings(
        device=device,
        precision=args.precision,
        channels_last=args.channels_last,
        loss_function=args.loss_function,
        loss_mean=args.loss_mean,
        log_interval=args.log_interval,
        world_size=dist_info.world_size,
        progress=progress_enabled(dist_info.rank),
        max_steps=args.steps_per_epoch,
    )


def _checkpointer(run: _Run, writer: BackgroundWriter, model, optimizer, scheduler, is_main: bool):
    """The end-of-epoch writer of `run`'s files; `model` and `optimizer` may be a stacked member's views."""
    args = run.args
    return EpochCheckpointer(
        run.files, writer, model, optimizer, scheduler, model_config=run.config, args=run.saved_args,
        history=run.history, save_interval=args.save_interval, epochs=args.epoch, is_main=is_main,
    )  # fmt: skip


def _train_run(
    run: _Run, device: torch.device, dist_info: distributed.DistInfo, *, until: int | None = None
) -> dict[str, Any]:
    """Train one network from its start epoch to -e (or to epoch `until`: a stacked resume's catch-up)."""
    args = run.args
    epochs = args.epoch if until is None else until
    log_dir = run.tensorboard_dir if dist_info.is_main else None
    with (
        run.files.explain_stops(run.history),
        BackgroundWriter() as writer,
        tensorboard.epoch_writer(log_dir, purge_step=run.start_epoch + 1) as board,
    ):
        checkpoint = _checkpointer(run, writer, run.model, run.optimizer, run.scheduler, dist_info.is_main)

        def on_epoch_end(stats: EpochStats) -> None:
            checkpoint(stats)
            if dist_info.is_main:
                prefix = f"{run.files.name} " if args.ensemble is not None else ""
                log.info("%s%s", prefix, stats.summary(args.epoch))
                tensorboard.add_scalars(board, stats.to_json(), step=stats.epoch + 1)

        train_epochs(
            prepare_model(
                run.model, device, channels_last=args.channels_last, compile=args.compile, dist_info=dist_info
            ),
            run.train_loader,
            run.optimizer,
            run.scheduler,
            _settings(args, device, dist_info),
            epochs=epochs,
            start_epoch=run.start_epoch,
            valid_loader=run.valid_loader,
            validate_every=args.validate_every,
            on_epoch_end=on_epoch_end,
        )
    if until is None:
        _finish(run, dist_info)
    else:
        run.start_epoch = until
    return {"history": run.history, "model": run.model, "files": run.files}


def _finish(run: _Run, dist_info: distributed.DistInfo) -> None:
    args = run.args
    if dist_info.is_main:
        if run.start_epoch == args.epoch:
            log.info("%s: already trained for %d epochs (-e %d); nothing to do", run.files.name, args.epoch,
                     args.epoch)  # fmt: skip
            if not run.files.model(args.epoch).is_file():
                run.files.save_model(run.model, args.epoch)
        log.info("Model saved to %s", run.files.model(args.epoch))


# --------------------------------------------------------------------------------------------------------
# Ensembles


def member_args(args: argparse.Namespace, k: int) -> argparse.Namespace:
    """The flags of ensemble member k (from 0): seed `seed + k` and validation split `val_seed + k`, as the
    original's train_ensemble.py, so that member k is the network `train.py --seed {seed + k}` trains and
    evaluate.py finds it (and its split) as member k of the run."""
    member = argparse.Namespace(**vars(args))
    member.seed, member.val_seed = args.seed + k, args.val_seed + k
    return member


def _train_ensemble(args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo) -> dict:
    """`--ensemble N`: members stacked into one vmapped network where that is exact, else one after another.

    Returns `{"members": [one `_train_run` result per member], "mode": "stacked" | "sequential"}`.
    """
    probe = build_model(model_config(args))
    obstacle = ensemble.stacking_obstacle(probe, compile=args.compile, world_size=dist_info.world_size)
    try:
        mode, why = ensemble.choose_mode(args.ensemble_mode, obstacle, device.type)
    except ValueError as err:
        raise UserError(f"{err}; pass --ensemble-mode auto or sequential") from None
    if dist_info.is_main:
        how = (
            "trained together, stacked into one vmapped network" if mode == "stacked" else "one after another"
        )
        log.info("ensemble of %d members (seeds %d..%d): %s (%s)", args.ensemble, args.seed,
                 args.seed + args.ensemble - 1, how, why)  # fmt: skip
    if mode == "sequential":
        results = []
        for k in range(args.ensemble):
            run = _prepare_run(member_args(args, k), device, dist_info)
            results.append(_train_run(run, device, dist_info))
        return {"members": results, "mode": mode}
    runs = [_prepare_run(member_args(args, k), device, dist_info) for k in range(args.ensemble)]
    return {"members": _train_stacked(args, runs, device, dist_info), "mode": mode}


def _train_stacked(
    args: argparse.Namespace, runs: list[_Run], device: torch.device, dist_info: distributed.DistInfo
) -> list[dict[str, Any]]:
    """Train the members of `runs` together (see `utils.ensemble`); each keeps its own files and logs."""
    # Members resumed from different epochs (a stop between two members' end-of-epoch writes) first catch
    # up one by one: the stack needs them in step.
    done = max(run.start_epoch for run in runs)
    for run in runs:
        if run.start_epoch < done:
            log.info("%s: catching up from epoch %d to %d alone", run.files.name, run.start_epoch, done)
            _train_run(run, device, dist_info, until=done)
    stack = ensemble.StackedEnsemble([run.model for run in runs]).to(device)
    optimizer = make_optimizer(
        stack.parameters(),
        args.optimiser,
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
    )
    if done:
        optimizer.load_state_dict(
            ensemble.stack_optimizer_states([run.optimizer.state_dict() for run in runs])
        )
    # The members' common schedule (their states are equal: same milestones, same epochs done).
    scheduler = make_scheduler(optimizer, (args.first_milestone, args.second_milestone))
    scheduler.load_state_dict(runs[0].scheduler.state_dict())
    names = [run.files.name for run in runs]
    with contextlib.ExitStack() as stack_of_files:
        stack_of_files.enter_context(
            explain_ensemble_stops([run.files for run in runs], [run.history for run in runs])
        )
        checkpoints, boards = [], []
        for k, run in enumerate(runs):
            view = ensemble.MemberView(stack, optimizer, k)
            writer = stack_of_files.enter_context(BackgroundWriter())
            checkpoints.append(
                _checkpointer(run, writer, view.model, view.optimizer, scheduler, dist_info.is_main)
            )
            log_dir = run.tensorboard_dir if dist_info.is_main else None
            boards.append(
                stack_of_files.enter_context(tensorboard.epoch_writer(log_dir, purge_step=done + 1))
            )

        def on_epoch_end(stats: list[EpochStats]) -> None:
            for checkpoint, board, name, member_stats in zip(checkpoints, boards, names, stats):
                checkpoint(member_stats)
                log.info("%s %s", name, member_stats.summary(args.epoch))
                tensorboard.add_scalars(board, member_stats.to_json(), step=member_stats.epoch + 1)

        ensemble.train_epochs_stacked(
            stack,
            ensemble.ZippedLoader([run.train_loader for run in runs]),
            optimizer,
            scheduler,
            _settings(args, device, dist_info),
            epochs=args.epoch,
            start_epoch=done,
            valid_loader=ensemble.ZippedLoader([run.valid_loader for run in runs]),
            validate_every=args.validate_every,
            member_names=[f"member {k + 1} ({name})" for k, name in enumerate(names)],
            on_epoch_end=on_epoch_end,
        )
    results = []
    for k, run in enumerate(runs):
        run.model.load_state_dict(stack.member_state_dict(k))
        _finish(run, dist_info)
        results.append({"history": run.history, "model": run.model, "files": run.files})
    return results


def _log_run(args: argparse.Namespace, dist_info: distributed.DistInfo) -> None:
    """The git revision, the process count and the sorted arguments, first in the log (as DINO does)."""
    processes = f"{dist_info.world_size} processes" if dist_info.enabled else "1 process"
    log.info("git revision %s; %s", _git_revision(), processes)
    for key, value in sorted(vars(args).items()):
        log.info("%s: %s", key, value)


def _resume(args, files, model, optimizer, scheduler, saved_args, dist_info) -> tuple[list[EpochStats], int]:
    """The history and epochs done of the run `--resume` continues (none without --resume or its file)."""
    if args.resume is None:
        if files.resume.is_file() and dist_info.is_main:
            log.warning("%s exists and will be overwritten; pass --resume to continue that run", files.resume)
        return [], 0
    path = files.resume if args.resume == DEFAULT_RESUME else Path(args.resume)
    if args.resume == DEFAULT_RESUME and not path.is_file():
        log.info("no resume file at %s; starting from scratch", path)
        return [], 0
    history, done = resume_training(
        path, model, optimizer, scheduler, saved_args, keys=RESUME_MUST_MATCH, rank=dist_info.rank,
        flag_names={**flag_names(get_args_parser()), "world_size": "the process count"},
        learning_rate=args.learning_rate,
    )  # fmt: skip
    if done > args.epoch:
        raise UserError(
            f"'{path}' is already after epoch {done}, beyond -e {args.epoch}; pass -e {done} or more to continue it"
        )
    log.info("resumed from %s after epoch %d", path, done)
    return history, done


if __name__ == "__main__":
    main(get_args_parser().parse_args())
