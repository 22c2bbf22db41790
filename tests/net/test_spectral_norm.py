"""Soft spectral normalisation: convergence to the exact operator norm, the soft bound, persistence, modes."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_counted_torch
from helpers import FIXTURES

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
    sigma = (weight * layer.sigma_direction(u, v)).sum()
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


def reference_soft_sn_step(layer, weight, x):
    """The textbook soft SN forward (Behrmann et al. 2019 / the original DDU code), by plain autograd:
    one power-iteration step on detached copies of the buffers, `sigma = u . W v`, then `W / d` with
    `d = max(1, sigma / coeff) + eps`. Returns the layer output and the new `(u, v, sigma)`."""
    u, v = layer.weight_u.clone(), layer.weight_v.clone()
    conv = isinstance(layer, SpectralNormConv2d) and layer.acts_on_input_shape
    with torch.no_grad():
        if conv:
            out_shape = (1, layer.out_channels, layer.output_size, layer.output_size)
            in_shape = (1, layer.in_channels, layer.input_size, layer.input_size)
            v = F.normalize(layer._conv_transpose(u.view(out_shape), weight).flatten(), dim=0, eps=1e-12)
            u = F.normalize(layer._conv(v.view(in_shape), weight).flatten(), dim=0, eps=1e-12)
        else:
            matrix = weight.detach().reshape(weight.shape[0], -1)
            v = F.normalize(torch.mv(matrix.t(), u), dim=0, eps=1e-12)
            u = F.normalize(torch.mv(matrix, v), dim=0, eps=1e-12)
    if conv:
        sigma = torch.dot(u, layer._conv(v.view(in_shape), weight).flatten())
    else:
        sigma = torch.dot(u, torch.mv(weight.reshape(weight.shape[0], -1), v))
    scaled = weight / (torch.clamp(sigma / layer.coeff, min=1.0) + (1e-5 if conv else 0.0))
    if isinstance(layer, SpectralNormLinear):
        out = F.linear(x, scaled, layer.bias)
    else:
        out = F.conv2d(x, scaled, layer.bias, layer.stride, layer.padding)
    return out, (u, v, sigma.detach())


@pytest.mark.parametrize("kind", ["conv3x3", "conv3x3_stride2", "conv1x1", "linear"])
@pytest.mark.parametrize("bound_active", [True, False])
def test_training_steps_match_the_plain_autograd_formula(kind, bound_active):
    """The fused scale (`_SoftSpectralScale`) and the in-place buffer refresh give the same outputs, input and
    weight gradients and buffers as the textbook formula differentiated by autograd, step after step."""
    torch.manual_seed(3)
    coeff = 0.5 if bound_active else 50.0
    if kind == "linear":
        layer = SpectralNormLinear(6, 5, coeff=coeff)
        x = torch.randn(4, 6)
    else:
        k, stride = (1, 2) if kind == "conv1x1" else (3, 2 if kind.endswith("stride2") else 1)
        layer = SpectralNormConv2d(3, 5, k, stride, k // 2, bias=True, input_size=7, coeff=coeff)
        x = torch.randn(4, 3, 7, 7)
    layer.train()
    weight = layer.weight_orig.detach().clone().requires_grad_(True)
    for _ in range(3):
        expected, (u, v, sigma) = reference_soft_sn_step(layer, weight, x.requires_grad_(True))
        target = torch.randn_like(expected)
        ref_grad_w, ref_grad_x = torch.autograd.grad((expected * target).sum(), (weight, x))
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = layer(x)
        (out * target).sum().backward()
        assert (sigma.item() >= coeff) == bound_active
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight_orig.grad, ref_grad_w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad, ref_grad_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight_u, u, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layer.weight_v, v, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layer.weight_sigma, sigma.view(1), rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # an SGD step on both copies of the weight
            layer.weight_orig.sub_(0.1 * layer.weight_orig.grad)
            weight.sub_(0.1 * ref_grad_w)
            x = x.detach()


def test_two_forwards_before_one_backward_keep_each_graph_intact():
    """The buffers are refreshed in place on every training forward; a graph built earlier must still
    backpropagate (gradient accumulation, or a second forward for a regulariser)."""
    torch.manual_seed(0)
    layer = SpectralNormConv2d(2, 3, 3, 1, 1, input_size=5, coeff=0.5).train()
    x = torch.randn(2, 2, 5, 5)
    first = layer(x).square().sum()
    second = layer(x).square().sum()
    (first + second).backward()
    assert torch.isfinite(layer.weight_orig.grad).all()


@requires_counted_torch
@pytest.mark.parametrize("kernel_size", [3, 1])
def test_a_training_step_dispatches_few_extra_operations(kernel_size):
    """Host overhead bounds an eager GPU step with SN (see benchmarks/dispatch.py): one SN convolution may add
    at most 24 kernel-launching operations (forward, backward) to a plain convolution's step; the
    straightforward autograd version took 33."""
    from benchmarks.dispatch import OperationCounter

    def count(layer):
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        layer.train()
        layer(x).sum().backward()
        with OperationCounter() as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = layer(x)
            out.float().sum().backward()
        return counter.total

    padding = kernel_size // 2
    plain = count(torch.nn.Conv2d(4, 4, kernel_size, 1, padding, bias=False))
    normalised = count(SpectralNormConv2d(4, 4, kernel_size, 1, padding, input_size=8))
    assert normalised - plain <= 24, normalised - plain


ORIGINAL_START = FIXTURES / "sn" / "original_start_vectors.json"


def _close(ours, expected):
    # randn's vectorised Box-Muller and the norm's reduction may round differently on other CPUs.
    torch.testing.assert_close(ours.detach().flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["conv3x3_stride1", "conv3x3_stride2", "conv1x1_stride2", "linear"])
def test_starting_vectors_are_the_originals_for_the_same_seed(name):
    # Written by the original's own spectral_norm_conv / spectral_norm_fc (tests/fixtures/make_sn_fixture.py):
    # 3x3 convolutions draw v (input-shaped) before u, 1x1 convolutions and linear layers u before v.
    case = json.loads(ORIGINAL_START.read_text())["layers"][name]
    torch.manual_seed(case["seed"])
    if case["kind"] == "linear":
        layer = SpectralNormLinear(**case["kwargs"], coeff=3.0)
    else:
        input_size = case["input_shape"][-1] if case["input_shape"] else 8
        layer = SpectralNormConv2d(**case["kwargs"], input_size=input_size, coeff=3.0)
    _close(layer.weight_orig, case["weight_orig"])
    _close(layer.weight_u, case["weight_u"])
    _close(layer.weight_v, case["weight_v"])


def test_resnet18_starting_vectors_are_the_originals_for_the_same_seed():
    record = json.loads(ORIGINAL_START.read_text())["resnet18_sn_mod"]
    torch.manual_seed(record["seed"])
    model = net.create_model("resnet18", num_classes=10, spectral_normalization=True, mod=True, coeff=3.0)
    state = model.state_dict()
    assert sorted(k for k in state if k.endswith(("weight_u", "weight_v"))) == sorted(record["vectors"])
    for key, head in record["vectors"].items():
        _close(state[key][: record["head"]], head)
