"""The ImageNet networks (net/imagenet_nets.py): shapes, features, gradients, torchvision's state-dict layouts."""

from __future__ import annotations

import pytest
import torch
import torchvision

import net
from utils.errors import UserError

IMAGENET_MODELS = ("imagenet_resnet50", "imagenet_wide_resnet50_2", "imagenet_vgg16_bn")
TORCHVISION = {
    "imagenet_resnet50": torchvision.models.resnet50,
    "imagenet_wide_resnet50_2": torchvision.models.wide_resnet50_2,
    "imagenet_vgg16_bn": torchvision.models.vgg16_bn,
}
# Reduced widths keep a forward and backward pass at 64x64 well under a second.
SMALL = {
    "imagenet_resnet50": dict(base_width=4),
    "imagenet_wide_resnet50_2": dict(base_width=4),
    "imagenet_vgg16_bn": dict(width_divisor=32),
}
FULL_FEATURES = {"imagenet_resnet50": 2048, "imagenet_wide_resnet50_2": 2048, "imagenet_vgg16_bn": 4096}


def test_the_imagenet_networks_are_registered_with_the_imagenet_stem():
    for name in IMAGENET_MODELS:
        assert name in net.list_models()
        assert net.model_options(name).stem == "imagenet"
    assert net.model_options("resnet50").stem == "cifar"


@pytest.mark.parametrize("name", IMAGENET_MODELS)
@pytest.mark.parametrize("sn", [False, True])
@pytest.mark.parametrize("mod", [False, True])
def test_shapes_features_and_gradients(name, sn, mod):
    """A batch of 2 at 64x64: `(2, num_features)` features and `(2, num_classes)` logits, finite; every
    parameter gets a finite gradient; `forward` is `forward_head(forward_features)` in eval mode."""
    torch.manual_seed(0)
    model = net.create_model(
        name, num_classes=5, spectral_normalization=sn, mod=mod, image_size=64, **SMALL[name]
    )
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    logits = model(x)
    assert features.shape == (2, model.num_features) and logits.shape == (2, 5)
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_full_size_feature_width_and_parameter_count_match_torchvision(name):
    with torch.device("meta"):
        ours = net.create_model(name, num_classes=1000)
        theirs = TORCHVISION[name](weights=None)
    assert ours.num_features == FULL_FEATURES[name]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_torchvision_state_dicts_load_strictly_without_sn(name):
    """Same keys and shapes as torchvision's model: its checkpoints load with strict=True."""
    with torch.device("meta"):
        ours = net.create_model(name, num_classes=1000)
        theirs = TORCHVISION[name](weights=None)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_a_torchvision_resnet50_computes_the_same_function_in_ours():
    """Not only the keys: torchvision's ResNet-50 with its weights loaded into ours gives the same logits
    and, through `forward_features`, the input of its `fc`."""
    torch.manual_seed(0)
    theirs = torchvision.models.resnet50(weights=None).eval()
    ours = net.create_model("imagenet_resnet50", num_classes=1000).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    pooled = {}
    hook = theirs.fc.register_forward_hook(lambda module, inputs, output: pooled.update(x=inputs[0]))
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected)
        torch.testing.assert_close(ours.forward_features(x), pooled["x"])
    hook.remove()


def test_sn_and_mod_change_the_state_dict_as_for_the_cifar_networks():
    """-sn renames weights to `weight_orig` (+ power-iteration buffers); -mod drops the `downsample`
    convolutions of the ResNets (average-pool shortcuts have no parameters)."""
    plain = net.create_model("imagenet_resnet50", num_classes=10, image_size=64, base_width=4).state_dict()
    sn = net.create_model(
        "imagenet_resnet50", num_classes=10, image_size=64, base_width=4, spectral_normalization=True
    ).state_dict()
    mod = net.create_model("imagenet_resnet50", num_classes=10, image_size=64, base_width=4, mod=True)
    assert "conv1.weight" in plain and "conv1.weight_orig" in sn and "conv1.weight_u" in sn
    assert "layer1.0.downsample.0.weight" in plain
    assert not any("downsample" in key for key in mod.state_dict())
    vgg = net.create_model(
        "imagenet_vgg16_bn", num_classes=10, image_size=64, width_divisor=32, spectral_normalization=True
    ).state_dict()
    assert "classifier.0.weight_orig" in vgg and "classifier.3.weight_orig" in vgg
    assert "classifier.6.weight" in vgg  # the classifier itself is never normalised


def test_sn_power_iteration_runs_on_the_training_image_size():
    model = net.create_model(
        "imagenet_resnet50", num_classes=10, image_size=96, base_width=4, spectral_normalization=True
    )
    assert model.conv1.weight_v.numel() == 3 * 96 * 96
    assert model.layer4[0].conv2.input_size == 6  # 96 -> 48 (stem) -> 24 (pool) -> 12 -> 6 (layer4's input)


def test_mnist_inputs_are_refused_in_one_sentence():
    with pytest.raises(UserError, match="1x28x28"):
        net.create_model("imagenet_resnet50", num_classes=10, mnist=True)
