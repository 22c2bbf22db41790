"""tools/two_moons.py and net.ResidualMLP: the two-moons network and the effect it is there to show."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from net import ResidualMLP, SpectralNormLinear
from tools import two_moons


@pytest.mark.parametrize("sn", [False, True])
def test_residual_mlp_shapes_and_gradients(sn):
    model = ResidualMLP(width=8, depth=2, spectral_normalization=sn)
    x = torch.randn(5, 2)
    model.eval()  # in training mode every forward refines the SN estimate, so two passes differ slightly
    z = model.forward_features(x)
    assert z.shape == (5, model.num_features) == (5, 8)
    torch.testing.assert_close(model(x), model.forward_head(z))
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(isinstance(m, SpectralNormLinear) for m in model.modules()) == sn


def test_helpers_known_answers():
    assert two_moons.display_floor(np.array([1.0, 2.0, 3.0])) == -1.0
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(two_moons.distance_to(np.array([[0.0, 1.0], [3.0, 0.0]]), x), [1.0, 3.0])
    xx, yy = two_moons.plane_grid(x, margin=1.0, resolution=7)
    assert xx.shape == yy.shape == (7, 7)
    assert (xx.min(), xx.max(), yy.min(), yy.max()) == (-1.0, 4.0, -1.0, 5.0)


def test_sn_model_density_is_low_and_softmax_overconfident_far_from_the_data():
    """The paper's point, on two moons: far from the data DDU's density is below that of every training point,
    while the softmax is confident there (entropy near 0)."""
    x, y = two_moons.two_moons(200, 0.1, seed=0)
    torch.manual_seed(0)
    model = ResidualMLP(width=32, depth=3, spectral_normalization=True, coeff=0.95)
    threads = torch.get_num_threads()
    losses = two_moons.train_toy(model, x, y, steps=200, seed=0)
    assert torch.get_num_threads() == threads  # the one-thread setting does not leak
    assert losses[-1] < 0.1 and (model(x).argmax(1) == y).float().mean() > 0.98
    for layer in (m for m in model.modules() if isinstance(m, SpectralNormLinear)):
        sigma = torch.linalg.matrix_norm(layer.normalized_weight(update=False).detach(), ord=2)
        assert sigma <= layer.coeff * 1.01  # soft SN keeps each layer's Lipschitz constant at most coeff

    xx, yy = two_moons.plane_grid(x, margin=3.0, resolution=40)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    far = two_moons.distance_to(grid, x) >= 1.5
    plane = two_moons.plane_maps(model, x, y, grid)
    train = two_moons.plane_maps(model, x, y, x.numpy())
    assert far.sum() > 500
    assert (plane["log_density"][far] < train["log_density"].min()).all()
    assert plane["entropy"][far].mean() < 0.1 * np.log(2)
