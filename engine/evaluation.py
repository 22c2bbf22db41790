"""Per-run evaluation of DDU and its baselines from precomputed network outputs (see `engine.features`).

Each function takes `Outputs` (logits, features, labels) of the data sets it needs and returns a flat dict of
scalars. Key names follow the original DDU JSON (`accuracy`, `ece`, `m1_auroc`, ..., `t_m2_auprc`); the extras
(`nll`, `*_fpr95`, `temperature`, `gmm_jitter`, `msp_*`, `mahalanobis_*`, the Dirty-MNIST split) are additional
keys. Scores and their orientation, as the original:

* softmax:  m1 = log-sum-exp of the logits (confidence), m2 = softmax entropy (uncertainty).
* ensemble: m1 = mutual information between members, m2 = predictive entropy (both uncertainty).
* gmm (DDU): m1 = log-sum-exp over classes of the class log-densities of the features (the paper's feature
  density, confidence), m2 = entropy of the softmax over those log-densities (uncertainty).

For confidence scores the in-distribution test set is the positive class, for uncertainty scores the OoD set.

`dirty_scores` gives the per-sample scores behind the paper's Fig. 1 (softmax entropy and DDU feature density
of the clean, ambiguous and OoD test samples) straight from a network, and `dirty_aurocs` the AUROCs the
paper's Dirty-MNIST table and the demo read from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

import data
import metrics
from engine.features import Outputs, collect_outputs
from engine.networks import RunFailedError
from engine.run_paths import run_seeds
from utils.errors import UserError

log = logging.getLogger(__name__)


def check_finite_outputs(outputs: Mapping[str, Outputs], source: str) -> None:
    """Raise `RunFailedError` when the logits or features on a data set (`outputs[name]`) are not finite."""
    for name, out in outputs.items():
        if not isinstance(out, Outputs):
            continue
        for what, values in (("logits", out.logits), ("features", out.features)):
            finite = torch.isfinite(values).all(dim=1)
            if not bool(finite.all()):
                count = int((~finite).sum())
                raise RunFailedError(
                    f"the network of {source} gives NaN or infinite {what} for {count} of {len(out)} "
                    f"{name} samples; it cannot be scored"
                )


def _detection(prefix: str, in_scores, out_scores, higher_is_in_distribution: bool) -> dict[str, float]:
    result = metrics.ood_metrics(in_scores, out_scores, higher_is_in_distribution=higher_is_in_distribution)
    return {f"{prefix}_{key}": float(value) for key, value in result.items()}


def _classification(
    prefix: str, probs: torch.Tensor, logits_or_none, labels: torch.Tensor
) -> dict[str, float]:
    out = {f"{prefix}ece": metrics.expected_calibration_error(probs, labels)}
    if logits_or_none is not None:
        out[f"{prefix}nll"] = metrics.negative_log_likelihood(logits_or_none, labels)
    else:
        picked = probs.double().gather(1, labels.view(-1, 1)).clamp_min(1e-12)
        out[f"{prefix}nll"] = float(-picked.log().mean())
    return out


def calibration_block(test: Outputs, val: Outputs) -> tuple[dict[str, float], float]:
    """Accuracy, ECE, NLL before and after temperature scaling (T fitted on the validation split)."""
    temperature = metrics.fit_temperature(val.logits, val.labels)
    result = {"accuracy": metrics.accuracy(test.logits, test.labels), "temperature": temperature}
    result.update(_classification("", test.logits.softmax(1), test.logits, test.labels))
    scaled = test.logits / temperature
    result.update(_classification("t_", scaled.softmax(1), scaled, test.labels))
    return result, temperature


OodOutputs = TypeVar("OodOutputs")


def _per_ood(ood: OodOutputs | Mapping[str, OodOutputs], score: Callable[[OodOutputs], dict[str, float]]):
    """`score(ood)` for one OoD set; for several (`{name: outputs}`), `{name: score(outputs)}`, where a set
    whose scores cannot be computed (`RunFailedError`) gets that error as its value and the others go on.

    The in-distribution part of a run (temperature, GMM fit, test scores) is computed by the caller before
    `score` is called, so it is computed once however many OoD sets there are.
    """
    if not isinstance(ood, Mapping):
        return score(ood)
    results: dict[str, dict[str, float] | RunFailedError] = {}
    for name, outputs in ood.items():
        try:
            results[name] = score(outputs)
        except RunFailedError as err:
            results[name] = err
    return results


class _ExtraDetectors:
    """Maximum softmax probability and Mahalanobis distance with a shared covariance (Lee et al. 2018): the
    Gaussian fitted on `train` and the test scores computed once, each OoD set scored by `__call__`."""

    def __init__(self, test: Outputs, train: Outputs | None, num_classes: int):
        self.test_msp = metrics.max_softmax_probability(test.logits)
        self.model = self.test_mahalanobis = None
        if train is not None:
            try:
                self.model = metrics.fit_shared_mahalanobis(train.features, train.labels, num_classes)
            except metrics.GaussianFitError as err:  # an extra detector: report, but don't fail DDU's run
                log.warning("Mahalanobis baseline skipped: %s", err)
            else:
                self.test_mahalanobis = metrics.mahalanobis_score(self.model, test.features)

    def __call__(self, ood: Outputs) -> dict[str, float]:
        result = _detection("msp", self.test_msp, metrics.max_softmax_probability(ood.logits), True)
        if self.model is not None:
            ood_scores = metrics.mahalanobis_score(self.model, ood.features)
            result.update(_detection("mahalanobis", self.test_mahalanobis, ood_scores, True))
        return result


def extra_detectors(test: Outputs, ood: Outputs, train: Outputs | None, num_classes: int) -> dict[str, float]:
    """Maximum softmax probability and Mahalanobis distance with a shared covariance (Lee et al. 2018)."""
    return _ExtraDetectors(test, train, num_classes)(ood)


def aleatoric_split(clean: torch.Tensor, ambiguous: torch.Tensor, entropy_fn=None) -> dict[str, float]:
    """Dirty-MNIST (paper Fig. 1/2): AUROC of an entropy separating the ambiguous test samples (positive)
    from the clean ones. `clean`, `ambiguous` are logits `(N, C)` for the default softmax entropy, or what
    `entropy_fn` takes (the members' probabilities `(M, N, C)` for the ensemble's predictive entropy)."""
    entropy_fn = entropy_fn or metrics.softmax_entropy
    result = _detection("aleatoric_entropy", entropy_fn(clean), entropy_fn(ambiguous), False)
    return {"aleatoric_entropy_auroc": result["aleatoric_entropy_auroc"]}


def softmax_run(
    test: Outputs,
    ood: Outputs | Mapping[str, Outputs],
    val: Outputs,
    *,
    num_classes: int,
    train: Outputs | None = None,
    parts: tuple[Outputs, Outputs] | None = None,
):
    """Softmax baselines: m1 = log-sum-exp of the logits, m2 = softmax entropy, before and after temperature
    scaling, plus the extra detectors. `ood` is one OoD set's outputs (returns its metrics) or `{name:
    outputs}` of several (returns `{name: metrics}`, see `_per_ood`); the in-distribution part is computed
    once."""
    in_distribution, temperature = calibration_block(test, val)
    scaled = {prefix: test.logits / t for prefix, t in (("", 1.0), ("t_", temperature))}
    test_scores = {
        prefix: (metrics.logsumexp_score(logits), metrics.softmax_entropy(logits))
        for prefix, logits in scaled.items()
    }
    extras = _ExtraDetectors(test, train, num_classes)
    aleatoric = aleatoric_split(parts[0].logits, parts[1].logits) if parts is not None else {}

    def score(ood: Outputs) -> dict[str, float]:
        result = dict(in_distribution)
        for prefix, t in (("", 1.0), ("t_", temperature)):
            test_lse, test_entropy = test_scores[prefix]
            logits = ood.logits / t
            result.update(_detection(f"{prefix}m1", test_lse, metrics.logsumexp_score(logits), True))
            result.update(_detection(f"{prefix}m2", test_entropy, metrics.softmax_entropy(logits), False))
        result.update(extras(ood))
        result.update(aleatoric)
        return result

    return _per_ood(ood, score)


def _check_original_entropy(test_entropy: torch.Tensor, ood_entropy: torch.Tensor, jitter: float) -> None:
    """Raise `RunFailedError` if the original's float32 m2 (`--original-quirks`) is NaN for some sample."""
    missing = int(test_entropy.isnan().sum() + ood_entropy.isnan().sum())
    if missing:
        raise RunFailedError(
            f"with --original-quirks the m2 score is NaN for {missing} of {len(test_entropy) + len(ood_entropy)} "
            f"test and OoD samples, whose float32 class log-densities are all -inf under the original's jitter "
            f"{jitter:.3g}, so the original code stops here too; drop --original-quirks to use the project's jitter"
        )


def first_per_class(labels: torch.Tensor, count: int | None) -> torch.Tensor | None:
    """Positions `(M,)` of the first `count` samples of each class in `labels` `(N,)`, in their order (None:
    all samples)."""
    if count is None:
        return None
    labels = labels.detach().cpu().long()
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels)) - starts  # position within its class
    return order[rank < count].sort().values


def gmm_run(
    test: Outputs,
    ood: Outputs | Mapping[str, Outputs],
    val: Outputs,
    train: Outputs,
    *,
    num_classes: int,
    weight_by_class_frequency: bool = False,
    parts: tuple[Outputs, Outputs] | None = None,
    original_quirks: bool = False,
    samples_per_class: int | None = None,
):
    """DDU: fit one Gaussian per class on the training features, score test and OoD features.

    `samples_per_class` fits on the first that many training samples of each class (in the training
    split's order) instead of all: at ImageNet's size, 1,281,167 x 2,048 features are 10.5 GB in float32.

    `ood` is one OoD set's outputs (returns its metrics) or `{name: outputs}` of several (returns `{name:
    metrics}`, see `_per_ood`); the Gaussians are fitted and the test set scored once.

    `original_quirks` follows the original code where it departs from the paper: the covariance jitter is
    the first of its absolute jitters that `torch.linalg.cholesky` accepts (`jitter_search="original"`,
    on ill-conditioned features far smaller than the project's), and m1 and m2 come from float32 class
    log-densities, where nearly every in-distribution entropy is exactly 0
    (`metrics.original_float32_entropy`).

    Raises `metrics.GaussianFitError` when no jitter makes the covariances positive definite, and with
    `original_quirks` `RunFailedError` where the original's m2 is NaN (a sample whose float32 class
    log-densities all overflow to -inf), on which the original's evaluation stops with a scikit-learn error.
    """
    in_distribution, _ = calibration_block(test, val)
    fit_on = first_per_class(train.labels, samples_per_class)
    scorer = metrics.DDUScorer.fit_features(
        train.features if fit_on is None else train.features[fit_on],
        train.labels if fit_on is None else train.labels[fit_on],
        num_classes,
        weight_by_class_frequency=weight_by_class_frequency,
        jitter_search="original" if original_quirks else "project",
    )
    in_distribution["gmm_jitter"] = scorer.jitter
    test_scores = scorer.predict_features(test.features, original_quirks=original_quirks)
    extras = _ExtraDetectors(test, train, num_classes)
    aleatoric = aleatoric_split(parts[0].logits, parts[1].logits) if parts is not None else {}

    def score(ood: Outputs) -> dict[str, float]:
        result = dict(in_distribution)
        ood_scores = scorer.predict_features(ood.features, original_quirks=original_quirks)
        if original_quirks:
            _check_original_entropy(test_scores["entropy"], ood_scores["entropy"], scorer.jitter)
        density = _detection("m1", test_scores["log_density"], ood_scores["log_density"], True)
        entropy = _detection("m2", test_scores["entropy"], ood_scores["entropy"], False)
        result.update(density)
        result.update(entropy)
        # Temperature scaling changes the classifier, not the feature density: the t_ scores equal the plain
        # ones.
        result.update({f"t_{key}": value for key, value in {**density, **entropy}.items()})
        result.update(extras(ood))
        if parts is not None:
            result.update(aleatoric)
            result["epistemic_density_auroc"] = density["m1_auroc"]
        return result

    return _per_ood(ood, score)


ORIGINAL_ENSEMBLE_SIZE = 5  # the members the original's evaluate.py loads per run, whatever --ensemble says


def ensemble_members(
    seed: int, run: int, ensemble: int, original_quirks: bool = False
) -> tuple[list[int], list[int], int | None]:
    """Run `run`'s (1-based) ensemble: `(member seeds, validation seeds, tempered)`, the members' checkpoint
    seeds, the seeds of their validation splits, and how many of the first members form the
    temperature-scaled ensemble (None: all).

    By default the `ensemble` members with seeds `seed + (run-1)*E ...` (`engine.run_paths.run_seeds`), each
    scaled on its own split. With `original_quirks`, as the original's evaluate.py: it always loads the 5
    members with seeds `5*(run-1)+1 ... 5*(run-1)+5` (`load_ensemble(..., seed=5*i+1)` with its default
    `ensemble_len=5`, whatever `--seed` and `--ensemble` say), gives member j the validation split of seed
    `seed + 5*(run-1) + j`, and zips the members with its `--ensemble` validation loaders, so its
    temperature-scaled ensemble is the first `min(ensemble, 5)` members.
    """
    if not original_quirks:
        seeds = run_seeds(seed, run, ensemble)
        return seeds, seeds, None
    offset = ORIGINAL_ENSEMBLE_SIZE * (run - 1)
    seeds = [offset + 1 + j for j in range(ORIGINAL_ENSEMBLE_SIZE)]
    val_seeds = [seed + offset + j for j in range(ORIGINAL_ENSEMBLE_SIZE)]
    return seeds, val_seeds, min(ensemble, ORIGINAL_ENSEMBLE_SIZE)


def ensemble_run(
    tests: list[Outputs],
    oods: list[Outputs] | Mapping[str, list[Outputs]],
    vals: list[Outputs],
    *,
    parts: list[tuple[Outputs, Outputs]] | None = None,
    tempered: int | None = None,
):
    """Deep ensemble: mean of member softmaxes; each member temperature-scaled on its own validation split.

    `oods` holds the members' outputs on one OoD set (returns its metrics) or `{name: members' outputs}` of
    several (returns `{name: metrics}`, see `_per_ood`); temperatures and test scores are computed once.
    `tempered` keeps only the first `tempered` members for the `t_` (temperature-scaled) numbers, as the
    original's evaluate.py does under `--original-quirks` (see `ensemble_members`); None: all members.
    """
    labels = tests[0].labels
    kept = len(tests) if tempered is None else tempered
    temperatures = [metrics.fit_temperature(v.logits, v.labels) for v in vals[:kept]]
    schemes = (("", [1.0] * len(tests)), ("t_", temperatures))
    in_distribution: dict[str, dict[str, Any]] = {}
    for prefix, temps in schemes:
        test_probs = torch.stack([t.logits.div(T).softmax(1) for t, T in zip(tests[: len(temps)], temps)])
        mean_probs = test_probs.mean(0)
        block = {"accuracy": metrics.accuracy(mean_probs, labels)} if not prefix else {}
        block.update(_classification(prefix, mean_probs, None, labels))
        in_distribution[prefix] = {
            "metrics": block,
            "mutual_information": metrics.ensemble_mutual_information(test_probs),
            "entropy": metrics.ensemble_predictive_entropy(test_probs),
            "msp": mean_probs.max(1).values,
        }
    aleatoric = {}
    if parts is not None:
        clean = torch.stack([p[0].logits.softmax(1) for p in parts])
        ambiguous = torch.stack([p[1].logits.softmax(1) for p in parts])
        aleatoric = aleatoric_split(clean, ambiguous, metrics.ensemble_predictive_entropy)

    def score(oods: list[Outputs]) -> dict[str, float]:
        result: dict[str, float] = {}
        for prefix, temps in schemes:
            test = in_distribution[prefix]
            ood_probs = torch.stack([o.logits.div(T).softmax(1) for o, T in zip(oods[: len(temps)], temps)])
            result.update(test["metrics"])
            mutual_information = metrics.ensemble_mutual_information(ood_probs)
            result.update(_detection(f"{prefix}m1", test["mutual_information"], mutual_information, False))
            entropy = metrics.ensemble_predictive_entropy(ood_probs)
            result.update(_detection(f"{prefix}m2", test["entropy"], entropy, False))
            if not prefix:
                result.update(_detection("msp", test["msp"], ood_probs.mean(0).max(1).values, True))
        result["temperature"] = float(sum(temperatures) / len(temperatures))
        result.update(aleatoric)
        return result

    return _per_ood(oods, score)


@dataclass
class DirtyScores:
    """The per-sample scores behind the paper's Fig. 1 and the facts its Dirty-MNIST table adds.

    `scores[group] = {"entropy": (N,), "log_density": (N,)}` (float64 NumPy) for the groups 'clean',
    'ambiguous' and 'ood'; `clean_accuracy` is the accuracy on the clean test part, `gmm_jitter` the jitter
    the class Gaussians needed.
    """

    scores: dict[str, dict[str, np.ndarray]]
    clean_accuracy: float
    gmm_jitter: float


def dirty_scores(
    model: torch.nn.Module,
    dataset: str,
    ood: str,
    root: str | Path | None,
    device=None,
    batch_size: int = 512,
    val_seed: int = 1,
) -> DirtyScores:
    """Softmax entropy and DDU feature log-density of the clean, ambiguous and OoD test samples.

    `dataset` is a dirty set (`data.dirty_parts` gives its clean and ambiguous parts); the class Gaussians
    (uniform weights, `metrics.DDUScorer`) are fitted on the features of the 90% training split (no
    augmentation) that train.py's `--val-seed` (default: its `--seed`) holds out, as evaluate.py does.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(device).eval()
    parts = data.dirty_parts(dataset)
    if parts is None:
        raise UserError(f"{dataset} has no clean/ambiguous parts; use dirty_mnist or digits")
    train_loader, _ = data.get_train_valid_loader(
        dataset, root, batch_size, augment=False, val_seed=val_seed, device=device, shuffle=False
    )
    train = collect_outputs(model, train_loader, device)
    scorer = metrics.DDUScorer.fit_features(train.features, train.labels, data.get_info(dataset).num_classes)
    scores, clean_accuracy = {}, float("nan")
    for group, name in (("clean", parts[0]), ("ambiguous", parts[1]), ("ood", ood)):
        loader = data.get_test_loader(name, root, batch_size, device=device, like=dataset)
        out = collect_outputs(model, loader, device)
        if group == "clean":
            clean_accuracy = metrics.accuracy(out.logits, out.labels)
        scores[group] = {
            "entropy": metrics.softmax_entropy(out.logits).double().cpu().numpy(),
            "log_density": scorer.predict_features(out.features)["log_density"].double().cpu().numpy(),
        }
    return DirtyScores(scores, clean_accuracy, float(scorer.gaussians.jitter))


# The two uncertainties of Fig. 1 and which way each points: softmax entropy grows with uncertainty, the
# feature log-density falls with it.
DIRTY_SCORE_NAMES = {"entropy": "softmax entropy", "log_density": "feature density (DDU)"}
_UNCERTAIN_WHEN_HIGHER = {"entropy": True, "log_density": False}


def dirty_aurocs(scores: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """The AUROCs of the paper's Dirty-MNIST argument from `DirtyScores.scores`, per score:
    `{"entropy" | "log_density": {"ambiguous vs clean", "OoD vs clean", "OoD vs clean+ambiguous"}}`, each
    with the first group as the positives (the more uncertain). Softmax entropy should separate ambiguous
    from clean (aleatoric) while the density should not, and the density should flag OoD (epistemic)."""
    table = {}
    for key, higher in _UNCERTAIN_WHEN_HIGHER.items():
        sign = 1.0 if higher else -1.0  # so that a higher value is always the more uncertain
        groups = {
            g: sign * torch.as_tensor(scores[g][key], dtype=torch.float64)
            for g in ("clean", "ambiguous", "ood")
        }
        dirty = torch.cat([groups["clean"], groups["ambiguous"]])

        def auroc(positive, negative) -> float:
            return metrics.detection_metrics(positive, negative)["auroc"]

        table[key] = {
            "ambiguous vs clean": auroc(groups["ambiguous"], groups["clean"]),
            "OoD vs clean": auroc(groups["ood"], groups["clean"]),
            "OoD vs clean+ambiguous": auroc(groups["ood"], dirty),
        }
    return table
