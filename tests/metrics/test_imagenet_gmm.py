"""DDU at ImageNet's size: the GMM benchmark's 2,048 x 1,000 case and its extrapolation (benchmarks/gmm.py)."""

from __future__ import annotations

import pytest

from benchmarks import gmm


def test_the_work_counts_give_the_issue_s_figures_at_imagenet_size():
    flops = gmm.work_flops(2048, 1000, 1_281_167, 52_000)
    assert flops["score_solve"] == pytest.approx(2.18e14, rel=0.01)  # "about 2e14 flops of triangular solves"
    assert flops["fit_factor"] == pytest.approx(1000 * 2048**3 / 3)


def test_predicted_seconds_are_work_over_rate():
    flops = {
        "fit_scatter": 4.0,
        "fit_factor": 6.0,
        "score_scatter": 4.0,
        "score_factor": 6.0,
        "score_solve": 10.0,
    }
    rates = {"scatter": 2.0, "factor": 3.0, "solve": 5.0}
    assert gmm.predict_seconds(flops, rates) == {"fit_s": 4.0, "score_s": 6.0}


@pytest.mark.slow
def test_a_chunked_run_records_its_chunk_and_the_extrapolation(tmp_path):
    out = tmp_path / "gmm.json"
    args = gmm.get_args_parser().parse_args(
        "--shapes 8x6 --implementations ours --train-samples 60 --test-samples 10 --class-chunk 4 "
        f"--extrapolate-to 600,100 --json {out}".split()
    )
    (record,) = gmm.main(args)
    assert record["class_chunk"] == 4
    assert record["extrapolated_to"] == {"train_samples": 600, "test_samples": 100}
    assert record["extrapolated"]["score_s"] > record["predicted_here"]["score_s"] > 0


@pytest.mark.parametrize("flags", [["--extrapolate-to", "12"], ["--class-chunk", "0"]])
def test_bad_benchmark_flags_end_in_one_sentence(flags, capsys):
    with pytest.raises(SystemExit):
        gmm.main(gmm.get_args_parser().parse_args(["--shapes", "4x2", *flags]))
    assert capsys.readouterr().err.strip().endswith(".")
