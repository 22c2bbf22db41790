"""The benchmarks run end to end on tiny CPU settings.

They are meant for a GPU machine, where device time is scarce and a crash costs a whole lease; these runs
make sure each script works and writes what `benchmarks/gpu_check.sh` reads back. No timing is asserted.
"""

from __future__ import annotations

import json

import pytest
from conftest import requires_counted_torch

from benchmarks import dispatch, ensemble_modes, gmm, loader, quirk_ties, throughput, train_throughput

pytestmark = pytest.mark.slow


def test_network_throughput_measures_every_configuration(tmp_path):
    out = tmp_path / "throughput.json"
    args = throughput.get_args_parser().parse_args(
        "--model wide_resnet -mod --depth 10 --widen-factor 1 --batch-size 4 --steps 1 --warmup 1 --no-gpu "
        f"--json {out}".split()
    )
    throughput.main(args)
    rows = json.loads(out.read_text())
    assert {(r["sn"], r["config"]) for r in rows} == {
        (sn, config) for sn in (True, False) for config in ("fp32", "bf16+channels_last")
    }
    assert all(r["images_per_s"] > 0 and r["achieved_tflop_s"] > 0 for r in rows)
    assert len({r["gflop_per_image"] for r in rows}) == 1 and rows[0]["gflop_per_image"] > 0
    for r in rows:  # the rate times the work per image, whatever the machine's speed (SN adds per-step work);
        # each of the three numbers is rounded to 4 significant digits (relative error at most 5e-4)
        per_image = r["images_per_s"] * r["gflop_per_image"] / 1e3
        assert r["achieved_tflop_s"] >= per_image * (1 - 2e-3)
        if not r["sn"]:
            assert r["achieved_tflop_s"] <= per_image * (1 + 2e-3)


def test_wide_resnet_28_10_costs_the_published_flops():
    """WRN-28-10 on 32x32 inputs takes about 5.25 GMAC per image forward (Zagoruyko & Komodakis 2016):
    a training step (forward + twice that backward) is about 3 x 2 x 5.25 = 31.5 GFLOP per image."""
    import torch

    import net

    model = net.create_model("wide_resnet", num_classes=10, mod=True)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    per_image, per_step = throughput.training_flops(model, x, y)
    assert per_image == pytest.approx(31.5e9, rel=0.03) and per_step == 0


def test_training_flops_split_per_image_and_per_step_work():
    """SN's power iteration is per step, not per image; the counts must not depend on the batch."""
    import torch

    import net

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    plain = net.create_model("wide_resnet", num_classes=10, depth=10, widen_factor=1, mod=True)
    normalised = net.create_model(
        "wide_resnet", num_classes=10, depth=10, widen_factor=1, mod=True, spectral_normalization=True
    )
    before = {k: v.clone() for k, v in normalised.state_dict().items()}
    image_plain, step_plain = throughput.training_flops(plain, x, y)
    image_sn, step_sn = throughput.training_flops(normalised, x, y)
    assert image_plain == image_sn and step_plain == 0
    # conv_transpose2d + conv2d + weight gradient on one input-sized vector: about one image's training step.
    assert 0.5 * image_sn < step_sn < 2 * image_sn
    assert all(torch.equal(v, before[k]) for k, v in normalised.state_dict().items())


def test_training_throughput_compares_the_project_with_the_original_pipeline(tmp_path):
    out = tmp_path / "train_throughput.json"
    args = train_throughput.get_args_parser().parse_args(
        f"--dataset digits --model lenet --steps 2 --warmup 1 --no-gpu --workers 0 --json {out}".split()
    )
    train_throughput.main(args)
    record = json.loads(out.read_text())
    # A CPU without bf16 (the suite's DDU_CPU_BF16=0): fp32 contiguous, beside fp32 + channels_last.
    configs = {r["name"]: (r["loader"], r["precision"], r["channels_last"]) for r in record["results"]}
    assert configs == {
        "project": ("gpu", "fp32", False),
        "project-fp32-channels-last": ("gpu", "fp32", True),
        "original": ("torchvision", "fp32", False),
    }
    assert record["ratios"]["project/original"] > 0 and record["hardware"].startswith("CPU")
    assert "dataset_root" not in record["args"]  # a machine path, and records are committed


def test_training_throughput_interleaves_rounds_and_keeps_the_median(tmp_path):
    out = tmp_path / "train_throughput.json"
    args = train_throughput.get_args_parser().parse_args(
        f"--dataset digits --model lenet --steps 1 --warmup 0 --rounds 3 --no-gpu --workers 0 --json {out}".split()
    )
    train_throughput.main(args)
    for result in json.loads(out.read_text())["results"]:
        rates = sorted(r["images_per_s"] for r in result["rounds"])
        assert len(rates) == 3 and result["images_per_s"] == rates[1]
        assert result["images"] == sum(r["images"] for r in result["rounds"])


def test_training_throughput_on_a_bf16_cpu_sets_the_fp32_loop_beside_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DDU_CPU_BF16", "1")
    out = tmp_path / "train_throughput.json"
    args = train_throughput.get_args_parser().parse_args(
        f"--dataset digits --model lenet --steps 2 --warmup 1 --no-gpu --workers 0 --json {out}".split()
    )
    train_throughput.main(args)
    record = json.loads(out.read_text())
    configs = {r["name"]: (r["precision"], r["channels_last"]) for r in record["results"]}
    assert configs == {
        "project": ("bf16", True),
        "project-fp32": ("fp32", False),
        "project-fp32-channels-last": ("fp32", True),
        "original": ("fp32", False),
    }
    assert set(record["ratios"]) == {
        "project/project-fp32",
        "project/project-fp32-channels-last",
        "project/original",
    }


def test_loader_benchmark_streams_both_loaders(capsys):
    args = loader.get_args_parser().parse_args("--dataset digits --device cpu --workers 0".split())
    loader.main(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {line["loader"] for line in lines} == {"gpu", "torchvision"}
    assert all(line["images_per_s"] > 0 for line in lines)


@requires_counted_torch
def test_dispatch_counts_the_extra_operations_of_spectral_normalisation(tmp_path):
    out = tmp_path / "ops.json"
    args = dispatch.get_args_parser().parse_args(f"--model wide_resnet -mod --json {out}".split())
    plain, normalised = dispatch.main(args)
    assert plain["sn_layers"] == 0 and normalised["sn_layers"] == 25
    extra = normalised["operations_per_step"] - plain["operations_per_step"]
    assert 0 < extra <= 24 * normalised["sn_layers"]
    assert json.loads(out.read_text())[1]["operations_per_step"] == normalised["operations_per_step"]


def test_ensemble_benchmark_times_stacked_and_one_after_another(tmp_path):
    out = tmp_path / "ensemble.json"
    args = ensemble_modes.get_args_parser().parse_args(
        f"--model lenet --members 2 --batch-size 4 --steps 1 --warmup 1 --repeats 1 --no-gpu --json {out}".split()
    )
    result = ensemble_modes.main(args)
    assert json.loads(out.read_text()) == result
    assert result["stacked_images_per_s"] > 0 and result["sequential_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["stacked_images_per_s"] / result["sequential_images_per_s"], rel=1e-2
    )
    with pytest.raises(SystemExit, match="cannot be stacked"):
        ensemble_modes.main(
            ensemble_modes.get_args_parser().parse_args(
                "--model resnet18 -sn --base-width 2 --no-gpu".split()
            )
        )


@pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")
def test_quirk_ties_measures_each_labelled_set_size(data_root, tmp_path, monkeypatch):
    """On the tiny MNIST of the active-learning tests: a LeNet per size, both rankings, the shares in [0, 1].
    Two samples per class give rank-1 covariances, so the densities underflow to exact ties at 20 labels."""
    monkeypatch.setenv("DDU_NO_DOWNLOAD", "1")
    out = tmp_path / "ties.json"
    args = quirk_ties.get_args_parser().parse_args(
        f"--dataset-root {data_root} --model lenet --epochs 1 --samples-per-epoch 64 --max-pool 200 "
        f"--sizes 20,40 --max-validation 50 --max-test 50 --json {out}".split()
    )
    rows = quirk_ties.main(args)
    assert json.loads(out.read_text()) == rows
    assert [r["labelled"] for r in rows] == [20, 40] and [r["pool"] for r in rows] == [160, 140]
    assert rows[0]["zero_share"] == rows[0]["tied_at_min_share"] == 1.0
    for row in rows:
        assert 0.0 < row["tied_at_min_share"] <= 1.0 and row["zero_share"] in (0.0, row["tied_at_min_share"])
        assert len(row["original_picks"]) == len(row["paper_picks"]) == 5 and row["feature_dim"] == 84


def test_gmm_benchmark_runs_both_implementations_in_their_own_processes(tmp_path):
    out = tmp_path / "gmm.json"
    args = gmm.get_args_parser().parse_args(
        f"--shapes 12x5 --train-samples 50 --test-samples 30 --device cpu --threads 1 --json {out}".split()
    )
    gmm.main(args)
    ours, original, comparison = json.loads(out.read_text())
    assert [ours["implementation"], original["implementation"]] == ["ours", "original"]
    # 10 samples per class in 12 dimensions: singular, so a jitter is needed, and the original gets the same.
    assert ours["jitter"] > 0 and original["jitter"] == ours["jitter"]
    for record in (ours, original):
        assert record["fit_s"] > 0 and record["score_s"] > 0 and record["peak_gib"] > 0
        assert record["covariances_gib"] == 5 * 12 * 12 * 8 / 2**30
    # Both compute the same densities up to the covariance's round-off, which this tiny jitter amplifies.
    assert 0 <= comparison["max_relative_difference"] < 0.1


def test_gmm_benchmark_alternates_which_implementation_runs_first(monkeypatch):
    calls = []

    def fake_spawn(args, name, dim, classes, jitter, save):
        calls.append((name, jitter))
        sizes = {
            "fit_s": 1.0,
            "score_s": None,
            "peak_gib": 1.0,
            "peak_above_data_gib": 0.5,
            "covariances_gib": 0.1,
        }
        return {"implementation": name, "features": dim, "classes": classes, "jitter": 0.5, **sizes}

    monkeypatch.setattr(gmm, "_spawn", fake_spawn)
    gmm.main(gmm.get_args_parser().parse_args("--shapes 4x2 --repeats 3 --no-score".split()))
    # The original always gets the jitter ours chose; from the second repeat on it goes first every other time.
    assert calls == [("ours", None), ("original", 0.5), ("original", 0.5), ("ours", 0.5)] + [
        ("ours", 0.5),
        ("original", 0.5),
    ]


def test_gmm_benchmark_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gmm.main(gmm.get_args_parser().parse_args(["--shapes", "2048by100"]))
    assert exit_info.value.code != 0 and "FEATURESxCLASSES" in capsys.readouterr().err
