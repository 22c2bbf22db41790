"""The evaluate.py command from checked flags to its result file (what `evaluate.py` runs): every run's
checkpoints found before the first is evaluated, the data loaders built once, each network's outputs computed
once per data set and scored by `engine.evaluation`, the finished runs kept in a `.partial` side file while
the command runs, and the original DDU result JSON written at the end (`engine.results.aggregate`).

    run_evaluation(args, flag_names)    # args: evaluate.py's checked flags; flag_names: dest -> flag
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

import data
import metrics
from engine.evaluation import (
    check_finite_outputs,
    ensemble_members,
    ensemble_run,
    gmm_run,
    softmax_run,
)
from engine.features import Outputs, collect_outputs
from engine.network_flags import ARCH_FLAGS
from engine.networks import RunFailedError, load_network
from engine.results import aggregate, format_table, table_rows
from engine.run_paths import locate_checkpoint, run_name, run_seeds
from utils.device import resolve_precision, select_device
from utils.errors import Interrupted, UserError
from utils.io import atomic_write_json, check_writable_dir, exclusive_lock, lock_path, read_json
from utils.progress import progress_bar

log = logging.getLogger("evaluate")


def run_evaluation(args: argparse.Namespace, flag_names: Mapping[str, str]) -> dict:
    """Evaluate every run of `args` (evaluate.py's flags, checked) into its result file and return the result.

    `flag_names` maps each destination to its command-line flag, for the sentence that refuses to replace a
    result of other settings. The result file is locked for the whole command (one writer per result).
    """
    output = result_path(args)
    check_writable_dir(output.parent, "output folder (--output-dir)")
    check_checkpoints(args)
    with exclusive_lock(lock_path(output), f"the result '{output}'", "pass another --output-dir"):
        return _evaluate(args, output, flag_names)


class Evaluator:
    """Holds the data loaders (built once) and computes each network's outputs once per data set."""

    def __init__(self, args: argparse.Namespace, device):
        self.args, self.device = args, device
        self.precision, self.channels_last = resolve_precision(device, args.precision)
        self.info = data.get_info(args.dataset)
        root, batch = args.dataset_root, args.batch_size
        self.test_loader = data.get_test_loader(args.dataset, root, batch, device=device, loader=args.loader)
        self.ood_loader = data.get_test_loader(
            args.ood_dataset, root, batch, device=device, like=args.dataset, loader=args.loader
        )
        # A dirty set's test split is its clean part followed by its ambiguous part: one pass over the test
        # set, then a slice, gives both (no second forward pass).
        parts = data.dirty_parts(args.dataset)
        self.clean_size = None
        if parts is not None:
            clean_labels = data.load_split(parts[0], root, "test")[1]
            ambiguous_labels = data.load_split(parts[1], root, "test")[1]
            if len(clean_labels) + len(ambiguous_labels) != self.test_loader.num_samples:
                raise RuntimeError(f"{args.dataset}'s test split is not {parts[0]} followed by {parts[1]}")
            self.clean_size = len(clean_labels)
        self._split_cache: dict[int, tuple] = {}

    def splits(self, val_seed: int):
        if val_seed not in self._split_cache:
            self._split_cache = {
                val_seed: data.get_train_valid_loader(
                    self.args.dataset,
                    self.args.dataset_root,
                    self.args.batch_size,
                    augment=False,
                    val_seed=val_seed,
                    device=self.device,
                    loader=self.args.loader,
                    shuffle=False,
                )
            }
        return self._split_cache[val_seed]

    def load(self, path: Path):
        """The network of the flags with the checkpoint at `path`, on the device, in eval mode. The flags are
        cross-checked with those its run recorded; NaN/inf weights raise `RunFailedError`."""
        model = load_network(self.args, path, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.eval()

    def outputs(
        self, model, seed: int, need_train: bool, source: str = "the checkpoint"
    ) -> dict[str, Outputs]:
        """Logits and features on every data set the run needs; NaN/inf raise `RunFailedError` naming `source`."""

        def run(loader):
            return collect_outputs(model, loader, self.device, self.precision, self.channels_last)

        train_loader, val_loader = self.splits(seed)
        out = {"test": run(self.test_loader), "ood": run(self.ood_loader), "val": run(val_loader)}
        if need_train:
            out["train"] = run(train_loader)
        check_finite_outputs(out, source)
        if self.clean_size is not None:
            test, n = out["test"], self.clean_size
            out["parts"] = tuple(
                Outputs(test.logits[part], test.features[part], test.labels[part])
                for part in (slice(0, n), slice(n, None))
            )
        return out


def evaluate_run(evaluator: Evaluator, args: argparse.Namespace, run: int) -> dict[str, float]:
    num_classes = evaluator.info.num_classes
    checkpoint = dict(model=args.model, sn=args.sn, mod=args.mod, coeff=args.coeff, epoch=args.epoch)
    if args.model_type == "ensemble":
        seeds, val_seeds, tempered = ensemble_members(args.seed, run, args.ensemble, args.original_quirks)
        members = []
        for seed, val_seed in zip(seeds, val_seeds):
            try:
                path = locate_checkpoint(args.load_path, run, seed=seed, ensemble_naming=True, **checkpoint)
            except UserError:
                if not args.original_quirks:
                    raise
                raise UserError(
                    f"with --original-quirks run {run} is the original's ensemble of the 5 members with seeds "
                    f"{seeds[0]}..{seeds[-1]} (its evaluate.py loads 5 whatever --ensemble and --seed say), but "
                    f"'{Path(args.load_path) / f'Run{run}'}' has no checkpoint of seed {seed}, where the original "
                    "crashes; drop --original-quirks to evaluate the --ensemble members"
                ) from None
            members.append(
                evaluator.outputs(evaluator.load(path), val_seed, need_train=False, source=f"'{path}'")
            )
        parts = [m["parts"] for m in members] if evaluator.clean_size is not None else None
        return ensemble_run(
            [m["test"] for m in members],
            [m["ood"] for m in members],
            [m["val"] for m in members],
            parts=parts,
            tempered=tempered,
        )
    (seed,) = run_seeds(args.seed, run)
    path = locate_checkpoint(args.load_path, run, seed=seed, **checkpoint)
    out = evaluator.outputs(evaluator.load(path), seed, need_train=True, source=f"'{path}'")
    common = dict(num_classes=num_classes, parts=out.get("parts"))
    if args.model_type == "softmax":
        return softmax_run(out["test"], out["ood"], out["val"], train=out["train"], **common)
    return gmm_run(
        out["test"],
        out["ood"],
        out["val"],
        out["train"],
        weight_by_class_frequency=args.weight_by_class_frequency,
        original_quirks=args.original_quirks,
        **common,
    )


def check_checkpoints(args: argparse.Namespace) -> None:
    """Every run's folder and checkpoint(s), found before the first evaluation: a missing one is a
    `UserError` now, not after the runs before it were evaluated."""
    checkpoint = dict(model=args.model, sn=args.sn, mod=args.mod, coeff=args.coeff, epoch=args.epoch)
    ensemble = args.model_type == "ensemble"
    for run in range(1, args.runs + 1):
        for seed in run_seeds(args.seed, run, args.ensemble if ensemble else None):
            locate_checkpoint(args.load_path, run, seed=seed, ensemble_naming=ensemble, **checkpoint)


# The settings an existing result must share with this command for it to be replaced without --overwrite
# (those that change its numbers; --ensemble only for ensembles). The file name holds the others.
RESULT_SETTINGS = (
    "load_path", "runs", "epoch", "weight_by_class_frequency", "original_quirks", "precision", "data_aug",
    *ARCH_FLAGS,
)  # fmt: skip


def check_replaceable(output: Path, args: argparse.Namespace, flag_names: Mapping[str, str]) -> None:
    """Refuse to replace the result in `output` if it was computed with other settings (`RESULT_SETTINGS`,
    compared where both record them), unless --overwrite."""
    if args.overwrite or not output.is_file():
        return
    try:
        saved = read_json(output).get("info")
    except (UserError, AttributeError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(
            f"'{output}' is not a result of evaluate.py; pass --overwrite to replace it, or another --output-dir"
        )
    keys = [*RESULT_SETTINGS, *(["ensemble"] if args.model_type == "ensemble" else [])]
    current = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    differ = [
        f"{flag_names.get(k, '--' + k.replace('_', '-'))} {saved[k]!r} there vs {current[k]!r} now"
        for k in keys
        if k in saved and k in current and saved[k] != current[k]
    ]
    if differ:
        raise UserError(
            f"'{output}' holds a result computed with other settings ({', '.join(differ)}); pass --overwrite "
            "to replace it, or another --output-dir"
        )


def result_path(args: argparse.Namespace) -> Path:
    name = run_name(args.model, args.seed, args.sn, args.mod, args.coeff)
    dataset, ood = data.canonical_name(args.dataset), data.canonical_name(args.ood_dataset)
    return Path(args.output_dir) / f"res_{name}_{args.model_type}_{dataset}_{ood}.json"


def _evaluate(args: argparse.Namespace, output: Path, flag_names: Mapping[str, str]) -> dict:
    """Every run of `args` evaluated into `output` (its lock held by `run_evaluation`)."""
    device = select_device(args.no_gpu)
    args = argparse.Namespace(**vars(args))
    args.precision = resolve_precision(device, args.precision)[0]  # the info records what was used
    check_replaceable(output, args, flag_names)
    evaluator = Evaluator(args, device)

    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info.update(load_loc=info["load_path"], gpu=not args.no_gpu)  # the original's keys for the same flags
    # Runs finished so far are kept in a side file while the command runs, so an interruption loses at most
    # the run in progress; the final file only ever holds all runs.
    partial = output.with_name(output.name + ".partial")
    per_run: list[dict | None] = []
    failed: list[dict] = []
    partial_ok = True
    for run in progress_bar(range(1, args.runs + 1), desc=f"evaluating {args.model_type}", unit="run"):
        try:
            per_run.append(evaluate_run(evaluator, args, run))
        except KeyboardInterrupt:
            kept = (
                "no run had finished"
                if run == 1
                else f"the finished runs are in {partial}"
                if partial_ok
                else "the finished runs could not be kept (the side file was not writable)"
            )
            raise Interrupted(
                f"interrupted during run {run} of {args.runs}; {kept}; rerun the command to evaluate all runs"
            ) from None
        except (metrics.GaussianFitError, RunFailedError) as err:
            per_run.append(None)
            failed.append({"run": run, "reason": str(err)})
            log.error("run %d failed: %s", run, err)
        if run < args.runs and partial_ok:
            try:
                atomic_write_json(
                    partial, {**aggregate(per_run, info), "failed_runs": failed, "runs_done": run}
                )
            except UserError as err:  # only the side file is lost: the evaluation goes on
                log.warning("warning: %s; the evaluation continues without that side file", err)
                partial_ok = False
    result = aggregate(per_run, info)
    result["failed_runs"] = failed
    atomic_write_json(output, result)
    partial.unlink(missing_ok=True)
    print(f"wrote {output}", flush=True)
    print(format_table(table_rows([(str(output), result)])), end="", flush=True)
    if failed:
        print(
            f"error: {len(failed)} of {args.runs} runs failed (see 'failed_runs' in {output})",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return result
