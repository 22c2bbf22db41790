"""Soft spectral normalisation: convergence to the exact operator norm, the soft bound, persistence, modes."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import net
from net.spectral_norm import SpectralNormConv2d, SpectralNormLinear


def dense_conv_operator(weight, stride, padding, input_shape):
    """The convolution as an explicit (out_numel, in_numel) matrix, built column by column."""
    numel = int(torch.tensor(input_shape).prod())
    basis = torch.eye(numel, dtype=torch.float64).view(numel, *input_shape)
    columns = F.conv2d(basis, weight.double(), None, stride, padding)
    return columns.reshape(numel, -1).t()


def exact_norm(matrix):
    return torch.linalg.matrix_norm(matrix, ord=2).item()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("input_size", [6, 7])
def test_conv_estimate_converges_to_operator_norm(stride, input_size):
    torch.manual_seed(0)
    layer = SpectralNormConv2d(3, 4, 3, stride, 1, input_size=input_size, coeff=100.0, n_power_iterations=1)
    layer.train()
    x = torch.randn(1, 3, input_size, input_size)
    for _ in range(300):
        layer(x)
    truth = exact_norm(
        dense_conv_operator(layer.weight_orig.detach(), stride, 1, (3, input_size, input_size))
    )
    assert layer.weight_sigma.item() == pytest.approx(truth, rel=1e-3)
    # The operator norm of the conv differs from the norm of the reshaped weight matrix.
    matrix_norm = exact_norm(layer.weight_orig.detach().double().reshape(4, -1))
    assert abs(matrix_norm - truth) / truth > 1e-3


def test_one_by_one_conv_and_linear_use_the_matrix_norm():
    torch.manual_seed(0)
    conv = SpectralNormConv2d(5, 3, 1, 1, 0, input_size=8, coeff=100.0, n_power_iterations=5).train()
    linear = SpectralNormLinear(6, 4, coeff=100.0, n_power_iterations=5).train()
    for _ in range(100):
        conv(torch.randn(1, 5, 8, 8))
        linear(torch.randn(1, 6))
    assert conv.weight_u.numel() == 3 and conv.weight_v.numel() == 5
    assert conv.weight_sigma.item() == pytest.approx(
        exact_norm(conv.weight_orig.detach().double().view(3, 5)), rel=1e-4
    )
    assert linear.weight_sigma.item() == pytest.approx(
        exact_norm(linear.weight_orig.detach().double()), rel=1e-4
    )


@pytest.mark.parametrize("coeff", [0.5, 1.0, 3.0])
def test_normalised_operator_norm_is_at_most_coeff(coeff):
    torch.manual_seed(1)
    layer = SpectralNormConv2d(2, 3, 3, 1, 1, input_size=5, coeff=coeff, n_power_iterations=1).train()
    with torch.no_grad():
        layer.weight_orig.mul_(5.0)  # make sure the bound is active
    for _ in range(200):
        layer(torch.randn(1, 2, 5, 5))
    weight = layer.normalized_weight(update=False).detach()
    assert exact_norm(dense_conv_operator(weight, 1, 1, (2, 5, 5))) <= coeff * (1 + 1e-3)


def test_soft_bound_leaves_small_layers_alone():
    torch.manual_seed(2)
    layer = SpectralNormLinear(4, 4, coeff=1000.0).train()
    for _ in range(20):
        layer(torch.randn(2, 4))
    torch.testing.assert_close(layer.normalized_weight(update=False), layer.weight_orig.detach())


def test_eval_mode_does_not_update_and_train_mode_does():
    torch.manual_seed(0)
    model = net.create_model("resnet18", num_classes=10, spectral_normalization=True, base_width=4)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.train()
    model(x)
    changed = [
        k for k, v in model.state_dict().items() if k.endswith("weight_u") and not torch.equal(v, before[k])
    ]
    assert changed


def test_vectors_persist_through_save_and_load():
    torch.manual_seed(0)
    layer = SpectralNormConv2d(2, 3, 3, 1, 1, input_size=4, coeff=1.0).train()
    for _ in range(10):
        layer(torch.randn(1, 2, 4, 4))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = SpectralNormConv2d(2, 3, 3, 1, 1, input_size=4, coeff=1.0)
    assert not torch.equal(fresh.weight_u, layer.weight_u)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("weight_u", "weight_v", "weight_sigma", "weight_orig"):
        assert torch.equal(getattr(fresh, name), getattr(layer, name))
    fresh.eval(), layer.eval()
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(fresh(x), layer(x))


def test_bf16_autocast_keeps_the_estimate_in_float32():
    torch.manual_seed(0)
    layer = SpectralNormConv2d(3, 4, 3, 1, 1, input_size=6, coeff=1.0).train()
    reference = SpectralNormConv2d(3, 4, 3, 1, 1, input_size=6, coeff=1.0).train()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
    high = reference(x)
    assert low.dtype == torch.bfloat16 and layer.weight_u.dtype == torch.float32
    torch.testing.assert_close(layer.weight_u, reference.weight_u)
    torch.testing.assert_close(low.float(), high, rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_torch_compile_runs_a_training_step():
    torch.manual_seed(0)
    model = net.create_model(
        "wide_resnet", num_classes=10, spectral_normalization=True, mod=True, depth=10, widen_factor=1
    )
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    u_before = model.conv1.weight_u.clone()
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(compiled(x), y)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.conv1.weight_u, u_before)


@pytest.mark.parametrize("kernel_size, stride", [(3, 1), (3, 2), (1, 2)])
def test_sigma_value_and_gradient_equal_u_dot_conv_v(kernel_size, stride):
    """sigma = <W, G> must equal u . conv(v, W) in value and in its gradient with respect to W."""
    torch.manual_seed(0)
    layer = SpectralNormConv2d(3, 5, kernel_size, stride, kernel_size // 2, input_size=7, coeff=1.0)
    u, v = layer.weight_u, layer.weight_v
    weight = layer.weight_orig.detach().clone().requires_grad_(True)
    sigma = layer.sigma(weight, u, v)
    (grad,) = torch.autograd.grad(sigma, weight)
    reference_weight = weight.detach().clone().requires_grad_(True)
    if kernel_size > 1:
        out = F.conv2d(v.view(1, 3, 7, 7), reference_weight, None, stride, kernel_size // 2).flatten()
    else:
        out = torch.mv(reference_weight.view(5, -1), v)
    reference = torch.dot(u, out)
    (reference_grad,) = torch.autograd.grad(reference, reference_weight)
    torch.testing.assert_close(sigma, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6)
