"""utils/device.py: the fast-path choice (bf16 autocast + channels_last on a GPU and on a CPU with native
bf16) and the CPU paths of every script: bf16 + channels_last, which runs on any CPU (emulated where bf16 is
not native), fp32 contiguous (the default without bf16) and fp32 + channels_last on request, which must
agree with contiguous to rounding.

The suite sets `DDU_CPU_BF16=0` (tests/conftest.py) so default-flag runs are fp32 everywhere; these tests
set it to 1 to take the path a CPU with AVX512-BF16 or AMX takes, and compare it with fp32 within bounds
that bf16's 8-bit mantissa allows, never bit for bit (how a CPU rounds bf16 products is its own).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import evaluate
import net
import train
from engine.features import collect_outputs
from utils import device as device_mod
from utils.device import autocast_context, cpu_has_native_bf16, fast_path, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "1")


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "0")


def test_the_environment_variable_overrides_the_cpu_detection(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("0", False), ("false", False)):
        monkeypatch.setenv(device_mod.CPU_BF16_ENV, value)
        assert cpu_has_native_bf16() is expected
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "auto")
    assert cpu_has_native_bf16() is device_mod.cpu_reports_native_bf16()


def test_defaults_follow_the_device_and_flags_win(monkeypatch):
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "1")
    assert fast_path(CPU) and resolve_precision(CPU) == ("bf16", True)
    assert resolve_precision(CPU, "fp32") == ("fp32", False)  # --precision fp32: the original's set-up
    assert resolve_precision(CPU, "fp32", True) == ("fp32", True)
    assert resolve_precision(CPU, None, False) == ("bf16", False)
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "0")
    # A CPU without bf16: fp32 and contiguous (oneDNN's fp32 NHWC crash, utils/device.py); NHWC on request.
    assert not fast_path(CPU) and resolve_precision(CPU) == ("fp32", False)
    assert resolve_precision(CPU, None, True) == ("fp32", True)
    assert resolve_precision(CPU, "bf16") == ("bf16", True)
    # CUDA: bf16 and channels_last by default, channels_last kept with fp32 (as before).
    assert resolve_precision(CUDA) == ("bf16", True) and resolve_precision(CUDA, "fp32") == ("fp32", True)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision(CPU, "fp16")


def _tiny_train_args(save, *extra):
    return train.get_args_parser().parse_args(
        ["--seed", "1", "--dataset", "digits", "--model", "resnet18", "--base-width", "4", "-sn", "-mod", "--no-gpu",
         "-e", "1", "-b", "16", "--steps-per-epoch", "3", "--save-path", str(save), *extra]
    )  # fmt: skip


def _logged_precision(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision: ")]
    return lines[-1].split(": ", 1)[1]


def test_train_takes_the_bf16_path_on_a_bf16_cpu_and_fp32_when_asked(tmp_path, bf16_cpu, caplog):
    caplog.set_level(logging.INFO)
    fast = train.main(_tiny_train_args(tmp_path / "fast"))
    assert _logged_precision(caplog) == "bf16"
    assert fast["model"].conv1.weight_orig.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in fast["history"])
    # SN's power-iteration vectors stay float32 after bf16 steps.
    sn_buffers = [b for name, b in fast["model"].named_buffers() if name.endswith("_u")]
    assert sn_buffers and all(b.dtype == torch.float32 for b in sn_buffers)

    plain = train.main(_tiny_train_args(tmp_path / "plain", "--precision", "fp32"))
    assert _logged_precision(caplog) == "fp32"
    assert plain["model"].conv1.weight_orig.is_contiguous()


def _losses(result) -> list[float]:
    return [s.loss for s in result["history"]]


def test_train_on_a_cpu_without_native_bf16_is_fp32_contiguous_and_channels_last_agrees(
    tmp_path, plain_cpu, caplog
):
    caplog.set_level(logging.INFO)
    one_step = ("--steps-per-epoch", "1")
    nchw = train.main(_tiny_train_args(tmp_path / "nchw", *one_step))
    assert _logged_precision(caplog) == "fp32"
    assert nchw["model"].conv1.weight_orig.is_contiguous()
    nhwc = train.main(_tiny_train_args(tmp_path / "nhwc", *one_step, "--channels-last"))
    assert _logged_precision(caplog) == "fp32"
    weight = nhwc["model"].conv1.weight_orig
    assert weight.dtype == torch.float32 and weight.is_contiguous(memory_format=torch.channels_last)
    # Only the layout differs: the same formulas summed in another order, so one step agrees to rounding
    # (over many steps at lr 0.1 such differences grow, as any two summation orders do; docs/speed.md).
    assert _losses(nhwc) == pytest.approx(_losses(nchw), rel=1e-5)
    for key, value in nchw["model"].state_dict().items():
        torch.testing.assert_close(nhwc["model"].state_dict()[key], value, rtol=1e-3, atol=1e-4)


def test_fp32_channels_last_features_agree_with_contiguous():
    torch.manual_seed(0)
    model = net.create_model("lenet", num_classes=10, mnist=True).eval()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    exact = collect_outputs(model, [(x, y)], CPU, "fp32")
    nhwc = collect_outputs(
        copy.deepcopy(model).to(memory_format=torch.channels_last), [(x, y)], CPU, "fp32", channels_last=True
    )
    torch.testing.assert_close(nhwc.features, exact.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nhwc.logits, exact.logits, rtol=1e-5, atol=1e-5)


def test_bf16_features_and_logits_are_float32_and_close_to_fp32():
    torch.manual_seed(0)
    model = net.create_model("resnet18", num_classes=10, base_width=8, spectral_normalization=True, mod=True)
    model.eval()
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    exact = collect_outputs(model, loader, CPU, "fp32")
    fast = collect_outputs(
        model.to(memory_format=torch.channels_last), loader, CPU, "bf16", channels_last=True
    )
    assert fast.features.dtype == fast.logits.dtype == torch.float32
    # bf16 keeps 8 significant bits: each activation within a few percent of the layer's scale.
    for a, b in ((exact.features, fast.features), (exact.logits, fast.logits)):
        assert (a - b).abs().max() <= 0.1 * a.abs().max()
    assert torch.equal(exact.labels, fast.labels)


def test_evaluate_on_a_bf16_cpu_records_bf16_and_agrees_with_fp32(tmp_path, bf16_cpu):
    save = tmp_path / "runs"
    (save / "Run1").mkdir(parents=True)
    train.main(_tiny_train_args(save / "Run1", "--seed", "1"))

    def run(*extra):
        args = evaluate.get_args_parser().parse_args(
            ["--dataset", "digits", "--ood_dataset", "digits_ood", "--model", "resnet18", "--base-width", "4",
             "-sn", "-mod", "--no-gpu", "--runs", "1", "--epoch", "1", "--load-path", str(save),
             "--model-type", "gmm", "--seed", "1", *extra]
        )  # fmt: skip
        return evaluate.main(args)

    fast = run("--output-dir", str(tmp_path / "bf16"))
    exact = run("--output-dir", str(tmp_path / "fp32"), "--precision", "fp32")
    assert fast["info"]["precision"] == "bf16" and exact["info"]["precision"] == "fp32"
    for key in ("accuracy", "m1_auroc", "m2_auroc"):
        assert fast["mean"][key] == pytest.approx(exact["mean"][key], abs=0.05), key


def test_autocast_context_is_a_no_op_for_fp32():
    with autocast_context(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        autocast_context(CPU, "fp8")


@pytest.mark.slow
def test_generator_runs_in_bf16_and_records_it(tmp_path, real_data_root):
    from tools import ambiguous_mnist as am

    (tmp_path / "MNIST").symlink_to(real_data_root / "MNIST", target_is_directory=True)
    argv = ["--mnist-root", str(tmp_path), "--precision", "bf16", "--device", "cpu", "--no-progress",
            "--train", "20", "--test", "20", "--max-mnist", "1000", "--candidate-batch", "256",
            "--vae-epochs", "1", "--vae-batch-size", "32", "--vae-lr", "3e-3", "--vae-latent", "8",
            "--classifier-epochs", "3", "--classifier-batch-size", "64", "--density-quantile", "0",
            "--ensemble-size", "3"]  # fmt: skip
    manifest = am.main(am.get_args_parser().parse_args(argv))
    assert manifest["settings"]["precision"] == "bf16"
    samples = torch.load(tmp_path / am.SAMPLES_FILE, weights_only=True)
    assert samples.dtype == torch.float32 and samples.shape[0] == 40
    assert 0.0 <= float(samples.min()) and float(samples.max()) <= 1.0


def test_generator_precision_defaults_to_the_device_default(monkeypatch, tmp_path):
    from tools import ambiguous_mnist as am

    args = am.get_args_parser().parse_args(["--mnist-root", str(tmp_path)])
    assert args.precision is None
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "1")
    assert am.pipeline._with_precision(args, CPU).precision == "bf16"
    monkeypatch.setenv(device_mod.CPU_BF16_ENV, "0")
    assert am.pipeline._with_precision(args, CPU).precision == "fp32"
