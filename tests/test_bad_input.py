"""Bad input that used to get through (issue 14): each is one line of the project's error, and a test.

* headers claiming more frames than the file holds, refused before anything proportional to the claim;
* non-conformant values copied from a source into the outputs (pydicom's big-endian file);
* ``backmice info DIR | head``: a closed stdout ends the command quietly;
* (label placement is tested in tests/test_render.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.slow
def test_big_endian_source_with_non_conformant_time_is_detected_and_written(tmp_path: Path) -> None:
    import highdicom as hd

    import backmice_vision as bmv

    source = pydicom.data.get_testdata_file("ExplVR_BigEnd.dcm")
    header = pydicom.dcmread(source, stop_before_pixels=True)
    assert (header.StudyDate, header.StudyTime) == (
        "1997.04.24",
        "14:04:38",
    )  # ACR-NEMA: refused by highdicom
    series = load_series(source)
    result = bmv.Detector.from_pretrained(device="cpu").detect(series)
    written = result.save(tmp_path / "out")
    assert {"seg", "sr", "sc"} <= set(written)
    assert series.datasets[0].StudyTime == "14:04:38"  # the series' own header is not edited
    seg = hd.seg.segread(written["seg"][0])
    sr = hd.sr.srread(written["sr"][0])
    sc = pydicom.dcmread(written["sc"][0])
    for ds in (seg, sr, sc):
        assert (ds.StudyDate, ds.StudyTime) == ("19970424", "140438")
        assert ds.StudyInstanceUID == series.study_instance_uid
    assert seg.get_source_image_uids()[0][2] == series.sources[0].sop_instance_uid
    if shutil.which("dciodvfy"):
        for path in [*written["seg"], *written["sr"], *written["sc"]]:
            assert _dciodvfy_errors(path) == [], path.name


def test_sanitised_keeps_valid_repairs_clear_cases_and_drops_the_rest(tmp_path: Path) -> None:
    from backmice_vision.export.dicom_common import sanitised

    path = mr_series(tmp_path / "mr", n=1)[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ds.StudyDate, ds.StudyTime, ds.SeriesTime = "2004.03.12", "10:15", "101500.25"
    ds.PatientSex, ds.PatientBirthDate, ds.ContentDate = "0", "19701345", "20240229"
    ds.PatientName = "A" * 70 + "^B"  # a component over 64 characters
    ds.BodyPartExamined = "lumbar"  # CS in lower case
    ds.SliceThickness = "nan"
    ds.SOPClassUID = "1.2.3"  # not a storage class
    ds.SpecificCharacterSet = "MSO_IR 100"  # a valid code string, but no character set
    ds.AccessionNumber = ["A1", "A2"]  # several values of a single-valued attribute
    clean = sanitised(ds, "MR", str(path))
    assert "SpecificCharacterSet" not in clean and clean.AccessionNumber == "A1"
    assert (clean.StudyDate, clean.StudyTime, clean.SeriesTime) == ("20040312", "1015", "101500.25")
    assert clean.ContentDate == "20240229" and clean.BodyPartExamined == "LUMBAR"
    assert clean.PatientSex == "" and clean.PatientBirthDate == "" and clean.PatientName == ""
    assert "SliceThickness" not in clean and list(clean.ImagePositionPatient) == list(ds.ImagePositionPatient)
    assert clean.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert ds.StudyTime == "10:15" and ds.SOPClassUID == "1.2.3"  # the input is not edited
    ds.SOPInstanceUID = "1.2.abc"
    with pytest.raises(InvalidDicom, match="SOPInstanceUID is not a valid UID") as info:
        sanitised(ds, "MR", str(path))
    assert "1.2.abc" not in str(info.value)


def test_sanitised_fixes_what_the_fuzzer_found_inside_highdicom(tmp_path: Path) -> None:
    """Found by benchmarks/fuzz.py: an empty Specific Character Set (highdicom refuses the term), StudyID
    stored as IS in an explicit-VR file (highdicom copied a number into the SH StudyID: unwritable)."""
    from pydicom.dataelem import DataElement

    from backmice_vision.export.dicom_common import sanitised

    path = mr_series(tmp_path / "mr", n=1)[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ds.SpecificCharacterSet = ["", "ISO_IR 6"]
    ds[0x00200010] = DataElement(0x00200010, "IS", 42)  # StudyID, dictionary VR SH
    clean = sanitised(ds, "MR", str(path))
    assert "SpecificCharacterSet" not in clean
    assert clean["StudyID"].VR == "SH" and clean.StudyID == "42"
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    assert sanitised(ds, "MR", str(path)).SpecificCharacterSet == "ISO 2022 IR 87"


def test_several_values_in_an_identity_uid_is_refused_at_load(tmp_path: Path) -> None:
    """Found by benchmarks/fuzz.py: SOPInstanceUID 1\\2\\3 loaded as "['1', '2', '3']", which no output
    could cite (the SEG builder then failed with a KeyError)."""
    path = mr_series(tmp_path / "mr", n=1)[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ["1.2.3", "1.2.4"]
    ds.save_as(path)
    with pytest.raises(InvalidDicom, match="several values in SOPInstanceUID"):
        load_series(path)


def test_calibration_claiming_an_absurd_field_is_ignored(tmp_path: Path) -> None:
    """Found by benchmarks/fuzz.py: PhysicalDeltaX 7 cm made the model resample a region to 33 m at
    0.2 mm (4 GB); a PixelSpacing of 1e30 mm likewise."""
    region = us_region((0, 0, 40, 50), (0.1, 70.0))  # rows 0.1 mm, columns 70 mm: 3.5 m wide
    series = load_series(us_image(tmp_path / "us.dcm", np.zeros((1, 40, 50), np.uint8), regions=[region]))
    assert series.regions[0].spacing_mm is None and not series.calibrated
    assert any("region 0: calibration of 4 × 3.5e+03 mm (over 500 mm) ignored" in p for p in series.problems)
    good = load_series(
        us_image(
            tmp_path / "ok.dcm",
            np.zeros((1, 40, 50), np.uint8),
            regions=[us_region((0, 0, 40, 50), (0.2, 0.2))],
        )
    )
    assert good.regions[0].spacing_mm == pytest.approx((0.2, 0.2))

    paths = mr_series(tmp_path / "mr")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelSpacing = [1e30, 1e30]
        ds.save_as(p)
    mr = load_series(tmp_path / "mr")
    assert mr.spacing_mm is None and mr.affine is None
    assert "PixelSpacing ignored: field of view over 1000 mm" in mr.problems


@pytest.mark.parametrize("command", [["info"], ["batch", "--dry-run"]])
def test_output_closed_early_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """``backmice info DIR | head -1``: more output than the pipe holds, the reader leaves after a line."""
    mr_series(tmp_path / "in" / "mr", n=2)
    for n in range(700):  # ~140 kB of "unreadable: PATH: REASON" lines, more than a pipe buffers
        bad = tmp_path / "in" / f"damaged_file_with_a_rather_long_name_{n:04d}.dcm"
        bad.write_bytes(bytes(128) + b"DICM" + b"\xff" * 64)
    extra = ["--out", str(tmp_path / "out")] if command[0] == "batch" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "backmice_vision", *command, str(tmp_path / "in"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.strip(), "the command printed nothing"
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert code == 141


def _deflated_file(path: Path, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian MR file whose (zero) pixel data inflates to ``pixel_bytes``,
    compressed in 1 MiB steps so the test never holds the inflated bytes."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows, ds.Columns = 4096, pixel_bytes // 8192
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, ds.file_meta)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(head.getvalue())
        fh.write(
            deflater.compress(
                body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
            )
        )
        zeros = bytes(2**20)
        for _ in range(pixel_bytes // 2**20):
            fh.write(deflater.compress(zeros))
        fh.write(deflater.flush())
    return path


def test_deflate_bomb_and_deflated_claims_are_refused_without_inflating(tmp_path: Path) -> None:
    bomb = _deflated_file(tmp_path / "bomb.dcm", 300 * 2**20)  # 300 MiB of zeros in ~300 kB
    assert bomb.stat().st_size < 2**20
    _refused_small(bomb, "deflated data set inflates past 256 MiB")
    # honest sizes load; a frame count beyond what the stream holds is refused
    small = _deflated_file(tmp_path / "small.dcm", 2**20)
    assert load_series(small).shape == (1, 4096, 128)
    ds = pydicom.dcmread(small)
    ds.NumberOfFrames = HUGE_FRAMES
    ds.save_as(tmp_path / "claims.dcm")
    _refused_small(
        tmp_path / "claims.dcm", r"claims \d+ bytes of pixel data but the deflated data set inflates to"
    )
