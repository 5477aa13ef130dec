"""Secondary Capture (SC Image Storage, RGB) of the overlays, one instance per frame with a finding.

The pixels are :func:`backmice_vision.render.render_overlay` at the source resolution, so an SC pixel
``(i, j)`` is the source pixel ``(i, j)`` of frame ``k``; each instance cites its source instance (and
frame) in the Source Image Sequence. Laterality is set when every finding lies on one side (dciodvfy wants
it, Type 2C). The burned-in text holds no patient identifier (BurnedInAnnotation "NO").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import save_atomic
from ..render import orientation_letters, overlay_frames, render_overlay
from .dicom_common import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    contributing_equipment,
    laterality,
    model_name,
    software_version,
    source_datasets,
    source_path,
    writer_guard,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult
    from . import ResultUIDs


def patient_orientation(result: DetectionResult, source: Dataset) -> tuple[str, str]:
    """(row direction, column direction): from the MR affine, else the source's Patient Orientation."""
    affine = result.series.affine
    if affine is not None:
        return orientation_letters(np.asarray(affine)[:3, 2]), orientation_letters(np.asarray(affine)[:3, 1])
    value = list(source.get("PatientOrientation", []) or [])
    return (str(value[0]), str(value[1])) if len(value) == 2 else ("", "")


def build_sc(
    result: DetectionResult,
    frame_index: int,
    *,
    series_instance_uid: str,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """The SC of frame ``frame_index`` (``k``); all instances of one result share ``series_instance_uid``."""
    with writer_guard("Secondary Capture", source_path(result)):
        return _build_sc(result, frame_index, series_instance_uid, sop_instance_uid, instance_number)


def _build_sc(
    result: DetectionResult,
    frame_index: int,
    series_instance_uid: str,
    sop_instance_uid: str | None,
    instance_number: int,
) -> Dataset:
    import highdicom as hd
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence

    series = result.series
    frame = series.sources[frame_index]
    source = next(ds for ds in source_datasets(series) if str(ds.SOPInstanceUID) == frame.sop_instance_uid)
    pixels = render_overlay(result, frame_index)
    orientation = patient_orientation(result, source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        laterality=laterality(result) or None,
        # highdicom takes single letters and requires a value; replaced below (empty when unknown)
        patient_orientation=(orientation[0][0], orientation[1][0]) if all(orientation) else ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=contributing_equipment(result),
    )
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C: unknown side
    sc.PatientOrientation = list(orientation) if all(orientation) else []  # empty when unknown
    ref = DicomDataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = frame.sop_class_uid, frame.sop_instance_uid
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = frame.frame_number
    sc.SourceImageSequence = Sequence([ref])
    sc.SeriesDescription = SERIES_DESCRIPTIONS["sc"]
    sc.ImageComments = f"overlay of source frame index {frame_index}"
    sc.ManufacturerModelName = model_name(result)
    sc.SoftwareVersions = software_version()
    sc.BurnedInAnnotation = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    return sc


def write_sc(result: DetectionResult, out_dir: Path, *, uids: ResultUIDs | None = None) -> list[Path]:
    """One SC file ``sc_k<k>.dcm`` per :func:`~backmice_vision.render.overlay_frames` frame.

    Without findings one SC of the middle frame is written, so a viewer that shows neither SEG nor SR
    still shows that the series was analysed (the SR and report say "no finding"). ``uids("sc", i)``
    gives the (series, SOP instance) UIDs of instance number ``i + 1``; new ones when ``None``.
    """
    from pydicom.uid import generate_uid

    series_uid = str(generate_uid())
    paths = []
    frames = overlay_frames(result) or [result.series.shape[0] // 2]
    for number, k in enumerate(frames, start=1):
        sop_uid = None
        if uids is not None:
            series_uid, sop_uid = uids("sc", number - 1)
        sc = build_sc(
            result, k, series_instance_uid=series_uid, sop_instance_uid=sop_uid, instance_number=number
        )
        paths.append(save_atomic(sc, out_dir / f"sc_k{k:04d}.dcm"))
    return paths
