"""The evaluate.py command from checked flags to its result files (what `evaluate.py` runs): every run's
checkpoints found before the first is evaluated, the data loaders built once, each network's outputs computed
once per data set and scored by `engine.evaluation` against every OoD set of `--ood_dataset` (the
in-distribution part once), the finished runs kept in a `.partial` side file per OoD set while the command
runs (a rerun continues from them), and the original DDU result JSON per OoD set written at the end
(`engine.result_tables.aggregate`), with one printed table.

    run_evaluation(args, flag_names)    # args: evaluate.py's checked flags; flag_names: dest -> flag
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from engine.result_tables import aggregate, format_table, ood_table, table_rows
from engine.run_paths import locate_checkpoint, run_name, run_seeds
from utils.device import resolve_precision, select_device
from utils.errors import Interrupted, UserError
from utils.io import atomic_write_json, check_writable_dir, exclusive_lock, lock_path, read_json
from utils.progress import progress_bar

log = logging.getLogger("evaluate")


def run_evaluation(args: argparse.Namespace, flag_names: Mapping[str, str]) -> dict:
    """Evaluate every run of `args` (evaluate.py's flags, checked) into one result file per OoD set.

    Returns the result JSON, or with several OoD sets `{OoD name: result JSON}`. `flag_names` maps each
    destination to its command-line flag, for the sentences that refuse to replace a result or continue a
    side file of other settings. The result files are locked for the whole command (one writer per result).
    """
    outputs = {ood: result_path(args, ood) for ood in ood_names(args.ood_dataset)}
    check_writable_dir(Path(args.output_dir), "output folder (--output-dir)")
    check_checkpoints(args)
    with contextlib.ExitStack() as locks:
        for output in sorted(outputs.values()):
            locks.enter_context(
                exclusive_lock(lock_path(output), f"the result '{output}'", "pass another --output-dir")
            )
        return _evaluate(args, outputs, flag_names)


# --------------------------------------------------------------------------------------------------------
# OoD sets: several per command, each with its own result file


def ood_names(value: str) -> list[str]:
    """The OoD sets of `--ood_dataset` (a comma-separated list), as given. Two that would write the same
    result file (`result_label`) are a `UserError`."""
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    if not names:
        raise UserError(f"--ood_dataset '{value}' names no data set; pass one or more, separated by commas")
    labels: dict[str, str] = {}
    for name in names:
        label = result_label(name)
        if label in labels:
            raise UserError(
                f"--ood_dataset names {labels[label]!r} and {name!r}, which both write the result of "
                f"'{label}'; pass each OoD set once (folder sets are told apart by their folder's name)"
            )
        labels[label] = name
    return names


def result_label(name: str) -> str:
    """A data set's part of a result file name: the registered name (`data.canonical_name`), and for an image
    folder `folder:PATH` `folder-NAME`, NAME the folder's own name with any character other than letters,
    digits, `.`, `_` and `-` replaced by `_` (`folder:/data/my scans/` gives `folder-my_scans`)."""
    if not data.is_folder(name):
        return data.canonical_name(name)
    folder = Path(name.strip()[len("folder:") :]).expanduser()
    base = folder.name if folder.name not in ("", ".", "..") else folder.resolve().name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    if not base.strip("._"):
        raise UserError(f"{name}: the folder has no name to call its result file by; pass its own path")
    return f"folder-{base}"


def parse_ood_groups(specs: Sequence[str] | None, oods: Sequence[str]) -> dict[str, list[str]]:
    """`--ood-groups near=cifar100,tiny_imagenet far=svhn,mnist` as `{group: [OoD names as in oods]}`;
    every member must be one of the evaluated OoD sets (compared by `result_label`)."""
    by_label = {result_label(ood): ood for ood in oods}
    groups: dict[str, list[str]] = {}
    for spec in specs or ():
        group, sep, members = spec.partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not group.strip() or not names:
            raise UserError(
                f"--ood-groups takes GROUP=SET,SET,... (e.g. near=cifar100,tiny_imagenet), not '{spec}'"
            )
        if group.strip() in groups:
            raise UserError(f"--ood-groups names the group '{group.strip()}' twice; give each group once")
        missing = [m for m in names if result_label(m) not in by_label]
        if missing:
            raise UserError(
                f"--ood-groups {group.strip()} holds {', '.join(missing)}, which --ood_dataset does not "
                f"evaluate (it has: {', '.join(oods)}); add it there or drop it from the group"
            )
        groups[group.strip()] = [by_label[result_label(m)] for m in names]
    return groups


class Evaluator:
    """Holds the data loaders (built once) and computes each network's outputs once per data set."""

    def __init__(self, args: argparse.Namespace, device):
        self.args, self.device = args, device
        self.precision, self.channels_last = resolve_precision(device, args.precision)
        self.info = data.get_info(args.dataset)
        root, batch = args.dataset_root, args.batch_size
        self.test_loader = data.get_test_loader(args.dataset, root, batch, device=device, loader=args.loader)
        self.ood_loaders = {
            ood: data.get_test_loader(ood, root, batch, device=device, like=args.dataset, loader=args.loader)
            for ood in ood_names(args.ood_dataset)
        }
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

    def outputs(self, model, seed: int, need_train: bool, source: str = "the checkpoint") -> dict[str, Any]:
        """Logits and features on every data set the run needs, each computed once: `test`, `val`, `train`
        (`need_train`), `parts` (a dirty set's clean and ambiguous test parts) as `Outputs`, and `ood` as
        `{name: Outputs}`. NaN/inf outputs on the in-distribution sets raise `RunFailedError` naming
        `source`; on an OoD set they make that set's value the `RunFailedError` (the other sets go on)."""

        def run(loader):
            return collect_outputs(model, loader, self.device, self.precision, self.channels_last)

        train_loader, val_loader = self.splits(seed)
        out: dict[str, Any] = {"test": run(self.test_loader), "val": run(val_loader)}
        if need_train:
            out["train"] = run(train_loader)
        check_finite_outputs(out, source)
        out["ood"] = {}
        for name, loader in self.ood_loaders.items():
            ood = run(loader)
            try:
                check_finite_outputs({f"OoD {name}": ood}, source)
            except RunFailedError as err:
                ood = err
            out["ood"][name] = ood
        if self.clean_size is not None:
            test, n = out["test"], self.clean_size
            out["parts"] = tuple(
                Outputs(test.logits[part], test.features[part], test.labels[part])
                for part in (slice(0, n), slice(n, None))
            )
        return out


def run_members(args: argparse.Namespace, run: int) -> tuple[list[Path], list[int], int | None]:
    """Run `run`'s checkpoints (one, or an ensemble's members), the seed of each one's validation split, and
    how many of the first members form the temperature-scaled ensemble (None: all; see
    `engine.evaluation.ensemble_members`). A missing checkpoint is a `UserError` naming what exists."""
    checkpoint = dict(model=args.model, sn=args.sn, mod=args.mod, coeff=args.coeff, epoch=args.epoch)
    if args.model_type != "ensemble":
        (seed,) = run_seeds(args.seed, run)
        return [locate_checkpoint(args.load_path, run, seed=seed, **checkpoint)], [seed], None
    seeds, val_seeds, tempered = ensemble_members(args.seed, run, args.ensemble, args.original_quirks)
    paths = []
    for seed in seeds:
        try:
            paths.append(
                locate_checkpoint(args.load_path, run, seed=seed, ensemble_naming=True, **checkpoint)
            )
        except UserError:
            if not args.original_quirks:
                raise
            raise UserError(
                f"with --original-quirks run {run} is the original's ensemble of the 5 members with seeds "
                f"{seeds[0]}..{seeds[-1]} (its evaluate.py loads 5 whatever --ensemble and --seed say), but "
                f"'{Path(args.load_path) / f'Run{run}'}' has no checkpoint of seed {seed}, where the original "
                "crashes; drop --original-quirks to evaluate the --ensemble members"
            ) from None
    return paths, val_seeds, tempered


def evaluate_run(
    evaluator: Evaluator, args: argparse.Namespace, run: int
) -> dict[str, dict[str, float] | RunFailedError]:
    """Run `run`'s metrics per OoD set (`engine.evaluation`): `{OoD name: metrics}`, or for a set whose
    scores cannot be computed, the `RunFailedError` saying why. Raises `RunFailedError` or
    `metrics.GaussianFitError` for a run that cannot be scored at all."""
    paths, val_seeds, tempered = run_members(args, run)
    if args.model_type == "ensemble":
        members = [
            evaluator.outputs(evaluator.load(path), val_seed, need_train=False, source=f"'{path}'")
            for path, val_seed in zip(paths, val_seeds)
        ]
        failed, oods = _split_failures(
            {name: [m["ood"][name] for m in members] for name in members[0]["ood"]}
        )
        parts = [m["parts"] for m in members] if evaluator.clean_size is not None else None
        scored = ensemble_run(
            [m["test"] for m in members],
            oods,
            [m["val"] for m in members],
            parts=parts,
            tempered=tempered,
        )
        return {name: failed[name] if name in failed else scored[name] for name in members[0]["ood"]}
    (path,), (seed,) = paths, val_seeds
    out = evaluator.outputs(evaluator.load(path), seed, need_train=True, source=f"'{path}'")
    failed, oods = _split_failures({name: [ood] for name, ood in out["ood"].items()})
    oods = {name: members[0] for name, members in oods.items()}
    common = dict(num_classes=evaluator.info.num_classes, parts=out.get("parts"))
    if args.model_type == "softmax":
        scored = softmax_run(out["test"], oods, out["val"], train=out["train"], **common)
    else:
        scored = gmm_run(
            out["test"],
            oods,
            out["val"],
            out["train"],
            weight_by_class_frequency=args.weight_by_class_frequency,
            original_quirks=args.original_quirks,
            samples_per_class=getattr(args, "gmm_samples_per_class", None),
            **common,
        )
    return {name: failed[name] if name in failed else scored[name] for name in out["ood"]}


def _split_failures(
    oods: Mapping[str, list[Outputs | RunFailedError]],
) -> tuple[dict[str, RunFailedError], dict[str, list[Outputs]]]:
    """`(failed, good)`: the OoD sets on which some member's outputs are not finite (its error), the rest."""
    failed, good = {}, {}
    for name, members in oods.items():
        error = next((m for m in members if isinstance(m, RunFailedError)), None)
        if error is not None:
            failed[name] = error
        else:
            good[name] = members
    return failed, good


def check_checkpoints(args: argparse.Namespace) -> None:
    """Every run's folder and checkpoint(s), found before the first evaluation: a missing one is a
    `UserError` now, not after the runs before it were evaluated."""
    for run in range(1, args.runs + 1):
        run_members(args, run)


# The settings an existing result must share with this command for it to be replaced without --overwrite
# (those that change its numbers; --ensemble only for ensembles). The file name holds the others.
RESULT_SETTINGS = (
    "load_path", "runs", "epoch", "weight_by_class_frequency", "original_quirks", "precision", "data_aug",
    "gmm_samples_per_class", *ARCH_FLAGS,
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


def result_path(args: argparse.Namespace, ood: str | None = None) -> Path:
    """`{output-dir}/res_{name}_{model-type}_{dataset}_{ood}.json`, the original's name, for the OoD set
    `ood` (default: the only one of --ood_dataset); `result_label` gives its part of the name."""
    if ood is None:
        (ood,) = ood_names(args.ood_dataset)
    name = run_name(args.model, args.seed, args.sn, args.mod, args.coeff)
    dataset, ood = result_label(args.dataset), result_label(ood)
    return Path(args.output_dir) / f"res_{name}_{args.model_type}_{dataset}_{ood}.json"


@dataclass
class ResultFile:
    """One result JSON and its `.partial` side file, which holds the runs finished so far while the command
    runs: an interruption loses at most the run in progress, a rerun with the same settings and checkpoints
    continues from the side file, and the final file only ever holds all runs.

    `per_run[i]` holds run i+1's metrics (None: the run failed, its reason in `failed`); `stored` is how many
    runs the side file on disk holds, so that it is never replaced by one holding fewer.
    """

    path: Path
    info: dict[str, Any]
    per_run: list[dict[str, float] | None] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    writable: bool = True

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    def result(self) -> dict[str, Any]:
        return {**aggregate(self.per_run, self.info), "failed_runs": self.failed}

    def add(self, run: int, metrics_or_error: dict[str, float] | Exception) -> None:
        if isinstance(metrics_or_error, Exception):
            self.per_run.append(None)
            self.failed.append({"run": run, "reason": str(metrics_or_error)})
            log.error("run %d failed: %s", run, metrics_or_error)
        else:
            self.per_run.append(metrics_or_error)

    def resume(
        self, fingerprints: Mapping[int, list[dict[str, Any]]], overwrite: bool, flag_names: Mapping[str, str]
    ) -> None:
        """Take over the runs of the side file left by an earlier command with the same settings (`info`
        but for `RESUME_FREE`) and the same checkpoints (`fingerprints[run]`, size and modification time);
        one of other settings or checkpoints is refused unless `overwrite`, which starts afresh."""
        if not self.partial.exists():
            return
        try:
            saved = read_json(self.partial)
            runs, kept = int(saved["runs_done"]), _saved_runs(saved)
            differ = _differing_settings(saved["info"], self.info, flag_names)
            changed = [
                r
                for r in range(1, min(runs, len(fingerprints)) + 1)
                if saved["checkpoints"].get(str(r)) != fingerprints[r]
            ]
        except (UserError, KeyError, IndexError, TypeError, ValueError, AttributeError):
            if overwrite:
                return
            raise UserError(
                f"'{self.partial}' is not the side file of an evaluation this version can continue; pass "
                "--overwrite to start afresh, or another --output-dir"
            ) from None
        if differ or changed:
            if overwrite:
                return
            why = (
                f"other settings ({', '.join(differ)})" if differ else f"other checkpoints in Run{changed[0]}"
            )
            raise UserError(
                f"'{self.partial}' holds {runs} finished runs evaluated with {why}; pass --overwrite to start "
                "afresh, or another --output-dir"
            )
        self.per_run = kept[: len(fingerprints)]
        self.failed = [f for f in saved["failed_runs"] if f["run"] <= len(fingerprints)]
        self.stored = runs
        log.info("continuing from %s: %d of %d runs already evaluated", self.partial, len(self.per_run),
                 len(fingerprints))  # fmt: skip

    def write_partial(self, fingerprints: Mapping[int, list[dict[str, Any]]]) -> None:
        """The runs so far into the side file, unless it holds more (then it stays) or cannot be written
        (then the evaluation goes on without it)."""
        runs = len(self.per_run)
        if not self.writable or runs < self.stored:
            return
        record = {
            **self.result(),
            "runs_done": runs,
            "checkpoints": {str(r): fingerprints[r] for r in range(1, runs + 1)},
        }
        try:
            atomic_write_json(self.partial, record)
        except UserError as err:  # only the side file is lost: the evaluation goes on
            log.warning("warning: %s; the evaluation continues without that side file", err)
            self.writable = False
            return
        self.stored = runs


# What may differ between the command that left a side file and the one that continues from it: where the
# files go, --overwrite, --ood-groups (the printed table only), and --runs (run i's numbers do not depend on
# how many runs follow); load_loc and gpu
# are the original's copies of --load-path and --no-gpu, compared as those.
RESUME_FREE = ("output_dir", "overwrite", "runs", "ood_groups", "load_loc", "gpu")


def _differing_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], flag_names: Mapping[str, str]
) -> list[str]:
    return [
        f"{flag_names.get(key, key)} {saved.get(key)!r} there vs {current.get(key)!r} now"
        for key in dict.fromkeys([*saved, *current])
        if key not in RESUME_FREE and saved.get(key) != current.get(key)
    ]


def _saved_runs(saved: Mapping[str, Any]) -> list[dict[str, float] | None]:
    """The per-run metrics of a side file, rebuilt from its `values` (None for its failed runs)."""
    failed = {f["run"] for f in saved["failed_runs"]}
    values = saved["values"]
    return [
        None
        if run in failed
        else {key: column[run - 1] for key, column in values.items() if column[run - 1] is not None}
        for run in range(1, int(saved["runs_done"]) + 1)
    ]


def checkpoint_fingerprints(args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """`{run: [{"file", "size", "mtime_ns"}]}` of the checkpoints every run loads: what a side file records,
    so that a rerun continues only when the checkpoints are still those it evaluated."""
    fingerprints = {}
    for run in range(1, args.runs + 1):
        fingerprints[run] = []
        for path in run_members(args, run)[0]:
            stat = path.stat()
            name = path.relative_to(args.load_path).as_posix()
            fingerprints[run].append({"file": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return fingerprints


def _evaluate(args: argparse.Namespace, outputs: Mapping[str, Path], flag_names: Mapping[str, str]):
    """Every run of `args` evaluated into `outputs[ood]` for each OoD set (their locks held by
    `run_evaluation`): a run's in-distribution outputs, GMM and temperatures once, each OoD set's pass
    once."""
    device = select_device(args.no_gpu)
    args = argparse.Namespace(**vars(args))
    args.precision = resolve_precision(device, args.precision)[0]  # the info records what was used
    groups = parse_ood_groups(args.ood_groups, list(outputs))
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info.update(load_loc=info["load_path"], gpu=not args.no_gpu)  # the original's keys for the same flags
    fingerprints = checkpoint_fingerprints(args)
    files = {}
    for ood, output in outputs.items():
        check_replaceable(output, args, flag_names)
        files[ood] = ResultFile(output, {**info, "ood_dataset": ood})
        files[ood].resume(fingerprints, args.overwrite, flag_names)
    evaluator = Evaluator(args, device)

    for run in progress_bar(range(1, args.runs + 1), desc=f"evaluating {args.model_type}", unit="run"):
        if all(run <= len(file.per_run) for file in files.values()):
            continue  # evaluated by an earlier command, kept in its side files
        try:
            results = evaluate_run(evaluator, args, run)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted during run {run} of {args.runs}; {_kept(files.values())}"
            ) from None
        except (metrics.GaussianFitError, RunFailedError) as err:
            results = dict.fromkeys(files, err)
        for ood, file in files.items():
            if run > len(file.per_run):  # else kept from its side file
                file.add(run, results[ood])
                if run < args.runs:
                    file.write_partial(fingerprints)
    results = {}
    for ood, file in files.items():
        results[ood] = file.result()
        atomic_write_json(file.path, results[ood])
        file.partial.unlink(missing_ok=True)
        print(f"wrote {file.path}", flush=True)
    sources = [(str(file.path), results[ood]) for ood, file in files.items()]
    table = format_table(table_rows(sources)) if len(files) == 1 else ood_table(sources, groups)
    print(table, end="", flush=True)
    failures = [
        f"{len(file.failed)} of {args.runs} runs failed"
        + (f" against {ood}" if len(files) > 1 else "")
        + f" (see 'failed_runs' in {file.path})"
        for ood, file in files.items()
        if file.failed
    ]
    if failures:
        print(f"error: {'; '.join(failures)}", file=sys.stderr)
        raise SystemExit(1)
    return results[next(iter(files))] if len(files) == 1 else results


def _kept(files) -> str:
    """What an interruption leaves: where the finished runs are, and how to go on."""
    files = list(files)
    if not any(file.per_run for file in files):
        return "no run had finished; rerun the same command to start again"
    if not all(file.writable for file in files):
        return "the finished runs could not be kept (a side file was not writable); rerun the same command"
    where = (
        files[0].partial if len(files) == 1 else f"the {len(files)} .partial files beside {files[0].partial}"
    )
    return f"the finished runs are in {where}; rerun the same command to continue"
