"""Real DICOM inputs and hand-built DetectionResults for the render / export tests.

Series are written with ``dicom_factory`` and loaded with :func:`backmice_vision.io.load_series`; results
follow :mod:`backmice_vision.types` (nodule masks at their bbox, label map on the source grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from dicom_factory import mr_series, us_frames_rgb, us_image, us_region
from pydicom.uid import generate_uid

from backmice_vision.io import load_series
from backmice_vision.labels import DEFECT, FASCIA, FAT, NODULE
from backmice_vision.types import DetectionResult, FasciaDefect, ImageSeries, NeedleTarget, Nodule

OBLIQUE = (0.866025, 0.5, 0.0, -0.5, 0.866025, 0.0)  # axial, rotated 30° in plane
FLIPPED = (-1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # coronal, rows and columns reversed


def mr(
    folder: Path, orientation: tuple[float, ...] = OBLIQUE, *, rows: int = 40, cols: int = 36
) -> ImageSeries:
    """A 5-slice classic MR series sharing one Frame of Reference, patient side data included."""
    paths = mr_series(folder, rows=rows, cols=cols, orientation=orientation, step=-3.0)
    for_uid = generate_uid()
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.FrameOfReferenceUID = for_uid
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "F", "20240102", "101500"
        ds.save_as(p, enforce_file_format=True)
    return load_series(folder)


def us(
    path: Path, n_frames: int = 1, *, rows: int = 60, cols: int = 80, calibrated: bool = True
) -> ImageSeries:
    """A colour ultrasound image (one frame) or cine whose tissue region is offset inside the frame."""
    region = us_region((10, 12, 55, 72), (0.1, 0.1) if calibrated else None)
    us_image(path, us_frames_rgb(n_frames, rows, cols), photometric="RGB", regions=[region])
    return load_series(path)


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    i, j = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 <= 1.0


def make_result(series: ImageSeries, n_nodules: int = 2, *, side: str | None = "left") -> DetectionResult:
    """A result with ``n_nodules`` elliptic nodules (distinct frames/places), a defect below each nodule."""
    n, rows, cols = series.shape
    label_map = np.zeros((n, rows, cols), np.uint8)
    label_map[:, rows // 2 :, :] = FAT
    label_map[:, int(rows * 0.75), :] = FASCIA
    prob = np.zeros((n, rows, cols), np.float32)
    region = series.regions[0].box if series.regions else (0, 0, rows, cols)
    r0, c0, r1, c1 = region
    nodules = []
    for idx in range(n_nodules):
        k0 = min(idx, n - 1)
        k1 = min(k0 + (2 if n > 2 else 1), n)
        ci = r0 + (r1 - r0) * 0.45
        cj = c0 + (c1 - c0) * (0.3 + 0.4 * idx)
        ri, rj = max(2.0, (r1 - r0) * 0.12), max(2.0, (c1 - c0) * 0.1)
        i0, i1 = int(ci - ri), int(ci + ri) + 1
        j0, j1 = int(cj - rj), int(cj + rj) + 1
        plane = _ellipse((i1 - i0, j1 - j0), (ci - i0, cj - j0), (ri, rj))
        mask = np.repeat(plane[None], k1 - k0, axis=0)
        label_map[k0:k1, i0:i1, j0:j1][mask] = NODULE
        prob[k0:k1, i0:i1, j0:j1][mask] = 0.9
        di = min(i1 + 1, r1 - 1)
        label_map[k0, di : di + 2, int(cj) - 1 : int(cj) + 2] = DEFECT
        nodules.append(
            Nodule(
                id=idx + 1,
                center_voxel=(float(k0), float(ci), float(cj)),
                center_patient_mm=(1.0, 2.0, 3.0) if series.modality == "MR" else None,
                diameters_mm=(18.4 - idx, 11.2),
                depth_mm=12.5,
                fascia_depth_mm=15.0,
                side=side,  # type: ignore[arg-type]
                fascia_defect=FasciaDefect(
                    idx == 0,
                    0.8 if idx == 0 else 0.2,
                    3.0 if idx == 0 else None,
                    (float(k0), float(di), float(cj)) if idx == 0 else None,
                ),
                confidence=0.87 - 0.2 * idx,
                needle_target=NeedleTarget((float(k0), float(r0), float(cj)), None, 12.5),
                volume_ml=1.2 if series.modality == "MR" else None,
                bbox=(k0, i0, j0, k1, i1, j1),
                mask=mask,
                region_index=0 if series.regions else None,
            )
        )
    return DetectionResult(
        series=series,
        nodules=nodules,
        series_probability=0.93 if nodules else 0.05,
        label_map=label_map,
        nodule_probability=prob,
        model_id="test-model",
        model_version="1.0",
        timings_s={"load": 0.1, "inference": 0.2},
        thresholds={"nodule": 0.5, "defect": 0.5},
    )
