"""Soft spectral normalisation, as used by DDU (Mukhoti et al. 2021, Sec. 4; after Behrmann et al. 2019 and
Miyato et al. 2018).

The weight used in the forward pass is `W / max(1, sigma / coeff)`: the Lipschitz constant of each layer is
bounded by `coeff` without being forced to it. `sigma` is a power-iteration estimate of the largest singular
value, refined by `n_power_iterations` steps on every training forward pass and never in eval mode. The
singular-vector estimates persist as buffers, so they survive checkpoints and keep improving across steps.

Two flavours, matching the original DDU code:

* `SpectralNormConv2d` with a kernel larger than 1x1 estimates the norm of the convolution as a linear map
  on the layer's actual input shape `(C, H, W)`: power iteration runs through `conv2d` and
  `conv_transpose2d` on input-shaped vectors (Gouk et al. 2018). `weight_v` has C*H*W entries and
  `weight_u` the size of the output. The original divides by `max(1, sigma/coeff) + 1e-5` here.
* 1x1 convolutions (`SpectralNormConv2d` with `kernel_size=1`) and `SpectralNormLinear` use the norm of the
  weight reshaped to a matrix `(out, in*k*k)`, which is tight for 1x1 kernels.

The random starting vectors are drawn from torch's global generator right after the weight, in the
original's order: v before u for the input-shape convolutions, u before v for the matrix ones. With the same
seed a network therefore starts from the original's buffers as well as its weights
(tests/fixtures/make_sn_fixture.py).

Unlike the original forward-pre-hook implementation these are ordinary modules: nothing is stored on the
module during forward except the in-place refresh of the persistent buffers, so they work with
`copy.deepcopy`, `channels_last`, `torch.compile`, DistributedDataParallel and bf16 autocast (the estimate is
always computed in float32). The state-dict keys are the original's (`weight_orig`, `weight_u`, `weight_v`,
`weight_sigma`), so checkpoints of the original code load directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The original adds this to the divisor of input-shape (kernel > 1) convolutions "for stability".
CONV_DIVISOR_EPS = 1e-5


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.normalize(x, dim=0, eps=eps)


def _normalize_into(vector: torch.Tensor, out: torch.Tensor, eps: float) -> torch.Tensor:
    """`out <- vector / max(||vector||, eps)`, written straight into the persistent buffer `out`.

    Returns `||vector||`. After the second half-step of a power iteration, `u = W v / ||W v||`, so this norm
    is exactly the estimate `u . W v` (Miyato et al. 2018, Alg. 1) and needs no further product.
    """
    norm = torch.linalg.vector_norm(vector)
    torch.div(vector, norm.clamp_min(eps), out=out)
    return norm


def _matrix_power_iteration(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor, steps: int, eps: float
) -> torch.Tensor | None:
    """`steps` power-iteration steps on `matrix (out, in)`, refreshing the buffers `u (out,)` and `v (in,)` in
    place (no autograd); returns the estimate `u . W v`, or None when `steps` is 0."""
    sigma = None
    with torch.no_grad():
        for _ in range(steps):
            _normalize_into(torch.mv(matrix.t(), u), v, eps)
            sigma = _normalize_into(torch.mv(matrix, v), u, eps)
    return sigma


class _SoftSpectralScale(torch.autograd.Function):
    """`W / d` with `d = max(1, sigma / coeff) + divisor_eps`, where `sigma = <W, G>` is given (its value)
    together with its gradient `G = d sigma / dW` (the direction, see `SpectralNormConv2d.sigma_direction`).

    The gradient is the one autograd would derive for the same formula, written out so that a training
    step dispatches a handful of kernels per layer instead of two dozen:

        dL/dW = (g - [sigma >= coeff] * <g, W> / (coeff * d) * G) / d,   with g = dL/d(W / d)

    (`clamp`'s convention: the bound passes the gradient where `sigma / coeff >= 1`).
    """

    @staticmethod
    def forward(ctx, weight, direction, sigma, coeff, divisor_eps):
        divisor = (sigma / coeff).clamp_min(1.0)
        if divisor_eps:
            divisor.add_(divisor_eps)
        ctx.save_for_backward(weight, direction, sigma, divisor)
        ctx.coeff = coeff
        return weight / divisor

    @staticmethod
    def backward(ctx, grad_output):
        weight, direction, sigma, divisor = ctx.saved_tensors
        inner = (grad_output * weight).sum()
        through_divisor = torch.where(sigma >= ctx.coeff, inner / (divisor * ctx.coeff), 0.0)
        grad_weight = torch.addcmul(grad_output, direction, through_divisor, value=-1.0).div_(divisor)
        return grad_weight, None, None, None, None


def soft_spectral_scale(
    weight: torch.Tensor, direction: torch.Tensor, sigma: torch.Tensor, coeff: float, divisor_eps: float
) -> torch.Tensor:
    """`W / (max(1, sigma / coeff) + divisor_eps)`: shrink only layers whose norm exceeds `coeff`.

    `sigma` is the value of `<W, direction>` (a detached scalar); the result is differentiable in `W`
    through both `W` and `sigma` (see `_SoftSpectralScale`).
    """
    return _SoftSpectralScale.apply(weight, direction, sigma.detach(), float(coeff), float(divisor_eps))


def _check_coeff(coeff: float) -> None:
    """The bound must be a positive finite number: with `coeff <= 0`, `max(1, sigma / coeff)` is 1 and the
    layer would silently not be normalised at all."""
    if not (math.isfinite(coeff) and coeff > 0):
        raise ValueError(f"coeff must be a positive finite number, got {coeff}")


class SpectralNormConv2d(nn.Module):
    """A 2-d convolution whose weight is softly spectrally normalised (see module docstring).

    `input_size` is the spatial size (H = W) of this layer's input; it fixes the shape of the
    power-iteration vectors for kernels larger than 1x1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        *,
        input_size: int,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
    ):
        super().__init__()
        if n_power_iterations < 0:
            raise ValueError(f"n_power_iterations must be >= 0, got {n_power_iterations}")
        _check_coeff(coeff)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size = input_size
        self.coeff, self.n_power_iterations, self.eps = float(coeff), n_power_iterations, eps
        self.acts_on_input_shape = kernel_size > 1

        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

        output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        self.output_size = output_size
        # conv_transpose2d maps the output back to exactly the input size with this output padding.
        self.output_padding = input_size - ((output_size - 1) * stride - 2 * padding + kernel_size)
        # The starting vectors are drawn in the original's order, so that one seed gives the original's
        # buffers: input-shape convolutions draw v (the input) and then u (spectral_norm_conv), 1x1
        # convolutions draw u and then v, like linear layers (torch's spectral_norm, used by spectral_norm_fc).
        if self.acts_on_input_shape:
            weight_v = _normalize(torch.randn(in_channels * input_size**2), eps)
            weight_u = _normalize(torch.randn(out_channels * output_size**2), eps)
        else:
            weight_u = _normalize(torch.randn(out_channels), eps)
            weight_v = _normalize(torch.randn(in_channels * kernel_size**2), eps)
        self.register_buffer("weight_u", weight_u)
        self.register_buffer("weight_v", weight_v)
        self.register_buffer("weight_sigma", torch.ones(1))

    def reset_parameters(self) -> None:
        # Same default initialisation as nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size**2
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, input_size={self.input_size}, coeff={self.coeff}, "
            f"n_power_iterations={self.n_power_iterations}, bias={self.bias is not None}"
        )

    def _conv(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, weight, None, self.stride, self.padding)

    def _conv_transpose(self, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(u, weight, None, self.stride, self.padding, self.output_padding)

    def _power_iteration(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Refine the buffers `weight_u`, `weight_v` in place by `n_power_iterations` steps (no autograd).

        Returns the new estimate `u . W v` (None when no step was taken).
        """
        u, v = self.weight_u, self.weight_v
        sigma = None
        with torch.no_grad():
            if self.acts_on_input_shape:
                out_shape = (1, self.out_channels, self.output_size, self.output_size)
                in_shape = (1, self.in_channels, self.input_size, self.input_size)
                for _ in range(self.n_power_iterations):
                    _normalize_into(self._conv_transpose(u.view(out_shape), weight).flatten(), v, self.eps)
                    sigma = _normalize_into(self._conv(v.view(in_shape), weight).flatten(), u, self.eps)
            else:
                matrix = weight.reshape(self.out_channels, -1)
                sigma = _matrix_power_iteration(matrix, u, v, self.n_power_iterations, self.eps)
        return sigma

    def sigma_direction(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`G = d(u . W v) / dW`, a constant: for a convolution the weight gradient of `conv2d(v)` for the
        output gradient `u`, for a matrix `u v^T`. The estimate `u . W v` is linear in `W`, so it equals
        `<W, G>`: one weight-gradient convolution instead of a forward convolution plus its backward."""
        with torch.no_grad():
            if self.acts_on_input_shape:
                return torch.nn.grad.conv2d_weight(
                    v.view(1, self.in_channels, self.input_size, self.input_size),
                    self.weight_orig.shape,
                    u.view(1, self.out_channels, self.output_size, self.output_size),
                    self.stride,
                    self.padding,
                )
            return torch.outer(u, v).view(self.weight_orig.shape)

    def normalized_weight(self, update: bool | None = None) -> torch.Tensor:
        """The weight the forward pass uses; `update` (default: `self.training`) refines the estimate first
        and records it in `weight_sigma`."""
        update = self.training if update is None else update
        weight = self.weight_orig.float()
        sigma = self._power_iteration(weight.detach()) if update else None
        # u and v enter only the constant direction, so the in-place refreshes cannot touch autograd.
        direction = self.sigma_direction(self.weight_u, self.weight_v)
        if sigma is None:
            sigma = (weight.detach() * direction).sum()
        if update:
            with torch.no_grad():
                self.weight_sigma.copy_(sigma)
        divisor_eps = CONV_DIVISOR_EPS if self.acts_on_input_shape else 0.0
        return soft_spectral_scale(weight, direction, sigma, self.coeff, divisor_eps).to(
            self.weight_orig.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.normalized_weight()
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class SpectralNormLinear(nn.Module):
    """A linear layer with the soft spectral normalisation of its weight matrix."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
    ):
        super().__init__()
        _check_coeff(coeff)
        self.in_features, self.out_features = in_features, out_features
        self.coeff, self.n_power_iterations, self.eps = float(coeff), n_power_iterations, eps
        reference = nn.Linear(in_features, out_features, bias=bias)
        self.bias = reference.bias
        self.weight_orig = reference.weight
        # u and then v, as torch's spectral_norm (the original's spectral_norm_fc) draws them.
        self.register_buffer("weight_u", _normalize(torch.randn(out_features), eps))
        self.register_buffer("weight_v", _normalize(torch.randn(in_features), eps))
        self.register_buffer("weight_sigma", torch.ones(1))

    def normalized_weight(self, update: bool | None = None) -> torch.Tensor:
        """The weight the forward pass uses (as `SpectralNormConv2d.normalized_weight`, matrix norm)."""
        update = self.training if update is None else update
        weight = self.weight_orig.float()
        u, v = self.weight_u, self.weight_v
        steps = self.n_power_iterations if update else 0
        sigma = _matrix_power_iteration(weight.detach(), u, v, steps, self.eps)
        # sigma = u . W v = <W, u v^T>.
        direction = torch.outer(u, v)
        if sigma is None:
            sigma = torch.dot(u, torch.mv(weight.detach(), v))
        if update:
            with torch.no_grad():
                self.weight_sigma.copy_(sigma)
        return soft_spectral_scale(weight, direction, sigma, self.coeff, 0.0).to(self.weight_orig.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.normalized_weight()
        return F.linear(x, weight, self.bias)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    input_size: int,
    spectral_normalization: bool,
    coeff: float = 3.0,
    n_power_iterations: int = 1,
    bias: bool = False,
) -> nn.Module:
    """The original's `wrapped_conv`: a padded ('same' for 3x3) convolution, spectrally normalised on request."""
    padding = kernel_size // 2
    if not spectral_normalization:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    return SpectralNormConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        bias=bias,
        input_size=input_size,
        coeff=coeff,
        n_power_iterations=n_power_iterations,
    )


def conv_factory(spectral_normalization: bool, coeff: float = 3.0, n_power_iterations: int = 1):
    """`conv(input_size, in_channels, out_channels, kernel_size, stride)`, the original's `wrapped_conv`
    with the normalisation settings of one network bound."""

    def conv(
        input_size: int, in_channels: int, out_channels: int, kernel_size: int, stride: int
    ) -> nn.Module:
        return make_conv(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            input_size=input_size,
            spectral_normalization=spectral_normalization,
            coeff=coeff,
            n_power_iterations=n_power_iterations,
        )

    return conv


def conv_weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor of a plain or spectrally normalised convolution (for initialisation)."""
    return (
        module.weight_orig if isinstance(module, (SpectralNormConv2d, SpectralNormLinear)) else module.weight
    )
