"""Shared, generic fixtures. DICOM builders live in ``tests/dicom_factory.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def pydicom_testfile():
    """``pydicom_testfile(name)``: the path of one of pydicom's bundled test files, or skip.

    Only files already on disk are used (asking pydicom for a missing one tries a download).
    """
    from pydicom.data import get_testdata_files

    on_disk = {os.path.basename(p): p for p in get_testdata_files() if os.path.isfile(p)}

    def get(name: str) -> Path:
        if name not in on_disk:
            pytest.skip(f"pydicom test file {name} not installed")
        return Path(on_disk[name])

    return get


@pytest.fixture
def mr_folder(tmp_path: Path) -> Path:
    """A shuffled 5-slice axial classic MR series in ``tmp_path/mr`` (see ``dicom_factory.mr_series``)."""
    from dicom_factory import mr_series

    folder = tmp_path / "mr"
    mr_series(folder)
    return folder
