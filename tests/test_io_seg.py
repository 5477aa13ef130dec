"""The one SEG reader (backmice_vision.io.seg.read_seg): BINARY, FRACTIONAL and LABELMAP SEGs written by
the project's builder, read back onto the source grid; one-line errors on every mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_factory import make_result, mr, us

from backmice_vision.errors import InvalidDicom
from backmice_vision.export.seg import build_probability_seg, build_seg, probability_planes, segment_masks
from backmice_vision.export.sr import build_sr
from backmice_vision.fileio import save_atomic
from backmice_vision.io.seg import read_seg
from backmice_vision.types import ImageSeries

LABELS = ["nodule 1", "nodule 2", "fascia defect"]


def _expected(result) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    masks = segment_masks(result)
    return {label: masks[..., s] for s, label in enumerate(LABELS)}


@pytest.mark.parametrize("kind", ["BINARY", "LABELMAP"])
def test_mr_seg_reads_back_onto_the_source_grid(tmp_path: Path, kind: str) -> None:
    result = make_result(mr(tmp_path / "mr"), 2)
    path = save_atomic(build_seg(result, segmentation_type=kind), tmp_path / "seg.dcm")
    got = read_seg(path, result.series)
    assert set(LABELS) <= set(got)
    for label, mask in _expected(result).items():
        assert np.array_equal(got[label], mask), label
    # frames follow the referenced UIDs, not the SEG's frame order
    flipped = ImageSeries(**{**result.series.__dict__, "sources": result.series.sources[::-1]})
    assert np.array_equal(read_seg(path, flipped, ["Nodule 1"])["nodule 1"], got["nodule 1"][::-1])
    assert read_seg(path, result.series, ["fat"]) == {}


def test_ultrasound_cine_seg_without_frame_of_reference(tmp_path: Path) -> None:
    result = make_result(us(tmp_path / "us.dcm", 3), 2)
    path = save_atomic(build_seg(result), tmp_path / "seg.dcm")
    got = read_seg(path, result.series, LABELS)
    for label, mask in _expected(result).items():
        assert np.array_equal(got[label], mask), label


def test_fractional_seg_is_thresholded_at_half_the_maximum(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 2)
    path = save_atomic(build_probability_seg(result), tmp_path / "prob.dcm")
    got = read_seg(path, result.series)["nodule probability"]
    assert got.any() and np.array_equal(got, probability_planes(result)[..., 0] > 127.5)


def test_mismatches_are_one_line_errors(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 1)
    seg = build_seg(result)
    path = save_atomic(seg, tmp_path / "seg.dcm")
    other = make_result(mr(tmp_path / "other", rows=30), 1).series
    with pytest.raises(InvalidDicom, match=r"seg\.dcm: SEG frames are \(40, 36\), the series \(30, 36\)"):
        read_seg(path, other)
    same_grid = make_result(mr(tmp_path / "same"), 1).series
    with pytest.raises(InvalidDicom, match="references an image outside the series"):
        read_seg(path, same_grid)
    sr = save_atomic(build_sr(result, seg), tmp_path / "sr.dcm")
    with pytest.raises(InvalidDicom, match="not a BINARY, FRACTIONAL or LABELMAP DICOM SEG"):
        read_seg(sr, result.series)
    del seg.PerFrameFunctionalGroupsSequence[-1]
    short = save_atomic(seg, tmp_path / "short.dcm")
    with pytest.raises(InvalidDicom, match=r"SEG has \d+ frames but \d+ per-frame items"):
        read_seg(short, result.series)
    with pytest.raises(InvalidDicom) as info:
        read_seg(tmp_path / "missing.dcm", result.series)
    assert "\n" not in str(info.value) and "cannot read the SEG" in str(info.value)
