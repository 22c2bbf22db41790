"""Temperature grid and grid search: exact grid values, recovery of a known temperature, tie rule."""

import pytest
import torch
from helpers import DEVICES

from metrics import fit_temperature, negative_log_likelihood, temperature_grid, temperature_nll


def test_grid_is_exact_tenths():
    grid = temperature_grid()
    assert grid.shape == (100,) and grid.dtype == torch.float64
    assert grid.tolist() == [float(f"{k // 10}.{k % 10}") for k in range(1, 101)]  # decimal literals
    assert grid[0].item() == 0.1 and grid[24].item() == 2.5 and grid[-1].item() == 10.0


@pytest.mark.parametrize("device", DEVICES)
def test_recovers_known_temperature(device):
    # Labels drawn from softmax(z / 2.5): the NLL-optimal temperature for logits z is 2.5.
    gen = torch.Generator().manual_seed(0)
    logits = 5.0 * torch.randn(20000, 10, generator=gen)
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=gen).squeeze(1)
    temperature = fit_temperature(logits.to(device), labels.to(device))
    assert abs(temperature - 2.5) <= 0.1 + 1e-9
    # The chosen grid point beats its neighbours and the identity temperature.
    nll = temperature_nll(logits, labels)
    best = int(torch.argmin(nll))
    assert temperature == temperature_grid()[best].item()
    assert nll[best] < nll[9]  # T = 1.0
    assert nll[9].item() == pytest.approx(negative_log_likelihood(logits, labels))


def test_custom_grid_and_first_minimum_on_ties():
    logits = torch.zeros(10, 3)  # every temperature gives the same NLL (log 3)
    labels = torch.zeros(10, dtype=torch.long)
    assert fit_temperature(logits, labels, torch.tensor([3.0, 1.0, 2.0])) == 3.0
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 4, generator=gen)
    labels = logits.argmax(dim=1)  # over-confident labels: sharper is better, so the smallest T wins
    assert fit_temperature(logits, labels, torch.tensor([1.0, 0.5, 2.0])) == 0.5


def test_errors():
    with pytest.raises(ValueError, match="positive"):
        fit_temperature(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="not finite"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
