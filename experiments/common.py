"""What every reproduction experiment shares: the command line, model specifications, calls of the top-level
scripts through their own `get_args_parser()` and `main(args)`, the record of where and how a run ran, and
the printed table.

An experiment module defines its scale presets in one dict (`SCALES`), each a frozen dataclass whose
fields are exactly what differs between scales and from the paper; the whole preset is printed at the start
and stored in the result JSON, next to the paper's setting (`PAPER`) and the list of differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import train
from engine.network_flags import ARCH_FLAGS
from engine.run_paths import RunFiles, run_name
from experiments.subsets import write_subset_root
from tools.plots import load_training_log
from utils.device import cpu_model, cpu_reports_native_bf16, select_device
from utils.errors import Interrupted, UserError
from utils.io import atomic_write_json, check_writable_dir, exclusive_lock, git_revision, read_json

SCALE_NAMES = ("smoke", "cpu", "gpu")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelSpec:
    """One network of an experiment: its label in tables and figures, `net` name, SN/mod and size overrides.

    `arch` holds `net.create_model` size overrides as (name, value) pairs, e.g. (("base_width", 8),).
    """

    label: str
    model: str
    sn: bool = False
    mod: bool = False
    arch: tuple[tuple[str, int], ...] = ()

    def flags(self, coeff: float = 3.0) -> list[str]:
        """The flags of train.py / evaluate.py / active_learning.py that build this network."""
        flags = ["--model", self.model, "--coeff", str(coeff)]
        flags += ["-sn"] * self.sn + ["-mod"] * self.mod
        for name, value in self.arch:
            flags += [f"--{name.replace('_', '-')}", str(value)]
        return flags

    def namespace(self, coeff: float = 3.0) -> argparse.Namespace:
        """The network flags as the scripts parse them (`engine.networks.load_network` takes them)."""
        sizes = {name: dict(self.arch).get(name) for name in ARCH_FLAGS}
        return argparse.Namespace(model=self.model, sn=self.sn, mod=self.mod, coeff=coeff, **sizes)

    def run_name(self, seed: int, coeff: float = 3.0) -> str:
        """train.py's file name stem for this network (the original naming), e.g. `resnet18_sn_3.0_mod_1`."""

        return run_name(self.model, seed, self.sn, self.mod, coeff)


def scaled_milestones(
    epochs: int, paper_epochs: int = 350, paper: tuple[int, int] = (150, 250)
) -> tuple[int, int]:
    """The paper's learning-rate milestones at the same fractions of a shorter schedule (at least 1 apart)."""
    first = max(1, round(epochs * paper[0] / paper_epochs))
    second = max(first + 1, round(epochs * paper[1] / paper_epochs))
    return first, second


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """`--scale` and the folders; every experiment adds nothing else it does not need."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale",
        choices=SCALE_NAMES,
        default="cpu",
        help="smoke: seconds, for tests; cpu: about 30 min on 2 cores; gpu: one ~8 min command on an H200",
    )
    parser.add_argument(
        "--dataset-root", default="./", help="folder holding the data sets in their official layouts"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help=f"checkpoints and intermediate files (default runs/experiments/{name}_SCALE); a rerun "
        "continues the trainings found there",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the work folder over: its trainings and runs are redone and replaced (default: a rerun "
        "continues what it finds there, and a finished result is reported and kept as it is)",
    )
    parser.add_argument(
        "--output-dir", default="results/repro", help=f"where {name}_SCALE.json and {name}_SCALE.png go"
    )
    parser.add_argument("--no-gpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument(
        "--num-threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)"
    )
    return parser


@dataclass
class Paths:
    work: Path
    json: Path
    figure: Path

    @property
    def partial(self) -> Path:
        """The record of the stages done so far (`NAME_SCALE.partial.json`), while the run is not finished:
        the final JSON is only replaced by a run that finishes."""
        return self.json.with_name(f"{self.json.stem}.partial.json")

    def relative(self, path: Path) -> str:
        """`path` as a record holds it: relative to the output folder (the JSON's), so that a record
        committed with its figures names no machine path."""
        return Path(os.path.relpath(Path(path).absolute(), self.json.parent.absolute())).as_posix()


def work_dir(args: argparse.Namespace, name: str) -> Path:
    return Path(args.work_dir or Path("runs") / "experiments" / f"{name}_{args.scale}")


def one_writer(name: str) -> Callable:
    """Decorator of an experiment's `main(args)`: one process at a time in its work folder (a lock file
    there, see `utils.io.exclusive_lock`), a finished result reported and kept instead of run again unless
    --overwrite (`finished_result`, read under the lock), and Ctrl-C ends in one sentence saying how to
    continue."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(args: argparse.Namespace):
            work = check_writable_dir(work_dir(args, name), "work folder (--work-dir)")
            try:
                with exclusive_lock(
                    work / ".experiment.lock", f"the work folder '{work}'", "pass another --work-dir"
                ):
                    finished = finished_result(args, name)
                    return main(args) if finished is None else finished
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted; {_how_to_continue(args, work)}") from None

        return wrapper

    return decorate


def _how_to_continue(args: argparse.Namespace, work: Path) -> str:
    again = "the command without --overwrite" if args.overwrite else "the same command"
    return f"what finished is kept in '{work}': rerun {again} to continue from it"


def prepare_run(args: argparse.Namespace, name: str) -> Paths:
    """Folders of this run; sets the thread count; returns where the outputs go."""

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    work = work_dir(args, name)
    out = Path(args.output_dir)
    check_writable_dir(work, "work folder (--work-dir)")
    check_writable_dir(out, "output folder (--output-dir)")
    return Paths(work, out / f"{name}_{args.scale}.json", out / f"{name}_{args.scale}.png")


def continue_flags(args: argparse.Namespace) -> list[str]:
    """What the inner scripts get so that a rerun continues their work (--resume), or with the experiment's
    --overwrite starts it over."""
    return ["--overwrite"] if args.overwrite else ["--resume"]


def run_script(module, argv: Sequence[str], work: Path | None = None) -> Any:
    """A top-level script as on its command line: `module.main(module.get_args_parser().parse_args(argv))`.

    Its errors come up to the experiment's own handler (not printed and exited by the script's), so that an
    interruption, or a refusal to continue files in the work folder `work`, is told in the experiment's
    flags."""
    script = f"{module.__name__.replace('.', '/')}.py"
    print(f"$ python {script} {' '.join(map(str, argv))}", flush=True)
    main = getattr(module.main, "__wrapped__", module.main)
    try:
        return main(module.get_args_parser().parse_args([str(a) for a in argv]))
    except Interrupted:
        raise KeyboardInterrupt from None  # told by `one_writer` in the experiment's flags
    except UserError as err:
        if work is None or not any(flag in str(err) for flag in ("--resume", "--overwrite")):
            raise
        raise UserError(
            f"{script} cannot continue what the work folder '{work}' holds (made with other settings, or "
            "left incomplete); pass --overwrite to start the work folder over, or another --work-dir"
        ) from None


def train_with_script(
    spec: ModelSpec,
    *,
    dataset: str,
    root: Path,
    work: Path,
    seed: int,
    coeff: float,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    steps_per_epoch: int,
    no_gpu: bool,
    overwrite: bool = False,
) -> dict[str, Any]:
    """train.py with milestones at the paper's fractions of `epochs`, into `work/Run1`; `--resume` continues
    (or skips) a training found there, `overwrite` starts it again. Returns a summary of its JSON-lines log
    and the final checkpoint."""

    first, second = scaled_milestones(epochs)
    argv = [
        *("--seed", seed, "--dataset", dataset, "--dataset-root", root),
        *spec.flags(coeff),
        *("-e", epochs, "--first-milestone", first, "--second-milestone", second),
        *("-b", batch_size, "--lr", learning_rate, "--steps-per-epoch", steps_per_epoch),
        *("--save-path", work / "Run1", "--save-interval", epochs),
        *(["--overwrite"] if overwrite else ["--resume"]),
        *(["--no-gpu"] if no_gpu else []),
    ]
    run_script(train, argv, work)
    files = RunFiles(work / "Run1", spec.run_name(seed, coeff))
    log = load_training_log(files.log)
    return {
        "epochs": len(log),
        "train_seconds": round(sum(e["seconds"] for e in log), 1),
        "images_per_s": round(sum(e["images_per_s"] for e in log) / len(log), 1),
        "final_train_accuracy": log[-1]["accuracy"],
        "val_accuracy": log[-1].get("val_accuracy"),
        "checkpoint": str(files.model(epochs)),
    }


def start_record(
    args: argparse.Namespace, name: str, preset, paper: dict[str, Any], differences: Sequence[str]
) -> tuple[dict[str, Any], Paths, torch.device, Path]:
    """An experiment's opening: its folders and device, the record (preset, paper, differences,
    environment; results to come), the printed preset, and the data root it reads: `--dataset-root`, or
    the small copies of the preset's `subset` written into the work folder (the smoke scale)."""

    paths = prepare_run(args, name)
    device = select_device(args.no_gpu)
    record = {
        "experiment": name,
        "scale": args.scale,
        "preset": preset_record(preset),
        "paper": paper,
        "differences": list(differences),
        "environment": environment(device),
        "results": {},
    }
    print_preset(name, args.scale, preset, paper, record["differences"])
    root = Path(args.dataset_root)
    if preset.subset:
        root = write_subset_root(root, paths.work / "data", dict(preset.subset))
    return record, paths, device, root


def environment(device: torch.device) -> dict[str, Any]:
    """Where and how this ran: date, hardware, software, threads and the machine's load (1-min average)."""
    record = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_reports_native_bf16(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_revision": git_revision(),
    }
    if hasattr(os, "getloadavg"):
        record["load_average_1min_start"] = round(os.getloadavg()[0], 2)
    return record


def finish_environment(record: dict[str, Any], started: float) -> dict[str, Any]:
    """Adds the wall time and the load at the end (how busy the machine was, for reading the time)."""
    record = dict(record, wall_time_s=round(time.perf_counter() - started, 1))
    if hasattr(os, "getloadavg"):
        record["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return record


def preset_record(preset) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(preset)))


def print_preset(name: str, scale: str, preset, paper: dict[str, Any], differences: Sequence[str]) -> None:
    print(f"experiment {name}, scale {scale}:", flush=True)
    for key, value in preset_record(preset).items():
        print(f"  {key}: {value}")
    print("the paper's setting:")
    for key, value in paper.items():
        print(f"  {key}: {value}")
    if differences:
        print("differences from the paper at this scale:")
        for line in differences:
            print(f"  - {line}")
    print(flush=True)


def finish_record(record: dict[str, Any], paths: Paths, table: str) -> dict[str, Any]:
    """The experiment's end: the table and figure path into the record, the JSON written, the table
    printed."""
    record["table"] = table
    record["figure"] = paths.relative(paths.figure)
    write_final(paths, record)
    print()
    print(table)
    print(f"\nwrote {paths.json} and {paths.figure} ({record['environment'].get('wall_time_s')} s)")
    return record


def write_stage(paths: Paths, record: dict[str, Any]) -> None:
    """The record after a stage, into `paths.partial`: a cut-off run leaves what it did, and the final JSON
    of an earlier, finished run stays as it was."""
    atomic_write_json(paths.partial, record)


def write_final(paths: Paths, record: dict[str, Any]) -> None:
    """The finished run's record into the final JSON; its stage record is then no longer needed."""
    atomic_write_json(paths.json, record)
    paths.partial.unlink(missing_ok=True)


def earlier_record(paths: Paths, args: argparse.Namespace) -> dict[str, Any] | None:
    """The record an earlier run of this experiment left (its stage record, else its final JSON), which a
    rerun without --overwrite may continue from; None if there is none or it cannot be read."""
    if args.overwrite:
        return None
    for path in (paths.partial, paths.json):
        if path.is_file():
            try:
                record = read_json(path)
            except UserError:
                continue
            if isinstance(record, dict) and record.get("scale") == args.scale:
                return record
    return None


def finished_result(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """The finished result of an earlier run of experiment `name` at this scale, which a rerun without
    --overwrite reports and keeps byte for byte (how Ambiguous-MNIST was made, the original timings) instead
    of running again; None with --overwrite, when there is none or it cannot be read as this experiment's,
    or when a stage record beside it says that a later run (with --overwrite) was cut off and is to be
    continued."""
    out = Path(args.output_dir)
    paths = Paths(work_dir(args, name), out / f"{name}_{args.scale}.json", out / f"{name}_{args.scale}.png")
    if args.overwrite or not paths.json.is_file() or paths.partial.exists():
        return None
    try:
        record = read_json(paths.json)
    except (UserError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("experiment") != name or record.get("scale") != args.scale:
        return None
    date = (record.get("environment") or {}).get("date_utc", "an earlier run")
    print(
        f"'{paths.json}' holds the finished result of {name} at scale '{args.scale}' ({date}); it is kept as it "
        "is (pass --overwrite to run the experiment again)",
        flush=True,
    )
    if isinstance(record.get("table"), str):
        print(record["table"])
    return record


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started
