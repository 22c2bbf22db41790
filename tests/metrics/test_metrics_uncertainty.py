"""Per-sample scores against hand values: entropies, log-sum-exp, MSP, ensemble entropy and MI."""

import math

import pytest
import torch
from helpers import DEVICES

from metrics import (
    ensemble_mutual_information,
    ensemble_predictive_entropy,
    entropy_of_probs,
    logsumexp_score,
    max_softmax_probability,
    softmax_entropy,
)


@pytest.mark.parametrize("device", DEVICES)
def test_entropies_hand_values(device):
    probs = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]], device=device)
    expected = [math.log(4), 0.0, 1.5 * math.log(2)]
    got = entropy_of_probs(probs)
    assert got.dtype == torch.float64 and got.shape == (3,)
    assert got.tolist() == pytest.approx(expected, abs=1e-7)
    # The same distributions as logits (log of probabilities, -inf for zeros) give the same entropy.
    assert softmax_entropy(probs.log()).tolist() == pytest.approx(expected, abs=1e-7)


def test_softmax_entropy_is_shift_invariant_and_stable():
    logits = torch.tensor([[1000.0, 1000.0], [0.0, -1e4]], dtype=torch.float64)
    got = softmax_entropy(logits)
    assert torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(math.log(2))
    assert got[1].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_logsumexp_and_msp_hand_values(device):
    logits = torch.tensor([[0.0, math.log(3)], [5.0, 5.0]], dtype=torch.float64, device=device)
    assert logsumexp_score(logits).tolist() == pytest.approx([math.log(4), 5 + math.log(2)])
    assert max_softmax_probability(logits).tolist() == pytest.approx([0.75, 0.5])


@pytest.mark.parametrize("device", DEVICES)
def test_mutual_information_zero_when_members_agree(device):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 50, 7, generator=gen), dim=2).to(device)
    members = probs.expand(5, 50, 7)
    assert ensemble_mutual_information(members).abs().max().item() < 1e-12
    assert ensemble_predictive_entropy(members).tolist() == pytest.approx(entropy_of_probs(probs[0]).tolist())


def test_mutual_information_hand_values():
    # Two confident members that disagree: mean [.5, .5] has entropy ln 2, members have 0 -> MI = ln 2.
    # Two identical uniform members: all uncertainty is aleatoric -> MI = 0, predictive entropy ln 2.
    members = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    assert ensemble_predictive_entropy(members).tolist() == pytest.approx([math.log(2), math.log(2)])
    assert ensemble_mutual_information(members).tolist() == pytest.approx([math.log(2), 0.0], abs=1e-12)


def test_mutual_information_is_nonnegative_and_bounded_by_entropy():
    gen = torch.Generator().manual_seed(1)
    members = torch.softmax(2 * torch.randn(4, 200, 5, generator=gen), dim=2)
    mi = ensemble_mutual_information(members)
    assert (mi >= 0).all()
    assert (mi <= ensemble_predictive_entropy(members) + 1e-12).all()
    assert mi.max() > 0.1  # members disagree, so some MI is clearly positive


def test_ensemble_shape_error():
    with pytest.raises(ValueError, match=r"\(M, N, C\)"):
        ensemble_mutual_information(torch.ones(4, 2) / 2)
