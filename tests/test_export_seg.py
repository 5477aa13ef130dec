"""DICOM SEG export: dciodvfy-clean, re-read with highdicom, pixels equal the masks per source frame."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from export_factory import FLIPPED, OBLIQUE, make_result, mr, us

from backmice_vision.export.seg import build_seg, segment_labels, segment_masks, write_seg
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
    assert ds.SegmentsOverlap == "NO"  # nodules and the defect are disjoint classes
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


def _probability_result(series):  # type: ignore[no-untyped-def]
    """make_result with a graded probability map everywhere (also outside the US region)."""
    result = make_result(series)
    n, rows, cols = series.shape
    k, i, j = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    prob = ((7 * k + 3 * i + 5 * j) % 97 / 96.0).astype(np.float32)
    if n > 1:
        prob[n // 2] = 0.0  # an all-zero frame: omitted from the SEG, re-read as zero
    result.nodule_probability = prob
    return result


def reread_probability(path: Path, result) -> np.ndarray:  # type: ignore[no-untyped-def]
    """float32 (n, rows, cols) of the fractional SEG (values ÷ max) at each source frame of ``result``."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    src = result.series.sources
    multiframe = len({s.sop_instance_uid for s in src}) == 1 and len(src) > 1
    out = np.zeros(result.series.shape, np.float32)
    for k, frame in enumerate(src):
        if multiframe:
            px = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=frame.sop_instance_uid,
                source_frame_numbers=[frame.frame_number],
                segment_numbers=[1],
                assert_missing_frames_are_empty=True,
            )
        else:
            px = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[frame.sop_instance_uid],
                segment_numbers=[1],
                assert_missing_frames_are_empty=True,
            )
        out[k] = px[0, ..., 0]
    return out


@pytest.mark.parametrize("kind", ["oblique", "flipped", "us_offset", "us_cine"])
def test_probability_seg_valid_and_pixel_aligned(tmp_path: Path, kind: str) -> None:
    import pydicom

    from backmice_vision.export.seg import write_probability_seg

    if kind in ("oblique", "flipped"):
        series = mr(tmp_path / "in", OBLIQUE if kind == "oblique" else FLIPPED)
    else:
        series = us(tmp_path / "in.dcm", 1 if kind == "us_offset" else 4)
    result = _probability_result(series)
    path = write_probability_seg(result, tmp_path / "out" / "seg_probability.dcm")
    assert dciodvfy_errors(path) == []

    expected = result.nodule_probability.copy()
    if series.modality == "US":  # nothing outside the analysed tissue region
        r0, c0, r1, c1 = series.regions[0].box
        outside = np.ones(series.shape[1:], bool)
        outside[r0:r1, c0:c1] = False
        expected[:, outside] = 0.0
        assert result.nodule_probability[:, outside].max() > 0.5  # the input did have values there
    got = reread_probability(path, result)
    assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6
    assert np.abs(got - expected).max() > 0  # really quantised, not a copy of the input
    # pixel for pixel: the value gradients run along the right axes in every frame
    assert np.array_equal(np.rint(got * 255), np.rint(expected * 255))

    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    assert ds.MaximumFractionalValue == 255 and ds.BitsAllocated == 8
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["nodule probability"]
    assert ds.SeriesDescription == "backmice nodule probability"
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert [e.Manufacturer for e in ds.ContributingEquipmentSequence].count("backmice_vision") == 1
    assert int(ds.NumberOfFrames) == series.shape[0] - (1 if series.shape[0] > 1 else 0)


def test_probability_seg_all_zero_and_bad_map(tmp_path: Path) -> None:
    from backmice_vision.errors import BackmiceError
    from backmice_vision.export.seg import write_probability_seg

    result = make_result(us(tmp_path / "in.dcm", 3), 0)
    result.nodule_probability[:] = 0.0
    path = write_probability_seg(result, tmp_path / "p.dcm")
    assert dciodvfy_errors(path) == []
    assert not reread_probability(path, result).any()

    result.nodule_probability = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(BackmiceError, match=r"shape \(2, 3, 4\)"):
        write_probability_seg(result, tmp_path / "bad.dcm")
    result.nodule_probability = np.full(result.series.shape, np.nan, np.float32)
    with pytest.raises(BackmiceError, match="non-finite"):
        write_probability_seg(result, tmp_path / "bad.dcm")


def test_segprob_format_is_opt_in(tmp_path: Path) -> None:
    from backmice_vision.errors import ConfigError
    from backmice_vision.export import check_formats, save_result

    assert "segprob" not in check_formats(None)
    assert check_formats(["all"]) == check_formats(None)
    assert check_formats(["all", "segprob"]) == [*check_formats(None), "segprob"]
    with pytest.raises(ConfigError, match="segprb"):
        check_formats(["segprb"])
    result = make_result(mr(tmp_path / "in"))
    written = save_result(result, tmp_path / "out", ["segprob", "json"])
    assert [p.name for p in written["segprob"]] == ["seg_probability.dcm"]
    import json

    assert json.loads(written["json"][0].read_text())["outputs"]["segprob"] == ["seg_probability.dcm"]


@pytest.mark.parametrize("kind", ["oblique", "us_cine"])
def test_label_array_and_stacked_masks_give_the_same_seg(tmp_path: Path, kind: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """build_seg hands highdicom one label array when the segments are disjoint (fast); the frames and
    pixels equal those built from the stacked masks, and overlapping segments fall back to the masks."""
    import highdicom as hd

    from backmice_vision.export import seg as seg_module

    series = mr(tmp_path / "in", OBLIQUE) if kind == "oblique" else us(tmp_path / "in.dcm", 4)
    result = make_result(series)
    labels = segment_labels(result)
    assert labels is not None
    masks = segment_masks(result)
    assert np.array_equal(labels[..., None] == np.arange(1, masks.shape[-1] + 1), masks)
    uids = {"series_instance_uid": hd.UID(), "sop_instance_uid": hd.UID()}
    fast = build_seg(result, **uids)
    monkeypatch.setattr(seg_module, "segment_labels", lambda r: None)
    slow = build_seg(result, **uids)
    assert fast.PixelData == slow.PixelData and fast.NumberOfFrames == slow.NumberOfFrames
    assert fast.PerFrameFunctionalGroupsSequence == slow.PerFrameFunctionalGroupsSequence
    monkeypatch.undo()

    nodule = result.nodules[0]
    assert nodule.mask is not None
    k0, i0, j0 = nodule.bbox[:3]
    k, i, j = (int(v[0]) for v in np.nonzero(nodule.mask))
    result.label_map[k0 + k, i0 + i, j0 + j] = DEFECT  # one pixel in the nodule and the defect
    assert segment_labels(result) is None
    overlapping = build_seg(result, **uids)
    assert overlapping.SegmentsOverlap == "YES"
