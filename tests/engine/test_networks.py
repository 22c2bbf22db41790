"""engine/network_flags.py and engine/networks.py: the one path from flags (or a stored config) to a network and
from a checkpoint into it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from engine.checkpointing import load_resume_state
from engine.network_flags import model_config
from engine.networks import build_model, load_checkpoint
from engine.run_paths import RunFiles
from utils.errors import UserError


def parse(*argv: str):
    return train.get_args_parser().parse_args(["--seed", "1", *argv])


def test_flags_and_their_stored_config_build_the_same_network():
    args = parse(
        "--dataset", "digits", "--model", "resnet18", "-sn", "-mod", "--coeff", "6", "--base-width", "4"
    )
    config = model_config(args)
    assert config == dict(
        name="resnet18",
        num_classes=10,
        spectral_normalization=True,
        mod=True,
        coeff=6.0,
        mnist=True,
        base_width=4,
    )
    torch.manual_seed(0)
    from_flags = build_model(args)
    torch.manual_seed(0)
    from_config = build_model(config)
    assert from_flags.conv1.weight_orig.shape == (4, 1, 3, 3) and from_flags.conv1.coeff == 6.0
    for key, value in from_flags.state_dict().items():
        assert torch.equal(value, from_config.state_dict()[key]), key
    # The data set fixes the class count and the input variant: the registry's, not the flags'.
    other = model_config(args, "cifar100")
    assert (other["num_classes"], other["mnist"]) == (100, False)
    assert build_model(args, "cifar100").fc.out_features == 100


def test_a_size_flag_the_model_does_not_have_names_the_flag():
    with pytest.raises(UserError, match="--depth does not fit --model lenet"):
        build_model(parse("--dataset", "digits", "--model", "lenet", "--depth", "10"))


def test_the_resume_file_alone_rebuilds_the_trained_network(tmp_path):
    """As nanoGPT's checkpoints: the stored constructor arguments and weights give back the network."""
    argv = [
        "--dataset",
        "digits",
        "--model",
        "resnet18",
        "-sn",
        "-mod",
        "--base-width",
        "2",
        "--no-gpu",
        "-e",
        "1",
    ]
    result = train.main(parse(*argv, "-b", "16", "--steps-per-epoch", "1", "--save-path", str(tmp_path)))
    state = load_resume_state(result["files"].resume)
    rebuilt = load_checkpoint(build_model(state["model_config"]), state["model"]).eval()
    trained = result["model"].eval()
    assert list(rebuilt.state_dict()) == list(trained.state_dict())
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in trained.state_dict().items())
    # The same weights give the same outputs; the trained copy may be in channels_last, whose kernels add
    # in another order, so the outputs agree to float32 rounding rather than bit for bit.
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_names_its_run_files():
    """`RunFiles.of_checkpoint` inverts `checkpoint_file_name`, so the resume file beside a checkpoint (whose
    flags `load_checkpoint` compares) is the run files' answer, not a pattern of its own."""
    files = RunFiles.of_checkpoint(Path("runs/Run1/resnet18_sn_3.0_mod_1_350.model"))
    assert files.name == "resnet18_sn_3.0_mod_1" and files.save_dir == Path("runs/Run1")
    assert files.resume == Path("runs/Run1/resnet18_sn_3.0_mod_1_resume.pt")
    assert files.model(350) == Path("runs/Run1/resnet18_sn_3.0_mod_1_350.model")
    for other in ("lenet_1_resume.pt", "lenet_final.model", "_3.model", "lenet_1_3.pt"):
        assert RunFiles.of_checkpoint(Path(other)) is None, other
