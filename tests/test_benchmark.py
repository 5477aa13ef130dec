"""The benchmark: a ``--quick`` run completes and reports every figure (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import benchmark  # benchmarks/benchmark.py (pytest pythonpath)
import numpy as np
import pytest

from backmice_vision.errors import ConfigError

EXPECTED_SERIES_FIGURES = (
    "decode_s", "preprocess_s", "model_s", "postprocess_s", "write_s", "total_s", "model_load_s",
    "peak_rss_mb", "pydicom_decode_s", "bare_forward_s", "reference_s", "overhead_ratio", "reference_ratio",
)  # fmt: skip


def test_bench_parser_has_the_options() -> None:
    ns = benchmark.build_parser().parse_args(["--quick", "--json", "x.json", "--threads", "1"])
    assert ns.quick and ns.json == Path("x.json") and ns.threads == 1 and ns.formats == "all"


def test_bad_formats_are_a_config_error() -> None:
    ns = benchmark.build_parser().parse_args(["--formats", "png,tiff"])
    with pytest.raises(ConfigError, match="tiff"):
        benchmark.run_bench(ns)


def test_checks_compare_against_targets() -> None:
    assert benchmark._check("overhead_ratio", 1.2)["pass"]
    assert not benchmark._check("overhead_ratio", 1.31)["pass"]
    assert benchmark._check("reference_ratio", 1.5)["pass"]
    assert not benchmark._check("mr_peak_rss_gb", 1.5)["pass"]


class _Nod:
    def __init__(self, c: tuple[float, float, float], confidence: float = 0.9) -> None:
        self.center_voxel = c
        self.confidence = confidence


def test_compare_findings_matches_centres_and_masks() -> None:
    probs = np.zeros((5, 2, 8, 8), np.float32)
    probs[0] = 1.0
    ref = probs.copy()
    probs[:, 0, 2:4, 2:4] = 0.0
    probs[3, 0, 2:4, 2:4] = 1.0  # 4 nodule pixels in ours
    ref[:, 0, 2:4, 2:5] = 0.0
    ref[3, 0, 2:4, 2:5] = 1.0  # 6 in the reference, 4 shared
    got = benchmark.compare_findings([_Nod((0, 2.5, 2.5))], [_Nod((0, 2.5, 3.0))], probs, ref)
    assert got["same_findings"] and got["matched"] == 1
    assert got["max_centre_distance_mm"] == pytest.approx(0.5)
    assert got["nodule_dice"] == pytest.approx(2 * 4 / 10)
    assert got["nodule_pixels_ours"] == 4 and got["nodule_pixels_reference"] == 6
    far = benchmark.compare_findings([_Nod((0, 2, 2))], [_Nod((1, 7, 7))], probs, ref)
    assert not far["same_findings"] and far["matched"] == 0
    # an extra low-confidence fragment is counted but does not make the findings differ
    extra = benchmark.compare_findings([_Nod((0, 2, 2))], [_Nod((0, 2, 2)), _Nod((1, 7, 7), 0.1)], probs, ref)
    assert extra["same_findings"] and (extra["ours"], extra["reference"], extra["matched"]) == (1, 2, 1)
    assert benchmark.compare_findings([_Nod((0, 2, 2))], [_Nod((9, 2, 3))], probs, ref, in_plane=True)[
        "same_findings"
    ]
    # US source pixels are small: 8 pixels at 0.1 mm are 0.8 mm, the same finding; at 1 mm they are not
    fine = (1.0, 0.1, 0.1)
    near = benchmark.compare_findings([_Nod((0, 2, 2))], [_Nod((0, 2, 10))], probs, ref, spacing_mm=fine)
    assert near["same_findings"] and near["max_centre_distance_mm"] == pytest.approx(0.8)
    assert not benchmark.compare_findings([_Nod((0, 2, 2))], [_Nod((0, 2, 10))], probs, ref)["same_findings"]
    empty = benchmark.compare_findings([], [], ref, ref)
    assert empty["same_findings"] and empty["nodule_dice"] == 1.0 and empty["nodule_prob_mean_abs_diff"] == 0


@pytest.mark.slow
def test_quick_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    ns = benchmark.build_parser().parse_args(
        ["--quick", "--threads", "1", "--data", str(tmp_path / "data"), "--json", str(out)]
    )
    assert benchmark.run_bench(ns) == 0
    results = json.loads(out.read_text())
    figures = results["figures"]
    expected = {f"{kind}.{name}" for kind in benchmark.SERIES_KINDS for name in EXPECTED_SERIES_FIGURES}
    rates = ("series_per_min", "steady_series_per_min")
    expected |= {f"workers.{r}_{k}" for r in benchmark.BATCH_LABELS for k in (*rates, "cores_busy")}
    ratios = ("wall_ratio", "ratio", "ratio_vs_all_cores", "ratio_vs_sequential", "mr_overhead_ratio")
    ratios += ("machine_ratio",)
    expected |= {f"workers.{r}" for r in ratios}
    expected |= {"cli.help_s", "cli.bad_arg_s"}
    assert set(figures) == expected
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v > 0)}
    assert not bad
    # CPU seconds include the worker processes (joined children; the parent alone stays near 0.1 core)
    assert 0.5 < figures["workers.w2_cores_busy"] <= 1.1 * results["machine"]["cores"]
    assert results["series"]["mr"]["shape"] == [20, 384, 384]
    assert results["series"]["us_cine"]["shape"] == [30, 600, 800]
    assert results["series"]["us_single"]["shape"] == [1, 600, 800]
    assert {c["name"] for c in results["checks"]} == set(benchmark.TARGETS)
    assert all(isinstance(c["pass"], bool) for c in results["checks"])
    printed = capsys.readouterr().out
    assert "PASS" in printed or "FAIL" in printed
    assert "overhead_ratio" in printed and "series/min" in printed


def test_train_precision_measures_both_precisions_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train_precision  # benchmarks/train_precision.py

    out = tmp_path / "precision.json"
    args = ["--batch", "2", "--patch", "64", "--steps", "1", "--rounds", "1", "--json", str(out)]
    assert train_precision.main(args) == 0
    r = json.loads(out.read_text())
    assert r["network"] == "UNet" and r["threads"] == 1 and r["device"] == "cpu"
    for key in ("train_step_s", "inference_s"):
        assert set(r[key]) == {"float32", "bfloat16"}
        assert all(math.isfinite(v) and v > 0 for v in r[key].values())
    assert math.isclose(r["train_ratio"], r["train_step_s"]["float32"] / r["train_step_s"]["bfloat16"])
    printed = capsys.readouterr().out
    assert "float32 / bfloat16" in printed and f"{r['train_ratio']:.2f}" in printed
    assert train_precision.main(["--steps", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert train_precision.main(["--model", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
