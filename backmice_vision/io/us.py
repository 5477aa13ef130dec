"""Ultrasound: frame order, calibrated tissue regions and colour handling.

Calibration comes from SequenceOfUltrasoundRegions only. Every region with RegionSpatialFormat 1 (2-D)
and RegionDataType 1 (tissue) becomes an :class:`~backmice_vision.types.UltrasoundRegion`:

* ``box`` from RegionLocationMinY0/MinX0/MaxY1/MaxX1 (ends made exclusive, clipped to the frame);
* ``spacing_mm`` = (PhysicalDeltaY, PhysicalDeltaX) × 10 when both PhysicalUnits directions are 3 (cm),
  else ``None``; also ``None`` (with a problem line) when the region would span more than
  :data:`MAX_US_FIELD_MM` in either direction: no probe images that, and the model would resample it to
  a size proportional to the claim;
* ``depth_offset_mm`` = physical Y of the region's top row: ``ReferencePixelPhysicalValueY −
  ReferencePixelY0 · PhysicalDeltaY`` (× 10), 0 when the reference pixel is not given. It is negative
  when the region starts above the transducer face (a reference pixel inside the region).

Without any such region the series gets one full-frame region with ``spacing_mm None`` and the problem
``"no ultrasound calibration: millimetres unknown"``. An US :class:`ImageSeries` has ``spacing_mm None``:
millimetres live in its regions.

Colour: RGB, YBR_FULL and YBR_FULL_422 and PALETTE COLOR (through the palette) keep ``rgb`` uint8 and
give ``pixels`` as ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``. 8-bit YBR_FULL(_422) is decoded
without pydicom's colour conversion: its Y channel is that luma, and :func:`ybr_full_to_rgb8` converts
with integer tables (both about 3x faster than converting in floating point first).
MONOCHROME1 is inverted so that bright means echogenic, as for MONOCHROME2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..types import UltrasoundRegion
from .plan import FrameRef, Plan, largest_consistent
from .reader import Instance, guarded

NO_CALIBRATION = "no ultrasound calibration: millimetres unknown"
MAX_US_FIELD_MM = 500.0  # widest / deepest plausible ultrasound tissue region
_CM = 3
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def is_colour(inst: Instance) -> bool:
    return inst.samples == 3 or inst.photometric == "PALETTE COLOR"


def _region(item: Dataset, index: int, rows: int, cols: int, problems: list[str]) -> UltrasoundRegion | None:
    if int(item.get("RegionSpatialFormat", 0) or 0) != 1 or int(item.get("RegionDataType", 0) or 0) != 1:
        return None
    x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
    x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
    box = (max(0, y0), max(0, x0), min(rows, y1), min(cols, x1))
    if box[2] <= box[0] or box[3] <= box[1]:
        problems.append(f"ultrasound region outside the {rows}×{cols} frame ignored")
        return None
    if box != (y0, x0, y1, x1):
        problems.append(f"ultrasound region {index} extends beyond the {rows}×{cols} frame: clipped")
    units = (
        int(item.get("PhysicalUnitsYDirection", 0) or 0),
        int(item.get("PhysicalUnitsXDirection", 0) or 0),
    )
    dy, dx = float(item.get("PhysicalDeltaY", 0) or 0), float(item.get("PhysicalDeltaX", 0) or 0)
    spacing: tuple[float, float] | None = None
    offset = 0.0
    if units == (_CM, _CM) and dy > 0 and dx > 0 and np.isfinite(dy) and np.isfinite(dx):
        spacing = (dy * 10.0, dx * 10.0)
        field = ((box[2] - box[0]) * spacing[0], (box[3] - box[1]) * spacing[1])
        if max(field) > MAX_US_FIELD_MM:
            problems.append(
                f"ultrasound region {index}: calibration of {field[0]:.3g} × {field[1]:.3g} mm "
                f"(over {MAX_US_FIELD_MM:g} mm) ignored: millimetres unknown"
            )
            return UltrasoundRegion(index, box, None, 0.0)
        ref_y, ref_value = item.get("ReferencePixelY0"), item.get("ReferencePixelPhysicalValueY")
        if ref_y is not None and ref_value is not None:
            offset = (float(ref_value) - float(ref_y) * dy) * 10.0 + 0.0  # + 0.0: no -0.0
            if not np.isfinite(offset):
                problems.append(
                    f"ultrasound region {index}: reference pixel not finite: depth offset 0 assumed"
                )
                offset = 0.0
    return UltrasoundRegion(index, box, spacing, offset)


def regions_of(inst: Instance) -> tuple[list[UltrasoundRegion], list[str]]:
    """The 2-D tissue regions of one ultrasound instance (see the module docstring), and problems."""
    regions: list[UltrasoundRegion] = []
    problems: list[str] = []
    with guarded(inst.path, "cannot read SequenceOfUltrasoundRegions"):
        for item in inst.ds.get("SequenceOfUltrasoundRegions", []):
            reg = _region(item, len(regions), inst.rows, inst.columns, problems)
            if reg is not None:
                regions.append(reg)
    if not any(r.spacing_mm is not None for r in regions):
        regions = regions or [UltrasoundRegion(0, (0, 0, inst.rows, inst.columns), None)]
        problems.append(NO_CALIBRATION)
    return regions, problems


def _order_key(inst: Instance) -> tuple[int, str, str, str]:
    with guarded(inst.path, "cannot read acquisition time"):
        when = str(inst.ds.get("AcquisitionDateTime", "") or inst.ds.get("ContentTime", "") or "")
    return (inst.instance_number, when, inst.sop_uid, str(inst.path))


def plan_us(instances: list[Instance]) -> Plan:
    """Frames of an ultrasound series in order (InstanceNumber, acquisition time, SOP UID).

    Instances whose matrix size, colour model or regions differ from the rest are split off by the
    largest-group rule of :func:`~backmice_vision.io.plan.largest_consistent`.
    """
    calib = {id(i): regions_of(i) for i in instances}

    def key(inst: Instance) -> Any:
        return (inst.rows, inst.columns, inst.samples, inst.photometric, tuple(calib[id(inst)][0]))

    path = str(instances[0].path)
    kept, problems = largest_consistent(instances, key, "matrix size, colour model or calibration", path)
    kept.sort(key=_order_key)
    first = kept[0]
    regions, notes = calib[id(first)]
    frames = [FrameRef(inst, f) for inst in kept for f in range(inst.frames)]
    return Plan(
        "US",
        frames,
        first.rows,
        first.columns,
        regions=regions,
        colour=is_colour(first),
        problems=problems + notes,
    )


def to_rgb8(arr: np.ndarray, inst: Instance) -> np.ndarray:
    """Decoded colour frames ``(n, rows, cols, 3)`` (or palette indices ``(n, rows, cols)``) as uint8 RGB."""
    if inst.photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        with guarded(inst.path, "cannot apply the colour palette"):
            desc = inst.ds.RedPaletteColorLookupTableDescriptor
            lut_bits = int(desc[2]) if int(desc[2]) in (8, 16) else 16
            arr = apply_color_lut(arr, inst.ds)
        bits = lut_bits
    else:
        bits = inst.bits_stored
    if arr.dtype == np.uint8:
        return arr
    if bits > 8:
        arr = np.right_shift(arr.astype(np.uint32, copy=False), bits - 8)
    return np.clip(arr, 0, 255).astype(np.uint8)


YBR_FULL = frozenset({"YBR_FULL", "YBR_FULL_422"})
_CHROMA = np.arange(256, dtype=np.float64) - 128.0
# PS3.3 C.7.6.3.1.2 (JPEG/JFIF full range), 16-bit fixed point with rounding built in
_R_CR = np.round(1.402 * _CHROMA).astype(np.int16)
_B_CB = np.round(1.772 * _CHROMA).astype(np.int16)
_G_CB = np.round(-0.344136 * _CHROMA * 65536).astype(np.int32)
_G_CR = np.round(-0.714136 * _CHROMA * 65536 + 32768).astype(np.int32)


def ybr_full_to_rgb8(ybr: np.ndarray, out: np.ndarray) -> None:
    """Convert 8-bit YBR_FULL ``(..., 3)`` to RGB into uint8 ``out`` of the same shape (within 1 of
    pydicom's floating-point ``convert_color_space``)."""
    y = ybr[..., 0].astype(np.int16)
    cb, cr = ybr[..., 1], ybr[..., 2]
    np.clip(y + _R_CR[cr], 0, 255, out=out[..., 0], casting="unsafe")
    np.clip(y + _B_CB[cb], 0, 255, out=out[..., 2], casting="unsafe")
    g = _G_CB[cb]
    g += _G_CR[cr]
    g >>= 16
    g += y
    np.clip(g, 0, 255, out=out[..., 1], casting="unsafe")


def luma(rgb: np.ndarray, out: np.ndarray) -> None:
    """Write the BT.601 luma of uint8 RGB ``(n, rows, cols, 3)`` into float32 ``out`` ``(n, rows, cols)``."""
    for k in range(rgb.shape[0]):
        np.dot(rgb[k].astype(np.float32), _LUMA, out=out[k])
