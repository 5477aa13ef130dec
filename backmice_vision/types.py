"""Typed records that flow between the stages (see ``docs`` in the README).

Coordinate conventions, used everywhere in the package:

* **Voxel index** ``(k, i, j)``: ``k`` is the slice (MR, sorted along the slice
  normal) or the frame (US, in stored order), ``i`` the row, ``j`` the column of
  the *stored* pixel grid of the source DICOM, 0-based. Arrays are indexed
  ``pixels[k, i, j]``.
* **Patient coordinates**: DICOM LPS millimetres (x to the patient's left,
  y posterior, z superior).
* **Affine** (MR only): a 4x4 matrix ``A`` with
  ``A @ [k, i, j, 1] = [x, y, z, 1]`` (LPS mm) for the *centre* of voxel
  ``(k, i, j)``.
* **Ultrasound** frames have no patient coordinates. Each tissue region has its
  own in-plane spacing; depth grows with the row index from the region's top
  row (the transducer face for a linear probe).
* Spacing tuples are ``(slice, row, col)`` or ``(row, col)`` in millimetres;
  ``spacing_mm[1]`` is the distance between rows (DICOM PixelSpacing[0]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from .export import ResultUIDs

Modality = Literal["MR", "US"]
Precision = Literal["float32", "bfloat16"]  # of a network's forward pass (Detector(precision=...))


@dataclass(frozen=True)
class FrameSource:
    """Where one frame/slice of an :class:`ImageSeries` comes from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int = 1  # 1-based, as in DICOM
    path: str | None = None


@dataclass
class SeriesRef:
    """A series found on disk: headers only, no pixels."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    paths: list[Path]
    n_instances: int
    n_frames: int
    rows: int = 0
    columns: int = 0
    description: str = ""
    problems: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"SeriesRef(modality={self.modality!r}, series=…{self.series_instance_uid[-12:]}, "
            f"instances={self.n_instances}, frames={self.n_frames})"
        )


@dataclass(frozen=True)
class UltrasoundRegion:
    """One calibrated 2-D tissue region of an ultrasound frame.

    ``box`` is ``(row0, col0, row1, col1)`` in stored pixels with exclusive
    ends (DICOM RegionLocationMinY0, MinX0, MaxY1 + 1, MaxX1 + 1).
    ``spacing_mm`` is ``(row, col)`` from PhysicalDeltaY/X, or ``None`` when the
    image carries no usable calibration (then nothing is reported in mm).
    """

    index: int
    box: tuple[int, int, int, int]
    spacing_mm: tuple[float, float] | None
    depth_offset_mm: float = 0.0  # physical depth of row0 below the transducer face

    @property
    def shape(self) -> tuple[int, int]:
        return (self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(eq=False)
class ImageSeries:
    """Decoded pixels of one series plus the geometry needed to measure them.

    ``pixels`` is float32 ``(n, rows, cols)``: MR slices sorted along the slice
    normal with rescale applied, or US frames (colour converted to luminance).
    ``rgb`` holds the original colour frames (uint8 ``(n, rows, cols, 3)``) for
    colour ultrasound, otherwise ``None``.
    """

    modality: Modality
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float] | None
    sources: list[FrameSource]
    study_instance_uid: str
    series_instance_uid: str
    affine: np.ndarray | None = None
    regions: list[UltrasoundRegion] = field(default_factory=list)
    frame_of_reference_uid: str | None = None
    rgb: np.ndarray | None = None
    header: dict[str, Any] = field(default_factory=dict)
    datasets: list[Any] = field(default_factory=list, repr=False)
    problems: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        n, r, c = self.pixels.shape
        return (int(n), int(r), int(c))

    @property
    def calibrated(self) -> bool:
        """True when millimetres can be measured (a volume with a spacing, or a calibrated region)."""
        from .profiles import profile_for

        if profile_for(self.modality).is_volume:
            return self.spacing_mm is not None
        return any(r.spacing_mm is not None for r in self.regions)

    def __repr__(self) -> str:
        sp = "unknown" if self.spacing_mm is None else "×".join(f"{s:.3g}" for s in self.spacing_mm)
        return (
            f"ImageSeries(modality={self.modality!r}, shape={self.shape}, spacing_mm={sp}, "
            f"regions={len(self.regions)}, series=…{self.series_instance_uid[-12:]})"
        )


@dataclass(frozen=True)
class FasciaDefect:
    present: bool
    probability: float
    width_mm: float | None = None
    location_voxel: tuple[float, float, float] | None = None  # (k, i, j) of the defect centre


@dataclass(frozen=True)
class NeedleTarget:
    """Where to inject local anaesthetic: skin entry point and depth of the nodule centre."""

    skin_voxel: tuple[float, float, float]  # (k, i, j) on the skin surface
    skin_patient_mm: tuple[float, float, float] | None  # LPS, MR only
    depth_mm: float  # from the skin surface to the nodule centre along the beam / skin normal


@dataclass
class Nodule:
    """One detected (or ground-truth) fat nodule. See the module docstring for conventions."""

    id: int
    center_voxel: tuple[float, float, float]
    center_patient_mm: tuple[float, float, float] | None
    diameters_mm: tuple[float, ...]
    depth_mm: float | None
    fascia_depth_mm: float | None
    side: Literal["left", "right"] | None
    fascia_defect: FasciaDefect
    confidence: float
    needle_target: NeedleTarget | None = None
    volume_ml: float | None = None
    bbox: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)  # k0, i0, j0, k1, i1, j1 (exclusive)
    mask: np.ndarray | None = field(default=None, repr=False)  # bool, shape of bbox
    region_index: int | None = None  # US region the nodule lies in
    truncated: bool = (
        False  # reaches the edge of the imaged field (US region, MR volume): sizes are lower bounds
    )

    @property
    def longest_diameter_mm(self) -> float | None:
        return max(self.diameters_mm) if self.diameters_mm else None


@dataclass
class DetectionResult:
    """What :meth:`backmice_vision.Detector.detect` returns for one series."""

    series: ImageSeries
    nodules: list[Nodule]
    series_probability: float
    label_map: np.ndarray  # uint8 (n, rows, cols): 0 bg, 1 fat, 2 fascia, 3 nodule, 4 defect
    nodule_probability: np.ndarray  # float32 (n, rows, cols) on the source grid
    model_id: str
    model_version: str
    timings_s: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def save(
        self, out_dir: str | Path, formats: list[str] | None = None, *, uids: ResultUIDs | None = None
    ) -> dict[str, list[Path]]:
        """Write the outputs (``png``, ``json``, ``seg``, ``sr``, ``sc`` by default; ``segprob`` if asked);
        ``uids`` gives the DICOM outputs' Series/SOP Instance UIDs (:data:`.export.ResultUIDs`)."""
        from .export import save_result

        return save_result(self, Path(out_dir), formats, uids=uids)

    def overlay(self, k: int, scale: int | None = None) -> np.ndarray:
        """The overlay of frame or slice ``k`` as uint8 RGB ``(rows * scale, cols * scale, 3)``.

        By default the pixels of ``overlay_k<k>.png`` that :meth:`save` writes (upscaled by
        :func:`backmice_vision.render.png_scale` so that small images keep readable labels); ``scale=1``
        gives the source resolution (the Secondary Capture's pixels). Any ``k`` of the series works, with
        or without a finding on it (``plt.imshow(result.overlay(k))``).
        """
        from .errors import BackmiceError
        from .render import png_scale, render_overlay

        if scale is not None and (not isinstance(scale, int) or scale < 1):
            raise BackmiceError(f"overlay scale must be a whole number of at least 1 (got {scale!r})")
        return render_overlay(self, int(k), png_scale(self.series.shape[1:]) if scale is None else scale)

    def _repr_html_(self) -> str:
        """Jupyter's view: the key-image montage and a table of the findings."""
        from .export.review import result_html

        return result_html(self)
