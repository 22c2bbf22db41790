"""Evaluate DDU and its baselines over seed-indexed runs; write the original DDU result JSON.

Run i (1-based) lives in `{load-path}/Run{i}/`: the single model trained with seed `seed + i - 1`, or for
ensembles `--ensemble` models with seeds `seed + (i-1)*E ... seed + i*E - 1`. Examples (the original README's):

    python evaluate.py --seed 1 --dataset cifar10 --ood_dataset svhn --load-path runs/ --model wide_resnet \
        --runs 5 -sn -mod --coeff 3.0 --model-type gmm
    python evaluate.py --seed 1 --dataset cifar10 --ood_dataset svhn --load-path runs/ --model wide_resnet \
        --runs 5 --model-type ensemble --ensemble 5
    python evaluate.py --seed 1 --dataset dirty_mnist --ood_dataset fashion_mnist --load-path runs/ \
        --model resnet18 --runs 1 -sn -mod --model-type gmm

Several OoD sets in one command (`--ood_dataset svhn,tiny_imagenet,folder:PATH`): the in-distribution outputs,
the GMM fit and the temperatures are computed once per run and each OoD set's forward pass once; each set gets
its own result file, exactly as a single-OoD command would write it, and one table (AUROC per method and OoD
set, with `--ood-groups near=...,... far=...` group means) is printed. A `folder:PATH` set's file name part is
`folder-NAME`, NAME the folder's own name (characters other than letters, digits, `.`, `_`, `-` as `_`).

Writes `res_{name}_{model-type}_{dataset}_{ood}.json` into --output-dir with `mean`, `std` (standard error;
null with one run, where the original writes NaN), `values` and `info` as the original, plus extra metrics
(NLL, FPR95, temperatures, GMM jitters, MSP and Mahalanobis detectors, failed runs). A run whose GMM cannot be
fitted, or whose network holds or computes NaN/inf, is listed in `failed_runs` with the reason (its values are
null) and the command exits with status 1. `--original-quirks` fits the gmm with the original code's jitter
search and computes its m1 and m2 scores from float32 log-densities, and evaluates ensembles with the original's
member rule (5 members with seeds 5(i-1)+1.. untempered, the first --ensemble of them tempered), as the
original code does.

While it runs, the finished runs are kept in `{result}.partial`; after an interruption the same command
continues from there (the side file records the settings and each checkpoint's size and modification time;
other settings or a changed checkpoint are refused unless --overwrite, which starts afresh).
"""

from __future__ import annotations

import argparse
import logging

from utils.errors import UserError, exit_on_user_error, starting_up

with starting_up(__name__):  # PyTorch takes seconds and much memory to load: a failure is one sentence
    import data
    from engine.evaluation_run import ood_names, parse_ood_groups, run_evaluation
    from engine.network_flags import arch_values, check_network_flags, model_parser
    from utils.validation import check_count, check_dir, check_seed, flag_names


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[model_parser("resnet50"), data.folder_parser()],
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run's model")
    parser.add_argument(
        "--dataset",
        default="cifar10",
        help="in-distribution data set (or folder:PATH, with its --image-size)",
    )
    parser.add_argument(
        "--ood_dataset",
        "--ood-dataset",
        dest="ood_dataset",
        default="svhn",
        help="OoD data set, or several separated by commas (svhn,tiny_imagenet,folder:PATH): the "
        "in-distribution outputs, GMM and temperature are computed once per run, and each set gets its own "
        "result file",
    )
    parser.add_argument(
        "--ood-groups",
        action="extend",
        nargs="+",
        default=None,
        metavar="GROUP=SET,SET",
        help="with several OoD sets: group means of the AUROC in the printed table, as OpenOOD reports them "
        "(e.g. --ood-groups near=cifar100,tiny_imagenet far=svhn,mnist; the flag may also be repeated)",
    )
    parser.add_argument(
        "--dataset-root", default="./", help="folder holding the data sets (default ./, as the original)"
    )
    parser.add_argument(
        "--load-path",
        default=None,
        help="folder with Run1/, Run2/, ... of checkpoints (required; the original's default "
        "../Models/Normal/ is not assumed)",
    )
    parser.add_argument("--runs", type=int, default=5, help="number of runs to evaluate and average")
    parser.add_argument(
        "--ensemble", type=int, default=5, help="members per ensemble (--model-type ensemble)"
    )
    parser.add_argument(
        "--model-type", default="softmax", choices=["softmax", "ensemble", "gmm"], help="uncertainty method"
    )
    parser.add_argument(
        "--epoch", type=int, default=350, help="which checkpoint epoch to load ({name}_{epoch}.model)"
    )
    parser.add_argument(
        "-b", "--batch-size", dest="batch_size", type=int, default=128, help="evaluation batch size"
    )
    parser.add_argument(
        "--data-aug",
        action="store_true",
        help="accepted for the original's command lines and recorded in the result's info, no effect: "
        "evaluation never augments here (the original's flag augments, by random crops and flips, only the "
        "training features its GMM is fitted on, and only on CIFAR-10/100)",
    )
    parser.add_argument("--no-gpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument("--output-dir", default=".", help="where the result JSON goes")
    parser.add_argument(
        "--gmm-samples-per-class",
        type=int,
        default=None,
        metavar="N",
        help="gmm: fit each class's Gaussian on its first N training images (default: all; ImageNet's "
        "1,281,167 training features take 10.5 GB)",
    )
    parser.add_argument(
        "--weight-by-class-frequency",
        action="store_true",
        help="GMM: weight class Gaussians by their training frequency (default: uniform, as the original)",
    )
    parser.add_argument(
        "--original-quirks",
        action="store_true",
        help="gmm, as the original code: choose the covariance jitter by its search (the first absolute "
        "jitter from 0 up that Cholesky accepts; far smaller on ill-conditioned features) and compute m1 and "
        "m2 from float32 log-densities (nearly every in-distribution entropy is then exactly 0; a run whose m2 "
        "is NaN fails, where the original crashes); default: the project's jitter and float64, as the paper. "
        "ensemble, as the original: the untempered ensemble is the 5 members with seeds 5(i-1)+1..5(i-1)+5 "
        "whatever --seed and --ensemble say, the temperature-scaled one its first --ensemble (at most 5); "
        "default: --ensemble members from --seed for both",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="inference precision (default: bf16 on a GPU and on a CPU with native bf16, else fp32)",
    )
    parser.add_argument("--loader", default="gpu", choices=["gpu", "torchvision"], help="data pipeline")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a result in --output-dir computed with other settings (--runs, --epoch, --ensemble, "
        "--load-path, ...); without it evaluate.py refuses",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every flag's value, checked before anything is read or written: a bad one ends in one sentence."""
    data.set_folder_options(args.image_size, args.augment, args.skip_bad_images)  # how folder:PATH is read
    check_count(args.runs, "--runs")
    check_count(args.ensemble, "--ensemble")
    seeds_used = args.runs * (args.ensemble if args.model_type == "ensemble" else 1)
    check_seed(args.seed, seeds_used=seeds_used)
    check_count(args.epoch, "--epoch", hint="checkpoints are named {name}_{epoch}.model from epoch 1 on")
    check_count(args.batch_size, "-b")
    if args.gmm_samples_per_class is not None:
        check_count(args.gmm_samples_per_class, "--gmm-samples-per-class")
    check_network_flags(args.model, args.coeff, arch_values(args))
    if not data.get_info(args.dataset).has_train:  # an unknown name is a UserError listing the valid ones
        raise UserError(
            f"--dataset {args.dataset} has no training split, which evaluation needs (validation split, GMM "
            "fit); pass the data set the networks were trained on"
        )
    oods = ood_names(args.ood_dataset)
    for ood in oods:  # an unknown name or a missing folder is a UserError
        data.canonical_name(ood) if data.is_folder(ood) else data.get_info(ood)
    parse_ood_groups(args.ood_groups, oods)
    if args.weight_by_class_frequency and args.model_type != "gmm":
        raise UserError(
            f"--weight-by-class-frequency applies to --model-type gmm only, not {args.model_type}; drop it"
        )
    if args.load_path is None:
        raise UserError(
            "evaluate.py needs --load-path, the folder that holds Run1/, Run2/, ... with the checkpoints"
        )
    check_dir(args.load_path, "--load-path", "Run1/, Run2/, ... with the checkpoints")


@exit_on_user_error
def main(args: argparse.Namespace) -> dict:
    """Evaluate every run as the original `evaluate.py` does; returns the result JSON (see the docstring)."""
    check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("evaluate.py " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    return run_evaluation(args, flag_names(get_args_parser()))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
