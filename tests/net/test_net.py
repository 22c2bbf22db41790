"""Networks: registry, shapes, gradients, parameter counts, checkpoint loading and the parity fixtures."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURES, SHARED

import net
from engine.networks import load_checkpoint
from utils.errors import UserError

PARITY_DIR = SHARED / "fixtures" / "parity"

# Reduced sizes keep the suite fast; the architecture code paths are the same as at full size. A model
# registered later without an entry here is tested at its full size.
SMALL = {
    "wide_resnet": dict(depth=10, widen_factor=1),
    "resnet18": dict(base_width=4),
    "resnet50": dict(base_width=2),
    "vgg16": dict(width_divisor=16),
    "lenet": dict(),
}
# The networks of 32x32 and 28x28 inputs; the ImageNet ones (net/imagenet_nets.py) are tested in test_imagenet_net.py.
CIFAR_MODELS = [name for name in net.list_models() if net.model_options(name).stem == "cifar"]


def small_model(name, **kwargs):
    return net.create_model(
        name, num_classes=kwargs.pop("num_classes", 10), **{**SMALL.get(name, {}), **kwargs}
    )


def test_registry_lists_all_models():
    assert set(CIFAR_MODELS) == {"wide_resnet", "resnet18", "resnet50", "vgg16", "lenet"}


def test_unknown_model_names_valid_ones():
    with pytest.raises(UserError, match="resnet18"):
        net.create_model("resnet1000", num_classes=10)


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("sn", [False, True])
@pytest.mark.parametrize("mod", [False, True])
@pytest.mark.parametrize("mnist", [False, True])
def test_every_registered_model_shapes_gradients_and_head(name, sn, mod, mnist):
    """As timm's test_models.py, for each registered network: a batch of 2 gives `(2, num_features)`
    features and `(2, num_classes)` logits, all finite; every parameter gets a finite gradient; `forward`
    is `forward_head(forward_features)`; nothing is stored on the module during forward."""
    torch.manual_seed(0)
    model = small_model(name, spectral_normalization=sn, mod=mod, mnist=mnist, num_classes=7)
    x = torch.randn(2, *((1, 28, 28) if mnist else (3, 32, 32)))
    features = model.forward_features(x)
    logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 7) and model.num_classes == 7
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    logits.square().sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all()
    assert not any(isinstance(v, torch.Tensor) for v in vars(model).values()), "forward stored a tensor"
    model.eval()  # no dropout, no power-iteration step: two passes compute the same thing
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


# Known full-size parameter counts (CIFAR, 10 classes).
FULL_PARAMS = {
    ("wide_resnet", False): (36_479_194, 640),
    ("wide_resnet", True): (36_220_634, 640),
    ("resnet18", False): (11_173_962, 512),
    ("resnet18", True): (11_000_138, 512),
    ("resnet50", False): (23_520_842, 2048),
    ("resnet50", True): (20_744_266, 2048),
    ("vgg16", False): (14_724_042, 512),
    ("lenet", False): (62_006, 84),
}


def test_every_registered_model_has_a_known_parameter_count():
    assert {name for name, _ in FULL_PARAMS} == set(CIFAR_MODELS)


@pytest.mark.parametrize("key", list(FULL_PARAMS))
def test_full_size_parameter_counts(key):
    name, mod = key
    with torch.device("meta"):
        model = net.create_model(name, num_classes=10, mod=mod, spectral_normalization=name != "lenet")
    count, width = FULL_PARAMS[key]
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.num_features == width


def test_wide_resnet_defaults_match_the_original():
    with torch.device("meta"):
        model = net.create_model("wide_resnet", num_classes=10)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.01 for bn in bns)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 12 and all(d.p == 0.3 for d in dropouts)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("mod", [False, True])
def test_wide_resnet_classifier_init_is_the_originals_fan_out(num_classes, mod):
    """The original draws the classifier weight with kaiming_normal_(mode="fan_out"): std sqrt(2 / C), zero
    bias (fan-in would give sqrt(2 / 640) = 0.056). With the mean known to be 0, n * mean(w^2) / std^2 is
    chi-square with n = 640 C degrees of freedom, so the sample std has relative spread sqrt(1 / (2n)) (0.9%
    for C = 10); the tolerance is 6 of those."""
    torch.manual_seed(0)
    model = net.create_model("wide_resnet", num_classes=num_classes, depth=10, widen_factor=10, mod=mod)
    weight = model.get_classifier().weight.detach().double()
    assert weight.shape == (num_classes, 640)
    n, expected = weight.numel(), (2.0 / num_classes) ** 0.5
    sample_std = weight.square().mean().sqrt().item()
    assert abs(sample_std / expected - 1) < 6 * (1 / (2 * n)) ** 0.5
    assert abs(weight.mean().item()) < 6 * expected / n**0.5
    assert torch.equal(model.get_classifier().bias, torch.zeros(num_classes))


def test_sn_layers_cover_all_convolutions_but_not_the_classifier():
    model = small_model("resnet18", spectral_normalization=True)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert isinstance(model.fc, torch.nn.Linear)
    assert "fc.weight" in model.state_dict()


# Parity fixtures: this repository's own (tests/fixtures/parity, written from the original code by
# tests/fixtures/make_parity_fixtures.py) and, where present, the shared ones beside the repository. Each
# folder brings the fill_rule.py its fixtures were made with.
REPO_PARITY_DIR = FIXTURES / "parity"
PARITY_FIXTURES = [
    pytest.param(
        path, id=f"{folder_name}-{path.stem}", marks=[pytest.mark.slow] if "vgg16" in path.stem else []
    )
    for folder_name, folder in (("repo", REPO_PARITY_DIR), ("shared", PARITY_DIR))
    for path in (sorted(folder.glob("*.json")) if folder.is_dir() else [])
]


def _load_fill_rule(folder: Path):
    spec = importlib.util.spec_from_file_location(f"fill_rule_{folder.parent.name}", folder / "fill_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _original_layout_model(spec):
    """Our network for a fixture's original factory and kwargs."""
    name = {"wrn": "wide_resnet"}.get(spec["factory"], spec["factory"])
    return net.create_model(name, **spec["kwargs"])


def test_repository_parity_fixtures_are_present():
    names = {path.stem for path in REPO_PARITY_DIR.glob("*.json")}
    assert {"vgg16_mnist", "vgg16_mnist_sn", "vgg16_mnist_sn_mod", "vgg16_mnist_sn_power_iteration"} <= names


@pytest.mark.skipif(not PARITY_DIR.is_dir(), reason="../shared/fixtures/parity is not beside the repository")
def test_repository_fill_rule_draws_as_the_shared_one():
    ours, shared = _load_fill_rule(REPO_PARITY_DIR), _load_fill_rule(PARITY_DIR)
    layout = json.loads((REPO_PARITY_DIR / "vgg16_mnist_sn.json").read_text())["layout"]
    layout = layout[:12] + json.loads((PARITY_DIR / "lenet_mnist.json").read_text())["layout"]
    rng_ours, rng_shared = np.random.default_rng(5), np.random.default_rng(5)
    a, b = ours.fill_state(layout, rng_ours), shared.fill_state(layout, rng_shared)
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    np.testing.assert_array_equal(
        ours.make_input(rng_ours, [1, 4, 4], 2), shared.make_input(rng_shared, [1, 4, 4], 2)
    )


@pytest.mark.parametrize("fixture", PARITY_FIXTURES)
def test_parity_with_original_logits(fixture):
    fill_rule = _load_fill_rule(fixture.parent)
    spec = json.loads(fixture.read_text())
    rng = np.random.default_rng(spec["seed"])
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in fill_rule.fill_state(spec["layout"], rng).items()}
    x = torch.from_numpy(fill_rule.make_input(rng, spec["input_shape"], spec["batch"]))
    model = _original_layout_model(spec)
    # Same parameters and buffers, same shapes, same order as the original.
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [
        (k, s) for k, s, _ in spec["layout"]
    ]
    net.load_state_dict(model, {"module." + k: v for k, v in state.items()})  # DataParallel prefix
    with torch.no_grad():
        model.train()
        for _ in range(spec.get("train_passes", 0)):  # power iteration + BatchNorm statistics, as recorded
            model(x)
        model.eval()
        logits = model(x).double()
        features = model.forward_features(x).double()
    reference = torch.tensor(spec["logits"], dtype=torch.float64)
    assert ((logits - reference).abs().max() / reference.abs().max()).item() < 1e-4
    assert features.shape[1] == spec["features_dim"]
    np.testing.assert_allclose(features.sum(1).numpy(), spec["features_sum"], rtol=1e-4)
    np.testing.assert_allclose(features[:, :8].numpy(), spec["features_head"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sn", [False, True])
def test_mnist_vgg16_has_the_original_layout(sn):
    """The original's MNIST VGG-16 leaves out the first pool: 4 convolutions at 28x28, 3 at 14x14, 3 at 7x7,
    3 at 3x3, then a pool to 512x1x1. Ours has its state-dict keys and shapes (the fixture's layout), and each
    spectral-norm vector has the size of its convolution's input (v) and output (u) at those resolutions."""
    spec = json.loads((REPO_PARITY_DIR / ("vgg16_mnist_sn.json" if sn else "vgg16_mnist.json")).read_text())
    with torch.device("meta"):
        model = _original_layout_model(spec)
    assert spec["kwargs"]["mnist"] and spec["kwargs"]["spectral_normalization"] == sn
    assert {(k, tuple(v.shape)) for k, v in model.state_dict().items()} == {
        (k, tuple(s)) for k, s, _ in spec["layout"]
    }
    assert model.num_features == spec["features_dim"] == 512
    sizes = [28] * 4 + [14] * 3 + [7] * 3 + [3] * 3
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    layout = {k: s for k, s, _ in spec["layout"]}
    # The module index of each convolution, from its 4-d weight `features.<index>.weight(_orig)`.
    convs = sorted({int(k.split(".")[1]) for k, s, _ in spec["layout"] if len(s) == 4})
    assert len(convs) == 13
    in_widths = [1] + widths[:-1]
    for index, size, c_in, c_out in zip(convs, sizes, in_widths, widths):
        key = f"features.{index}.weight" + ("_orig" if sn else "")
        assert layout[key] == [c_out, c_in, 3, 3]
        if sn:
            assert layout[f"features.{index}.weight_v"] == [c_in * size * size]
            assert layout[f"features.{index}.weight_u"] == [c_out * size * size]
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [convs[3] + 3, convs[6] + 3, convs[9] + 3, convs[12] + 3]


def _roundtrip_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_roundtrip_through_file(tmp_path):
    model = small_model("wide_resnet", spectral_normalization=True, mod=True)
    model.train()
    model(torch.randn(2, 3, 32, 32))
    path = tmp_path / "m.model"
    torch.save(model.state_dict(), path)
    other = small_model("wide_resnet", spectral_normalization=True, mod=True)
    net.load_state_dict(other, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


NO_FAMILY = dict(
    other_architecture=False,
    spectral_norm_in=None,
    conv_shortcuts_in=None,
    input_channels=None,
    num_classes=None,
)
# The families a width mismatch is not: it has a width factor instead.


@pytest.mark.parametrize(
    "saved, loaded, family, hint",
    [
        (dict(spectral_normalization=True), dict(), dict(spectral_norm_in="checkpoint"), "add -sn"),
        (dict(), dict(spectral_normalization=True), dict(spectral_norm_in="network"), "drop -sn"),
        (dict(mod=False), dict(mod=True), dict(conv_shortcuts_in="checkpoint"), "drop -mod"),
        (dict(mod=True), dict(mod=False), dict(conv_shortcuts_in="network"), "add -mod"),
        (dict(mnist=True), dict(mnist=False), dict(input_channels=(1, 3)), "mnist"),
        (dict(num_classes=100), dict(num_classes=10), dict(num_classes=(100, 10)), "number of classes"),
    ],
)
def test_mismatches_are_facts_in_net_and_flags_in_the_cli(saved, loaded, family, hint):
    """`net` reports which keys and which families of layers differ, as data and without flag names;
    `engine.networks.load_checkpoint` names the flag to change."""
    source = small_model("resnet18", **saved)
    target = small_model("resnet18", **loaded)
    with pytest.raises(net.CheckpointMismatchError) as info:
        net.load_state_dict(target, source.state_dict())
    mismatch = info.value.mismatch
    assert {key: getattr(mismatch, key) for key in NO_FAMILY} == {**NO_FAMILY, **family}
    assert mismatch.network == "ResNet" and (mismatch.missing or mismatch.unexpected or mismatch.shapes)
    assert " -sn" not in str(info.value) and " -mod" not in str(info.value) and "--" not in str(info.value)
    with pytest.raises(UserError, match=hint):
        load_checkpoint(target, source.state_dict())


def test_reduced_widths_are_shape_facts_and_name_the_size_flags():
    with pytest.raises(net.CheckpointMismatchError) as info:
        net.load_state_dict(small_model("resnet18", base_width=8), small_model("resnet18").state_dict())
    mismatch = info.value.mismatch
    assert not mismatch.missing and not mismatch.unexpected
    assert ("conv1.weight", (4, 3, 3, 3), (8, 3, 3, 3)) in mismatch.shapes
    assert {key: getattr(mismatch, key) for key in NO_FAMILY} == NO_FAMILY and mismatch.width_ratio == 0.5
    with pytest.raises(UserError, match="0.5 times as wide.*size flags.*--base-width"):
        load_checkpoint(small_model("resnet18", base_width=8), small_model("resnet18").state_dict())


@pytest.mark.parametrize(
    "name, saved, here, hint",
    [
        ("resnet18", dict(base_width=8), dict(base_width=4), "2 times as wide as these flags build: pass --base-width 8"),
        # No --base-width given: the default 64 is what the flags build.
        ("resnet18", dict(base_width=2), dict(base_width=None), "0.03125 times as wide as these flags build: pass --base-width 2"),
        ("resnet50", dict(base_width=4, spectral_normalization=True), dict(base_width=2, spectral_normalization=True),
         "pass --base-width 4"),
        ("wide_resnet", dict(widen_factor=2), dict(widen_factor=1), "pass --widen-factor 2"),  # + a shortcut
        ("wide_resnet", dict(widen_factor=4), dict(widen_factor=2), "pass --widen-factor 4"),
        ("vgg16", dict(width_divisor=8), dict(width_divisor=16), "pass --width-divisor 8"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_width_names_the_width_flag_and_its_value(name, saved, here, hint):
    """Every channel count differs by one factor: the hint is the model's width flag with the value that
    fits, not the input shape, -mod, or a list of every size flag."""
    here_kwargs = {k: v for k, v in {**SMALL.get(name, {}), **here}.items() if v is not None}
    target = net.create_model(name, num_classes=10, **here_kwargs)
    with pytest.raises(UserError) as info:
        load_checkpoint(target, small_model(name, **saved).state_dict(), config={"name": name, **here_kwargs})
    message = str(info.value)
    assert hint in message and "-mod" not in message and "input" not in message and "-sn" not in message


def test_an_sn_checkpoint_loaded_without_mod_names_only_mod():
    """The shortcut convolutions a network without -mod has are spectrally normalised too; that they are missing
    from an -sn -mod checkpoint says nothing about -sn."""
    saved = small_model("resnet18", spectral_normalization=True, mod=True)
    target = small_model("resnet18", spectral_normalization=True)
    with pytest.raises(net.CheckpointMismatchError) as info:
        net.load_state_dict(target, saved.state_dict())
    assert info.value.mismatch.spectral_norm_in is None and info.value.mismatch.conv_shortcuts_in == "network"
    with pytest.raises(UserError) as info:
        load_checkpoint(target, saved.state_dict())
    assert "add -mod" in str(info.value) and "-sn" not in str(info.value)


def test_wrong_model_is_named():
    with pytest.raises(net.CheckpointMismatchError) as info:
        net.load_state_dict(small_model("resnet18"), small_model("vgg16").state_dict())
    assert info.value.mismatch.other_architecture
    with pytest.raises(UserError, match="--model"):
        load_checkpoint(small_model("resnet18"), small_model("vgg16").state_dict())


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    model = small_model("lenet", mnist=True)
    good = tmp_path / "good.model"
    torch.save(model.state_dict(), good)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, garbage):
        with pytest.raises(UserError, match=path.name):
            net.load_state_dict(model, path)
    with pytest.raises(UserError, match="does not exist"):
        net.load_state_dict(model, tmp_path / "missing.model")


def test_deepcopy_and_channels_last_agree():
    torch.manual_seed(0)
    model = small_model("resnet18", spectral_normalization=True, mod=True).eval()
    x = torch.randn(3, 3, 32, 32)
    clone = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(
            clone(x.to(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-4
        )


def test_train_mode_channels_last_matches_fp32_power_iteration():
    torch.manual_seed(0)
    # No dropout here: its masks are drawn in memory order, which channels_last changes.
    model = small_model("wide_resnet", spectral_normalization=True, mod=False, dropout_rate=0.0).train()
    clone = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    b = clone(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for (k, u), (_, v) in zip(model.state_dict().items(), clone.state_dict().items()):
        torch.testing.assert_close(u, v.contiguous(), rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = small_model("resnet18", spectral_normalization=True, mod=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    scale = reference.abs().max()
    assert ((low.float() - reference).abs().max() / scale).item() < 0.05


def test_classifier_named_linear_or_fc_loads_either_way():
    """ResNet checkpoints may name the classifier `fc` or `linear` (pytorch-cifar's name); both load."""
    source = small_model("resnet18")
    renamed = {
        k.replace("fc.", "linear.", 1) if k.startswith("fc.") else k: v
        for k, v in source.state_dict().items()
    }
    target = small_model("resnet18")
    net.load_state_dict(target, renamed)
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_model_options_agree_with_the_constructors():
    """`net.model_options` (read by the scripts' flag checks and the width hint) against the constructors: each
    listed option is accepted, the other size options are refused, the width default is the constructor's."""
    import inspect

    from net.resnet import ResNet
    from net.vgg import VGG
    from net.wide_resnet import WideResNet

    classes = {"wide_resnet": WideResNet, "resnet18": ResNet, "resnet50": ResNet, "vgg16": VGG}
    all_options = ("depth", "widen_factor", "base_width", "width_divisor")
    for name in CIFAR_MODELS:
        options = net.model_options(name)
        base = {k: v for k, v in SMALL.get(name, {}).items() if k in options.sizes}
        for option in all_options:
            value = {"depth": 10, "widen_factor": 1, "base_width": 2, "width_divisor": 16}[option]
            if option in options.sizes:
                net.create_model(name, num_classes=10, **{**base, option: value})
            else:
                with pytest.raises(TypeError):
                    net.create_model(name, num_classes=10, **{**base, option: value})
        if options.width is not None:
            default = inspect.signature(classes[name].__init__).parameters[options.width].default
            assert options.width_default == default, name
        plain = small_model(name).state_dict()
        normalised = small_model(name, spectral_normalization=True, mod=True).state_dict()
        assert options.sn_and_mod == (list(plain) != list(normalised)), name
