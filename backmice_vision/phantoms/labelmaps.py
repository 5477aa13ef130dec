"""Tissue label maps of random probe planes (US) and slice stacks (MR) through a phantom subject.

The training pool of domain-randomised images (:mod:`backmice_vision.model.synthetic`) caches these maps on
disk, keyed by the source of the modality's builder here and the modules it uses, so the appearance code
of :mod:`.randomise` can change without invalidating the pool. Maps are uint8
:class:`~backmice_vision.labels.Tissue` labels sampled directly at the model spacing ``spacing_mm``;
rows are depth for ultrasound (row 0 at the transducer face) and the DICOM column direction for MR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .anatomy import Subject


def us_label_map(
    subject: Subject,
    rng: np.random.Generator,
    spacing_mm: float,
    depth_mm: tuple[float, float] = (20.0, 70.0),
    width_mm: tuple[float, float] = (25.0, 60.0),
    p_on_nodule: float = 0.7,
    p_longitudinal: float = 0.3,
    max_tilt_deg: float = 10.0,
    offset_fraction: float = 0.0,
) -> np.ndarray:
    """Tissue labels uint8 ``(rows, cols)`` of a random probe plane at ``spacing_mm`` per pixel.

    Random field of view (``depth_mm``, ``width_mm``), transverse or longitudinal, centred over a nodule
    with probability ``p_on_nodule``, with the probe flattening the skin (as the physics simulator does).
    ``offset_fraction`` moves that nodule along the array by up to this fraction of the image width
    either way (at least 6 mm): 0.5 puts its centre anywhere across the image, at its edge as often as
    in the middle, where 0 keeps it within 6 mm of the centre.
    """
    from .ultrasound import conformed_points, plan_planes

    if offset_fraction <= 0.0:  # the draws in the order of the maps built before offset_fraction
        (plane,) = plan_planes(subject, rng, 1, p_on_nodule, max_tilt_deg, p_longitudinal)
        rows = max(16, round(float(rng.uniform(*depth_mm)) / spacing_mm))
        cols = max(16, round(float(rng.uniform(*width_mm)) / spacing_mm))
    else:
        rows = max(16, round(float(rng.uniform(*depth_mm)) / spacing_mm))
        cols = max(16, round(float(rng.uniform(*width_mm)) / spacing_mm))
        jitter_mm = max(6.0, offset_fraction * cols * spacing_mm)
        (plane,) = plan_planes(subject, rng, 1, p_on_nodule, max_tilt_deg, p_longitudinal, jitter_mm)
    pts = conformed_points(subject, plane, rows, cols, spacing_mm)
    return np.asarray(subject.labels_at(pts), np.uint8)


@dataclass(frozen=True)
class MRLabelStack:
    """Tissue labels of neighbouring MR slices and the sub-voxel samples a thick slice averages.

    ``labels`` uint8 ``(C, rows, cols)``: the tissue at each voxel centre (the training target).
    ``refined[c]`` for slice ``c``: flat pixel indices int64 ``(n,)`` of the voxels that may hold more
    than one tissue (label boundaries, around lesions) and their tissues uint8 ``(n, 12)`` at 3 points
    through the slice thickness x 2 x 2 in-plane, as :func:`.mr.simulate_mr` renders a voxel: the image
    there is the mean of their signals (partial volume: a thin capsule or the cap of a nodule cut by the
    slice is dimmed, not drawn at full contrast).
    """

    labels: np.ndarray
    refined: tuple[tuple[np.ndarray, np.ndarray], ...]


def mr_label_stack(
    subject: Subject,
    rng: np.random.Generator,
    spacing_mm: float,
    context: int = 1,
    fov_mm: tuple[float, float] = (150.0, 420.0),
    p_axial: float = 0.7,
    p_on_nodule: float = 0.6,
) -> MRLabelStack:
    """Tissue labels of ``2 * context + 1`` neighbouring slices of a random MR stack.

    Axial (oblique up to 15 degrees) or sagittal, slice spacing 3-6 mm, slice thickness 75-100 % of it,
    square field of view ``fov_mm`` centred on the body, the spine or (``p_on_nodule``) a nodule; rows or
    columns flipped with probability 0.1 each (scanners store both). In-plane pixels at ``spacing_mm``.
    """
    from .mr import lesion_boxes, partial_volume_pixels, voxel_sub_offsets

    axial = bool(rng.random() < p_axial)
    tilt = math.radians(float(rng.uniform(-15.0, 15.0)) if axial else float(rng.uniform(-8.0, 8.0)))
    rot = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    if axial:
        row_dir, col_dir = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
    else:
        row_dir, col_dir = rot @ np.array([0, 1.0, 0]), rot @ np.array([0, 0, -1.0])
    if rng.random() < 0.1:
        row_dir = -row_dir
    if rng.random() < 0.1:
        col_dir = -col_dir
    normal = np.cross(row_dir, col_dir)
    if subject.nodules and rng.random() < p_on_nodule:
        nod = subject.nodules[int(rng.integers(len(subject.nodules)))]
        target = np.asarray(nod.center_mm, float) + rng.uniform(-0.5, 0.5, 3) * np.asarray(nod.semi_axes_mm)
    else:
        x = float(rng.uniform(-100.0, 100.0)) if not axial else float(rng.uniform(-10.0, 10.0))
        target = np.array(
            [x, float(rng.uniform(-0.2, 0.7)) * subject.half_ap_mm, float(rng.uniform(-70.0, 30.0))]
        )
    fov = float(rng.uniform(*fov_mm))
    n = max(32, round(fov / spacing_mm))
    # centre: the target in the through-plane direction; in-plane a shift so the target is not always central
    centre = target + (rng.uniform(-0.3, 0.3, 2) * fov) @ np.stack([row_dir, col_dir])
    step = float(rng.uniform(3.0, 6.0))
    thickness = step * float(rng.uniform(0.75, 1.0))
    sub_offsets = voxel_sub_offsets(row_dir, col_dir, thickness, (spacing_mm, spacing_mm))
    boxes = lesion_boxes(subject, margin=thickness / 2 + spacing_mm)
    jj, ii = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
    grid = (jj - (n - 1) / 2)[..., None] * np.float32(spacing_mm) * row_dir.astype(np.float32) + (
        ii - (n - 1) / 2
    )[..., None] * np.float32(spacing_mm) * col_dir.astype(np.float32)
    labels = np.empty((2 * context + 1, n, n), np.uint8)
    refined = []
    for c, d in enumerate(range(-context, context + 1)):
        pts = grid + (centre + d * step * normal).astype(np.float32)
        labels[c] = subject.labels_at(pts)
        idx = partial_volume_pixels(labels[c], pts, boxes)
        sub = subject.labels_at(pts.reshape(-1, 3)[idx][:, None, :] + sub_offsets[None])
        refined.append((idx, np.asarray(sub, np.uint8)))
    return MRLabelStack(labels, tuple(refined))
