"""Shared pieces of the DICOM writers (SEG, SR, Secondary Capture).

Every output object is a new series in the source's study, carries the source's patient and study
modules, and names this library twice: in the device attributes (Manufacturer "backmice_vision")
and in a Contributing Equipment item with purpose "Processing Equipment" (DCM 109102), as the IHE AI
Results profile asks of AI results (:func:`contributing_equipment`, handed to highdicom's constructors).

What the writers copy from a source goes through :func:`sanitised` first (real archives hold
non-conformant values that highdicom refuses): top-level text, date, time, name, code-string and number
values that fail pydicom's VR validation are repaired where the intent is unambiguous (``14:04:38`` →
``140438``, ``2004.03.12`` → ``20040312``, lower-case code strings upper-cased, a PatientSex other
than M/F/O emptied, a Specific Character Set term highdicom does not know (empty, ``ISO_IR 6``) dropped,
several values of a single-valued attribute cut to the first, a value the file stored under another VR
than the dictionary's re-read as text of that VR) and otherwise dropped (Type 2 patient/study attributes
kept empty); valid values are kept unchanged. An MR source whose SliceThickness is unreadable gets the
series' slice spacing. Any other failure inside a writer becomes a :class:`BackmiceError`
(:func:`writer_guard`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import BackmiceError, InvalidDicom, UnsupportedSeries

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult, ImageSeries

MANUFACTURER = "backmice_vision"
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


_CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
)
_IDENTITY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_LOOSE_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")  # leading zeros are common in real UIDs: accepted
# Storage classes by (modality, multi-frame, enhanced), for sources whose SOP Class UID is not a storage
# class highdicom knows.
_STORAGE = {
    ("MR", False): "1.2.840.10008.5.1.4.1.1.4",
    ("MR", True): "1.2.840.10008.5.1.4.1.1.4.1",
    ("US", False): "1.2.840.10008.5.1.4.1.1.6.1",
    ("US", True): "1.2.840.10008.5.1.4.1.1.3.1",
}


def software_version() -> str:
    from .. import __version__

    return __version__


def model_name(result: DetectionResult) -> str:
    """The algorithm's model name: ``backmice_vision <model id>``."""
    return f"{MANUFACTURER} {result.model_id}"[:64]


def source_datasets(series: ImageSeries) -> list[Dataset]:
    """One header dataset (no PixelData) per source instance, in the order of their first frame.

    Uses ``series.datasets``; when the series has none, the headers are read from ``FrameSource.path``.
    The datasets are :func:`sanitised` copies (the series' own datasets are left untouched).
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
        clean = sanitised(ds, series.modality, src.path)
        if series.spacing_mm is not None and "SliceThickness" not in clean and "PixelSpacing" in clean:
            clean.SliceThickness = series.spacing_mm[0]  # unreadable or absent: highdicom needs one
        out.append(clean)
    return out


def sanitised(ds: Dataset, modality: str, path: str | None = None) -> Dataset:
    """A copy of ``ds`` (elements shared, the container new) fit to be copied into an output object.

    Top-level values of the VRs pydicom validates are kept when valid, repaired when the intent is clear
    (see the module docstring) and dropped otherwise; missing Type 2 patient/study attributes are added
    empty; a SOP Class UID that is not a storage class highdicom knows is replaced by the standard class
    of ``modality`` (the references then cite the class the pixels were read as). A missing or malformed
    Study/Series/SOP Instance UID cannot be referenced: :class:`InvalidDicom` naming ``path``.
    """
    from highdicom._standard_utils import get_sop_class_iod_map
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset as DicomDataset

    out = DicomDataset()
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]  # converts a raw element: one pydicom cannot read is dropped
        except Exception:
            continue
        try:
            elem = _with_dictionary_vr(elem)
            fixed = _sanitised_element(elem) if elem.VR in _CHECKED_VRS else elem
            if fixed is not None and fixed.VR != "SQ" and fixed.VM > 1 and _single_valued(tag):
                fixed = DataElement(tag, fixed.VR, fixed.value[0])  # VM 1 in the dictionary: the first
        except Exception:
            fixed = None
        if fixed is not None:
            out.add(fixed)
        elif elem.keyword in _TYPE2:
            out.add(DataElement(elem.tag, elem.VR, ""))
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    for keyword in _IDENTITY_UIDS:
        value = str(out.get(keyword, "") or "")
        if len(value) > 64 or not _LOOSE_UID_RE.fullmatch(value):
            raise InvalidDicom(f"{keyword} is not a valid UID: the outputs could not reference it", path)
    if str(out.get("SOPClassUID", "")) not in get_sop_class_iod_map():
        multiframe = "PerFrameFunctionalGroupsSequence" in out or int(out.get("NumberOfFrames", 1) or 1) > 1
        storage = _STORAGE.get((str(modality), multiframe))
        if storage is None:  # never the ultrasound class by default
            raise UnsupportedSeries(f"no storage class for modality {modality} to reference", path)
        out["SOPClassUID"] = DataElement(0x00080016, "UI", storage)  # a new element: ``ds`` keeps its own
    return out


def _single_valued(tag: Any) -> bool:
    from pydicom.datadict import dictionary_VM

    try:
        return bool(dictionary_VM(tag) == "1")
    except KeyError:  # private or unknown: left as it is
        return False


def _with_dictionary_vr(elem: Any) -> Any:
    """``elem`` re-made with its dictionary VR (values as text) when the file gave it another checked VR:
    an explicit-VR file can say IS for the SH StudyID, and highdicom then copies a number into text."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import DataElement
    from pydicom.multival import MultiValue

    try:
        vr = dictionary_VR(elem.tag)
    except KeyError:  # private or unknown
        return elem
    if vr == elem.VR or vr not in _CHECKED_VRS or elem.VR not in _CHECKED_VRS or elem.value is None:
        return elem
    value = elem.value
    text = [str(v) for v in value] if isinstance(value, MultiValue) else str(value)
    return DataElement(elem.tag, vr, text)


def _sanitised_element(elem: Any) -> Any:
    """``elem`` if its values are valid, a repaired copy, or ``None`` when none of its values is valid."""
    from highdicom import SpecificCharacterSetValues
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    vr = elem.VR
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    if elem.keyword == "SpecificCharacterSet":  # terms highdicom refuses ('', ISO_IR 6): default repertoire
        known = {v.value for v in SpecificCharacterSetValues}
        values = [v for v in values if str(v).strip().upper() in known]
        if not values:
            return None
    if not values or values == [None] or values == [""]:
        return elem
    kept: list[Any] = []
    for value in values:
        text = str(value)
        if vr in ("DS", "IS"):  # numbers: kept when finite (pydicom formats them on writing)
            try:
                if math.isfinite(float(text)):
                    kept.append(value)
            except ValueError:
                pass
            continue
        candidate = _repair(vr, text)
        if elem.keyword == "PatientSex" and candidate not in ("M", "F", "O"):
            continue
        try:
            validate_value(vr, candidate, config.RAISE)
        except (ValueError, TypeError):
            continue
        kept.append(value if candidate == text else candidate)
    if elem.VM == len(kept) == len(values) and all(k is v for k, v in zip(kept, values, strict=True)):
        return elem
    if not kept:
        return None
    return DataElement(elem.tag, vr, kept if len(kept) > 1 else kept[0])


def _repair(vr: str, text: str) -> str:
    """The conformant spelling of a common non-conformant one, else ``text`` unchanged."""
    stripped = text.strip()
    if vr == "TM" and re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d{1,6})?)?", stripped):
        return stripped.replace(":", "")  # ACR-NEMA style
    if vr == "DA" and re.fullmatch(r"\d{4}[-./]\d\d[-./]\d\d", stripped):
        return re.sub(r"[-./]", "", stripped)
    if vr == "CS" and stripped.upper() != text:
        return stripped.upper()
    return text


@contextmanager
def writer_guard(what: str, path: str | None) -> Iterator[None]:
    """Turn any failure while building or writing ``what`` into a one-line :class:`BackmiceError`.

    The message names the exception type only (library messages may quote header values); the
    original stays as ``__cause__``.
    """
    try:
        yield
    except (BackmiceError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:
        raise BackmiceError(f"cannot build the {what} ({type(exc).__name__})", path) from exc


def _read_header(path: str | None) -> Dataset:
    import pydicom

    if path is None:
        raise BackmiceError("the series has neither source datasets nor file paths to reference")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InvalidDicom(f"cannot re-read source header ({type(exc).__name__})", path) from exc


def source_path(result: DetectionResult) -> str | None:
    """The file of the result's first source frame (for error messages), if known."""
    sources = result.series.sources
    return sources[0].path if sources else None


def algorithm_identification(result: DetectionResult) -> Any:
    """highdicom AlgorithmIdentificationSequence: name, version, family "Artificial Intelligence"."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER,
        family=codes.cid7162.ArtificialIntelligence,
        version=f"{software_version()} model {result.model_id} {result.model_version}"[:64],
    )


def contributing_equipment(result: DetectionResult) -> list[Any]:
    """The Contributing Equipment of this algorithm (Processing Equipment, DCM 109102), for the
    ``contributing_equipment`` argument of the highdicom constructors (which add the source's acquisition
    equipment before it and highdicom's own item after it)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [
        hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=model_name(result),
            software_versions=[software_version(), f"{result.model_id} {result.model_version}"[:64]],
            contribution_description="Automated detection of episacroiliac lipoma (back mouse)",
        )
    ]


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
