"""Bad input that used to get through (issue 14): each is one line of the project's error, and a test.

* headers claiming more frames than the file holds, refused before anything proportional to the claim;
* non-conformant values copied from a source into the outputs (pydicom's big-endian file);
* ``backmice info DIR | head``: a closed stdout ends the command quietly;
* (label placement is tested in tests/test_render.py).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import US_MULTIFRAME_STORAGE, base_dataset, enhanced_mr, mr_series, us_image, us_region
from pydicom.uid import generate_uid

from backmice_vision import find_series, load_series
from backmice_vision.errors import InvalidDicom

HUGE_FRAMES = 2_147_483_647


def _palette_us_claiming(path: Path, frames: int) -> Path:
    """A 65535 × 1 PALETTE COLOR cine (explicit little endian) claiming ``frames`` frames; 2 frames of
    pixel data are present."""
    ds = base_dataset(US_MULTIFRAME_STORAGE, "US", generate_uid(), generate_uid())
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 1, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    idx = np.arange(256, dtype=np.uint16)
    for name in ("Red", "Green", "Blue"):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", (idx * 257).astype("<u2").tobytes())
    ds.PixelData = bytes(2 * 65535)
    ds.save_as(path, enforce_file_format=True)
    return path


def _refused_small(path: Path, match: str) -> None:
    """load_series(path) raises InvalidDicom matching ``match`` with under 5 MB allocated at its peak."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidDicom, match=match) as info:
            load_series(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MB allocated to refuse the file"
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_us_header_claiming_2_billion_frames_is_refused_without_allocating(tmp_path: Path) -> None:
    path = _palette_us_claiming(tmp_path / "claims.dcm", HUGE_FRAMES)
    assert path.stat().st_size < 200_000
    _refused_small(path, r"claims 2147483647 frame\(s\) of 65535×1 .* holds 131070 bytes of pixel data")
    # the folder scan reports it as unreadable instead of listing a 2-billion-frame series
    errors: list[tuple[Path, str]] = []
    assert find_series(tmp_path, errors) == []
    assert [p for p, _ in errors] == [path] and "131070 bytes" in errors[0][1]
    # the same header with the frames it holds loads
    honest = load_series(_palette_us_claiming(tmp_path.parent / f"{tmp_path.name}_two.dcm", 2))
    assert honest.shape == (2, 65535, 1) and honest.rgb is not None


def test_encapsulated_header_claiming_more_frames_than_fragments(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    frames = np.zeros((3, 16, 16), np.uint8)
    path = us_image(
        tmp_path / "rle.dcm",
        frames,
        transfer_syntax=RLELossless,
        regions=[us_region((0, 0, 16, 16), (0.1, 0.1))],
    )
    assert load_series(path).shape == (3, 16, 16)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = HUGE_FRAMES
    ds.save_as(path)
    _refused_small(path, r"claims 2147483647 frame\(s\) but the encapsulated pixel data holds 3 fragment")


def test_mr_headers_claiming_more_than_present(tmp_path: Path) -> None:
    # classic MR claiming 2**31 - 1 frames of 64 × 64 16-bit pixels
    path = pydicom.data.get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = HUGE_FRAMES
    ds.save_as(tmp_path / "mr.dcm")
    _refused_small(tmp_path / "mr.dcm", r"claims 2147483647 frame\(s\) of 64×64 .* holds 8192 bytes")
    # a classic slice whose matrix is inflated to 65535 × 65535 (8 GiB claimed)
    paths = mr_series(tmp_path / "series")
    ds = pydicom.dcmread(paths[0])
    ds.Rows = ds.Columns = 65535
    ds.save_as(paths[0])
    _refused_small(paths[0], r"65535×65535 \(8589672450 bytes\) but the file holds 84 bytes")
    rest = load_series(tmp_path / "series")  # in a folder the file is set aside and the others load
    assert rest.shape == (4, 6, 7) and "1 unreadable files in the folder ignored" in rest.problems
    # an Enhanced MR claiming 2**31 - 1 frames (its functional groups describe 4)
    path = enhanced_mr(tmp_path / "enhanced.dcm", n=4)
    assert load_series(path).shape[0] == 4
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = HUGE_FRAMES
    ds.save_as(path)
    _refused_small(path, r"claims 2147483647 frame\(s\) of 6×7")
