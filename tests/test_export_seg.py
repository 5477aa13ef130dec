"""DICOM SEG export: dciodvfy-clean, re-read with highdicom, pixels equal the masks per source frame."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from export_factory import FLIPPED, OBLIQUE, make_result, mr, us

from backmice_vision.export.seg import segment_masks, write_seg
from backmice_vision.findings import nodule_full_mask
from backmice_vision.labels import DEFECT


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.lower().startswith("error")]


def reprojected(path: Path, result) -> np.ndarray:  # type: ignore[no-untyped-def]
    """bool (n, rows, cols, segments) of the SEG at each source frame of ``result.series``."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    n, rows, cols = result.series.shape
    n_seg = len(result.nodules) + 1
    out = np.zeros((n, rows, cols, n_seg), bool)
    src = result.series.sources
    multiframe = len({s.sop_instance_uid for s in src}) == 1 and n > 1
    for k, frame in enumerate(src):
        if multiframe:
            px = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=frame.sop_instance_uid,
                source_frame_numbers=[frame.frame_number],
                combine_segments=False,
                segment_numbers=list(range(1, n_seg + 1)),
                assert_missing_frames_are_empty=True,
            )
        else:
            px = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[frame.sop_instance_uid],
                combine_segments=False,
                segment_numbers=list(range(1, n_seg + 1)),
                assert_missing_frames_are_empty=True,
            )
        out[k] = px[0] > 0
    return out


@pytest.mark.parametrize("kind", ["oblique", "flipped", "us_offset", "us_cine"])
def test_seg_valid_and_pixel_aligned(tmp_path: Path, kind: str) -> None:
    if kind == "oblique":
        series = mr(tmp_path / "in", OBLIQUE)
    elif kind == "flipped":
        series = mr(tmp_path / "in", FLIPPED)
    else:
        series = us(tmp_path / "in.dcm", 1 if kind == "us_offset" else 4)
    result = make_result(series)
    path = write_seg(result, tmp_path / "out" / "seg.dcm")
    assert dciodvfy_errors(path) == []
    got = reprojected(path, result)
    for s, nodule in enumerate(result.nodules):
        truth = nodule_full_mask(nodule, series.shape)
        assert truth.sum() > 0
        assert np.array_equal(got[..., s], truth)
    assert np.array_equal(got[..., -1], result.label_map == DEFECT)
    assert np.array_equal(got, segment_masks(result))

    import pydicom

    ds = pydicom.dcmread(path)
    src = series.datasets[0]
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.SeriesInstanceUID != series.series_instance_uid
    assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
    assert ds.SeriesDescription == "backmice SEG"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["nodule 1", "nodule 2", "fascia defect"]
    assert any(item.Manufacturer == "backmice_vision" for item in ds.ContributingEquipmentSequence)
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "backmice_vision"
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


@pytest.mark.parametrize("kind", ["mr", "us"])
def test_seg_without_findings_is_valid_and_empty(tmp_path: Path, kind: str) -> None:
    series = mr(tmp_path / "in") if kind == "mr" else us(tmp_path / "in.dcm", 3)
    result = make_result(series, 0)
    result.label_map[:] = 0
    path = write_seg(result, tmp_path / "seg.dcm", series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.5")
    assert dciodvfy_errors(path) == []
    import pydicom

    ds = pydicom.dcmread(path)
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("1.2.3.4", "1.2.3.5")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["fascia defect"]
    assert not reprojected(path, result).any()
