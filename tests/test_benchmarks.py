"""The benchmarks run end to end on tiny CPU settings.

They are meant for a GPU machine, where device time is scarce and a crash costs a whole lease; these runs
make sure each script works and writes what `benchmarks/gpu_check.sh` reads back. No timing is asserted.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import dispatch, loader, throughput, train_throughput

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
    assert all(r["images_per_s"] > 0 for r in rows)


def test_training_throughput_compares_the_project_with_the_original_pipeline(tmp_path):
    out = tmp_path / "train_throughput.json"
    args = train_throughput.get_args_parser().parse_args(
        f"--dataset digits --model lenet --steps 2 --warmup 1 --no-gpu --workers 0 --json {out}".split()
    )
    train_throughput.main(args)
    record = json.loads(out.read_text())
    assert [r["name"] for r in record["results"]] == ["project", "original"]
    assert record["results"][1]["loader"] == "torchvision" and record["results"][1]["precision"] == "fp32"
    assert record["ratio"] > 0 and record["hardware"].startswith("CPU")


def test_loader_benchmark_streams_both_loaders(capsys):
    args = loader.get_args_parser().parse_args("--dataset digits --device cpu --workers 0".split())
    loader.main(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {line["loader"] for line in lines} == {"gpu", "torchvision"}
    assert all(line["images_per_s"] > 0 for line in lines)


def test_dispatch_counts_the_extra_operations_of_spectral_normalisation(tmp_path):
    out = tmp_path / "ops.json"
    args = dispatch.get_args_parser().parse_args(f"--model wide_resnet -mod --json {out}".split())
    plain, normalised = dispatch.main(args)
    assert plain["sn_layers"] == 0 and normalised["sn_layers"] == 25
    extra = normalised["operations_per_step"] - plain["operations_per_step"]
    assert 0 < extra <= 24 * normalised["sn_layers"]
    assert json.loads(out.read_text())[1]["operations_per_step"] == normalised["operations_per_step"]
