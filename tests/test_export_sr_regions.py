"""SR key-frame groups: the nodule outline (TID 1410) and the longest diameter line (TID 1501) on the
source frame, beside the SEG-referencing volumetric group; dciodvfy-clean; OHIF-displayable structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from export_factory import make_result, mr, us
from skimage.draw import polygon
from test_export_seg import dciodvfy_errors

from backmice_vision.export import save_result
from backmice_vision.export.sr import key_frame_geometry
from backmice_vision.types import DetectionResult

IMAGE_REGION = "111030"  # DCM "Image Region"
TRACKING_UID = "112040"  # DCM "Tracking Unique Identifier"
LONG_AXIS = "103339001"  # SCT "Long axis"


def _groups(sr: pydicom.Dataset) -> list[Any]:
    (measurements,) = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements.ContentSequence)


def _item(group: Any, code: str) -> Any:
    items = [c for c in group.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == code]
    return items[0] if items else None


def _outline_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a DICOM (column, row) polyline (0\\0 = top-left pixel corner)."""
    rr, cc = polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape)
    out = np.zeros(shape, bool)
    out[rr, cc] = True
    return out


def _check(result: DetectionResult, path: Path) -> None:
    assert dciodvfy_errors(path) == [], path
    sr = pydicom.dcmread(path)
    groups = _groups(sr)
    n = len(result.nodules)
    assert len(groups) == 3 * n  # volumetric (SEG) + outline + longest diameter per nodule
    for s, nodule in enumerate(result.nodules):
        volumetric, outline_group, line_group = groups[3 * s : 3 * s + 3]
        assert _item(volumetric, "121191") is not None  # the SEG reference stays
        uid = _item(volumetric, TRACKING_UID).UID
        assert uid == _item(outline_group, TRACKING_UID).UID  # the same finding: OHIF merges the two
        assert uid != _item(line_group, TRACKING_UID).UID  # drawn on its own
        geo = key_frame_geometry(result, nodule)
        assert geo is not None
        source = result.series.sources[geo.k]
        region = _item(outline_group, IMAGE_REGION)
        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.sop_instance_uid
        multiframe = int(result.series.datasets[0].get("NumberOfFrames", 1) or 1) > 1
        assert ref.get("ReferencedFrameNumber") == (source.frame_number if multiframe else None)
        points = np.asarray(region.GraphicData, np.float64).reshape(-1, 2)
        assert np.allclose(points[0], points[-1])  # closed
        # the outline encloses the key-frame mask: pixel-level agreement, at the source place
        k0, i0, j0, _, i1, j1 = nodule.bbox
        truth = np.zeros(result.series.shape[1:], bool)
        truth[i0:i1, j0:j1] = nodule.mask[geo.k - k0]
        drawn = _outline_mask(points, truth.shape)
        assert (drawn & truth).sum() / (drawn | truth).sum() > 0.85
        # the longest diameter: its NUM equals the line's length in mm and the nodule's long axis (US)
        (num,) = [c for c in line_group.ContentSequence if c.ValueType == "NUM"]
        assert num.ConceptNameCodeSequence[0].CodeValue == LONG_AXIS
        line = num.ContentSequence[0]
        assert line.RelationshipType == "INFERRED FROM" and line.GraphicType == "POLYLINE"
        assert (
            line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == source.sop_instance_uid
        )
        ends = np.asarray(line.GraphicData, np.float64).reshape(2, 2)
        dy, dx = (
            result.series.regions[0].spacing_mm
            if result.series.modality == "US"
            else (
                result.series.spacing_mm[1],  # type: ignore[index]
                result.series.spacing_mm[2],  # type: ignore[index]
            )
        )
        length = float(np.hypot((ends[1, 0] - ends[0, 0]) * dx, (ends[1, 1] - ends[0, 1]) * dy))
        value = float(num.MeasuredValueSequence[0].NumericValue)
        assert length == pytest.approx(value, abs=0.01)
        assert value == pytest.approx(geo.longest_mm, abs=1e-3)
        assert drawn[int(np.mean(ends[:, 1])), int(np.mean(ends[:, 0]))]  # the line crosses the nodule
    assert not [g for g in groups if _item(g, TRACKING_UID) is None]


@pytest.mark.parametrize("n_frames", [1, 3])
def test_us_key_frame_outline_and_line(tmp_path: Path, n_frames: int) -> None:
    result = make_result(us(tmp_path / "in.dcm", n_frames), 2)
    written = save_result(result, tmp_path / "out", ["sr"])
    _check(result, written["sr"][0])
    for nodule in result.nodules:  # in ultrasound the key-frame diameter is the reported long axis
        geo = key_frame_geometry(result, nodule)
        assert geo is not None and geo.longest_mm is not None


def test_us_long_axis_equals_the_findings_measure(tmp_path: Path) -> None:
    """The line's length is measured like ``findings`` measures US nodules (principal-axis extent)."""
    from backmice_vision.findings import principal_extents_mm

    result = make_result(us(tmp_path / "in.dcm", 1), 1)
    nodule = result.nodules[0]
    geo = key_frame_geometry(result, nodule)
    rows, cols = np.nonzero(nodule.mask[0])
    expected = principal_extents_mm(np.stack([rows * 0.1, cols * 0.1], 1), np.diag([0.1, 0.1]))[0]
    assert geo is not None and geo.longest_mm == pytest.approx(expected)


def test_mr_key_slice_groups(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 2)
    written = save_result(result, tmp_path / "out", ["sr"])
    _check(result, written["sr"][0])


def test_a_nodule_cut_by_the_image_edge_is_marked_in_the_sr(tmp_path: Path) -> None:
    """Its sizes are lower bounds: "Cut by image edge" Yes beside its measurements, No for a whole one."""
    import dataclasses

    import highdicom as hd

    result = make_result(us(tmp_path / "in.dcm", 1), 2)
    result.nodules[1] = dataclasses.replace(result.nodules[1], truncated=True)
    path = save_result(result, tmp_path / "out", ["sr"])["sr"][0]
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    cut = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        evaluations = {e.name.value: e.value.meaning for e in group.get_qualitative_evaluations()}
        cut[group.tracking_identifier] = evaluations["CUT_BY_EDGE"]
    assert cut == {"nodule 1": "No", "nodule 2": "Yes"}
    lines = [g for g in _groups(pydicom.dcmread(path)) if "longest diameter" in _item(g, "112039").TextValue]
    assert [_item(g, "CUT_BY_EDGE").ConceptCodeSequence[0].CodeMeaning for g in lines] == ["No", "Yes"]


def test_uncalibrated_us_has_the_outline_only(tmp_path: Path) -> None:
    result = make_result(us(tmp_path / "in.dcm", 1, calibrated=False), 1)
    path = save_result(result, tmp_path / "out", ["sr"])["sr"][0]
    assert dciodvfy_errors(path) == []
    groups = _groups(pydicom.dcmread(path))
    assert len(groups) == 2 and _item(groups[1], IMAGE_REGION) is not None
    assert not [c for g in groups for c in g.ContentSequence if c.ValueType == "NUM" and "mm" in str(c)]


def test_no_findings_keeps_the_series_group(tmp_path: Path) -> None:
    result = make_result(us(tmp_path / "in.dcm", 1), 0)
    path = save_result(result, tmp_path / "out", ["sr"])["sr"][0]
    (group,) = _groups(pydicom.dcmread(path))
    finding = [
        c
        for c in group.ContentSequence
        if c.ValueType == "CODE" and c.ConceptCodeSequence[0].CodeMeaning == "Absent"
    ]
    assert finding
