"""DDU networks: Wide-ResNet-28-10, ResNet-18/50, VGG-16 and LeNet, with soft spectral normalisation, and
strict checkpoint loading (`load_state_dict`) that reports a mismatch as data (`StateDictMismatch`).

model = net.create_model("wide_resnet", num_classes=10, spectral_normalization=True, mod=True, coeff=3.0)
features = model.forward_features(x)   # (B, model.num_features)
logits = model(x)                      # the classifier applied to those features

`ResidualMLP` (`net.residual_mlp`), the 2-d network of the two-moons illustration, is not in the registry.
"""

from net.checkpoint import (
    CheckpointMismatchError,
    StateDictMismatch,
    compare_state_dict,
    load_state_dict,
    read_checkpoint,
)
from net.layers import DDUNetwork
from net.registry import ModelOptions, create_model, list_models, model_options, unwrap_model
from net.residual_mlp import ResidualMLP
from net.spectral_norm import SpectralNormConv2d, SpectralNormLinear

__all__ = [
    "CheckpointMismatchError",
    "DDUNetwork",
    "ModelOptions",
    "ResidualMLP",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "StateDictMismatch",
    "compare_state_dict",
    "create_model",
    "list_models",
    "load_state_dict",
    "model_options",
    "read_checkpoint",
    "unwrap_model",
]
