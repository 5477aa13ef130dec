"""DICOM writers for the synthetic phantoms: ultrasound, MR, Enhanced MR and the ground-truth SEG.

Every object carries synthetic demographics only (``PHANTOM^<case>``, ``PH<seed>``) and UIDs derived
deterministically from the case seed (:func:`make_uid`), so the same seed gives the same UIDs.

Geometry conventions follow :mod:`backmice_vision.types`:

* Ultrasound frames have no patient coordinates. Each B-mode view is placed in a larger stored frame
  (burned-in text and a depth ruler outside it) and calibrated by one ``SequenceOfUltrasoundRegions``
  item: ``RegionLocationMinX0/MinY0/MaxX1/MaxY1`` is the view's pixel box (inclusive ends),
  ``PhysicalDeltaX/Y`` the column/row spacing in **cm** (units code 3), and the reference pixel
  (``ReferencePixelX0/Y0``, relative to the region's top-left corner) is the centre of the transducer
  face at physical position ``(0 cm, 0 cm)``. No ``PixelSpacing`` is written.
* MR slices are written with ``ImagePositionPatient`` (LPS mm, centre of the first stored pixel),
  ``ImageOrientationPatient`` (row cosine, column cosine) and ``PixelSpacing`` (row spacing, column
  spacing) in mm, exactly as the simulator produced them.

All files are written atomically: to a hidden temporary name in the target folder, then ``os.replace``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from .. import __version__
from ..errors import BackmiceError
from ..export.seg import build_segmentation
from ..fileio import save_atomic
from ..labels import MODEL_CLASSES, tissue_to_class_lut
from ..types import UltrasoundRegion

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
FRAME_TIME_TAG = 0x00181063

MANUFACTURER = "backmice_vision"
MODEL_NAME = "phantom generator"
DEVICE_SERIAL = "PHANTOM-0001"
SEG_ALGORITHM_NAME = "backmice_vision phantom generator"

Photometric = Literal["MONOCHROME2", "RGB", "YBR_FULL_422"]
PHOTOMETRICS: tuple[str, ...] = ("MONOCHROME2", "RGB", "YBR_FULL_422")

_TEXT_GREY = 225
_RULER_GREY = 190
_TEXT_RGB = (236, 226, 150)
_RULER_RGB = (150, 205, 236)


def make_uid(*parts: object) -> str:
    """A ``2.25.<int>`` UID (UUID-derived form) that depends only on ``parts`` (deterministic)."""
    digest = hashlib.sha256("\x1f".join(["backmice_vision.phantom", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big') >> 1}"


def ds_value(value: float) -> float:
    """``value`` rounded to 8 significant digits, so that it fits a DICOM DS (at most 16 characters)."""
    return float(f"{float(value):.8g}")


def _file_name(uid: str) -> str:
    """A random-looking but deterministic file name for an instance UID."""
    return hashlib.sha1(uid.encode()).hexdigest()[:16].upper() + ".dcm"


@dataclass(frozen=True)
class StudyInfo:
    """Synthetic patient and study attributes shared by every object of one case."""

    case: str
    seed: int
    study_instance_uid: str
    frame_of_reference_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS

    @classmethod
    def create(cls, case: str, seed: int, modality: str = "") -> StudyInfo:
        """Deterministic study attributes for ``case`` generated from ``seed``; ``modality`` keeps the
        UIDs of a case's US and MR studies apart (one subject, two studies)."""
        day = _dt.date(2024, 1, 1) + _dt.timedelta(days=seed % 366)
        seconds = 8 * 3600 + (seed * 7919) % (9 * 3600)
        key = (seed, case, modality) if modality else (seed, case)
        return cls(
            case=case,
            seed=seed,
            study_instance_uid=make_uid(*key, "study"),
            frame_of_reference_uid=make_uid(*key, "frame-of-reference"),
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        )


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a case. ``series_instance_uid`` defaults to one derived from the study and number."""

    number: int
    description: str
    series_instance_uid: str = ""

    def uid(self, study: StudyInfo) -> str:
        return self.series_instance_uid or make_uid(study.study_instance_uid, "series", self.number)


# --------------------------------------------------------------------------------------------------
# common modules


def _base_dataset(
    study: StudyInfo, series: SeriesInfo, sop_class: str, sop_uid: str, modality: str, instance: int
) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(make_uid("backmice_vision", "implementation"))
    meta.ImplementationVersionName = f"BACKMICE_{__version__}"[:16]
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time
    # Patient (synthetic)
    ds.PatientName = f"PHANTOM^{study.case}"
    ds.PatientID = f"PH{study.seed}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "NO"
    # General Study
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{study.seed % 100000:05d}"
    ds.AccessionNumber = f"PH{study.seed % 10**8:08d}"
    ds.StudyDescription = "PHANTOM LOWER BACK"
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = series.uid(study)
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    ds.BodyPartExamined = "LSPINE"
    ds.PatientPosition = "PRONE" if modality == "US" else "HFS"
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.SoftwareVersions = __version__
    ds.InstitutionName = "PHANTOM"
    # General Image
    ds.InstanceNumber = instance
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.AcquisitionDateTime = study.study_date + study.study_time
    ds.BurnedInAnnotation = "NO"
    return ds


# --------------------------------------------------------------------------------------------------
# ultrasound


@dataclass(frozen=True)
class UsView:
    """One B-mode view: ``image`` uint8 (rows, cols), ``labels`` uint8 Tissue, ``pixel_mm`` (row, col)."""

    image: np.ndarray
    labels: np.ndarray
    pixel_mm: tuple[float, float]


@dataclass
class UsComposite:
    """Stored ultrasound frames before encoding.

    ``frames`` uint8 (n, R, C) grey image content; ``labels`` uint8 Tissue (n, R, C), the view labels
    placed at each region's box and 0 elsewhere; ``annotation`` uint8 (R, C): 0 none, 1 text, 2 ruler;
    ``regions`` the calibrated boxes (``box`` exclusive ends, ``spacing_mm`` (row, col)).
    """

    frames: np.ndarray
    labels: np.ndarray
    annotation: np.ndarray
    regions: list[UltrasoundRegion]


_TOP = 64  # rows above the image: burned-in text
_RULER_W = 36  # columns right of each view: ruler ticks and labels
_GAP = 24


def compose_us(
    views: Sequence[Sequence[UsView]],
    text_lines: Sequence[str],
    frame_shape: tuple[int, int] = (600, 800),
) -> UsComposite:
    """Place B-mode views inside a larger stored frame with burned-in text and a depth ruler.

    ``views[f][r]`` is region ``r`` of stored frame ``f``; every frame must have the same number of
    regions and region ``r`` the same shape and spacing in all frames. Regions sit side by side (dual
    view when two). The stored frame is ``frame_shape`` (rows, cols), grown to a multiple of 16 when
    the views do not fit.
    """
    if not views or not views[0]:
        raise BackmiceError("compose_us needs at least one frame with one view")
    n_reg = len(views[0])
    shapes = [v.image.shape for v in views[0]]
    for frame in views:
        if len(frame) != n_reg or [v.image.shape for v in frame] != shapes:
            raise BackmiceError("compose_us: all frames need the same region layout")
    need_rows = _TOP + max(s[0] for s in shapes) + 24
    need_cols = sum(s[1] + _RULER_W for s in shapes) + _GAP * (n_reg - 1) + 2 * 24
    rows = max(frame_shape[0], -(-need_rows // 16) * 16)
    cols = max(frame_shape[1], -(-need_cols // 16) * 16)
    col = (cols - (need_cols - 48)) // 2
    regions: list[UltrasoundRegion] = []
    for r, (h, w) in enumerate(shapes):
        box = (_TOP, col, _TOP + h, col + w)
        px = views[0][r].pixel_mm
        regions.append(UltrasoundRegion(index=r, box=box, spacing_mm=(float(px[0]), float(px[1]))))
        col += w + _RULER_W + _GAP
    n = len(views)
    frames = np.zeros((n, rows, cols), np.uint8)
    labels = np.zeros((n, rows, cols), np.uint8)
    for f, frame in enumerate(views):
        for reg, view in zip(regions, frame, strict=True):
            r0, c0, r1, c1 = reg.box
            frames[f, r0:r1, c0:c1] = view.image
            labels[f, r0:r1, c0:c1] = view.labels
    annotation = _draw_annotation((rows, cols), regions, text_lines)
    return UsComposite(frames=frames, labels=labels, annotation=annotation, regions=regions)


def _draw_annotation(
    shape: tuple[int, int], regions: Sequence[UltrasoundRegion], text_lines: Sequence[str]
) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    text = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(text)
    for i, line in enumerate(text_lines[:4]):
        draw.text((12, 6 + 14 * i), line, fill=255, font=font)
    ruler = Image.new("L", (shape[1], shape[0]), 0)
    rdraw = ImageDraw.Draw(ruler)
    for reg in regions:
        assert reg.spacing_mm is not None
        r0, _, r1, c1 = reg.box
        x = c1 + 4
        rdraw.line([(x, r0), (x, r1 - 1)], fill=255)
        depth_mm = (r1 - r0) * reg.spacing_mm[0]
        for mm in range(0, int(depth_mm) + 1, 5):
            y = r0 + round(mm / reg.spacing_mm[0])
            if y >= r1:
                break
            major = mm % 10 == 0
            rdraw.line([(x, y), (x + (8 if major else 4), y)], fill=255)
            if major and mm:
                draw.text((x + 11, y - 6), f"{mm // 10}", fill=255, font=font)
    ann = np.zeros(shape, np.uint8)
    ann[np.asarray(ruler) > 127] = 2
    ann[np.asarray(text) > 127] = 1
    return ann


def _render_us(comp: UsComposite, photometric: str) -> np.ndarray:
    """uint8 (n, R, C) for MONOCHROME2, (n, R, C, 3) RGB otherwise (JPEG encoding happens later)."""
    text = comp.annotation == 1
    ruler = comp.annotation == 2
    if photometric == "MONOCHROME2":
        out = comp.frames.copy()
        out[:, text] = _TEXT_GREY
        out[:, ruler] = _RULER_GREY
        return out
    out = np.repeat(comp.frames[..., None], 3, axis=-1)
    out[:, text] = _TEXT_RGB
    out[:, ruler] = _RULER_RGB
    return out


def _jpeg_frames(rgb: np.ndarray, quality: int = 90) -> list[bytes]:
    from PIL import Image

    frames = []
    for frame in rgb:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality, subsampling=1)
        frames.append(buf.getvalue())
    return frames


def _us_region_item(reg: UltrasoundRegion, transducer_mhz: float) -> Dataset:
    assert reg.spacing_mm is not None
    r0, c0, r1, c1 = reg.box
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2-D tissue or flow
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0 = c0
    item.RegionLocationMinY0 = r0
    item.RegionLocationMaxX1 = c1 - 1
    item.RegionLocationMaxY1 = r1 - 1
    item.ReferencePixelX0 = (c1 - c0) // 2
    item.ReferencePixelY0 = 0
    item.ReferencePixelPhysicalValueX = 0.0
    item.ReferencePixelPhysicalValueY = 0.0
    item.PhysicalUnitsXDirection = 3  # cm
    item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = float(reg.spacing_mm[1]) / 10.0
    item.PhysicalDeltaY = float(reg.spacing_mm[0]) / 10.0
    item.TransducerFrequency = round(transducer_mhz * 1000)  # kHz
    return item


def write_us_series(
    folder: Path,
    study: StudyInfo,
    series: SeriesInfo,
    comp: UsComposite,
    photometric: str = "MONOCHROME2",
    multiframe: bool = False,
    frame_time_ms: float = 40.0,
    transducer_mhz: float = 12.0,
    jpeg_quality: int = 90,
) -> list[Dataset]:
    """Write an ultrasound series; returns the written datasets in frame order.

    ``multiframe=False``: one US Image Storage file per stored frame. ``multiframe=True``: one US
    Multi-frame Image Storage file (cine) with ``FrameTime`` ``frame_time_ms``. ``photometric`` is
    MONOCHROME2 or RGB (uncompressed) or YBR_FULL_422 (JPEG baseline at ``jpeg_quality``, 4:2:2).
    """
    if photometric not in PHOTOMETRICS:
        raise BackmiceError(f"unknown photometric interpretation {photometric!r}")
    pixels = _render_us(comp, photometric)
    n = pixels.shape[0]
    chunks = [pixels] if multiframe else [pixels[i : i + 1] for i in range(n)]
    sop_class = US_MULTIFRAME_STORAGE if multiframe else US_IMAGE_STORAGE
    datasets: list[Dataset] = []
    for idx, chunk in enumerate(chunks, start=1):
        sop_uid = make_uid(series.uid(study), "instance", idx)
        ds = _base_dataset(study, series, sop_class, sop_uid, "US", idx)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PatientOrientation = ""
        ds.ImageComments = "Synthetic phantom image (not a patient)"
        t = study.study_time
        ds.AcquisitionDateTime = f"{study.study_date}{t}.{idx:06d}"[:21]
        ds.SequenceOfUltrasoundRegions = DicomSequence(
            [_us_region_item(reg, transducer_mhz) for reg in comp.regions]
        )
        ds.TransducerData = ["", "", "LINEAR"]
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        if multiframe:
            ds.NumberOfFrames = n
            ds.FrameIncrementPointer = FRAME_TIME_TAG
            ds.FrameTime = f"{frame_time_ms:.3f}"
            ds.CineRate = max(1, round(1000.0 / frame_time_ms))
            ds.RecommendedDisplayFrameRate = ds.CineRate
            ds.EffectiveDuration = f"{n * frame_time_ms / 1000.0:.4f}"
        if photometric == "MONOCHROME2":
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.LossyImageCompression = "00"
            ds.PixelData = np.ascontiguousarray(chunk).tobytes()
        else:
            ds.SamplesPerPixel = 3
            ds.PlanarConfiguration = 0
            if photometric == "RGB":
                ds.PhotometricInterpretation = "RGB"
                ds.LossyImageCompression = "00"
                ds.PixelData = np.ascontiguousarray(chunk).tobytes()
            else:
                from pydicom.encaps import encapsulate

                encoded = _jpeg_frames(chunk, jpeg_quality)
                ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
                ds.PhotometricInterpretation = "YBR_FULL_422"
                ds.LossyImageCompression = "01"
                ds.LossyImageCompressionRatio = f"{chunk.nbytes / sum(map(len, encoded)):.2f}"
                ds.LossyImageCompressionMethod = "ISO_10918_1"
                ds.PixelData = encapsulate(encoded)
                ds["PixelData"].VR = "OB"
        save_atomic(ds, folder / _file_name(sop_uid))
        datasets.append(ds)
    return datasets


# --------------------------------------------------------------------------------------------------
# MR


@dataclass(frozen=True)
class MrAcquisition:
    """Acquisition attributes of one MR series (times in ms, field in T)."""

    contrast: Literal["T1", "T2", "STIR"]
    repetition_time_ms: float
    echo_time_ms: float
    inversion_time_ms: float | None = None
    echo_train_length: int = 4
    flip_angle_deg: float = 90.0
    field_strength_t: float = 1.5
    pixel_bandwidth_hz: float = 190.0
    number_of_averages: float = 2.0


def _quantise_mr(volume: np.ndarray, rescale: tuple[float, float] | None) -> tuple[np.ndarray, float, float]:
    """uint16 stored values (12 bits) and (slope, intercept) so that stored*slope+intercept ∝ volume."""
    top = float(np.percentile(volume[:: max(1, volume.shape[0] // 4)], 99.9))
    scale = 3400.0 / max(top, 1e-6)
    stored = np.clip(np.rint(volume * np.float32(scale)), 0, 4095).astype(np.uint16)
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    return stored, slope, intercept


def _mr_acquisition_attrs(ds: Dataset, acq: MrAcquisition, rows: int, cols: int, enhanced: bool) -> None:
    ds.MagneticFieldStrength = ds_value(acq.field_strength_t)
    if enhanced:
        return
    ds.ImagingFrequency = round(42.577478 * acq.field_strength_t, 6)
    ds.ImagedNucleus = "1H"
    ds.ScanningSequence = ["SE", "IR"] if acq.contrast == "STIR" else ["SE"]
    ds.SequenceVariant = ["SK", "SP", "MP"] if acq.contrast == "STIR" else ["SK", "SP"]
    ds.ScanOptions = ["PFP"]
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tir2d1_11" if acq.contrast == "STIR" else "*tse2d1_" + str(acq.echo_train_length)
    ds.AngioFlag = "N"
    ds.RepetitionTime = ds_value(acq.repetition_time_ms)
    ds.EchoTime = ds_value(acq.echo_time_ms)
    if acq.inversion_time_ms is not None:
        ds.InversionTime = ds_value(acq.inversion_time_ms)
    ds.EchoTrainLength = acq.echo_train_length
    ds.EchoNumbers = 1
    ds.NumberOfAverages = ds_value(acq.number_of_averages)
    ds.FlipAngle = ds_value(acq.flip_angle_deg)
    ds.PixelBandwidth = ds_value(acq.pixel_bandwidth_hz)
    ds.AcquisitionMatrix = [0, cols, rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.PercentSampling = 100
    ds.PercentPhaseFieldOfView = 100
    ds.ReceiveCoilName = "SPINE"
    ds.TransmitCoilName = "BODY"
    ds.SAR = 0.5


def _slice_order(positions: np.ndarray, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices that sort slices along the normal (row × column cosine) and the sorted positions along it."""
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    return order, along[order]


def write_mr_series(
    folder: Path,
    study: StudyInfo,
    series: SeriesInfo,
    volume: np.ndarray,
    positions_mm: np.ndarray,
    orientation: Sequence[float] | np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
    acq: MrAcquisition,
    enhanced: bool = False,
    rescale: tuple[float, float] | None = None,
) -> list[Dataset]:
    """Write an MR series; returns the datasets (single-frame: sorted along the slice normal).

    ``volume`` float32 (n, rows, cols) in arbitrary signal units; ``positions_mm`` (n, 3) LPS mm of the
    first stored pixel of each slice; ``orientation`` the six direction cosines; ``pixel_spacing_mm``
    (row spacing, column spacing). Single-frame files get shuffled InstanceNumbers and random-looking
    file names; ``enhanced=True`` writes one Enhanced MR Image Storage file with frames sorted along
    the normal. ``rescale`` (slope, intercept) is written as RescaleSlope/Intercept when given.
    """
    vol = np.asarray(volume, np.float32)
    pos = np.asarray(positions_mm, np.float64).reshape(-1, 3)
    ori = np.asarray(orientation, np.float64).reshape(6)
    if vol.ndim != 3 or vol.shape[0] != pos.shape[0]:
        raise BackmiceError(f"MR volume {vol.shape} does not match {pos.shape[0]} slice positions")
    order, along = _slice_order(pos, ori)
    stored, slope, intercept = _quantise_mr(vol, rescale)
    gaps = np.diff(along)
    spacing = float(np.median(gaps)) if gaps.size else float(slice_thickness_mm)
    display = stored[:: max(1, len(order) // 4)].astype(np.float32) * slope + intercept
    lo, hi = (float(v) for v in np.percentile(display, [1.0, 99.5]))
    if enhanced:
        ds = _enhanced_mr(
            study,
            series,
            stored[order],
            pos[order],
            ori,
            pixel_spacing_mm,
            slice_thickness_mm,
            spacing,
            acq,
            (slope, intercept),
            ((lo + hi) / 2, max(hi - lo, 1.0)),
        )
        save_atomic(ds, folder / _file_name(ds.SOPInstanceUID))
        return [ds]
    rng = np.random.default_rng(int(hashlib.sha1(series.uid(study).encode()).hexdigest()[:8], 16))
    numbers = rng.permutation(len(order)) + 1
    datasets = []
    for rank, k in enumerate(order):
        sop_uid = make_uid(series.uid(study), "instance", rank)
        ds = _base_dataset(study, series, MR_IMAGE_STORAGE, sop_uid, "MR", int(numbers[rank]))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.FrameOfReferenceUID = study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos[k]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in ori]
        ds.PixelSpacing = [ds_value(pixel_spacing_mm[0]), ds_value(pixel_spacing_mm[1])]
        ds.SliceThickness = ds_value(slice_thickness_mm)
        ds.SpacingBetweenSlices = round(spacing, 4)
        ds.SliceLocation = round(float(along[rank]), 4)
        ds.AcquisitionNumber = 1
        _mr_acquisition_attrs(ds, acq, vol.shape[1], vol.shape[2], enhanced=False)
        _image_pixel_mr(ds, stored[k], (slope, intercept), rescale is not None)
        ds.WindowCenter = round((lo + hi) / 2, 1)
        ds.WindowWidth = round(max(hi - lo, 1.0), 1)
        save_atomic(ds, folder / _file_name(sop_uid))
        datasets.append(ds)
    return datasets


def _image_pixel_mr(
    ds: Dataset, stored: np.ndarray, rescale: tuple[float, float], write_rescale: bool
) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if write_rescale:
        ds.RescaleIntercept = f"{rescale[1]:g}"
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()


def _item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _enhanced_mr(
    study: StudyInfo,
    series: SeriesInfo,
    stored: np.ndarray,
    pos: np.ndarray,
    ori: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    thickness: float,
    spacing: float,
    acq: MrAcquisition,
    rescale: tuple[float, float],
    window: tuple[float, float],
) -> Dataset:
    """One Enhanced MR Image Storage dataset; frames in the given (sorted) order."""
    n = stored.shape[0]
    sop_uid = make_uid(series.uid(study), "instance", "enhanced")
    ds = _base_dataset(study, series, ENHANCED_MR_STORAGE, sop_uid, "MR", 1)
    del ds.AcquisitionDateTime
    dt = study.study_date + study.study_time
    ds.AcquisitionDateTime = dt
    ds.AcquisitionDuration = 120.0
    ds.ContentQualification = "RESEARCH"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1" if acq.contrast == "T1" else "T2"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = DicomSequence([])
    _mr_acquisition_attrs(ds, acq, stored.shape[1], stored.shape[2], enhanced=True)
    # MR Pulse Sequence module
    stir = acq.contrast == "STIR"
    ds.PulseSequenceName = "TIR2D" if stir else "TSE2D"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "SPIN"
    ds.MultipleSpinEcho = "YES" if acq.echo_train_length > 1 else "NO"
    ds.MultiPlanarExcitation = "YES"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL" if acq.echo_train_length > 1 else "SINGLE"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.NumberOfKSpaceTrajectories = 1
    ds.KSpaceFiltering = "NONE"
    ds.ResonantNucleus = "1H"
    ds.ApplicableSafetyStandardAgency = "IEC"
    # Enhanced General Equipment is covered by the base (Manufacturer, model, serial, versions).
    # Image pixel
    _image_pixel_mr(ds, stored, rescale, write_rescale=False)
    ds.NumberOfFrames = n
    # Multi-frame dimensions: stack id + in-stack position
    dim_uid = make_uid(sop_uid, "dimension-organization")
    ds.DimensionOrganizationSequence = _seq(_item(DimensionOrganizationUID=dim_uid))
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _seq(
        _item(
            DimensionOrganizationUID=dim_uid,
            DimensionIndexPointer=0x00209056,
            FunctionalGroupPointer=0x00209111,
            DimensionDescriptionLabel="Stack ID",
        ),
        _item(
            DimensionOrganizationUID=dim_uid,
            DimensionIndexPointer=0x00209057,
            FunctionalGroupPointer=0x00209111,
            DimensionDescriptionLabel="In-Stack Position Number",
        ),
    )
    # Shared functional groups
    rows, cols = stored.shape[1], stored.shape[2]
    shared = Dataset()
    shared.PixelMeasuresSequence = _seq(
        _item(
            PixelSpacing=[ds_value(pixel_spacing_mm[0]), ds_value(pixel_spacing_mm[1])],
            SliceThickness=ds_value(thickness),
            SpacingBetweenSlices=round(spacing, 4),
        )
    )
    shared.PlaneOrientationSequence = _seq(_item(ImageOrientationPatient=[round(float(v), 6) for v in ori]))
    shared.PixelValueTransformationSequence = _seq(
        _item(RescaleIntercept=f"{rescale[1]:g}", RescaleSlope=f"{rescale[0]:g}", RescaleType="US")
    )
    shared.FrameVOILUTSequence = _seq(
        _item(WindowCenter=round(window[0], 1), WindowWidth=round(window[1], 1))
    )
    shared.MRImageFrameTypeSequence = _seq(
        _item(
            FrameType=["ORIGINAL", "PRIMARY", "STATIC", "NONE"],
            PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE",
            ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast=ds.AcquisitionContrast,
        )
    )
    shared.MRTimingAndRelatedParametersSequence = _seq(
        _item(
            RepetitionTime=ds_value(acq.repetition_time_ms),
            FlipAngle=ds_value(acq.flip_angle_deg),
            EchoTrainLength=acq.echo_train_length,
            RFEchoTrainLength=acq.echo_train_length,
            GradientEchoTrainLength=0,
            SpecificAbsorptionRateSequence=_seq(
                _item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5)
            ),
            GradientOutputType="DB_DT",
            GradientOutput=10.0,
            OperatingModeSequence=_seq(
                _item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
                _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
                _item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
            ),
        )
    )
    shared.MRFOVGeometrySequence = _seq(
        _item(
            InPlanePhaseEncodingDirection="ROW",
            MRAcquisitionFrequencyEncodingSteps=rows,
            MRAcquisitionPhaseEncodingStepsInPlane=cols,
            PercentSampling=100.0,
            PercentPhaseFieldOfView=100.0,
        )
    )
    shared.MREchoSequence = _seq(_item(EffectiveEchoTime=ds_value(acq.echo_time_ms)))
    shared.MRModifierSequence = _seq(
        _item(
            InversionRecovery="YES" if stir else "NO",
            **({"InversionTimes": [ds_value(acq.inversion_time_ms or 150.0)]} if stir else {}),
            FlowCompensation="NONE",
            T2Preparation="NO",
            SpectrallySelectedExcitation="NONE",
            SpatialPresaturation="NONE",
            PartialFourier="NO",
            ParallelAcquisition="NO",
        )
    )
    shared.MRImagingModifierSequence = _seq(
        _item(
            MagnetizationTransfer="NONE",
            BloodSignalNulling="NO",
            Tagging="NONE",
            TransmitterFrequency=round(42.577478 * acq.field_strength_t, 6),
            PixelBandwidth=ds_value(acq.pixel_bandwidth_hz),
        )
    )
    shared.MRReceiveCoilSequence = _seq(
        _item(
            ReceiveCoilName="SPINE",
            ReceiveCoilManufacturerName="",
            ReceiveCoilType="MULTICOIL",
            QuadratureReceiveCoil="NO",
            MultiCoilDefinitionSequence=_seq(_item(MultiCoilElementName="SP1", MultiCoilElementUsed="YES")),
        )
    )
    shared.MRTransmitCoilSequence = _seq(
        _item(TransmitCoilName="BODY", TransmitCoilManufacturerName="", TransmitCoilType="BODY")
    )
    shared.MRAveragesSequence = _seq(_item(NumberOfAverages=ds_value(acq.number_of_averages)))
    shared.FrameAnatomySequence = _seq(
        _item(
            FrameLaterality="U",
            AnatomicRegionSequence=_seq(
                _item(CodeValue="122496003", CodingSchemeDesignator="SCT", CodeMeaning="Lumbar spine")
            ),
        )
    )
    ds.SharedFunctionalGroupsSequence = _seq(shared)
    per_frame = []
    stack_id = "1"
    for f in range(n):
        item = Dataset()
        item.FrameContentSequence = _seq(
            _item(
                FrameAcquisitionNumber=1,
                FrameReferenceDateTime=dt,
                FrameAcquisitionDateTime=dt,
                FrameAcquisitionDuration=ds_value(120000.0 / n),
                StackID=stack_id,
                InStackPositionNumber=f + 1,
                DimensionIndexValues=[1, f + 1],
            )
        )
        item.PlanePositionSequence = _seq(_item(ImagePositionPatient=[round(float(v), 4) for v in pos[f]]))
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return ds


# --------------------------------------------------------------------------------------------------
# SEG


def _segment_descriptions() -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(
        name=SEG_ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    tissue = codes.SCT.Tissue
    abnormal = codes.SCT.MorphologicallyAbnormalStructure
    # (category, type, CIELab colour) per model class; fascia is coded as connective tissue and the
    # fascial defect (fat stalk through the fascia) as a lesion: no closer concepts are in pydicom's codes.
    spec = {
        "fat": (tissue, codes.SCT.AdiposeTissue, (90.0, 5.0, 40.0)),
        "fascia": (tissue, codes.SCT.ConnectiveTissue, (80.0, -20.0, -30.0)),
        "nodule": (abnormal, codes.SCT.Lipoma, (55.0, 70.0, 50.0)),
        "defect": (abnormal, codes.SCT.Lesion, (60.0, -60.0, 50.0)),
    }
    out = []
    for number, name in enumerate(MODEL_CLASSES[1:], start=1):
        category, prop, lab = spec[name]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                tracking_uid=make_uid("backmice segment", name),
                tracking_id=name,
                display_color=hd.color.CIELabColor(*lab),
            )
        )
    return out


def write_seg(
    path: Path,
    study: StudyInfo,
    source: Sequence[Dataset],
    labels: np.ndarray,
    series_number: int,
) -> Dataset:
    """Write the ground-truth DICOM SEG (BINARY) for one image series.

    ``labels`` uint8 Tissue (n, rows, cols) aligned with the source frames: frame ``f`` of a
    multi-frame source, or ``source[f]`` for single-frame sources. Tissue labels are mapped to model
    classes with :func:`labels.tissue_to_class_lut`. The SEG always lists all four segments
    ``fat, fascia, nodule, defect`` (numbers 1-4, labels = ``MODEL_CLASSES[1:]``); frames of empty
    segments are omitted, so a nodule-free case has segments 3-4 without frames.
    """
    import highdicom as hd

    lut = np.asarray(tissue_to_class_lut(), np.uint8)
    classes = lut[np.asarray(labels, np.uint8)]
    masks = np.stack([classes == c for c in range(1, len(MODEL_CLASSES))], axis=-1)
    seg_uid = make_uid(source[0].SeriesInstanceUID, "seg")
    kwargs: dict[str, Any] = {
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "segment_descriptions": _segment_descriptions(),
        "series_instance_uid": make_uid(seg_uid, "series"),
        "series_number": series_number,
        "sop_instance_uid": make_uid(seg_uid, "instance"),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MODEL_NAME,
        "software_versions": __version__,
        "device_serial_number": DEVICE_SERIAL,
        "content_label": "GROUNDTRUTH",
        "content_description": "Phantom ground truth",
        "series_description": "Ground truth SEG",
    }
    if len(source) == 1 and int(source[0].get("NumberOfFrames", 1) or 1) > 1:
        frames = [(str(source[0].SOPInstanceUID), f + 1) for f in range(masks.shape[0])]
    else:
        frames = [(str(ds.SOPInstanceUID), 1) for ds in source]
    seg = build_segmentation(source, frames, masks, **kwargs)
    for tag in ("SeriesDate", "ContentDate", "InstanceCreationDate"):
        setattr(seg, tag, study.study_date)
    for tag in ("SeriesTime", "ContentTime", "InstanceCreationTime"):
        setattr(seg, tag, study.study_time)
    for item in seg.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = study.study_date + study.study_time
    dim_uid = make_uid(seg_uid, "dimension-organization")  # highdicom draws a random one
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = dim_uid
    save_atomic(seg, path)
    return seg
