"""MR loading: sorting along the slice normal, affine, spacing, duplicates, gaps, stacks, Enhanced MR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import enhanced_mr, mr_series, slice_positions

from backmice_vision.errors import InconsistentSeries
from backmice_vision.io import load_series


def _corner_check(series, orientation, positions, pixel_spacing) -> None:
    """Affine maps (k, i, j) to IPP_k + i·dr·col_cos + j·dc·row_cos (hand-computed from the header)."""
    iop = np.asarray(orientation, float)
    row_cos, col_cos = iop[:3], iop[3:]
    for k, ipp in enumerate(positions):
        for i, j in [(0, 0), (series.shape[1] - 1, 0), (0, series.shape[2] - 1), (2, 3)]:
            want = np.asarray(ipp) + i * pixel_spacing[0] * col_cos + j * pixel_spacing[1] * row_cos
            got = series.affine @ np.array([k, i, j, 1.0])
            np.testing.assert_allclose(got[:3], want, atol=1e-6)


def test_axial_shuffled_files_sorted_by_position(mr_folder: Path) -> None:
    s = load_series(mr_folder)
    assert s.modality == "MR" and s.shape == (5, 6, 7) and s.pixels.dtype == np.float32
    assert s.spacing_mm == pytest.approx((2.0, 0.5, 0.75))
    # slice k holds 1000 k + 7 i + j: sorted along +z despite shuffled InstanceNumbers and names
    np.testing.assert_array_equal(s.pixels[:, 0, 0], [0, 1000, 2000, 3000, 4000])
    assert s.pixels[3, 2, 5] == 3000 + 7 * 2 + 5
    _corner_check(
        s, (1, 0, 0, 0, 1, 0), slice_positions(5, (1, 0, 0, 0, 1, 0), (-10, 20, 30), 2.0), (0.5, 0.75)
    )
    assert s.problems == [] and s.frame_of_reference_uid
    assert [src.frame_number for src in s.sources] == [1] * 5
    assert all("PixelData" not in ds for ds in s.datasets) and len(s.datasets) == 5
    assert s.sources[0].sop_instance_uid == s.datasets[0].SOPInstanceUID
    assert s.header["Modality"] == "MR" and "PatientName" not in s.header


def test_oblique_orientation_affine(tmp_path: Path) -> None:
    a = np.deg2rad(20.0)
    ori = (float(np.cos(a)), float(np.sin(a)), 0.0, 0.0, 0.0, -1.0)  # rows rotated 20°, columns down
    mr_series(
        tmp_path / "s", n=4, orientation=ori, origin=(3.0, -4.0, 50.0), step=3.5, pixel_spacing=(0.9, 0.4)
    )
    s = load_series(tmp_path / "s")
    assert s.spacing_mm == pytest.approx((3.5, 0.9, 0.4))
    _corner_check(s, ori, slice_positions(4, ori, (3.0, -4.0, 50.0), 3.5), (0.9, 0.4))
    normal = np.cross(ori[:3], ori[3:])
    np.testing.assert_allclose(s.affine[:3, 0], 3.5 * normal, atol=1e-6)


def test_flipped_stack_written_against_the_normal(tmp_path: Path) -> None:
    ori = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # normal +z; slices written going down (step < 0)
    positions = slice_positions(5, ori, (0.0, 0.0, 100.0), -2.5)
    mr_series(tmp_path / "s", orientation=ori, positions=positions, seed=3)
    s = load_series(tmp_path / "s")
    # written slice 4 is lowest along the normal, so it comes first
    np.testing.assert_array_equal(s.pixels[:, 0, 0], [4000, 3000, 2000, 1000, 0])
    _corner_check(s, ori, positions[::-1], (0.5, 0.75))
    assert s.spacing_mm == pytest.approx((2.5, 0.5, 0.75))
    assert np.linalg.det(s.affine[:3, :3]) != 0


def test_missing_slice_reported(tmp_path: Path) -> None:
    pos = slice_positions(6, (1, 0, 0, 0, 1, 0), (0, 0, 0), 2.0)
    del pos[3]
    mr_series(tmp_path / "s", positions=pos)
    s = load_series(tmp_path / "s")
    assert s.shape[0] == 5 and s.spacing_mm[0] == pytest.approx(2.0)
    assert any(p.startswith("non-uniform slice spacing") and "1 missing" in p for p in s.problems)


def test_duplicate_positions_dropped(tmp_path: Path) -> None:
    pos = slice_positions(4, (1, 0, 0, 0, 1, 0), (0, 0, 0), 2.0)
    mr_series(tmp_path / "s", positions=[*pos, pos[1]])
    s = load_series(tmp_path / "s")
    assert s.shape[0] == 4 and s.spacing_mm[0] == pytest.approx(2.0)
    assert "dropped 1 duplicate slices at the same position" in s.problems
    assert not any("non-uniform" in p for p in s.problems)


def test_localizer_in_series_is_split_off(tmp_path: Path) -> None:
    paths = mr_series(tmp_path / "s", n=6)
    ds_uid = load_series(paths[0]).series_instance_uid
    study = load_series(paths[0]).study_instance_uid
    localizer = {"rows": 8, "cols": 8, "orientation": (0, 1, 0, 0, 0, -1)}
    mr_series(tmp_path / "s", n=1, study_uid=study, series_uid=ds_uid, seed=9, **localizer)
    s = load_series(tmp_path / "s")
    assert s.shape == (6, 6, 7)
    assert any("ignored 1 of 7 images" in p for p in s.problems)


def test_equal_stacks_are_inconsistent(tmp_path: Path) -> None:
    paths = mr_series(tmp_path / "s", n=3)
    first = load_series(paths[0])
    mr_series(
        tmp_path / "s", n=3, orientation=(0, 1, 0, 0, 0, -1), study_uid=first.study_instance_uid,
        series_uid=first.series_instance_uid, seed=5,
    )  # fmt: skip
    with pytest.raises(InconsistentSeries, match=r"2 stacks .* \(3, 3 images\)"):
        load_series(tmp_path / "s")


def test_rescale_applied(tmp_path: Path) -> None:
    mr_series(tmp_path / "s", n=2, slope=0.5, intercept=-100.0)
    s = load_series(tmp_path / "s")
    assert s.pixels[1, 1, 1] == pytest.approx((1000 + 7 + 1) * 0.5 - 100.0)


def test_enhanced_mr_per_frame_groups(tmp_path: Path) -> None:
    ori = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal
    path = enhanced_mr(tmp_path / "e.dcm", n=4, orientation=ori, origin=(5.0, -20.0, 40.0), step=3.0)
    s = load_series(path)
    assert s.shape == (4, 6, 7) and s.spacing_mm == pytest.approx((3.0, 0.8, 0.6))
    # frames stored in reversed order with slopes 1, 2, 1, 2: output sorted along the normal (+x)
    assert [src.frame_number for src in s.sources] == [4, 3, 2, 1]
    slopes = [1.0, 2.0, 1.0, 2.0][::-1]
    np.testing.assert_allclose(s.pixels[:, 0, 0], [1000 * k * slopes[k] for k in range(4)])
    _corner_check(s, ori, slice_positions(4, ori, (5.0, -20.0, 40.0), 3.0), (0.8, 0.6))
    assert len(s.datasets) == 1 and "PixelData" not in s.datasets[0]


def test_folder_with_two_series_is_refused(tmp_path: Path) -> None:
    mr_series(tmp_path / "a", n=3)
    mr_series(tmp_path / "b", n=2, seed=4)
    with pytest.raises(InconsistentSeries, match=r"2 series found \(MR ×\d, MR ×\d\)"):
        load_series(tmp_path)


def test_file_list_and_single_file(tmp_path: Path) -> None:
    paths = mr_series(tmp_path / "s", n=3)
    assert load_series(list(reversed(paths))).shape == (3, 6, 7)
    single = load_series(paths[1])
    assert single.shape == (1, 6, 7) and single.spacing_mm == pytest.approx((2.0, 0.5, 0.75))


def test_pydicom_mr_projection_series_is_inconsistent(pydicom_testfile) -> None:
    # MR700: 7 radial MIP projections of 1 image each, all at different orientations
    folder = pydicom_testfile("4467").parent
    with pytest.raises(InconsistentSeries, match="7 stacks"):
        load_series(folder)
