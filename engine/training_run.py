"""One training run, or the members of a deep ensemble, from resolved train.py flags to trained networks
and their files: loaders, the seeded network, optimiser and schedule, resume, the epoch loop with its
checkpoints, logs and TensorBoard scalars.

`train.py` resolves and checks the flags, then calls `setup_training_run` + `train_network` (one network)
or `train_ensemble` (`--ensemble N`: members stacked into one vmapped network where that is exact, else one
after another; see `engine.stacked_ensemble`). The end of every epoch is one `EpochCheckpointer` call per
network: its files (`engine.checkpointing`), its log line and its TensorBoard scalars.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

import data
from engine import checkpointing, stacked_ensemble, tensorboard
from engine.checkpointing import capture_rng_state, explain_stops, resume_training, sanitize_args
from engine.network_flags import model_config
from engine.networks import build_model
from engine.run_paths import RunFiles, run_name
from engine.training import (
    EpochStats,
    TrainSettings,
    make_optimizer,
    make_scheduler,
    prepare_model,
    run_epochs,
    train_epochs,
)
from utils import distributed
from utils.errors import Interrupted, UserError
from utils.io import BackgroundWriter, cpu_snapshot, exclusive_lock, lock_path
from utils.progress import progress_enabled
from utils.seed import seed_everything

log = logging.getLogger("train")


@dataclass(frozen=True)
class ResumeRule:
    """How `--resume` is read: `latest` is the value meaning "the run's own resume file in --save-path",
    `keys` the flags that must match the saved run, `flag_names` their spellings for error messages."""

    latest: str
    keys: tuple[str, ...]
    flag_names: Mapping[str, str]


@dataclass
class TrainingRun:
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


def run_files(args: argparse.Namespace) -> RunFiles:
    """The files of the run `args` describes (one network: --ensemble's members through `member_args`)."""
    return RunFiles(Path(args.save_loc), run_name(args.model, args.seed, args.sn, args.mod, args.coeff))


def _refuse_replacing(args: argparse.Namespace, files: RunFiles, rule: ResumeRule) -> None:
    """A finished or interrupted run's files are only replaced with --overwrite (its .model files stay
    until the new run saves over them)."""
    existing = [p for p in (files.resume, files.log, files.train_loss) if p.is_file()]
    if not existing or args.overwrite:
        return
    if args.resume is None:
        raise UserError(
            f"'{existing[0]}' holds an earlier run of {files.name}; pass --resume to continue it, --overwrite to "
            "start it again (its files are replaced), or another --save-path"
        )
    if args.resume == rule.latest and not files.resume.is_file():
        raise UserError(
            f"'{existing[0]}' holds an earlier run of {files.name}, but its resume file '{files.resume}' is "
            "missing, so it cannot be continued; pass --overwrite instead of --resume to start it again, or "
            "another --save-path"
        )


@contextlib.contextmanager
def claim_runs(args: argparse.Namespace, rule: ResumeRule, is_main: bool = True) -> Iterator[None]:
    """One writer per run: hold the lock of every run `args` trains (each ensemble member's) in --save-path,
    and refuse, before any training, to replace an earlier run's files without --overwrite."""
    members = [args] if args.ensemble is None else [member_args(args, k) for k in range(args.ensemble)]
    with contextlib.ExitStack() as locks:
        if is_main:
            for member in members:
                files = run_files(member)
                locks.enter_context(
                    exclusive_lock(
                        lock_path(files.save_dir / files.name),
                        f"the run {files.name} in '{files.save_dir}'",
                        "pass another --save-path",
                    )
                )
                _refuse_replacing(member, files, rule)
        yield


def build_optimizer(
    args: argparse.Namespace, parameters: Iterable[nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    """The optimiser and schedule train.py's flags describe (`--optimiser`, `--lr`, `--momentum`,
    `--weight-decay`, `--nesterov`, the two milestones), for one network or a stack of members."""
    optimizer = make_optimizer(
        parameters,
        args.optimiser,
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
    )
    return optimizer, make_scheduler(optimizer, (args.first_milestone, args.second_milestone))


def setup_training_run(
    args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo, rule: ResumeRule
) -> TrainingRun:
    """Loaders, the seeded network, optimiser and schedule of the run `args` describes, resumed if asked."""
    files = run_files(args)
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
    optimizer, scheduler = build_optimizer(args, model.parameters())
    saved_args = sanitize_args(args)
    history, start_epoch = _resume(args, files, model, optimizer, scheduler, saved_args, dist_info, rule)
    if args.resume == rule.latest and start_epoch:  # continued from its own resume file, which holds it
        files.saved_epoch = start_epoch
    return TrainingRun(args, files, train_loader, valid_loader, model, optimizer, scheduler, config, saved_args,
                history, start_epoch)  # fmt: skip


def train_settings(
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


@dataclass
class EpochCheckpointer:
    """The end of an epoch of one network of `run` (`train_epochs`' `on_epoch_end`), written once for a
    network trained alone and for a stacked ensemble's members: appends the epoch to the run's history,
    writes its files (`engine.checkpointing.write_epoch`: the model file every --save-interval epochs and
    after the last), logs its line and adds its TensorBoard scalars (`board`, None: none).

    `model`, `optimizer` and `scheduler` default to the run's; a stacked member passes the views of its
    slice (`engine.stacked_ensemble.MemberView`) and the stack's schedule. The writes run on `writer`'s
    thread from CPU copies, overlapping the next epoch (a WRN-28-10 resume file is about 300 MB); their
    errors surface at the next epoch's end or when the writer closes. Every rank must call it (the RNG
    states are gathered, a collective); only the main rank writes and logs.
    """

    run: TrainingRun
    writer: BackgroundWriter
    board: Any = None
    is_main: bool = True
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None

    def __call__(self, stats: EpochStats) -> None:
        run, args = self.run, self.run.args
        run.history.append(stats)
        done = stats.epoch + 1
        rng_states = distributed.all_gather_objects(capture_rng_state())
        if not self.is_main:
            return
        model = run.model if self.model is None else self.model
        optimizer = run.optimizer if self.optimizer is None else self.optimizer
        scheduler = run.scheduler if self.scheduler is None else self.scheduler
        model_state = cpu_snapshot(model.state_dict())
        state = {
            "epoch": done,
            "model": model_state,
            "model_config": run.config,
            "optimizer": cpu_snapshot(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "grad_scaler": None,  # bf16 keeps fp32's exponent range: no loss scaling needed
            "args": run.saved_args,
            "rng": rng_states,
            "history": [h.to_json() for h in run.history],
        }
        save_model = done % args.save_interval == 0 or done == args.epoch
        snapshot = list(run.history)
        self.writer.submit(
            lambda: checkpointing.write_epoch(
                run.files, state, snapshot, model_state=model_state if save_model else None, model_epoch=done
            )
        )
        prefix = f"{run.files.name} " if args.ensemble is not None else ""
        log.info("%s%s", prefix, stats.summary(args.epoch))
        tensorboard.add_scalars(self.board, stats.to_json(), step=done)
        tensorboard.add_original_train_loss(self.board, run.files.name, stats.original_loss, step=done)


def train_network(
    run: TrainingRun, device: torch.device, dist_info: distributed.DistInfo, *, until: int | None = None
) -> dict[str, Any]:
    """Train one network from its start epoch to -e (or to epoch `until`: a stacked resume's catch-up)."""
    args = run.args
    epochs = args.epoch if until is None else until
    log_dir = run.tensorboard_dir if dist_info.is_main else None
    with (
        explain_stops([run.files], [run.history]),
        BackgroundWriter() as writer,
        tensorboard.epoch_writer(log_dir, purge_step=run.start_epoch + 1) as board,
    ):
        on_epoch_end = EpochCheckpointer(run, writer, board, dist_info.is_main)

        train_epochs(
            prepare_model(
                run.model, device, channels_last=args.channels_last, compile=args.compile, dist_info=dist_info
            ),
            run.train_loader,
            run.optimizer,
            run.scheduler,
            train_settings(args, device, dist_info),
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


def _finish(run: TrainingRun, dist_info: distributed.DistInfo) -> None:
    args = run.args
    if dist_info.is_main:
        if run.start_epoch == args.epoch:
            log.info("%s: already trained for %d epochs (-e %d); nothing to do", run.files.name, args.epoch,
                     args.epoch)  # fmt: skip
            if not run.files.model(args.epoch).is_file():
                checkpointing.save_model(run.files, run.model, args.epoch)
        log.info("Model saved to %s", run.files.model(args.epoch))


def member_args(args: argparse.Namespace, k: int) -> argparse.Namespace:
    """The flags of ensemble member k (from 0): seed `seed + k` and validation split `val_seed + k`, as the
    original's train_ensemble.py, so that member k is the network `train.py --seed {seed + k}` trains and
    evaluate.py finds it (and its split) as member k of the run."""
    member = argparse.Namespace(**vars(args))
    member.seed, member.val_seed = args.seed + k, args.val_seed + k
    return member


def train_ensemble(
    args: argparse.Namespace, device: torch.device, dist_info: distributed.DistInfo, rule: ResumeRule
) -> dict:
    """`--ensemble N`: members stacked into one vmapped network where that is exact, else one after another.

    Returns `{"members": [one `train_network` result per member], "mode": "stacked" | "sequential"}`.
    """
    probe = build_model(model_config(args))
    obstacle = stacked_ensemble.stacking_obstacle(
        probe, compile=args.compile, world_size=dist_info.world_size
    )
    try:
        mode, why = stacked_ensemble.choose_mode(args.ensemble_mode, obstacle, device.type)
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
            try:
                run = setup_training_run(member_args(args, k), device, dist_info, rule)
                results.append(train_network(run, device, dist_info))
            except (KeyboardInterrupt, Interrupted) as err:
                raise _member_interrupted(args, results, k, err) from None
        return {"members": results, "mode": mode}
    runs = [setup_training_run(member_args(args, k), device, dist_info, rule) for k in range(args.ensemble)]
    return {"members": _train_stacked(args, runs, device, dist_info), "mode": mode}


def _member_interrupted(
    args: argparse.Namespace, finished: list[dict[str, Any]], k: int, err: BaseException
) -> Interrupted:
    """Ctrl-C while sequential member k (from 0) prepared or trained: which members are finished, and what
    the interrupted one kept."""
    name = run_files(member_args(args, k)).name
    detail = str(err) if isinstance(err, Interrupted) else "interrupted before its first epoch"
    message = f"member {k + 1} of {args.ensemble} ({name}) was {detail}"
    if not finished:
        return Interrupted(message)
    members = "member 1" if k == 1 else f"members 1-{k}"
    done = ", ".join(result["files"].name for result in finished)
    if "--resume" not in detail:
        message += f"; {checkpointing.RERUN_WITH_RESUME} after the finished members"
    return Interrupted(f"{members} ({done}) finished and saved, but {message}")


def _train_stacked(
    args: argparse.Namespace, runs: list[TrainingRun], device: torch.device, dist_info: distributed.DistInfo
) -> list[dict[str, Any]]:
    """Train the members of `runs` together (see `engine.stacked_ensemble`); each keeps its own files and logs."""
    # Members resumed from different epochs (a stop between two members' end-of-epoch writes) first catch
    # up one by one: the stack needs them in step.
    done = max(run.start_epoch for run in runs)
    for run in runs:
        if run.start_epoch < done:
            log.info("%s: catching up from epoch %d to %d alone", run.files.name, run.start_epoch, done)
            train_network(run, device, dist_info, until=done)
    stack = stacked_ensemble.StackedEnsemble([run.model for run in runs]).to(device)
    optimizer, scheduler = build_optimizer(args, stack.parameters())
    if done:
        optimizer.load_state_dict(
            stacked_ensemble.stack_optimizer_states([run.optimizer.state_dict() for run in runs])
        )
    # The members' common schedule (their states are equal: same milestones, same epochs done).
    scheduler.load_state_dict(runs[0].scheduler.state_dict())
    names = [run.files.name for run in runs]
    with contextlib.ExitStack() as stack_of_files:
        stack_of_files.enter_context(
            explain_stops([run.files for run in runs], [run.history for run in runs], members=True)
        )
        checkpoints = []
        for k, run in enumerate(runs):
            view = stacked_ensemble.MemberView(stack, optimizer, k)
            writer = stack_of_files.enter_context(BackgroundWriter())
            log_dir = run.tensorboard_dir if dist_info.is_main else None
            board = stack_of_files.enter_context(tensorboard.epoch_writer(log_dir, purge_step=done + 1))
            checkpoints.append(
                EpochCheckpointer(
                    run, writer, board, dist_info.is_main, view.model, view.optimizer, scheduler
                )
            )

        def on_epoch_end(stats: list[EpochStats]) -> None:
            for checkpoint, member_stats in zip(checkpoints, stats):
                checkpoint(member_stats)

        settings = train_settings(args, device, dist_info)
        train_loader = stacked_ensemble.ZippedLoader([run.train_loader for run in runs])
        valid_loader = stacked_ensemble.ZippedLoader([run.valid_loader for run in runs])
        member_names = [f"member {k + 1} ({name})" for k, name in enumerate(names)]

        def validate(epoch: int, stats: list[EpochStats]) -> None:
            accuracies = stacked_ensemble.evaluate_accuracy_stacked(stack, valid_loader, settings)
            for member_stats, accuracy in zip(stats, accuracies):
                member_stats.val_accuracy = accuracy

        # The epoch plan `train_epochs` follows for one network, with the stacked epoch.
        run_epochs(
            lambda epoch: stacked_ensemble.train_one_epoch_stacked(
                stack, train_loader, optimizer, settings, epoch=epoch, member_names=member_names
            ),
            epochs=args.epoch,
            start_epoch=done,
            loader=train_loader,
            scheduler=scheduler,
            validate=validate,
            validate_every=args.validate_every,
            on_epoch_end=on_epoch_end,
        )
    results = []
    for k, run in enumerate(runs):
        run.model.load_state_dict(stack.member_state_dict(k))
        _finish(run, dist_info)
        results.append({"history": run.history, "model": run.model, "files": run.files})
    return results


def _resume(
    args, files, model, optimizer, scheduler, saved_args, dist_info, rule: ResumeRule
) -> tuple[list[EpochStats], int]:
    """The history and epochs done of the run `--resume` continues (none without --resume or its file)."""
    if args.resume is None:
        if files.resume.is_file() and dist_info.is_main:  # only with --overwrite (see `claim_runs`)
            log.warning("--overwrite: %s starts again; its files are replaced as it saves", files.name)
        return [], 0
    path = files.resume if args.resume == rule.latest else Path(args.resume)
    if args.resume == rule.latest and not path.is_file():
        log.info("no resume file at %s; starting from scratch", path)
        return [], 0
    history, done = resume_training(
        path, model, optimizer, scheduler, saved_args, keys=rule.keys, rank=dist_info.rank,
        flag_names=rule.flag_names,
        learning_rate=args.learning_rate,
    )  # fmt: skip
    if done > args.epoch:
        raise UserError(
            f"'{path}' is already after epoch {done}, beyond -e {args.epoch}; pass -e {done} or more to continue it"
        )
    log.info("resumed from %s after epoch %d", path, done)
    return history, done
