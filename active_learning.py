"""Active learning with DDU on MNIST and Dirty-MNIST (paper Sec. 6.2), as the original script.

The original README's commands work as written:

    python active_learning.py --seed 1 --model resnet18 -sn -mod --al-type gmm
    python active_learning.py --seed 1 --model resnet18 -sn -mod --al-type gmm -ambiguous \
        --trained-model resnet18 -tsn -tmod --saved-model-path runs/ --saved-model-name resnet18_sn_3.0_mod_1_350.model

Quick run on the CPU (small model, small pool, two epochs):

    python active_learning.py --seed 1 --model lenet --al-type softmax --epochs 2 --max-pool 5000 \
        --max-training-samples 40 --runs 1 --no-gpu --dataset-root DATA --output-dir al_out

Outputs (`{name}` as train.py names runs, e.g. `resnet18_sn_3.0_mod_1`), written atomically after every step:
`test_accs_{name}_{al-type}[_mi]_mnist.json` (or `..._dirty_mnist_{subsample}.json` with -ambiguous): run index
to the list of MNIST test accuracies (percent) per step; with -ambiguous also `ambiguous_{...}.json` (run to the
fraction of ambiguous samples in the labelled set per step) and `ambiguous_entropies_{...}.json` (run to step to
the entropies of the labelled samples). `--resume` continues an interrupted experiment from its state file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import net
from utils import active_learning as AL
from utils import training as T
from utils.cli import build_model, model_parser
from utils.device import select_device
from utils.errors import Interrupted, UserError, exit_on_user_error
from utils.io import atomic_write_json, check_writable_dir, read_json
from utils.naming import run_name
from utils.progress import progress_bar, progress_enabled
from utils.seed import seed_everything

log = logging.getLogger("active_learning")
NUM_CLASSES = 10

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
    "depth",
    "widen_factor",
    "base_width",
    "width_divisor",
    "threshold",
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
    parser.add_argument("--no-gpu", action="store_true", help="run on the CPU")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on a GPU")
    parser.add_argument("--output-dir", default=".", help="where the JSON files go")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    return parser


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


def load_ambiguity_model(args: argparse.Namespace, device: torch.device):
    if not args.saved_model_name:
        raise UserError(
            "-ambiguous needs the pretrained Dirty-MNIST model: pass --saved-model-path and --saved-model-name"
        )
    model = net.create_model(
        args.trained_model,
        num_classes=NUM_CLASSES,
        spectral_normalization=args.tsn,
        mod=args.tmod,
        coeff=args.tcoeff,
        mnist=True,
    )
    net.load_state_dict(model, Path(args.saved_model_path) / args.saved_model_name)
    return model.to(device).eval()


def _check_args(args: argparse.Namespace) -> None:
    if args.num_initial_samples % NUM_CLASSES or args.num_initial_samples < NUM_CLASSES:
        raise UserError(
            f"--num-initial-samples must be a positive multiple of {NUM_CLASSES}, got {args.num_initial_samples}"
        )
    if args.max_training_samples < args.num_initial_samples:
        raise UserError("--max-training-samples must be at least --num-initial-samples")
    for name in ("acquisition_batch_size", "epochs", "runs", "num_ensemble", "samples_per_epoch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def run_experiment(args: argparse.Namespace) -> dict:
    _check_args(args)
    device = select_device(args.no_gpu)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    settings = T.TrainSettings(
        device=device,
        precision=precision,
        channels_last=device.type == "cuda",
        progress=False,
        log_interval=10**9,
    )
    out_dir = check_writable_dir(Path(args.output_dir), "output folder (--output-dir)")
    names = output_names(args)
    state_path = out_dir / names["state"]
    experiment = {k: getattr(args, k) for k in RESUME_MUST_MATCH}
    state = {"args": experiment, "runs": {}}
    if args.resume and state_path.is_file():
        state = read_json(state_path)
        differ = [k for k in RESUME_MUST_MATCH if state["args"].get(k) != experiment[k]]
        if differ:
            raise UserError(
                f"cannot resume {state_path}: these arguments differ from the interrupted run: {', '.join(differ)}"
            )
    elif state_path.is_file() and not args.resume:
        log.warning("%s exists; starting over (pass --resume to continue it)", state_path)

    ambiguity_model = load_ambiguity_model(args, device) if args.ambiguous else None
    num_steps = (
        args.max_training_samples - args.num_initial_samples + args.acquisition_batch_size - 1
    ) // args.acquisition_batch_size + 1

    def make_model():
        return build_model(args, NUM_CLASSES, mnist=True)

    def write_outputs():
        runs = state["runs"]
        atomic_write_json(out_dir / names["test_accs"], {r: runs[r]["test_accs"] for r in runs})
        if args.ambiguous:
            atomic_write_json(out_dir / names["ambiguous"], {r: runs[r]["ambiguous_fraction"] for r in runs})
            atomic_write_json(
                out_dir / names["entropies"],
                {r: {str(i): e for i, e in enumerate(runs[r]["entropies"])} for r in runs},
            )
        atomic_write_json(state_path, state)

    total_bar = progress_bar(total=args.runs * num_steps, desc="active learning", unit="step")
    for run in range(args.runs):
        key, run_seed = str(run), args.seed + run
        pool, validation, test = AL.build_pool(
            args.dataset_root,
            ambiguous=args.ambiguous,
            subsample=args.subsample,
            seed=run_seed,
            device=device,
            max_pool=args.max_pool,
        )
        if len(pool) < args.max_training_samples:
            raise UserError(
                f"the pool has {len(pool)} samples (after the 10% validation hold-out), fewer than "
                f"--max-training-samples {args.max_training_samples}; lower it or raise --max-pool"
            )
        record = state["runs"].get(key)
        if record is None:
            generator = torch.Generator().manual_seed(run_seed)
            try:
                labelled = AL.balanced_initial_indices(
                    pool.y, args.num_initial_samples, NUM_CLASSES, generator
                )
            except ValueError as err:
                raise UserError(
                    f"{err} for the class-balanced initial set; lower --num-initial-samples "
                    "or raise --max-pool"
                ) from None
            record = {
                "labelled": labelled,
                "test_accs": [],
                "ambiguous_fraction": [],
                "entropies": [],
                "done": False,
            }
            state["runs"][key] = record
        total_bar.update(len(record["test_accs"]))
        while not record["done"]:
            step = len(record["test_accs"])
            labelled_idx = torch.as_tensor(record["labelled"], device=device)
            labelled = pool.take(labelled_idx)
            step_seed = run_seed * 1000 + step
            seed_everything(step_seed)
            members = args.num_ensemble if args.al_type == "ensemble" else 1
            models = [
                AL.train_best_model(
                    make_model,
                    labelled,
                    validation,
                    epochs=args.epochs,
                    batch_size=args.train_batch_size,
                    test_batch_size=args.test_batch_size,
                    samples_per_epoch=args.samples_per_epoch,
                    settings=settings,
                    seed=step_seed * 10 + m,
                )
                for m in range(members)
            ]
            if len(models) == 1:
                accuracy = AL.test_accuracy_percent(models[0], test, args.test_batch_size, settings)
            else:
                accuracy = AL.ensemble_test_accuracy_percent(
                    models, test, args.test_batch_size, device, precision
                )
            record["test_accs"].append(accuracy)
            if ambiguity_model is not None:
                entropies = AL.sample_entropies(ambiguity_model, labelled, args.scoring_batch_size, device)
                record["entropies"].append(entropies.tolist())
                record["ambiguous_fraction"].append(float((entropies > args.threshold).float().mean()))
            if len(record["labelled"]) >= args.max_training_samples:
                record["done"] = True
            else:
                mask = torch.ones(len(pool), dtype=torch.bool, device=device)
                mask[labelled_idx] = False
                candidates = torch.nonzero(mask).flatten()
                scores = AL.acquisition_scores(
                    args.al_type,
                    models,
                    pool.take(candidates),
                    labelled,
                    mutual_information=args.mi,
                    batch_size=args.scoring_batch_size,
                    device=device,
                    precision=precision,
                    seed=step_seed,
                )
                chosen = AL.select_top(scores, candidates, args.acquisition_batch_size)
                record["labelled"] = record["labelled"] + chosen.tolist()
            write_outputs()
            total_bar.update(1)
            total_bar.set_postfix(run=run, labelled=len(labelled), acc=f"{accuracy:.2f}")
            if not progress_enabled():
                log.info(
                    "run %d step %d: %d labelled, test accuracy %.2f%%", run, step, len(labelled), accuracy
                )
    total_bar.close()
    write_outputs()
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
