"""SEG option LABELMAP (Supplement 243, RLE): the same segments as BINARY in one label image per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from export_factory import make_result, mr, us
from test_export_seg import dciodvfy_errors

from backmice_vision.errors import BackmiceError
from backmice_vision.export.seg import build_seg
from backmice_vision.fileio import save_atomic

LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"


def test_labelmap_holds_the_binary_segments(tmp_path: Path) -> None:
    import highdicom as hd

    result = make_result(mr(tmp_path / "mr"), 2)
    binary = save_atomic(build_seg(result), tmp_path / "binary.dcm")
    labelmap = save_atomic(build_seg(result, segmentation_type="labelmap"), tmp_path / "labelmap.dcm")
    ds = pydicom.dcmread(labelmap)
    assert ds.SOPClassUID == LABEL_MAP_SEGMENTATION and ds.SegmentationType == "LABELMAP"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    labels = {s.SegmentNumber: s.SegmentLabel for s in ds.SegmentSequence}
    assert labels == {0: "Background", 1: "nodule 1", 2: "nodule 2", 3: "fascia defect"}
    uids = [s.sop_instance_uid for s in result.series.sources]
    planes = [
        hd.seg.segread(p).get_pixels_by_source_instance(
            uids, ignore_spatial_locations=True, assert_missing_frames_are_empty=True, combine_segments=True
        )
        for p in (binary, labelmap)
    ]
    assert np.array_equal(planes[0], planes[1]) and set(np.unique(planes[0])) == {0, 1, 2, 3}
    assert dciodvfy_errors(binary) == []  # the default stays clean; Debian's dicom3tools (2022) predates
    # the Label Map Segmentation IOD (2024) and cannot check it


def test_labelmap_refusals(tmp_path: Path) -> None:
    with pytest.raises(BackmiceError, match="needs sources with a Frame of Reference"):
        build_seg(make_result(us(tmp_path / "us.dcm", 1), 1), segmentation_type="LABELMAP")
    result = make_result(mr(tmp_path / "mr"), 1)
    with pytest.raises(BackmiceError, match="BINARY or LABELMAP"):
        build_seg(result, segmentation_type="FRACTIONAL")
    nodule = result.nodules[0]
    k0, i0, j0, _, _, _ = nodule.bbox
    result.label_map[k0, i0 : i0 + nodule.mask.shape[1], j0 : j0 + nodule.mask.shape[2]][nodule.mask[0]] = 4
    with pytest.raises(BackmiceError, match="disjoint segments"):
        build_seg(result, segmentation_type="LABELMAP")
