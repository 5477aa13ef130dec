"""One pipeline (issue 14): every entry point runs a series through backmice_vision.pipeline, with one error
policy and one detector cache; modality profiles; typed thresholds (real DICOM inputs)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from node_support import us_cine_jpeg
from pydicom.encaps import encapsulate

import backmice_vision as bmv
from backmice_vision.errors import ConfigError, UnsupportedSeries
from backmice_vision.findings import DEFAULT_THRESHOLDS, Thresholds, extract_nodules, load_thresholds
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.pipeline import DetectorSpec, Outcome, get_detector, run_series
from backmice_vision.profiles import PROFILES, profile_for
from backmice_vision.types import FrameSource, ImageSeries

CPU = DetectorSpec.of(device="cpu")  # the shipped models; none is loaded before a series decodes


@pytest.fixture
def bad_cine(tmp_path: Path) -> Path:
    """A folder with one JPEG baseline ultrasound cine whose headers are sound and whose 6 JPEG fragments
    are not JPEG: it is found and planned, and fails when decoded."""
    folder = tmp_path / "archive" / "bad"
    folder.mkdir(parents=True)
    path = folder / "cine.dcm"
    us_cine_jpeg(path, frames=6)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(256)) * 8] * 6)  # a JPEG start, then no JPEG
    ds.save_as(path)
    return folder


def test_every_entry_point_gives_the_same_outcome_for_a_bad_series(
    bad_cine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backmice_vision.cli import main
    from backmice_vision.node.worker import PipelineSettings, run_job

    path = bad_cine / "cine.dcm"
    api = bmv.run_series(path, CPU, tmp_path / "api")
    assert isinstance(api, Outcome) and (api.status, api.stage) == ("failed", "load")
    assert api.error.startswith(f"{path}: cannot decode pixel data") and "\n" not in api.error
    assert api.outputs == {} and not (tmp_path / "api").exists()  # nothing written
    assert "NODE-US" not in json.dumps(api.to_dict())  # no patient identifier in the record
    assert run_series(bad_cine, CPU).error == api.error  # the folder of the series: the same

    # backmice batch (one JSON line per series)
    assert (
        main(["batch", str(bad_cine.parent), "--out", str(tmp_path / "batch"), "--device", "cpu", "--jsonl"])
        == 1
    )
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert (line["status"], line["error"]) == (api.status, api.error)

    # backmice detect
    assert main(["detect", str(path), "--out", str(tmp_path / "detect"), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == f"backmice: error: {api.error}"
    assert not (tmp_path / "detect").exists()

    # the DICOM node's worker (the detector pipeline, as `backmice serve` runs it)
    paths, error = run_job(str(bad_cine), str(tmp_path / "node"), PipelineSettings(pipeline="detector"))
    assert (paths, error) == ([], api.error)
    assert not (tmp_path / "node").exists()


def test_batch_and_api_run_the_same_pipeline_on_a_good_series(tmp_path: Path) -> None:
    """A good series: the API's outputs are those the batch lists for it, and its findings count."""
    from model_factory import tiny_bundle, write_mr_with_seg

    from backmice_vision.batch import run_batch

    write_mr_with_seg(tmp_path / "in" / "study", seed=3)
    bundle = tiny_bundle(tmp_path / "tiny_mr", "MR")
    spec = DetectorSpec.of(bundle, "cpu")
    ref = next(r for r in bmv.find_series(tmp_path / "in") if r.modality == "MR")
    api = run_series(ref, spec, tmp_path / "api", ["json", "seg"])
    assert api.ok and api.error == "" and api.modality == "MR" and api.model.startswith("tiny_mr:")
    assert sorted(p.name for p in api.paths) == ["report.json", "seg.dcm"]
    assert {"load", "model", "detect", "write", "total"} <= set(api.timings_s)
    report = run_batch(tmp_path / "in", tmp_path / "batch", model=str(bundle), device="cpu",
                       progress="quiet", formats=["json", "seg"])  # fmt: skip
    (done,) = [o for o in report.outcomes if o.status == "done"]
    assert sorted(Path(p).name for p in done.outputs) == ["report.json", "seg.dcm"]
    assert len(done.findings) == api.n_findings and done.series_probability == api.series_probability


def test_the_detector_cache_is_keyed_on_the_spec() -> None:
    a = get_detector(DetectorSpec.of(device="cpu", thresholds={"nodule_threshold": 0.4}))
    assert get_detector(DetectorSpec.of(device="cpu", thresholds={"nodule_threshold": 0.4})) is a
    assert a.thresholds.nodule_threshold == 0.4
    other = get_detector(DetectorSpec.of(device="cpu"))
    assert other is not a and other.thresholds == load_thresholds()
    assert get_detector(other) is other  # a detector given is used as it is


def _series(modality: str) -> ImageSeries:
    n = 3
    return ImageSeries(
        modality=cast(Any, modality),
        pixels=np.zeros((n, 16, 16), np.float32),
        spacing_mm=(3.0, 1.0, 1.0),
        sources=[FrameSource(f"1.2.3.{k}", "1.2.840.10008.5.1.4.1.1.2") for k in range(n)],
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        affine=np.eye(4),
    )


def test_an_unknown_modality_is_one_line_error_never_the_ultrasound_path(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from backmice_vision.model.detector import Detector
    from backmice_vision.model.inference import make_tiles

    ct = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    outcome = run_series(ct, CPU, tmp_path / "out")
    assert (outcome.status, outcome.stage) == ("failed", "load")
    assert outcome.error == f"{ct}: modality CT is not analysed (MR and US only)"
    assert set(PROFILES) == {"MR", "US"} and profile_for("us").geometry == "regions"
    assert profile_for("MR").is_volume and profile_for("MR").bundle == "backmice_mr"
    with pytest.raises(UnsupportedSeries, match=r"^modality CT is not analysed \(MR and US only\)$"):
        profile_for("CT")
    # a CT series made by hand reaches no stage's ultrasound branch
    series = _series("CT")
    probs = np.zeros((len(MODEL_CLASSES), *series.shape), np.float32)
    with pytest.raises(UnsupportedSeries, match="modality CT"):
        extract_nodules(series, probs)
    with pytest.raises(UnsupportedSeries, match="modality CT"):
        Detector(device="cpu").detect(series)
    us = dataclasses.replace(profile_for("US").default_preprocessing(), modality="CT")
    with pytest.raises(UnsupportedSeries, match="modality CT"):
        make_tiles(series, us)


def test_a_misspelt_threshold_is_an_error_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backmice_vision.cli import main
    from backmice_vision.model.detector import Detector

    with pytest.raises(ConfigError) as info:
        Detector(device="cpu", thresholds={"nodule_treshold": 0.3})
    assert str(info.value) == (
        "Detector(thresholds=...): unknown threshold 'nodule_treshold' (did you mean 'nodule_threshold'?)"
    )
    series = _series("MR")
    probs = np.zeros((len(MODEL_CLASSES), *series.shape), np.float32)
    with pytest.raises(ConfigError, match="unknown threshold 'min_fat_contxt'"):
        extract_nodules(series, probs, thresholds={"min_fat_contxt": 0.0})
    with pytest.raises(ConfigError, match="max_aspect must be a number"):
        Thresholds.from_mapping({"max_aspect": "wide"})
    cfg = tmp_path / "inference.yaml"
    cfg.write_text("thresholds:\n  confidence_treshold: 0.4\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}: unknown threshold 'confidence_treshold'"):
        load_thresholds(cfg)
    code = main(
        ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--threshold", "min_fat_contxt=0"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "backmice: error: --threshold: unknown threshold 'min_fat_contxt' (did you mean 'min_fat_context'?)"
    )
    # the record is typed and frozen; the default operating point is configs/inference.yaml's
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_THRESHOLDS.nodule_threshold = 0.1  # type: ignore[misc]
    assert isinstance(load_thresholds(), Thresholds) and isinstance(DEFAULT_THRESHOLDS, Thresholds)
    assert load_thresholds().replace({"min_cine_frames": 3})["min_cine_frames"] == 3.0
