"""Ultrasound loading: regions and calibration, colour models, cine, compressed transfer syntaxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import us_frames_rgb, us_image, us_region
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from backmice_vision.errors import UnsupportedSeries
from backmice_vision.io import load_series

LUMA = np.array([0.299, 0.587, 0.114])


def _grey(n: int = 1, rows: int = 20, cols: int = 30) -> np.ndarray:
    i, j = np.mgrid[0:rows, 0:cols]
    return np.stack([(i * 8 + j + 3 * f) % 256 for f in range(n)]).astype(np.uint8)


def test_two_regions_each_with_own_spacing(tmp_path: Path) -> None:
    regions = [
        us_region((2, 1, 18, 14), (0.1, 0.12), ref_y0=0, ref_value_y_cm=0.5),
        us_region((2, 15, 18, 29), (0.2, 0.25)),
        us_region((0, 0, 20, 30), (0.3, 0.3), spatial_format=4, data_type=10),  # waveform: not tissue
    ]
    s = load_series(us_image(tmp_path / "u.dcm", _grey(), regions=regions))
    assert s.modality == "US" and s.spacing_mm is None and s.calibrated
    assert [r.box for r in s.regions] == [(2, 1, 18, 14), (2, 15, 18, 29)]
    assert s.regions[0].spacing_mm == pytest.approx((0.1, 0.12))
    assert s.regions[1].spacing_mm == pytest.approx((0.2, 0.25))
    assert s.regions[0].depth_offset_mm == pytest.approx(5.0) and s.regions[1].depth_offset_mm == 0.0
    assert s.problems == [] and s.rgb is None
    np.testing.assert_array_equal(s.pixels[0], _grey()[0])
    only = load_series(tmp_path / "u.dcm", region=1)
    assert [r.index for r in only.regions] == [1]
    with pytest.raises(UnsupportedSeries, match="no ultrasound region 2"):
        load_series(tmp_path / "u.dcm", region=2)


def test_no_regions_means_unknown_millimetres(tmp_path: Path) -> None:
    s = load_series(us_image(tmp_path / "u.dcm", _grey()))
    assert not s.calibrated and s.spacing_mm is None
    assert [(r.box, r.spacing_mm) for r in s.regions] == [((0, 0, 20, 30), None)]
    assert "no ultrasound calibration: millimetres unknown" in s.problems


def test_monochrome1_inverted(tmp_path: Path) -> None:
    s = load_series(us_image(tmp_path / "u.dcm", _grey(), photometric="MONOCHROME1"))
    np.testing.assert_array_equal(s.pixels[0], 255.0 - _grey()[0])


def test_16bit_greyscale_cine(tmp_path: Path) -> None:
    frames = (_grey(3).astype(np.uint16) * 200).astype(np.uint16)
    s = load_series(us_image(tmp_path / "u.dcm", frames, bits=16))
    assert s.shape == (3, 20, 30)
    np.testing.assert_array_equal(s.pixels, frames)
    assert [src.frame_number for src in s.sources] == [1, 2, 3]


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_kept_and_luma(tmp_path: Path, photometric: str) -> None:
    rgb = us_frames_rgb(2, 16, 24)
    s = load_series(us_image(tmp_path / "u.dcm", rgb, photometric=photometric))
    assert s.rgb is not None and s.rgb.dtype == np.uint8 and s.rgb.shape == (2, 16, 24, 3)
    tol = 0 if photometric == "RGB" else 2  # YBR_FULL round trip rounds
    assert np.abs(s.rgb.astype(int) - rgb).max() <= tol
    np.testing.assert_allclose(s.pixels, rgb @ LUMA, atol=tol + 1e-3)


def test_palette_colour(tmp_path: Path) -> None:
    idx = _grey(2)
    s = load_series(us_image(tmp_path / "u.dcm", idx, photometric="PALETTE COLOR"))
    assert s.rgb is not None
    np.testing.assert_array_equal(s.rgb[..., 0], idx)
    np.testing.assert_array_equal(s.rgb[..., 1], 255 - idx)
    np.testing.assert_array_equal(s.rgb[..., 2], 128)
    np.testing.assert_allclose(s.pixels, s.rgb @ LUMA, atol=1e-3)


def test_jpeg_baseline_cine(tmp_path: Path) -> None:
    rgb = us_frames_rgb(4, 32, 48)
    s = load_series(us_image(tmp_path / "u.dcm", rgb, transfer_syntax=JPEGBaseline8Bit))
    assert s.header["TransferSyntaxUID"] == JPEGBaseline8Bit and s.shape == (4, 32, 48)
    # lossy but RGB (not green YBR): mean error small
    assert np.abs(s.rgb.astype(float) - rgb).mean() < 3.0
    assert np.abs(s.pixels - rgb @ LUMA).mean() < 3.0


def test_rle_cine(tmp_path: Path) -> None:
    frames = _grey(3)
    s = load_series(us_image(tmp_path / "u.dcm", frames, transfer_syntax=RLELossless))
    np.testing.assert_array_equal(s.pixels, frames)


def test_single_frame_files_ordered_by_instance_number(tmp_path: Path) -> None:
    frames = _grey(3)
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    for f, number in enumerate([3, 1, 2]):
        us_image(tmp_path / f"f{f}.dcm", frames[f : f + 1], study_uid=study, series_uid=series, number=number)
    s = load_series(tmp_path)
    np.testing.assert_array_equal(s.pixels, frames[[1, 2, 0]])
    assert [Path(src.path).name for src in s.sources] == ["f1.dcm", "f2.dcm", "f0.dcm"]
