"""find_series over messy folders, `backmice info`, and damaged files (only BackmiceError escapes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import mr_series, us_image, us_region
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backmice_vision.errors import BackmiceError
from backmice_vision.io import find_series, load_series


def _messy_folder(root: Path, pydicom_testfile) -> Path:
    mr_series(root / "study" / "mr", n=4)
    us_image(
        root / "study" / "us" / "cine.dcm",
        np.zeros((3, 10, 12), np.uint8),
        regions=[us_region((0, 0, 10, 12), (0.2, 0.2))],
    )
    (root / "notes.txt").write_text("not dicom at all\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    corrupt = root / "study" / "mr" / "corrupt.dcm"
    corrupt.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + bytes(20))
    shutil.copy(pydicom_testfile("liver_1frame.dcm"), root / "seg.dcm")  # a SEG: an output, not an input
    shutil.copy(pydicom_testfile("DICOMDIR"), root / "DICOMDIR")
    return root


def test_find_series_groups_and_reports(tmp_path: Path, pydicom_testfile) -> None:
    root = _messy_folder(tmp_path, pydicom_testfile)
    errors: list[tuple[Path, str]] = []
    refs = find_series(root, errors)
    assert sorted((r.modality, r.n_instances, r.n_frames) for r in refs) == [("MR", 4, 4), ("US", 1, 3)]
    assert [(p.name, reason) for p, reason in errors] == [
        ("corrupt.dcm", "file meta has no TransferSyntaxUID")
    ]
    every = find_series(root, include_all=True)
    seg = [r for r in every if r.modality == "SEG"]
    assert len(every) == 3 and len(seg) == 1 and seg[0].problems == ["not an image series (SEG)"]
    mr = next(r for r in refs if r.modality == "MR")
    assert (mr.rows, mr.columns) == (6, 7) and load_series(mr).shape == (4, 6, 7)
    # a folder with one image series plus a SEG and junk loads, noting the unreadable file
    shutil.copy(pydicom_testfile("liver_1frame.dcm"), root / "study" / "mr" / "seg.dcm")
    s = load_series(root / "study" / "mr")
    assert s.shape == (4, 6, 7) and "1 unreadable files in the folder ignored" in s.problems


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    mr_series(tmp_path, n=3, seed=1)
    mr_series(tmp_path, n=2, seed=2)
    refs = find_series(tmp_path)
    assert sorted(r.n_instances for r in refs) == [2, 3]


def test_a_modality_that_is_no_code_string_is_not_repeated(tmp_path: Path) -> None:
    """Modality reaches messages and batch reports: a value that is not a DICOM code string (free text,
    a name, escape codes) is reported as "?", never echoed."""
    import pydicom

    (path, *_) = mr_series(tmp_path, n=1)
    ds = pydicom.dcmread(path)
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):  # pydicom warns and keeps it
        ds.Modality = "DOE^JANE\x1b[2J"
    ds.save_as(path)
    (ref,) = find_series(tmp_path, include_all=True)
    assert ref.modality == "?" and ref.problems == ["modality ? is not analysed"]
    assert find_series(tmp_path) == []


def test_backmice_info(tmp_path: Path, pydicom_testfile) -> None:
    root = _messy_folder(tmp_path, pydicom_testfile)
    proc = subprocess.run(
        [sys.executable, "-m", "backmice_vision", "info", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stderr
    mr = [ln for ln in lines if ln.startswith("MR ")]
    us = [ln for ln in lines if ln.startswith("US ")]
    assert len(mr) == 1 and "4×6×7" in mr[0] and "spacing 2×0.5×0.75 mm" in mr[0] and "regions -" in mr[0]
    assert len(us) == 1 and "3×10×12" in us[0] and "spacing 0.2×0.2 mm regions 1" in us[0]
    assert any(ln.startswith("SEG ") and "not an image series" in ln for ln in lines)
    assert [ln for ln in lines if ln.startswith("unreadable:")] == [
        f"unreadable: {root / 'study' / 'mr' / 'corrupt.dcm'}: file meta has no TransferSyntaxUID"
    ]
    assert "Phantom" not in proc.stdout and "TEST0001" not in proc.stdout  # no patient identifiers
    clean = tmp_path / "clean"
    mr_series(clean, n=2)
    ok = subprocess.run(
        [sys.executable, "-m", "backmice_vision", "info", str(clean)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 1


SEEDS: dict[str, bytes] = {}


def _seed_files(pydicom_testfile) -> dict[str, bytes]:
    if not SEEDS:
        for name in ("MR_small.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm", "examples_palette.dcm"):
            SEEDS[name] = pydicom_testfile(name).read_bytes()
    return SEEDS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, 3),
    op=st.sampled_from(["truncate", "flip", "length"]),
    where=st.floats(0.0, 1.0),
    value=st.integers(0, 255),
)
def test_damaged_files_only_raise_backmice_errors(
    tmp_path: Path, pydicom_testfile, which, op, where, value
) -> None:
    name, data = sorted(_seed_files(pydicom_testfile).items())[which]
    buf = bytearray(data)
    pos = int(where * (len(buf) - 1))
    if op == "truncate":
        buf = buf[: max(pos, 1)]
    elif op == "flip":
        buf[pos] ^= value or 0xFF
    else:  # overwrite 4 bytes with a large length-like value
        buf[pos : pos + 4] = (0xFFFF0000 + value).to_bytes(4, "little")
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / name
    path.write_bytes(bytes(buf))
    errors: list[tuple[Path, str]] = []
    try:
        find_series(folder, errors)
        load_series(path)
    except BackmiceError as exc:
        assert "\n" not in str(exc)
