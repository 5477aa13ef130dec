"""Every MR and US file in pydicom's bundled test data loads with the geometry its header states;
the deliberately broken ones fail with a one-line BackmiceError."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from backmice_vision.errors import BackmiceError, InvalidDicom
from backmice_vision.io import load_series

BROKEN = {"MR_truncated.dcm"}


def _mr_us_files() -> list[str]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            wanted = ds.get("Modality") in ("MR", "US") and "Rows" in ds
            # single-file series only (the dicomdirtests folders are tested elsewhere)
            if wanted and os.path.basename(path) not in BROKEN and "dicomdirtests" not in path:
                out.append(path)
    return out


FILES = _mr_us_files()


def test_there_are_files_to_test() -> None:
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_loads_with_header_geometry(path: str) -> None:
    ds = pydicom.dcmread(path)
    s = load_series(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    assert s.shape == (frames, ds.Rows, ds.Columns) and s.pixels.dtype == np.float32
    assert s.modality == ds.Modality and len(s.sources) == frames
    colour = ds.SamplesPerPixel == 3 or ds.PhotometricInterpretation == "PALETTE COLOR"
    assert (s.rgb is not None) == colour
    if ds.Modality == "MR":
        ps = [float(v) for v in ds.PixelSpacing]
        assert s.spacing_mm[1:] == pytest.approx(ps)
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_allclose(s.pixels[0], expected, rtol=1e-6)
        np.testing.assert_allclose(s.affine[:3, 3], [float(v) for v in ds.ImagePositionPatient])
    else:
        assert s.spacing_mm is None
        tissue = [
            r for r in ds.get("SequenceOfUltrasoundRegions", [])
            if r.RegionSpatialFormat == 1 and r.RegionDataType == 1
        ]  # fmt: skip
        assert len(s.regions) == max(1, len(tissue))
        for reg, item in zip(s.regions, tissue, strict=False):
            assert reg.spacing_mm == pytest.approx((item.PhysicalDeltaY * 10, item.PhysicalDeltaX * 10))
            assert reg.box[:2] == (item.RegionLocationMinY0, item.RegionLocationMinX0)
        lossy = ds.file_meta.TransferSyntaxUID in (JPEGBaseline8Bit, JPEGExtended12Bit)
        if colour and ds.PhotometricInterpretation in ("YBR_FULL", "YBR_FULL_422"):
            # the luma is the stored Y channel (RGB rounding and clipping do not touch it); lossy JPEG
            # decoders (libjpeg-turbo here, pydicom's default pylibjpeg there) may differ by 1 (IDCT)
            y = pydicom.pixels.pixel_array(ds, as_rgb=False)[..., 0].reshape(s.pixels.shape)
            assert np.abs(s.pixels - y.astype(np.float32)).max() <= (1.0 if lossy else 0.0)
        elif colour:
            luma = s.rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            np.testing.assert_allclose(s.pixels, luma, atol=1e-3)
        if colour and ds.PhotometricInterpretation != "PALETTE COLOR":
            # rgb agrees with pydicom's own RGB decode (YBR converted; a lossy JPEG's chroma may differ
            # by up to 3 between IDCTs, a wrong conversion by tens)
            ref = ds.pixel_array.reshape(s.rgb.shape)
            assert np.abs(ref.astype(int) - s.rgb).max() <= (4 if lossy else 1)


def test_palette_example_region(pydicom_testfile) -> None:
    s = load_series(pydicom_testfile("examples_palette.dcm"))
    # region 0: MaxX1 800 on an 800-column frame is clipped; reference pixel 36 rows into the region
    assert s.regions[0].box == (60, 120, 350, 800)
    assert s.regions[0].depth_offset_mm == pytest.approx(-36 * 0.2622878766196998)
    assert any("clipped" in p for p in s.problems)
    assert int(s.rgb.max()) <= 255 and s.rgb.std() > 10


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MR_truncated.dcm", "8192 bytes.* but the file holds 8130 bytes of pixel data"),
        ("badVR.dcm", "cannot parse DICOM header"),
        ("no_meta.dcm", "not a DICOM file"),
        ("ExplVR_LitEndNoMeta.dcm", "no image instances"),  # RTPLAN without file meta
        ("CT_small.dcm", "modality CT is not analysed"),
        ("liver_1frame.dcm", "no image instances"),  # a SEG
        ("rtplan_truncated.dcm", "no image instances"),
    ],
)
def test_broken_or_unsupported_files(pydicom_testfile, name: str, match: str) -> None:
    path = pydicom_testfile(name)
    with pytest.raises(BackmiceError, match=match) as info:
        load_series(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))


def test_huge_header_refused_before_decoding(pydicom_testfile, tmp_path) -> None:
    ds = pydicom.dcmread(pydicom_testfile("examples_jpeg2k.dcm"))
    ds.Rows = ds.Columns = 65535  # 4.3e9 pixels claimed in the one fragment (more frames than fragments
    # are refused earlier: tests/test_bad_input.py)
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(BackmiceError, match="more than the limit of 2048 MiB"):
        load_series(tmp_path / "huge.dcm")
    with pytest.raises(BackmiceError, match="limit of 0 MiB"):
        load_series(pydicom_testfile("MR_small.dcm"), max_bytes=1000)


def test_mismatched_codestream_is_invalid(pydicom_testfile, tmp_path) -> None:
    ds = pydicom.dcmread(pydicom_testfile("MR_small_jp2klossless.dcm"))
    ds.Rows = 32  # header smaller than the J2K codestream
    ds.save_as(tmp_path / "m.dcm")
    with pytest.raises(InvalidDicom):
        load_series(tmp_path / "m.dcm")


def test_lossy_jpeg_is_decoded_by_pillow_first(pydicom_testfile) -> None:
    """8-bit lossy JPEG goes to Pillow (libjpeg-turbo, ~4x faster here than pylibjpeg): the luma equals
    Pillow's Y plane exactly; on this file pylibjpeg's IDCT differs from it by 1 in about 1 % of pixels."""
    path = pydicom_testfile("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    s = load_series(path)
    by = {
        p: pydicom.pixels.pixel_array(ds, decoding_plugin=p, as_rgb=False)[..., 0]
        for p in ("pillow", "pylibjpeg")
    }
    assert np.array_equal(s.pixels, by["pillow"].astype(np.float32))
    assert not np.array_equal(by["pillow"], by["pylibjpeg"])  # the two decoders are told apart here
