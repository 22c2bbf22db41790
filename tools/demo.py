"""`make demo`: the paper's central effect on the embedded dirty-digits set, with the real scripts, offline.

1. train.py trains a small ResNet-18 with spectral normalisation and the paper's modifications (-sn -mod) on
   `digits` (clean scikit-learn digits plus ambiguous two-digit blends with both labels);
2. evaluate.py evaluates it with the softmax and the DDU (gmm) model types against `digits_ood` (patches
   of natural photographs) and writes the result JSONs;
3. a Fig.-1-style PNG shows softmax entropy and feature log-density of clean, ambiguous and OoD samples;
4. a table compares how well each score separates ambiguous from clean (aleatoric) and in-distribution
   from OoD (epistemic).

The paper's claim: softmax entropy is high for both ambiguous and OoD inputs, so it cannot tell them apart,
while the feature density of a network with the right inductive biases is low only for OoD inputs.

    python -m tools.demo --out demo              # what `make demo` runs
    python -m tools.demo --out demo --overwrite  # start the demo folder over

A rerun (a second `make demo`, or one after Ctrl-C) goes on from what `--out` holds: a finished training run
is reused, an interrupted one continues from its last saved epoch, and the evaluation and figure are made
again. A folder holding a demo of other settings (another `--epochs`, say) is started over, since it is the
demo's own; `--resume` refuses that instead, and `--overwrite` starts over in any case. A folder holding
files the demo does not write is never written into without `--overwrite`.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import re
import time
from pathlib import Path

from utils.errors import Interrupted, UserError, exit_on_user_error, starting_up

with starting_up(__name__):  # PyTorch takes seconds and much memory to load: a failure is one sentence
    import evaluate
    import train
    from engine.evaluation import DIRTY_SCORE_NAMES, dirty_aurocs, dirty_scores
    from engine.networks import load_network
    from engine.run_paths import RunFiles, run_name
    from net.checkpoint import read_checkpoint
    from tools.plots import plot_fig1
    from utils.io import atomic_write_json

DATASET, OOD = "digits", "digits_ood"
# The demo's record of what it trained in --out: its settings, and whether the training finished.
RECORD = "demo.json"
# The files the demo writes under --out (paths relative to it); anything else makes --out someone else's.
OWN_FILES = ("demo.json", "fig1_demo.png", "res_*", "runs/Run1/*", ".*.tmp", "*.lock")
# Flags of train.py and evaluate.py that the demo sets itself, as the demo's own flags (for their messages).
SCRIPT_FLAGS = {
    "--save-path": "--out", "--output-dir": "--out", "--load-path": "--out", "-e": "--epochs",
    "--epoch": "--epochs", "-b": "--batch-size",
}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo", help="output folder (checkpoints, JSON, PNG)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--base-width", type=int, default=8, help="ResNet width (64 in the paper)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-gpu", action="store_true")
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the demo in --out and stop if it holds one of other settings (by default such a demo "
        "is started over)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: train again and replace the demo's files in --out, even files of other origin",
    )
    return parser


def settings(args: argparse.Namespace) -> dict:
    """What the demo trains, as recorded in `RECORD`: a rerun with the same settings goes on from it."""
    return {k: getattr(args, k) for k in ("seed", "model", "base_width", "epochs", "batch_size")}


def foreign_files(out: Path) -> list[Path]:
    """Files under `out` the demo does not write (see `OWN_FILES`)."""
    if not out.is_dir():
        return []
    return [
        p
        for p in sorted(out.rglob("*"))
        if not p.is_dir() and not any(fnmatch.fnmatch(p.relative_to(out).as_posix(), g) for g in OWN_FILES)
    ]


def plan_training(args: argparse.Namespace, out: Path, files: RunFiles) -> str:
    """How to treat what `out` holds: "fresh" (nothing of the run), "reuse" (finished with these settings),
    "continue" (interrupted with these settings) or "start over"; `UserError` where --out is not the demo's
    (without --overwrite) or, with --resume, holds a demo that cannot be continued."""
    started = [p for p in (files.resume, files.log, files.train_loss) if p.is_file()]
    foreign = foreign_files(out)
    if foreign and not args.overwrite:
        raise UserError(
            f"'{out}' holds files the demo does not write (such as '{foreign[0]}'); pass another --out, or "
            "--overwrite to write the demo's files there all the same"
        )
    if args.overwrite:
        return "start over" if started else "fresh"
    record = _read_record(out / RECORD)
    same = record is not None and record.get("settings") == settings(args)
    if same and record.get("finished") and _readable(files.model(args.epochs)):
        return "reuse"
    if same and files.resume.is_file():
        return "continue"
    if not started:
        return "fresh"
    if record is None:
        why = f"without its record {RECORD} (written by an earlier version, or cut off)"
    elif not same:
        saved = record.get("settings") if isinstance(record.get("settings"), dict) else {}
        why = f"of other settings ({', '.join(f'{k} {v}' for k, v in saved.items()) or 'unreadable'})"
    else:
        why = f"whose resume file '{files.resume}' is missing"
    if args.resume:
        raise UserError(f"'{out}' holds a demo {why}; pass --overwrite to start it over, or another --out")
    print(f"[demo] '{out}' holds a demo {why}: starting it over")
    return "start over"


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _readable(checkpoint: Path) -> bool:
    try:
        read_checkpoint(checkpoint)
    except UserError:
        return False
    return True


def in_demo_terms(message: str, advice: str = "") -> str:
    """A message of train.py or evaluate.py with their flags named as the demo's (`SCRIPT_FLAGS`). Where it
    still names a flag the demo does not have, its advice (after the first ';') becomes `advice`."""
    for flag, ours in SCRIPT_FLAGS.items():
        message = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", ours, message)
    ours = {option for action in get_args_parser()._actions for option in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", message))
    if advice and named - ours:
        message = f"{message.split('; ')[0]}; {advice}"
    return message


@contextlib.contextmanager
def scripts_log_in_demo_terms():
    """While the demo runs train.py and evaluate.py in this process, their log lines name the demo's flags."""
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.split(".")[0] in ("train", "evaluate", "engine"):
            record.msg, record.args = in_demo_terms(record.getMessage()), ()
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def run_script(stage: str, main, script_args: argparse.Namespace, kept: str):
    """`main(script_args)` of train.py or evaluate.py, its stops told in the demo's terms: the demo's flags,
    and what rerunning the demo does."""
    try:
        with scripts_log_in_demo_terms():
            return main.__wrapped__(script_args)  # undecorated: the demo says what a stop means
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            f"interrupted (Ctrl-C) while {stage}; {kept}, and the same command continues from there"
        ) from None
    except UserError as err:
        advice = "run the same command again, or pass --overwrite to start the demo over"
        raise UserError(f"the demo stopped while {stage}: {in_demo_terms(str(err), advice)}") from None


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes its figure to a file
    started = time.perf_counter()
    out = Path(args.out)
    run_dir = out / "runs" / "Run1"
    model_flags = ["--model", args.model, "-sn", "-mod", "--base-width", str(args.base_width)]
    device_flags = ["--no-gpu"] if args.no_gpu else []
    milestones = [str(max(1, args.epochs * 3 // 5)), str(max(2, args.epochs * 4 // 5))]
    files = RunFiles(run_dir, run_name(args.model, args.seed, True, True, 3.0))
    plan = plan_training(args, out, files)
    again = {"continue": ["--resume"], "start over": ["--overwrite"]}.get(plan, [])
    train_args = train.get_args_parser().parse_args(
        [
            "--seed",
            str(args.seed),
            "--dataset",
            DATASET,
            "-e",
            str(args.epochs),
            "-b",
            str(args.batch_size),
            "--save-path",
            str(run_dir),
            "--save-interval",
            str(args.epochs),
            "--first-milestone",
            milestones[0],
            "--second-milestone",
            milestones[1],
            *model_flags,
            *device_flags,
            *again,
        ]
    )
    if plan == "reuse":
        print(f"[demo] 1/4 reusing the network trained before ({files.model(args.epochs)})")
    else:
        doing = {"continue": "continuing", "start over": "training again"}.get(plan, "training")
        print(
            f"[demo] 1/4 {doing} {args.model} with spectral normalisation and the paper's modifications on the "
            f"embedded dirty-digits set ({args.epochs} epochs)"
        )
        atomic_write_json(out / RECORD, {"settings": settings(args), "finished": False})
        run_script("training", train.main, train_args, f"the epochs saved so far are in '{run_dir}'")
        atomic_write_json(out / RECORD, {"settings": settings(args), "finished": True})
    results = {}
    for model_type in ("softmax", "gmm"):
        print(f"[demo] 2/4 evaluating with evaluate.py, model type {model_type}")
        results[model_type] = run_script(
            "evaluating",
            evaluate.main,
            evaluate.get_args_parser().parse_args(
                [
                    "--seed",
                    str(args.seed),
                    "--dataset",
                    DATASET,
                    "--ood_dataset",
                    OOD,
                    "--load-path",
                    str(out / "runs"),
                    "--runs",
                    "1",
                    "--epoch",
                    str(args.epochs),
                    "--model-type",
                    model_type,
                    "--output-dir",
                    str(out),
                    "--overwrite",  # the demo's results are always made again from its network
                    *model_flags,
                    *device_flags,
                ]
            ),
            f"the trained network is kept in '{run_dir}'",
        )
    print("[demo] 3/4 Fig.-1-style plot")
    model = load_network(train_args, files.model(args.epochs))
    scores = dirty_scores(model, DATASET, OOD, None).scores
    figure = out / "fig1_demo.png"
    plot_fig1(
        {f"{args.model}+SN (demo)": scores},
        group_names={"clean": "clean digits", "ambiguous": "ambiguous blends", "ood": "photo patches (OoD)"},
        out=figure,
    )
    table = {DIRTY_SCORE_NAMES[key]: row for key, row in dirty_aurocs(scores).items()}

    print("[demo] 4/4 results")
    print_report(results["softmax"]["mean"], table)
    print(f"\nwrote {figure} and the result JSONs in {out}/ ({time.perf_counter() - started:.0f} s)")
    return {"results": results, "table": table}


def print_report(softmax_mean: dict[str, float], table: dict[str, dict[str, float]]) -> None:
    """Accuracy and calibration of the softmax run, the AUROC table, and whether it shows the paper's effect."""
    print(
        f"\naccuracy {softmax_mean['accuracy']:.3f}   ECE {softmax_mean['ece']:.3f}   "
        f"ECE after temperature scaling {softmax_mean['t_ece']:.3f}"
    )
    columns = ["ambiguous vs clean", "OoD vs clean", "OoD vs clean+ambiguous"]
    print(f"\nAUROC of each score{'':7s}" + "".join(f"{c:>26s}" for c in columns))
    for label, row in table.items():
        print(f"{label:26s}" + "".join(f"{row[c]:26.3f}" for c in columns))
    entropy, density = table["softmax entropy"], table["feature density (DDU)"]
    print()
    if density["OoD vs clean+ambiguous"] > entropy["OoD vs clean+ambiguous"]:
        print(
            "As in the paper: feature density separates OoD from in-distribution data (ambiguous included) "
            f"better than softmax entropy ({density['OoD vs clean+ambiguous']:.3f} vs "
            f"{entropy['OoD vs clean+ambiguous']:.3f})."
        )
    else:
        print(
            "Unlike the paper, feature density did NOT beat softmax entropy at telling OoD from "
            f"in-distribution data here ({density['OoD vs clean+ambiguous']:.3f} vs "
            f"{entropy['OoD vs clean+ambiguous']:.3f}); try more --epochs."
        )
    if entropy["ambiguous vs clean"] > density["ambiguous vs clean"]:
        print(
            "Softmax entropy flags the ambiguous blends (aleatoric uncertainty) "
            f"(AUROC {entropy['ambiguous vs clean']:.3f}); feature density treats them as in-distribution "
            f"({density['ambiguous vs clean']:.3f})."
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
