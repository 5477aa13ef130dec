"""Shared pieces of the DICOM writers (SEG, SR, Secondary Capture).

Every output object is a new series in the source's study, carries the source's patient and study
modules unchanged, and names this library twice: in the device attributes (Manufacturer "backmice_vision")
and in a Contributing Equipment item with purpose "Processing Equipment" (DCM 109102), as the IHE AI
Results profile asks of AI results.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackmiceError, InvalidDicom

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult, ImageSeries

MANUFACTURER = "backmice_vision"
_TEMPORARY_RE = re.compile(r"\..+\.[0-9]+\.tmp")
SERIES_NUMBERS = {"seg": 9101, "sr": 9102, "sc": 9103, "segprob": 9104}
SERIES_DESCRIPTIONS = {
    "seg": "backmice SEG",
    "sr": "backmice SR",
    "sc": "backmice overlay",
    "segprob": "backmice nodule probability",
}
# Type 2 attributes highdicom copies from the source; absent ones are written empty.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


def software_version() -> str:
    from .. import __version__

    return __version__


def model_name(result: DetectionResult) -> str:
    """The algorithm's model name: ``backmice_vision <model id>``."""
    return f"{MANUFACTURER} {result.model_id}"[:64]


def source_datasets(series: ImageSeries) -> list[Dataset]:
    """One header dataset (no PixelData) per source instance, in the order of their first frame.

    Uses ``series.datasets``; when the series has none, the headers are read from ``FrameSource.path``.
    The datasets are shallow copies with missing Type 2 patient/study attributes added empty.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    out: list[Dataset] = []
    seen: set[str] = set()
    for src in series.sources:
        if src.sop_instance_uid in seen:
            continue
        seen.add(src.sop_instance_uid)
        ds = by_uid.get(src.sop_instance_uid)
        if ds is None:
            ds = _read_header(src.path)
        ds = copy.copy(ds)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


def _read_header(path: str | None) -> Dataset:
    import pydicom

    if path is None:
        raise BackmiceError("the series has neither source datasets nor file paths to reference")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InvalidDicom(f"cannot re-read source header ({type(exc).__name__})", path) from exc


def algorithm_identification(result: DetectionResult) -> Any:
    """highdicom AlgorithmIdentificationSequence: name, version, family "Artificial Intelligence"."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER,
        family=codes.cid7162.ArtificialIntelligence,
        version=f"{software_version()} model {result.model_id} {result.model_version}"[:64],
    )


def add_provenance(ds: Dataset, result: DetectionResult) -> None:
    """Append the Contributing Equipment item (Processing Equipment, DCM 109102) for this algorithm."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence

    code = DicomDataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item = DicomDataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = model_name(result)
    item.SoftwareVersions = [software_version(), f"{result.model_id} {result.model_version}"[:64]]
    item.ContributionDescription = "Automated detection of episacroiliac lipoma (back mouse)"
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    existing = list(ds.get("ContributingEquipmentSequence", []))
    ds.ContributingEquipmentSequence = Sequence([*existing, item])


def laterality(result: DetectionResult) -> str:
    """``"L"`` or ``"R"`` when every finding (or, without findings, the source header) has one side."""
    sides = {n.side for n in result.nodules}
    if sides == {"left"}:
        return "L"
    if sides == {"right"}:
        return "R"
    if not sides:
        header = result.series.datasets[0] if result.series.datasets else None
        for key in ("ImageLaterality", "Laterality"):
            value = str(header.get(key, "") if header is not None else "")
            if value in ("L", "R"):
                return value
    return ""


def temporary_path(path: Path) -> Path:
    """The name a file is written under before ``os.replace`` puts it at ``path``: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the :func:`temporary_path` files directly in ``folder`` (left by a killed writer; call it
    only where no other process is writing); returns what was deleted."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY_RE.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_atomic(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot write DICOM file ({exc.strerror or exc})", path) from exc
    return path


def write_text_atomic(text: str | bytes, path: Path) -> Path:
    """Write text or bytes to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackmiceError(f"cannot write file ({exc.strerror or exc})", path) from exc
    return path
