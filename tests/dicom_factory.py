"""Small, real DICOM files for tests: classic and Enhanced MR, ultrasound in every colour model.

Pixel values encode their position so tests can check ordering: MR voxel ``(k, i, j)`` of the slice
written ``k``-th along the slice normal holds ``1000 * k + cols * i + j`` (stored, before rescale).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def base_dataset(sop_class: str, modality: str, study_uid: str, series_uid: str, number: int = 1) -> Dataset:
    """A dataset with file meta, patient/study/series identity (synthetic, no real person)."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Phantom^Test", "TEST0001"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SeriesDescription = f"test {modality}"
    return ds


def _mono16(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()


def slice_positions(
    n: int, orientation: Sequence[float], origin: Sequence[float], step: float
) -> list[np.ndarray]:
    """ImagePositionPatient of ``n`` slices ``step`` mm apart along row × column cosines from ``origin``."""
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return [np.asarray(origin, dtype=float) + k * step * normal for k in range(n)]


def mr_series(
    folder: Path,
    *,
    n: int = 5,
    rows: int = 6,
    cols: int = 7,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-10.0, 20.0, 30.0),
    pixel_spacing: tuple[float, float] = (0.5, 0.75),
    step: float = 2.0,
    positions: Sequence[Sequence[float]] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """A classic single-frame MR series: files and InstanceNumbers shuffled (``seed``).

    Slice ``k`` (in ``positions`` order, default ``slice_positions``) holds ``1000 k + cols i + j``.
    Returns the written paths in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    pos = [np.asarray(p, float) for p in positions] if positions is not None else slice_positions(
        n, orientation, origin, step
    )  # fmt: skip
    numbers = list(range(1, len(pos) + 1))
    random.Random(seed).shuffle(numbers)
    grid = np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols)
    paths = []
    for k, p in enumerate(pos):
        ds = base_dataset(MR_STORAGE, "MR", study_uid, series_uid, numbers[k])
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in p]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = step
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        _mono16(ds, grid + 1000 * k)
        path = folder / f"{random.Random(seed * 1000 + k).getrandbits(40):010x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def enhanced_mr(
    path: Path,
    *,
    n: int = 4,
    rows: int = 6,
    cols: int = 7,
    orientation: Sequence[float] = (0, 1, 0, 0, 0, -1),
    origin: Sequence[float] = (5.0, -20.0, 40.0),
    pixel_spacing: tuple[float, float] = (0.8, 0.6),
    step: float = 3.0,
    frame_order: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
) -> Path:
    """An Enhanced MR file: geometry in Per-frame (position, rescale) and Shared (orientation, spacing)
    functional groups. Frame ``f`` stores slice ``frame_order[f]`` (default reversed order) with value
    ``1000 k + cols i + j`` and rescale slope ``slopes[f]`` (default 1, 2, 1, 2 ...)."""
    order = list(frame_order) if frame_order is not None else list(range(n))[::-1]
    slopes = list(slopes) if slopes is not None else [1.0 + (f % 2) for f in range(n)]
    pos = slice_positions(n, orientation, origin, step)
    ds = base_dataset(ENHANCED_MR_STORAGE, "MR", generate_uid(), generate_uid())
    ds.NumberOfFrames = n
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [float(v) for v in orientation]
    shared.PixelMeasuresSequence = DicomSequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = list(pixel_spacing)
    shared.PixelMeasuresSequence[0].SliceThickness = step
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    grid = np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols)
    frames = []
    for f, k in enumerate(order):
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in pos[k]]
        item.PixelValueTransformationSequence = DicomSequence([Dataset()])
        pvt = item.PixelValueTransformationSequence[0]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slopes[f], 0.0, "US"
        per_frame.append(item)
        frames.append(grid + 1000 * k)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _mono16(ds, np.stack(frames))
    ds.save_as(path, enforce_file_format=True)
    return path


def us_region(
    box: tuple[int, int, int, int],
    spacing_mm: tuple[float, float] | None,
    *,
    ref_y0: int | None = None,
    ref_value_y_cm: float | None = None,
    spatial_format: int = 1,
    data_type: int = 1,
) -> Dataset:
    """A SequenceOfUltrasoundRegions item; ``box`` (row0, col0, row1, col1) with exclusive ends."""
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial_format, data_type, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = box[1], box[0]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[3] - 1, box[2] - 1
    units = 3 if spacing_mm is not None else 0
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaY = spacing_mm[0] / 10.0 if spacing_mm else 0.0
    item.PhysicalDeltaX = spacing_mm[1] / 10.0 if spacing_mm else 0.0
    if ref_y0 is not None:
        item.ReferencePixelX0, item.ReferencePixelY0 = 0, ref_y0
        item.ReferencePixelPhysicalValueX, item.ReferencePixelPhysicalValueY = 0.0, ref_value_y_cm or 0.0
    return item


def us_frames_rgb(n: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Smooth, JPEG-friendly uint8 RGB frames ``(n, rows, cols, 3)``; frame ``f`` is brighter with ``f``."""
    i, j = np.mgrid[0:rows, 0:cols]
    out = np.empty((n, rows, cols, 3), np.uint8)
    for f in range(n):
        out[f, ..., 0] = (i * 200 // max(rows - 1, 1) + 10 * f) % 256
        out[f, ..., 1] = (j * 200 // max(cols - 1, 1) + 5 * f) % 256
        out[f, ..., 2] = (60 + 20 * f + seed) % 256
    return out


def us_image(
    path: Path,
    frames: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    regions: Sequence[Dataset] = (),
    transfer_syntax: str = ExplicitVRLittleEndian,
    bits: int = 8,
    study_uid: str | None = None,
    series_uid: str | None = None,
    number: int = 1,
) -> Path:
    """An ultrasound file from ``frames``: greyscale ``(n, r, c)`` (stored values; palette indices for
    PALETTE COLOR) or RGB ``(n, r, c, 3)`` uint8. One frame → US Image Storage, several → Multi-frame.

    ``photometric``: MONOCHROME1/2, RGB, YBR_FULL (converted here from the RGB given), PALETTE COLOR
    (a 256-entry 16-bit palette: red = index, green = 255 - index, blue = 128, scaled to 16 bits).
    ``transfer_syntax``: uncompressed, RLE Lossless, or JPEG Baseline (RGB frames, Pillow, YBR_FULL_422).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = frames.shape[0]
    sop_class = US_STORAGE if n == 1 else US_MULTIFRAME_STORAGE
    ds = base_dataset(sop_class, "US", study_uid or generate_uid(), series_uid or generate_uid(), number)
    del ds.FrameOfReferenceUID
    if n > 1:
        ds.NumberOfFrames = n
        ds.FrameTime = 40.0
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence(list(regions))
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    colour = frames.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    data = np.ascontiguousarray(frames)
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space

        data = convert_color_space(data, "RGB", "YBR_FULL")
    if photometric == "PALETTE COLOR":
        idx = np.arange(256, dtype=np.uint16)
        for name, values in (("Red", idx), ("Green", 255 - idx), ("Blue", np.full(256, 128, np.uint16))):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{name}PaletteColorLookupTableData", (values * 257).astype("<u2").tobytes())
    if transfer_syntax == JPEGBaseline8Bit:
        from PIL import Image

        encoded = []
        for frame in data:
            buf = io.BytesIO()
            Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=95, subsampling=1)
            encoded.append(buf.getvalue())
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    else:
        dtype = np.uint8 if bits == 8 else np.dtype("<u2")
        ds.PixelData = data.astype(dtype).tobytes()
        if transfer_syntax == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path
