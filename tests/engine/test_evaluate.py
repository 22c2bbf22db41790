"""evaluate.py with utils/{checkpoints,evaluation,features}.py: seeds and checkpoint lookup, each score's
orientation on hand-built network outputs, and end to end on tiny LeNets trained on the embedded digits.

The end-to-end part trains four LeNets once per module (1 epoch of 2 steps of 16 images, about a second
each) in the README's `Run{i}` layout and evaluates them on `digits` against `digits_ood` on the CPU.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from helpers import FIXTURES
from sklearn.metrics import average_precision_score, roc_auc_score

import data
import evaluate
import metrics
import net
import train
from engine import evaluation_run
from engine.evaluation import calibration_block, ensemble_run, gmm_run, softmax_run
from engine.features import Outputs, collect_outputs
from engine.result_tables import standard_error
from engine.run_paths import locate_checkpoint, run_seeds
from utils.errors import UserError

ORIGINAL = [
    "accuracy", "ece", "m1_auroc", "m1_auprc", "m2_auroc", "m2_auprc",
    "t_ece", "t_m1_auroc", "t_m1_auprc", "t_m2_auroc", "t_m2_auprc",
]  # fmt: skip
DETECTION = ("auroc", "auprc", "fpr95")
# AUROC/AUPRC are scikit-learn's (metrics/ood.py), whose average precision sums float64 steps: a perfect
# detector's 1.0 may come out one rounding below. Pinned outputs hold to this absolute tolerance.
METRIC_TOLERANCE = 1e-12
# Extra keys each method must add; digits has clean/ambiguous parts, so the aleatoric split is there too.
COMMON_EXTRAS = {
    "nll", "t_nll", "temperature", "m1_fpr95", "m2_fpr95", "t_m1_fpr95", "t_m2_fpr95",
    "msp_auroc", "msp_auprc", "msp_fpr95", "aleatoric_entropy_auroc",
}  # fmt: skip
MAHALANOBIS = {f"mahalanobis_{m}" for m in DETECTION}
EXTRAS = {
    "softmax": COMMON_EXTRAS | MAHALANOBIS,
    "gmm": COMMON_EXTRAS | MAHALANOBIS | {"gmm_jitter", "epistemic_density_auroc"},
    "ensemble": COMMON_EXTRAS,
}


# ----------------------------------------------------------------------------------------------------
# Hand-built network outputs


def outputs(logits, labels=None, features=None) -> Outputs:
    """`Outputs` from `(N, C)` logits; labels default to the arg-max, features to the logits."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = logits.argmax(1) if labels is None else torch.as_tensor(labels)
    return Outputs(logits, logits.clone() if features is None else features, labels)


def peaked(n: int, classes: int = 10, height: float = 10.0) -> Outputs:
    """Confident logits: `height` on class `i % classes`, the label."""
    labels = torch.arange(n) % classes
    return outputs(torch.nn.functional.one_hot(labels, classes) * height, labels)


def flat(n: int, classes: int = 10) -> Outputs:
    """Logits carrying no information: uniform softmax, highest possible entropy, log-sum-exp log C."""
    return outputs(torch.zeros(n, classes), torch.arange(n) % classes)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = logits.double().log_softmax(1)
    return -(log_p.exp() * log_p).sum(1)


def detection(result: dict, key: str) -> tuple[float, float, float]:
    return result[f"{key}_auroc"], result[f"{key}_auprc"], result[f"{key}_fpr95"]


def in_vs_ood(n_in: int, n_out: int, ood_positive: bool) -> list[int]:
    return [int(not ood_positive)] * n_in + [int(ood_positive)] * n_out


# ----------------------------------------------------------------------------------------------------
# Seeds and checkpoint lookup


def test_run_seeds_follow_the_original_readme():
    assert [run_seeds(1, run) for run in (1, 2, 5)] == [[1], [2], [5]]
    assert run_seeds(7, 3) == [9]
    assert run_seeds(1, 1, 5) == [1, 2, 3, 4, 5]
    assert run_seeds(1, 2, 5) == [6, 7, 8, 9, 10]
    assert run_seeds(1, 2, 2) == [3, 4]
    assert run_seeds(3, 3, 2) == [7, 8]
    assert run_seeds(1, 4, 1) == [4]


CKPT = {"model": "resnet18", "seed": 3, "sn": True, "mod": True, "coeff": 3.0, "epoch": 350}


def test_locate_checkpoint_prefers_the_training_naming_and_falls_back_only_for_ensembles(tmp_path):
    folder = tmp_path / "Run2"
    folder.mkdir()
    original = folder / "resnet18_3_350.model"  # the original's ensemble naming ignores -sn/-mod
    original.touch()
    with pytest.raises(UserError, match="resnet18_sn_3.0_mod_3_350.model"):
        locate_checkpoint(tmp_path, 2, **CKPT)  # single models never use the ensemble naming
    assert locate_checkpoint(tmp_path, 2, ensemble_naming=True, **CKPT) == original
    trained = folder / "resnet18_sn_3.0_mod_3_350.model"
    trained.touch()
    assert locate_checkpoint(tmp_path, 2, ensemble_naming=True, **CKPT) == trained
    assert locate_checkpoint(tmp_path, 2, **CKPT) == trained
    # The coefficient and the flags are part of the training name.
    (folder / "resnet18_sn_6.0_3_350.model").touch()
    found = locate_checkpoint(tmp_path, 2, **{**CKPT, "coeff": 6, "mod": False})
    assert found.name == "resnet18_sn_6.0_3_350.model"


def test_a_missing_checkpoint_is_a_user_error_listing_what_exists(tmp_path):
    folder = tmp_path / "Run1"
    folder.mkdir()
    for epoch in (25, 50):
        (folder / f"resnet18_sn_3.0_mod_3_{epoch}.model").touch()
    (folder / "resnet18_sn_3.0_mod_3_log.jsonl").touch()  # not a checkpoint: not listed
    with pytest.raises(UserError) as info:
        locate_checkpoint(tmp_path, 1, ensemble_naming=True, **CKPT)
    message = str(info.value)
    assert str(folder / "resnet18_sn_3.0_mod_3_350.model") in message
    assert "resnet18_sn_3.0_mod_3_25.model, resnet18_sn_3.0_mod_3_50.model" in message
    assert "log.jsonl" not in message and "--epoch" in message and "-sn" in message
    for epoch in range(12):
        (folder / f"lenet_1_{epoch}.model").touch()
    with pytest.raises(UserError, match=r"\.\.\."):  # long listings are cut
        locate_checkpoint(tmp_path, 1, **CKPT)
    empty = tmp_path / "Run2"
    empty.mkdir()
    with pytest.raises(UserError, match="no .model files"):
        locate_checkpoint(tmp_path, 2, **CKPT)


def test_a_missing_run_folder_names_the_layout(tmp_path):
    with pytest.raises(UserError) as info:
        locate_checkpoint(tmp_path, 3, **CKPT)
    assert str(tmp_path / "Run3") in str(info.value) and "--runs" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# One forward pass per data set


def test_collect_outputs_gives_features_logits_and_labels_in_one_pass():
    torch.manual_seed(0)
    model = net.create_model("lenet", num_classes=10, mnist=True).train()
    batches = [(torch.randn(5, 1, 28, 28), torch.arange(5)), (torch.randn(3, 1, 28, 28), torch.arange(3) + 5)]
    out = collect_outputs(model, batches, torch.device("cpu"))
    assert model.training  # restored
    x = torch.cat([b[0] for b in batches])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out.logits, model(x), atol=1e-6)
        assert torch.allclose(out.features, model.forward_features(x), atol=1e-6)
    assert out.features.shape == (8, model.num_features) and out.labels.tolist() == list(range(8))
    assert len(Outputs.concat([out, out])) == 16
    with pytest.raises(ValueError, match="no batches"):
        collect_outputs(model, [], torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------
# Temperature scaling and score orientation on hand-built outputs


def overconfident(n: int, temperature: float, generator: torch.Generator) -> Outputs:
    """Labels drawn from `softmax(z)`, logits `temperature * z`: the logits' best temperature is `temperature`."""
    z = torch.randn(n, 10, generator=generator) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    return Outputs(z * temperature, z, labels)


def test_calibration_block_recovers_a_known_temperature_from_the_validation_split():
    gen = torch.Generator().manual_seed(0)
    val, test = overconfident(10000, 2.5, gen), overconfident(2000, 2.5, gen)
    result, temperature = calibration_block(test, val)
    assert temperature == result["temperature"]
    assert temperature == pytest.approx(2.5, abs=0.15)
    assert result["t_ece"] < 0.5 * result["ece"] and result["t_nll"] < result["nll"]
    assert result["accuracy"] == metrics.accuracy(test.logits, test.labels)
    # T comes from the validation outputs alone, whatever the test outputs look like.
    _, same = calibration_block(overconfident(500, 0.3, gen), val)
    assert same == temperature


def test_softmax_scores_separate_flat_ood_logits_perfectly_and_reversed_gives_zero():
    test, ood, val = peaked(100), flat(60), peaked(50)
    result = softmax_run(test, ood, val, num_classes=10)
    for key in ("m1", "m2", "t_m1", "t_m2", "msp"):
        assert detection(result, key) == pytest.approx((1.0, 1.0, 0.0), abs=METRIC_TOLERANCE), key
    assert result["accuracy"] == 1.0
    assert set(ORIGINAL) <= set(result) and "mahalanobis_auroc" not in result  # needs training features
    swapped = softmax_run(ood, test, val, num_classes=10)
    for key in ("m1", "m2", "t_m1", "t_m2", "msp"):
        assert swapped[f"{key}_auroc"] == 0.0 and swapped[f"{key}_fpr95"] == 1.0, key


def test_softmax_auprc_orientation_is_the_originals():
    """m1 (log-sum-exp, confidence): in-distribution positive; m2 (entropy, uncertainty): OoD positive."""
    gen = torch.Generator().manual_seed(1)
    test = outputs(torch.randn(300, 10, generator=gen) * 3)
    ood = outputs(torch.randn(80, 10, generator=gen) * 2)
    val_logits = torch.randn(200, 10, generator=gen) * 3
    val = outputs(val_logits, torch.where(torch.rand(200, generator=gen) < 0.7, val_logits.argmax(1), 0))
    result = softmax_run(test, ood, val, num_classes=10)
    assert result["temperature"] != 1.0
    for prefix, t in (("", 1.0), ("t_", result["temperature"])):
        lse = torch.cat([test.logits, ood.logits]).div(t).double().logsumexp(1).numpy()
        ent = entropy(torch.cat([test.logits, ood.logits]) / t).numpy()
        in_positive, ood_positive = in_vs_ood(300, 80, False), in_vs_ood(300, 80, True)
        assert result[f"{prefix}m1_auroc"] == pytest.approx(roc_auc_score(in_positive, lse), abs=1e-12)
        assert result[f"{prefix}m1_auprc"] == pytest.approx(
            average_precision_score(in_positive, lse), abs=1e-12
        )
        assert result[f"{prefix}m2_auroc"] == pytest.approx(roc_auc_score(ood_positive, ent), abs=1e-12)
        assert result[f"{prefix}m2_auprc"] == pytest.approx(
            average_precision_score(ood_positive, ent), abs=1e-12
        )
        # The other orientation would give a clearly different AUPRC, so the checks above can fail.
        assert abs(result[f"{prefix}m2_auprc"] - average_precision_score(in_positive, -ent)) > 0.05
        assert abs(result[f"{prefix}m1_auprc"] - average_precision_score(ood_positive, -lse)) > 0.05


def blobs(n: int, generator: torch.Generator, ood: bool = False) -> Outputs:
    """2-D features: class 0 around (-4, 0), class 1 around (4, 0), std 0.5; `ood` puts them between the
    classes (x near 0), where the feature density is low and the two class densities are about equal."""
    labels = torch.arange(n) % 2
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64) * 0.5
    if ood:
        z[:, 0] *= 0.2
    else:
        z[:, 0] += 8.0 * labels - 4.0
    features = z.float()
    return Outputs(torch.stack([-features[:, 0], features[:, 0]], 1), features, labels)


def test_gmm_run_scores_feature_density_and_its_entropy():
    gen = torch.Generator().manual_seed(2)
    train_, val, test, ood = blobs(400, gen), blobs(100, gen), blobs(200, gen), blobs(90, gen, ood=True)
    parts = (peaked(40, 2), flat(30, 2))
    result = gmm_run(test, ood, val, train_, num_classes=2, parts=parts)
    for key in ("m1", "m2", "mahalanobis"):
        assert detection(result, key) == pytest.approx((1.0, 1.0, 0.0), abs=METRIC_TOLERANCE), key
    for key in ORIGINAL[2:6]:  # temperature scaling does not change the feature density
        assert result[f"t_{key}"] == result[key]
    assert result["gmm_jitter"] == 0.0 and result["accuracy"] == 1.0
    assert result["aleatoric_entropy_auroc"] == 1.0
    assert result["epistemic_density_auroc"] == result["m1_auroc"]
    swapped = gmm_run(ood, test, val, train_, num_classes=2)
    assert swapped["m1_auroc"] == 0.0 and swapped["m2_auroc"] == 0.0


def test_gmm_auprc_orientation_is_the_originals():
    """m1 (log density): in-distribution positive; m2 (entropy over class densities): OoD positive."""
    gen = torch.Generator().manual_seed(3)
    train_, val, test = blobs(400, gen), blobs(50, gen), blobs(150, gen)
    ood = Outputs(test.logits[:60], test.features[:60] * 0.6, test.labels[:60])  # overlaps the classes
    result = gmm_run(test, ood, val, train_, num_classes=2)
    gaussians = metrics.fit_class_gaussians(train_.features, train_.labels, 2)
    scores = metrics.ddu_scores(
        metrics.class_log_densities(gaussians, torch.cat([test.features, ood.features]))
    )
    density, ent = scores["log_density"].numpy(), scores["entropy"].numpy()
    in_positive, ood_positive = in_vs_ood(150, 60, False), in_vs_ood(150, 60, True)
    assert 0.0 < result["m1_auroc"] < 1.0
    assert result["m1_auprc"] == pytest.approx(average_precision_score(in_positive, density), abs=1e-12)
    assert result["m2_auprc"] == pytest.approx(average_precision_score(ood_positive, ent), abs=1e-12)
    assert result["m2_auroc"] == pytest.approx(roc_auc_score(ood_positive, ent), abs=1e-12)


def far_apart(n: int, centre: float, generator: torch.Generator) -> torch.Tensor:
    """`(n, 2)` float32 features around `(+-centre, 0)` (alternating signs), std 1 along x, 0.5 along y."""
    sign = torch.where(torch.arange(n) % 2 == 0, -1.0, 1.0)
    x = sign * (centre + torch.randn(n, generator=generator, dtype=torch.float64).clamp(-2.0, 2.0))
    y = 0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([x, y], 1).float()


def test_original_quirks_take_m2_from_float32_log_densities():
    """Classes at x = -12 and +12 (std 1): an in-distribution sample's two class log-densities lie about
    24 |x| = 190..340 nats apart, so its float64 entropy is tiny but positive and its float32 entropy exactly
    0 (exp underflows below about -104). OoD: 40 samples between the classes (entropy near log 2) and 40
    beyond them at |x| = 25 (about 600 nats apart: float64 entropies below every in-distribution one, float32
    ones exactly 0 again). Float64 ranks the far OoD below all in-distribution samples (m2 AUROC 0.5); float32
    ties them with it (0.5 + 0.25 = 0.75). m1 does not change."""
    gen = torch.Generator().manual_seed(5)

    def blob_outputs(features: torch.Tensor) -> Outputs:
        labels = (features[:, 0] > 0).long()
        return Outputs(torch.stack([-features[:, 0], features[:, 0]], 1), features, labels)

    train_, val, test = (blob_outputs(far_apart(n, 12.0, gen)) for n in (400, 50, 100))
    between = torch.stack([torch.empty(40).uniform_(-0.5, 0.5, generator=gen), torch.zeros(40)], 1)
    beyond = far_apart(40, 25.0, gen)
    beyond[:, 0] = beyond[:, 0].sign() * 25.0
    ood = blob_outputs(torch.cat([between, beyond]))

    paper = gmm_run(test, ood, val, train_, num_classes=2)
    quirk = gmm_run(test, ood, val, train_, num_classes=2, original_quirks=True)
    scorer = metrics.DDUScorer.fit_features(train_.features, train_.labels, 2)
    log_densities = scorer.class_log_densities(test.features)
    # the original's formula, written out: float32 softmax times float32 log-softmax
    x = log_densities.float()
    by_hand = -(torch.nn.functional.softmax(x, 1) * torch.nn.functional.log_softmax(x, 1)).sum(1)
    assert torch.equal(by_hand, torch.zeros(100))  # every in-distribution entropy exactly 0 in float32
    assert (scorer.predict_features(test.features)["entropy"] > 0).all()  # and positive in float64
    assert torch.equal(
        scorer.predict_features(test.features, original_quirks=True)["entropy"], by_hand.double()
    )
    assert paper["m2_auroc"] == pytest.approx(0.5) and quirk["m2_auroc"] == pytest.approx(0.75)
    assert quirk["t_m2_auroc"] == quirk["m2_auroc"]
    for key in ("m1_auroc", "m1_auprc", "m1_fpr95", "accuracy", "ece", "mahalanobis_auroc"):
        assert quirk[key] == paper[key], key


def test_ensemble_scores_detect_disagreement_and_uncertainty():
    labels = torch.arange(40) % 10
    test_logits = torch.nn.functional.one_hot(labels, 10) * 10.0
    wrong = labels.clone()
    wrong[:10] = (wrong[:10] + 1) % 10  # a quarter of the labels wrong
    tests = [outputs(test_logits, wrong), outputs(test_logits, wrong)]
    # On OoD inputs the two members are confident about different classes: high MI and entropy.
    oods = [outputs(torch.nn.functional.one_hot(torch.arange(30) % 10, 10) * 10.0)]
    oods.append(outputs(torch.nn.functional.one_hot((torch.arange(30) + 3) % 10, 10) * 10.0))
    vals = [peaked(20), peaked(20)]
    parts = [(peaked(20), flat(20)), (peaked(20), flat(20))]
    result = ensemble_run(tests, oods, vals, parts=parts)
    assert result["accuracy"] == 0.75
    for key in ("m1", "m2", "t_m1", "t_m2"):
        assert detection(result, key) == pytest.approx((1.0, 1.0, 0.0), abs=METRIC_TOLERANCE), key
    assert result["msp_auroc"] == 1.0 and result["aleatoric_entropy_auroc"] == 1.0
    assert result["temperature"] == 0.1  # perfectly separable validation logits
    swapped = ensemble_run(oods, tests, vals)
    assert swapped["m1_auroc"] == 0.0 and swapped["m2_auroc"] == 0.0


def test_ensemble_accuracy_ece_and_nll_come_from_the_mean_of_member_softmaxes():
    # Member A says (0.6, 0.4), member B (0.1, 0.9): the mean (0.35, 0.65) predicts class 1, the label,
    # with confidence 0.65, so ECE = |1 - 0.65| and NLL = -log 0.65 (member A alone would be wrong).
    labels = torch.ones(8, dtype=torch.long)
    tests = [
        outputs(torch.tensor([[0.6, 0.4]] * 8).log(), labels),
        outputs(torch.tensor([[0.1, 0.9]] * 8).log(), labels),
    ]
    oods = [outputs(torch.zeros(4, 2)), outputs(torch.zeros(4, 2))]
    result = ensemble_run(tests, oods, [peaked(6, 2), peaked(6, 2)])
    assert result["accuracy"] == 1.0
    assert result["ece"] == pytest.approx(0.35, abs=1e-6)
    assert result["nll"] == pytest.approx(-math.log(0.65), abs=1e-6)


def test_ensemble_auprc_orientation_is_the_originals():
    """Both ensemble scores (mutual information, predictive entropy) are uncertainties: OoD positive."""
    gen = torch.Generator().manual_seed(4)
    tests = [outputs(torch.randn(200, 5, generator=gen) * 3) for _ in range(3)]
    oods = [outputs(torch.randn(50, 5, generator=gen) * 2) for _ in range(3)]
    vals = [
        outputs(torch.randn(30, 5, generator=gen), torch.randint(0, 5, (30,), generator=gen))
        for _ in range(3)
    ]
    result = ensemble_run(tests, oods, vals)
    probs = torch.stack([torch.cat([t.logits, o.logits]).double().softmax(1) for t, o in zip(tests, oods)])
    mean = probs.mean(0)
    total = -(mean * mean.log()).sum(1)
    mutual_information = total + (probs * probs.log()).sum(2).mean(0)
    ood_positive = in_vs_ood(200, 50, True)
    assert result["m1_auroc"] == pytest.approx(roc_auc_score(ood_positive, mutual_information), abs=1e-9)
    assert result["m1_auprc"] == pytest.approx(
        average_precision_score(ood_positive, mutual_information), abs=1e-9
    )
    assert result["m2_auprc"] == pytest.approx(average_precision_score(ood_positive, total), abs=1e-9)
    assert (
        abs(result["m1_auprc"] - average_precision_score(in_vs_ood(200, 50, False), -mutual_information))
        > 0.05
    )


# ----------------------------------------------------------------------------------------------------
# End to end: tiny LeNets in the Run{i} layout

TRAIN = ("--dataset", "digits", "--model", "lenet", "-e", "1", "--no-gpu", "--save-interval", "1")
TINY = ("-b", "16", "-tb", "128", "--steps-per-epoch", "2")


def train_lenet(folder: Path, seed: int) -> Path:
    args = train.get_args_parser().parse_args(
        ["--seed", str(seed), "--save-path", str(folder), *TRAIN, *TINY]
    )
    train.main(args)
    return folder / f"lenet_{seed}_1.model"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """`ensemble`: Run1 with seeds 1, 2 and Run2 with seeds 3, 4 (`--ensemble 2`); `single`: Run1 with
    seed 1 and Run2 with seed 2 (softmax and gmm). The single layout reuses the ensemble's files."""
    root = tmp_path_factory.mktemp("runs")
    for run, seeds in ((1, (1, 2)), (2, (3, 4))):
        for seed in seeds:
            train_lenet(root / "ensemble" / f"Run{run}", seed)
    for run, seed in ((1, 1), (2, 2)):
        (root / "single" / f"Run{run}").mkdir(parents=True)
        shutil.copy(root / "ensemble" / "Run1" / f"lenet_{seed}_1.model", root / "single" / f"Run{run}")
    return {"single": root / "single", "ensemble": root / "ensemble"}


def eval_args(load_path: Path, output_dir: Path, *extra: str, model_type: str = "softmax", runs: int = 2):
    argv = [
        "--dataset", "digits", "--ood_dataset", "digits_ood", "--load-path", str(load_path),
        "--output-dir", str(output_dir), "--no-gpu", "--epoch", "1", "--runs", str(runs),
        "--model", "lenet", "--model-type", model_type, "-b", "256", *extra,
    ]  # fmt: skip
    return evaluate.get_args_parser().parse_args(argv)


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


class Evaluated(NamedTuple):
    saved: dict  # the JSON written
    returned: dict  # what main returned
    args: argparse.Namespace
    splits: list[dict]  # the arguments of every data.get_train_valid_loader call


@pytest.fixture(scope="module")
def evaluated(layouts, tmp_path_factory):
    """`evaluated(model_type)` -> `Evaluated`; each model type is evaluated once per module."""
    cache = {}
    real_splits = data.get_train_valid_loader

    def run(model_type: str) -> Evaluated:
        if model_type not in cache:
            output_dir = tmp_path_factory.mktemp(model_type)
            if model_type == "ensemble":
                args = eval_args(layouts["ensemble"], output_dir, "--ensemble", "2", model_type="ensemble")
            else:
                args = eval_args(layouts["single"], output_dir, model_type=model_type)
            calls = []

            def spy(*a, **kw):
                calls.append(inspect.signature(real_splits).bind(*a, **kw).arguments)
                return real_splits(*a, **kw)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(data, "get_train_valid_loader", spy)
                returned = evaluate.main(args)
            path = output_dir / f"res_lenet_1_{model_type}_digits_digits_ood.json"
            assert sorted(p.name for p in output_dir.iterdir()) == [path.name]  # no temporary files left
            cache[model_type] = Evaluated(strict_json(path), returned, args, calls)
        return cache[model_type]

    return run


def in_unit_interval(key: str) -> bool:
    return key not in ("nll", "t_nll", "temperature", "gmm_jitter")


@pytest.mark.parametrize("model_type", ["softmax", "gmm", "ensemble"])
def test_result_json_has_the_original_structure_and_the_extras(evaluated, model_type):
    saved, returned, args, _ = evaluated(model_type)
    assert saved == json.loads(json.dumps(returned))
    assert list(saved)[:4] == ["mean", "std", "values", "info"]
    assert saved["failed_runs"] == []
    assert saved["info"]["model_type"] == model_type and saved["info"]["runs"] == 2
    # The flags as given, with the precision resolved for the device (fp32 here: the suite's CPU default),
    # and the original's keys for --load-path and --no-gpu next to this project's.
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    original_keys = {"load_loc": flags["load_path"], "gpu": False}
    assert args.precision is None and saved["info"] == {**flags, "precision": "fp32", **original_keys}
    for section in ("mean", "std", "values"):
        keys = list(saved[section])
        assert keys[: len(ORIGINAL)] == ORIGINAL, section
        assert set(keys) - set(ORIGINAL) >= EXTRAS[model_type], sorted(EXTRAS[model_type] - set(keys))
    for key, values in saved["values"].items():
        assert len(values) == 2 and all(isinstance(v, float) and math.isfinite(v) for v in values), key
        assert saved["mean"][key] == pytest.approx(sum(values) / 2), key
        assert saved["std"][key] == pytest.approx(standard_error(values)), key
        if in_unit_interval(key):
            assert all(0.0 <= v <= 1.0 for v in values), (key, values)
    values = saved["values"]
    assert all(0.1 <= t <= 10.0 for t in values["temperature"]) and all(v > 0 for v in values["nll"])
    # Two different networks per key: run 2 did not re-evaluate run 1's checkpoint(s).
    assert values["nll"][0] != values["nll"][1]
    if model_type == "ensemble":
        assert 0.5 not in values["m1_auroc"]  # the members disagree somewhere: mutual information > 0
    if model_type == "gmm":
        assert all(j >= 0.0 for j in values["gmm_jitter"])
        assert values["epistemic_density_auroc"] == values["m1_auroc"]
        for key in ORIGINAL[2:6]:
            assert values[f"t_{key}"] == values[key]


def test_softmax_and_gmm_evaluate_the_same_networks_on_the_same_splits(evaluated):
    softmax, gmm = evaluated("softmax").saved["values"], evaluated("gmm").saved["values"]
    shared = ["accuracy", "ece", "t_ece", "nll", "t_nll", "temperature", "aleatoric_entropy_auroc"]
    shared += [f"{d}_{m}" for d in ("msp", "mahalanobis") for m in DETECTION]
    for key in shared:
        assert softmax[key] == gmm[key], key
    assert softmax["m1_auroc"] != gmm["m1_auroc"]  # log-sum-exp of logits versus feature density


def test_original_quirks_reach_the_gmm_run_and_its_jitter_search(evaluated, layouts, tmp_path, monkeypatch):
    # The tiny digits LeNets have singular class covariances: the original's jitter is so small that some
    # float32 class log-densities all overflow to -inf, the original's m2 is NaN and its evaluation would
    # crash in scikit-learn; here each such run fails with that reason and the command exits 1.
    paper = evaluated("gmm").saved
    calls, searches = [], []
    real_gmm_run, real_fit = evaluation_run.gmm_run, metrics.DDUScorer.fit_features.__func__

    def spy(*args, **kwargs):
        calls.append(kwargs["original_quirks"])
        return real_gmm_run(*args, **kwargs)

    def fit_spy(cls, *args, **kwargs):
        searches.append(kwargs.get("jitter_search", "project"))
        return real_fit(cls, *args, **kwargs)

    monkeypatch.setattr(evaluation_run, "gmm_run", spy)
    monkeypatch.setattr(metrics.DDUScorer, "fit_features", classmethod(fit_spy))
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(eval_args(layouts["single"], tmp_path, "--original-quirks", model_type="gmm"))
    assert exit_info.value.code == 1
    quirk = json.loads(next(tmp_path.glob("res_*_gmm_*.json")).read_text())
    assert calls == [True, True] and quirk["info"]["original_quirks"] is True
    assert paper["info"]["original_quirks"] is False
    assert searches[0] == "original"  # the DDU fit; the Mahalanobis baseline fits no DDUScorer
    assert [f["run"] for f in quirk["failed_runs"]] == [1, 2]
    assert all("m2 score is NaN" in f["reason"] for f in quirk["failed_runs"])
    assert all(math.isfinite(value) for value in paper["values"]["m2_auroc"])


ORIGINAL_EVALUATE_FIXTURE = FIXTURES / "gmm" / "original_evaluate_lenet_mnist.json"


def _original_evaluate_fixture() -> tuple[dict, dict[str, Outputs]]:
    fixture = json.loads(ORIGINAL_EVALUATE_FIXTURE.read_text())
    outputs = {
        name: Outputs(
            torch.tensor(fixture[name]["logits"], dtype=torch.float32),
            torch.tensor(fixture[name]["features"], dtype=torch.float32),
            torch.tensor(fixture[name]["labels"]),
        )
        for name in ("train", "test", "ood")
    }
    return fixture, outputs


def test_original_quirks_give_the_original_evaluations_jitter_and_aurocs_on_real_mnist_features():
    # Written by the original's get_embeddings, gmm_fit, gmm_evaluate and get_roc_auc_logits on the features
    # of its LeNet after one epoch on MNIST (tests/fixtures/make_gmm_evaluate_fixture.py): 30 training
    # samples per class in 84 dimensions, so the class covariances are singular and the jitter loop runs.
    fixture, out = _original_evaluate_fixture()
    original = fixture["original"]
    quirk = gmm_run(out["test"], out["ood"], out["test"], out["train"], num_classes=10, original_quirks=True)
    paper = gmm_run(out["test"], out["ood"], out["test"], out["train"], num_classes=10)
    # The original adds `jitter_eps * torch.eye(D)`, a float32 tensor.
    assert fixture["original_jitter_eps"] == 1e-14
    assert quirk["gmm_jitter"] == torch.tensor(fixture["original_jitter_eps"], dtype=torch.float32).item()
    for key in ("m1_auroc", "m1_auprc", "m2_auroc", "m2_auprc"):
        assert quirk[key] == pytest.approx(original[key], abs=1e-4), key
    # The project's search needs a jitter about 190 times larger, which moves m1.
    assert paper["gmm_jitter"] > 100 * quirk["gmm_jitter"]
    assert abs(paper["m1_auroc"] - original["m1_auroc"]) > 1e-6


@pytest.mark.parametrize(
    "model_type, seeds", [("softmax", [1, 2]), ("gmm", [1, 2]), ("ensemble", [1, 2, 3, 4])]
)
def test_each_network_is_calibrated_on_its_own_validation_split_without_augmentation(
    evaluated, model_type, seeds
):
    calls = evaluated(model_type).splits
    assert [call["val_seed"] for call in calls] == seeds  # val_seed = the network's seed
    assert all(call["name"] == "digits" and call.get("augment") is False for call in calls)


def test_an_ensemble_of_one_matches_the_softmax_evaluation(evaluated, layouts, tmp_path):
    # With --ensemble 1, run i holds seed i: the single-model layout.
    evaluate.main(eval_args(layouts["single"], tmp_path, "--ensemble", "1", model_type="ensemble"))
    one = strict_json(tmp_path / "res_lenet_1_ensemble_digits_digits_ood.json")["values"]
    softmax = evaluated("softmax").saved["values"]
    for key in ("accuracy", "temperature", "ece", "t_ece", "nll", "t_nll"):
        assert one[key] == pytest.approx(softmax[key], abs=1e-6), key
    # Predictive entropy of one member is its softmax entropy; ranks may differ at near-ties (float32 probs).
    ranked = ["aleatoric_entropy_auroc"] + [f"{key}_{m}" for key in ("m2", "t_m2", "msp") for m in DETECTION]
    for key in ranked:
        assert one[key] == pytest.approx(softmax[key], abs=1e-3), key
    assert one["m1_auroc"] == [0.5, 0.5]  # one member has no mutual information


def test_ensemble_under_the_original_ensemble_naming_loads(evaluated, layouts, tmp_path):
    # LeNet has no -sn/-mod variant (as the original), so with those flags the training name
    # `lenet_sn_3.0_mod_{seed}_1.model` is absent and only the original's `lenet_{seed}_1.model` matches.
    flags = ("--ensemble", "2", "-sn", "-mod")
    evaluate.main(eval_args(layouts["ensemble"], tmp_path, *flags, model_type="ensemble", runs=1))
    saved = strict_json(tmp_path / "res_lenet_sn_3.0_mod_1_ensemble_digits_digits_ood.json")
    plain = evaluated("ensemble").saved["values"]
    assert {key: values[0] for key, values in plain.items()} == {k: v[0] for k, v in saved["values"].items()}


def test_a_checkpoint_in_the_original_dataparallel_layout_loads(evaluated, layouts, tmp_path):
    state = torch.load(layouts["single"] / "Run1" / "lenet_1_1.model", weights_only=True)
    (tmp_path / "runs" / "Run1").mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "runs" / "Run1" / "lenet_1_1.model")
    result = evaluate.main(eval_args(tmp_path / "runs", tmp_path, runs=1))
    plain = evaluated("softmax").saved["values"]
    assert {key: values[0] for key, values in plain.items()} == {k: v[0] for k, v in result["values"].items()}


def test_the_ood_dataset_alias_and_the_result_name(tmp_path):
    argv = [
        "--load-path", str(tmp_path), "--ood-dataset", "digits_ood", "--model", "resnet18", "-sn",
        "--coeff", "6", "--dataset", "digits", "--model-type", "gmm", "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    args = evaluate.get_args_parser().parse_args(argv)
    assert args.ood_dataset == "digits_ood" and args.epoch == 350 and args.runs == 5 and args.ensemble == 5
    assert (
        evaluation_run.result_path(args)
        == tmp_path / "out" / "res_resnet18_sn_6.0_1_gmm_digits_digits_ood.json"
    )


def resnet18_checkpoint(path: Path, sn: bool = True, mod: bool = True, prefix: str = "") -> net.DDUNetwork:
    """Save a ResNet-18 (base width 2, MNIST input) state dict to `path`, keys prefixed with `prefix`."""
    model = net.create_model(
        "resnet18", num_classes=10, spectral_normalization=sn, mod=mod, mnist=True, base_width=2
    )
    # One training-mode pass runs a power iteration, so the SN buffers differ from their initial values.
    model.train()(torch.randn(4, 1, 28, 28))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + key: value for key, value in model.state_dict().items()}, path)
    return model.eval()


def resnet_args(load_path: Path, output_dir: Path, *flags: str, model_type: str = "softmax"):
    args = eval_args(load_path, output_dir, "--base-width", "2", *flags, model_type=model_type, runs=1)
    args.model = "resnet18"
    return args


def test_an_sn_mod_resnet_in_the_original_dataparallel_layout_loads(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "Run1" / "resnet18_sn_3.0_mod_1_1.model"
    model = resnet18_checkpoint(path, prefix="module.")
    args = resnet_args(tmp_path, tmp_path, "-sn", "-mod")
    found = locate_checkpoint(tmp_path, 1, model="resnet18", seed=1, sn=True, mod=True, coeff=3.0, epoch=1)
    loaded = evaluation_run.Evaluator(args, torch.device("cpu")).load(found)
    assert not loaded.training
    reference = model.state_dict()
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(value, reference[key]) for key, value in loaded.state_dict().items())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ----------------------------------------------------------------------------------------------------
# Failures: recorded GMM failures and one-line user errors


def test_a_gmm_fit_failure_is_recorded_and_the_command_fails(layouts, tmp_path, monkeypatch, capsys):
    fit = metrics.DDUScorer.fit_features
    calls = []

    def fail_on_the_second_run(cls, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise metrics.GaussianFitError("the covariance of class 3 is not positive definite (test)")
        return fit(*args, **kwargs)

    monkeypatch.setattr(metrics.DDUScorer, "fit_features", classmethod(fail_on_the_second_run))
    with pytest.raises(SystemExit) as info:
        evaluate.main(eval_args(layouts["single"], tmp_path, model_type="gmm"))
    assert info.value.code not in (0, None)
    assert "1 of 2 runs failed" in capsys.readouterr().err.strip().splitlines()[-1]
    saved = strict_json(tmp_path / "res_lenet_1_gmm_digits_digits_ood.json")
    assert saved["failed_runs"] == [
        {"run": 2, "reason": "the covariance of class 3 is not positive definite (test)"}
    ]
    assert list(saved["values"])[: len(ORIGINAL)] == ORIGINAL
    for key, values in saved["values"].items():
        assert len(values) == 2 and values[0] is not None and values[1] is None, key
        assert saved["mean"][key] == values[0] and saved["std"][key] is None, key  # one value: undefined


def user_error(capsys, args) -> str:
    """Run evaluate.main(args), expecting a user error: non-zero exit, one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as info:
        evaluate.main(args)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def no_results(folder: Path) -> bool:
    return not list(folder.glob("res_*.json"))


def test_a_missing_checkpoint_epoch_is_a_one_line_error(layouts, tmp_path, capsys):
    args = eval_args(layouts["single"], tmp_path)
    args.epoch = 350  # the default; only epoch 1 was trained
    err = user_error(capsys, args)
    assert "lenet_1_350.model" in err and "lenet_1_1.model" in err and "--epoch" in err
    assert no_results(tmp_path)


def test_a_missing_load_path_is_a_one_line_error(tmp_path, capsys):
    err = user_error(capsys, eval_args(tmp_path / "nowhere", tmp_path))
    assert "--load-path" in err and str(tmp_path / "nowhere") in err
    assert no_results(tmp_path)


@pytest.mark.parametrize("flag", ["--runs", "--ensemble"])
def test_non_positive_counts_are_one_line_errors(tmp_path, capsys, flag):
    args = eval_args(tmp_path, tmp_path, flag, "0", model_type="ensemble")
    assert flag in user_error(capsys, args)


def test_an_sn_checkpoint_evaluated_without_sn_names_the_flag(tmp_path, capsys):
    resnet18_checkpoint(tmp_path / "runs" / "Run1" / "resnet18_sn_3.0_mod_1_1.model")
    err = user_error(capsys, resnet_args(tmp_path / "runs", tmp_path, "-mod"))
    assert "resnet18_mod_1_1.model" in err and "resnet18_sn_3.0_mod_1_1.model" in err and "-sn" in err
    assert no_results(tmp_path)


@pytest.mark.parametrize(
    "trained_sn, flags, hint",
    [(True, ["-mod"], "add -sn"), (False, ["-sn", "-mod"], "drop -sn"), (True, ["-sn"], "add -mod")],
)
def test_mismatched_flags_under_the_original_ensemble_naming_name_the_flag(
    tmp_path, capsys, trained_sn, flags, hint
):
    # The original's ensemble naming ignores -sn/-mod, so the file is found and only loading can tell.
    resnet18_checkpoint(tmp_path / "runs" / "Run1" / "resnet18_1_1.model", sn=trained_sn)
    args = resnet_args(tmp_path / "runs", tmp_path, *flags, "--ensemble", "1", model_type="ensemble")
    err = user_error(capsys, args)
    assert hint in err and "resnet18_1_1.model" in err
    assert no_results(tmp_path)


def test_an_interrupted_evaluation_keeps_the_finished_runs(layouts, tmp_path, monkeypatch, capsys):
    real_run = evaluation_run.evaluate_run

    def interrupt_on_run_two(evaluator, args, run):
        if run == 2:
            raise KeyboardInterrupt
        return real_run(evaluator, args, run)

    monkeypatch.setattr(evaluation_run, "evaluate_run", interrupt_on_run_two)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        evaluate.main(eval_args(layouts["single"], tmp_path, model_type="softmax"))
    assert info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interrupted during run 2 of ") and "\n" not in err
    assert "res_lenet_1_softmax_digits_digits_ood.json.partial" in err
    assert not (tmp_path / "res_lenet_1_softmax_digits_digits_ood.json").exists()
    partial = strict_json(tmp_path / "res_lenet_1_softmax_digits_digits_ood.json.partial")
    assert partial["runs_done"] == 1 and len(partial["values"]["accuracy"]) == 1


# ----------------------------------------------------------------------------------------------------
# --original-quirks with ensembles: the original's evaluate.py loads 5 members per run, seeds 5(i-1)+1..


@pytest.fixture(scope="module")
def five_members(layouts, tmp_path_factory) -> Path:
    """Run1 with the LeNets of seeds 1..5 (1..4 copied from the `ensemble` layout, 5 trained here)."""
    root = tmp_path_factory.mktemp("five")
    folder = root / "Run1"
    folder.mkdir()
    for run, seeds in ((1, (1, 2)), (2, (3, 4))):
        for seed in seeds:
            shutil.copy(layouts["ensemble"] / f"Run{run}" / f"lenet_{seed}_1.model", folder)
    train_lenet(folder, 5)
    return root


def test_ensemble_members_follow_the_original_seed_rule_only_with_quirks():
    from engine.evaluation import ensemble_members

    assert ensemble_members(7, 2, 3) == ([10, 11, 12], [10, 11, 12], None)
    assert ensemble_members(7, 2, 3, original_quirks=True) == (
        [6, 7, 8, 9, 10], [12, 13, 14, 15, 16], 3,
    )  # fmt: skip
    assert ensemble_members(1, 1, 8, original_quirks=True) == ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 5)


def test_original_quirks_ensemble_is_five_members_untempered_and_the_first_ensemble_tempered(
    five_members, tmp_path
):
    def run(*extra: str) -> dict:
        out = tmp_path / "_".join(extra).replace("-", "")
        out.mkdir()
        args = eval_args(five_members, out, *extra, model_type="ensemble", runs=1)
        return evaluate.main(args)["values"]

    quirk = run("--ensemble", "3", "--original-quirks")
    five, three = run("--ensemble", "5"), run("--ensemble", "3")
    untempered = ["accuracy", "ece", "nll", "m1_auroc", "m1_auprc", "m2_auroc", "m2_auprc", "msp_auroc"]
    tempered = ["t_ece", "t_nll", "t_m1_auroc", "t_m1_auprc", "t_m2_auroc", "t_m2_auprc", "temperature"]
    for key in untempered:
        assert quirk[key] == five[key], key  # all 5 members, whatever --ensemble says
    for key in tempered:
        assert quirk[key] == three[key], key  # the first 3, each on its own split (seed 1 + j)
    assert any(five[key] != three[key] for key in untempered)  # so the comparison can fail


def test_original_quirks_ensemble_with_missing_members_is_one_sentence(layouts, tmp_path, capsys):
    # The `ensemble` layout holds 2 members per run (seeds 1, 2 in Run1): the original would look for
    # lenet_3_1.model in Run1 and crash; here one sentence says so.
    args = eval_args(
        layouts["ensemble"], tmp_path, "--ensemble", "2", "--original-quirks", model_type="ensemble"
    )
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "seeds 1..5" in err and "no checkpoint of seed 3" in err and "drop --original-quirks" in err


# ----------------------------------------------------------------------------------------------------
# Reruns continue from the `.partial` side file (issue 28, item 4)


@pytest.fixture(scope="module")
def three_runs(layouts, tmp_path_factory) -> Path:
    """Run1..Run3 with the LeNets of seeds 1, 2, 3 (copied from the `ensemble` layout)."""
    root = tmp_path_factory.mktemp("three")
    for run, source in ((1, "Run1"), (2, "Run1"), (3, "Run2")):
        (root / f"Run{run}").mkdir()
        shutil.copy2(layouts["ensemble"] / source / f"lenet_{run}_1.model", root / f"Run{run}")
    return root


def counting_loads(monkeypatch) -> list[str]:
    """The checkpoint file names `Evaluator.load` is asked for, in order."""
    loads, real_load = [], evaluation_run.Evaluator.load

    def load(self, path):
        loads.append(Path(path).name)
        return real_load(self, path)

    monkeypatch.setattr(evaluation_run.Evaluator, "load", load)
    return loads


def interrupt_at(monkeypatch, stop: int) -> None:
    real_run = evaluation_run.evaluate_run

    def run(evaluator, args, run):
        if run == stop:
            raise KeyboardInterrupt
        return real_run(evaluator, args, run)

    monkeypatch.setattr(evaluation_run, "evaluate_run", run)


RESULT = "res_lenet_1_softmax_digits_digits_ood.json"


def test_a_rerun_continues_from_the_side_file_and_gives_the_uninterrupted_result(
    three_runs, tmp_path, monkeypatch, capsys
):
    whole = evaluate.main(eval_args(three_runs, tmp_path / "whole", runs=3))
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        with pytest.raises(SystemExit) as info:
            evaluate.main(eval_args(three_runs, out, runs=3))
    assert info.value.code == 130 and "rerun the same command to continue" in capsys.readouterr().err
    assert strict_json(out / f"{RESULT}.partial")["runs_done"] == 2
    # A second interruption, before run 3 finishes: the side file keeps its 2 runs (never fewer).
    with monkeypatch.context() as patch:
        loads = counting_loads(patch)
        interrupt_at(patch, 3)
        with pytest.raises(SystemExit):
            evaluate.main(eval_args(three_runs, out, runs=3))
    assert loads == [] and strict_json(out / f"{RESULT}.partial")["runs_done"] == 2
    loads = counting_loads(monkeypatch)
    resumed = evaluate.main(eval_args(three_runs, out, runs=3))
    assert loads == ["lenet_3_1.model"]  # runs 1 and 2 come from the side file
    for result in (resumed, whole):
        result["info"].pop("output_dir")  # the one difference
    assert resumed == whole  # exactly: the side file keeps every float's repr
    assert strict_json(out / RESULT)["values"] == strict_json(tmp_path / "whole" / RESULT)["values"]
    assert sorted(p.name for p in out.iterdir()) == [RESULT]  # the side file is gone


def test_a_side_file_of_other_settings_or_checkpoints_is_kept_unless_overwrite(
    three_runs, tmp_path, monkeypatch, capsys
):
    runs, out = tmp_path / "runs", tmp_path / "out"
    shutil.copytree(three_runs, runs)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        with pytest.raises(SystemExit):
            evaluate.main(eval_args(runs, out, runs=3))
    capsys.readouterr()
    partial = out / f"{RESULT}.partial"
    before = partial.read_bytes()
    err = user_error(capsys, eval_args(runs, out, "-b", "128", runs=3))
    assert "2 finished runs" in err and "-b 256 there vs 128 now" in err and "--overwrite" in err
    # Run 2's checkpoint retrained (here: its modification time moved on) since the side file was written.
    checkpoint = runs / "Run2" / "lenet_2_1.model"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    err = user_error(capsys, eval_args(runs, out, runs=3))
    assert "other checkpoints in Run2" in err and "--overwrite" in err
    assert partial.read_bytes() == before
    loads = counting_loads(monkeypatch)
    evaluate.main(eval_args(runs, out, "--overwrite", runs=3))
    assert len(loads) == 3 and not partial.exists()  # started afresh
