"""MR geometry: slices sorted along the slice normal, spacing and the voxel-to-LPS affine.

Classic MR (one slice per file) and Enhanced MR (frames described by the Shared and Per-frame
Functional Groups) go through the same path: each frame becomes a slice with its own position,
orientation, pixel spacing and rescale.

Rules (documented behaviour, reported in ``problems``):

* Slices are sorted by the position of ImagePositionPatient along the normal
  ``n = row_cosines × column_cosines`` (not by InstanceNumber).
* Slices whose orientation, matrix size or pixel spacing differ from the rest (localizers, a second
  stack) are split off: the largest consistent stack is kept, the others are reported; equal-sized
  stacks raise :class:`~backmice_vision.errors.InconsistentSeries`.
* Slices at the same position (within 0.01 mm) are duplicates: the first by (InstanceNumber, file,
  frame) is kept, the others dropped and counted in a problem line.
* ``spacing_mm[0]`` is the median step between neighbouring slice positions along ``n``; steps off the
  median by more than 1 % + 0.01 mm give ``"non-uniform slice spacing: …"`` (missing slices show up here).
* A single slice takes its slice spacing from SpacingBetweenSlices, else SliceThickness, else 1 mm
  (noted).
* MR without ImagePositionPatient / ImageOrientationPatient / PixelSpacing is ordered by
  (InstanceNumber, frame) with ``spacing_mm`` and ``affine`` ``None``.
* A PixelSpacing that makes the field of view wider than :data:`MAX_MR_FIELD_MM` in either direction
  is treated as absent (no MR measures that; the model would resample to a size proportional to it).
* Stored values are rescaled (slope, intercept) and never inverted, MONOCHROME1 included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InvalidDicom
from .plan import FrameRef, Plan, largest_consistent
from .reader import Instance, guarded

_POSITION_TOL_MM = 0.01
MAX_MR_FIELD_MM = 1000.0  # widest plausible in-plane field of view


@dataclass
class _Slice:
    ref: FrameRef
    ipp: np.ndarray | None  # (3,) LPS mm of the centre of the first stored pixel
    iop: np.ndarray | None  # (6,) row cosines (direction of increasing column j), column cosines (i)
    pixel_spacing: tuple[float, float] | None  # (row, col) mm = DICOM PixelSpacing
    slice_step: float | None  # SpacingBetweenSlices or SliceThickness, for a single slice
    implausible_spacing: bool = False  # a PixelSpacing was given but set aside (field of view too wide)

    def __post_init__(self) -> None:
        ps, inst = self.pixel_spacing, self.ref.inst
        if ps is not None and max(inst.rows * ps[0], inst.columns * ps[1]) > MAX_MR_FIELD_MM:
            self.pixel_spacing, self.implausible_spacing = None, True

    @property
    def has_geometry(self) -> bool:
        return self.ipp is not None and self.iop is not None and self.pixel_spacing is not None


def _first_item(container: Dataset | None, keyword: str) -> Dataset | None:
    if container is None or keyword not in container:
        return None
    seq = container[keyword].value
    return seq[0] if seq else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None or value == "":
        return None
    arr = np.asarray([float(v) for v in value], dtype=np.float64)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _orientation(value: Any) -> np.ndarray | None:
    """Validated orientation cosines (normalised), or None when absent or degenerate."""
    iop = _floats(value, 6)
    if iop is None:
        return None
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-3 or nc < 1e-3 or abs(float(np.dot(r / nr, c / nc))) > 1e-2:
        return None
    return np.concatenate([r / nr, c / nc])


def _spacing(value: Any) -> tuple[float, float] | None:
    ps = _floats(value, 2)
    if ps is None or np.any(ps <= 0):
        return None
    return float(ps[0]), float(ps[1])


def _step(*values: Any) -> float | None:
    """The first value in (0, MAX_MR_FIELD_MM] mm: a slice step, for a single slice."""
    for v in values:
        if v is not None and v != "" and 0 < float(v) <= MAX_MR_FIELD_MM:
            return float(v)
    return None


def _slices_of(inst: Instance) -> list[_Slice]:
    """One :class:`_Slice` per frame of ``inst`` (classic: one; Enhanced MR: NumberOfFrames)."""
    ds = inst.ds
    out: list[_Slice] = []
    with guarded(inst.path, "cannot read MR geometry"):
        top_slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        top_intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            if inst.frames != 1:
                raise InvalidDicom(
                    f"multi-frame MR ({inst.frames} frames) without functional groups", inst.path
                )
            out.append(
                _Slice(
                    FrameRef(inst, 0, top_slope, top_intercept),
                    _floats(ds.get("ImagePositionPatient"), 3),
                    _orientation(ds.get("ImageOrientationPatient")),
                    _spacing(ds.get("PixelSpacing")),
                    _step(ds.get("SpacingBetweenSlices"), ds.get("SliceThickness")),
                )
            )
            return out
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if len(per_frame) != inst.frames:
            raise InvalidDicom(
                f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {inst.frames} frames",
                inst.path,
            )
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        for f, item in enumerate(per_frame):

            def group(keyword: str, item: Dataset = item) -> Dataset | None:
                return _first_item(item, keyword) or _first_item(shared, keyword)

            pos, ori, meas, pvt = (
                group(k)
                for k in (
                    "PlanePositionSequence",
                    "PlaneOrientationSequence",
                    "PixelMeasuresSequence",
                    "PixelValueTransformationSequence",
                )
            )
            slope = float(pvt.get("RescaleSlope", 1.0) or 1.0) if pvt is not None else top_slope
            intercept = float(pvt.get("RescaleIntercept", 0.0) or 0.0) if pvt is not None else top_intercept
            out.append(
                _Slice(
                    FrameRef(inst, f, slope, intercept),
                    _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None,
                    _orientation(ori.get("ImageOrientationPatient")) if ori is not None else None,
                    _spacing(meas.get("PixelSpacing")) if meas is not None else None,
                    _step(
                        meas.get("SpacingBetweenSlices") if meas is not None else None,
                        meas.get("SliceThickness") if meas is not None else None,
                        ds.get("SpacingBetweenSlices"),
                    ),
                )
            )
    return out


def _cluster_labels(slices: list[_Slice]) -> list[int]:
    """Label slices that share matrix size, orientation (within 1e-3) and pixel spacing (within 0.1 %)."""
    reps: list[_Slice] = []
    labels: list[int] = []
    for s in slices:
        for n, r in enumerate(reps):
            if (s.ref.inst.rows, s.ref.inst.columns) != (r.ref.inst.rows, r.ref.inst.columns):
                continue
            if s.has_geometry != r.has_geometry:
                continue
            if s.has_geometry:
                assert s.iop is not None and r.iop is not None and s.pixel_spacing and r.pixel_spacing
                if np.max(np.abs(s.iop - r.iop)) > 1e-3:
                    continue
                if not np.allclose(s.pixel_spacing, r.pixel_spacing, rtol=1e-3, atol=1e-4):
                    continue
            labels.append(n)
            break
        else:
            labels.append(len(reps))
            reps.append(s)
    return labels


def _order_key(s: _Slice) -> tuple[int, str, int]:
    return (s.ref.inst.instance_number, str(s.ref.inst.path), s.ref.frame)


def plan_mr(instances: list[Instance]) -> Plan:
    """Sort, split and measure the MR slices of one series (see the module docstring for the rules)."""
    slices = [s for inst in instances for s in _slices_of(inst)]
    labels = _cluster_labels(slices)
    label_of = {id(s): lab for s, lab in zip(slices, labels, strict=True)}
    path = str(instances[0].path)
    slices, problems = largest_consistent(
        slices, lambda s: label_of[id(s)], "orientation or matrix size", path
    )
    rows, cols = slices[0].ref.inst.rows, slices[0].ref.inst.columns

    if any(s.implausible_spacing for s in slices):
        problems.append(f"PixelSpacing ignored: field of view over {MAX_MR_FIELD_MM:g} mm")
    if not slices[0].has_geometry:
        slices.sort(key=_order_key)
        problems.append(
            "no MR geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing): mm unknown"
        )
        return Plan("MR", [s.ref for s in slices], rows, cols, problems=problems)

    iop = slices[0].iop
    ps = slices[0].pixel_spacing
    assert iop is not None and ps is not None
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    dist = {id(s): float(np.dot(np.asarray(s.ipp), normal)) for s in slices}
    slices.sort(key=lambda s: (dist[id(s)], *_order_key(s)))
    ipp = np.stack([np.asarray(s.ipp) for s in slices])
    d = ipp @ normal

    # Duplicates: same position along the normal and in-plane; keep the first by order key.
    keep: list[int] = []
    for n in range(len(slices)):
        dup = keep and abs(d[n] - d[keep[-1]]) < _POSITION_TOL_MM
        if dup and np.linalg.norm(ipp[n] - ipp[keep[-1]]) < _POSITION_TOL_MM * 10:
            if _order_key(slices[n]) < _order_key(slices[keep[-1]]):
                keep[-1] = n
            continue
        keep.append(n)
    if len(keep) < len(slices):
        problems.append(f"dropped {len(slices) - len(keep)} duplicate slices at the same position")
    slices, ipp, d = [slices[n] for n in keep], ipp[keep], d[keep]

    if len(slices) > 1:
        steps = np.diff(d)
        step = float(np.median(steps))
        if step < _POSITION_TOL_MM:
            raise InvalidDicom("slice positions do not advance along the slice normal", path)
        off = np.abs(steps - step) > 0.01 * step + _POSITION_TOL_MM
        if np.any(off):
            missing = int(np.sum(np.maximum(np.round(steps / step) - 1, 0)))
            note = (
                f"non-uniform slice spacing: steps {steps.min():.3g}–{steps.max():.3g} mm "
                f"(median {step:.3g} mm)"
            )
            problems.append(note + (f", about {missing} missing slices" if missing else ""))
        slice_vec = np.median(np.diff(ipp, axis=0), axis=0)
        if np.linalg.norm(slice_vec - normal * step) > 0.01 * step + _POSITION_TOL_MM:
            problems.append("slice positions are sheared against the slice normal (gantry tilt?)")
    else:
        step = slices[0].slice_step or 1.0
        if slices[0].slice_step is None:
            problems.append("single slice without SliceThickness: 1 mm slice spacing assumed")
        slice_vec = normal * step

    affine = np.eye(4)
    affine[:3, 0] = slice_vec
    affine[:3, 1] = col_cos * ps[0]
    affine[:3, 2] = row_cos * ps[1]
    affine[:3, 3] = ipp[0]
    return Plan("MR", [s.ref for s in slices], rows, cols, (step, ps[0], ps[1]), affine, problems=problems)
