"""Class probabilities → measured back-mouse nodules (:class:`~backmice_vision.types.Nodule`).

Plain functions over numpy arrays, in the style of scikit-image. Conventions are those of
:mod:`backmice_vision.types`: voxel index ``(k, i, j)`` on the *source* grid, LPS millimetres, the MR affine
maps voxel centres to patient mm, ultrasound regions carry their own ``(row, col)`` spacing in mm.

``probabilities`` is float32 ``(C, n, rows, cols)`` with ``C = len(MODEL_CLASSES)`` (background, fat,
fascia, nodule, defect), softmax over ``C``, on the source grid of the series.

Instances
    Hysteresis, as in :func:`skimage.filters.apply_hysteresis_threshold`: voxels with nodule probability
    > ``nodule_grow_threshold`` are grouped in-plane with 8-connectivity and across slices / frames only
    where they overlap at the same ``(i, j)``, and a group is an instance when it holds a *core* voxel
    (probability > ``nodule_threshold``). The core finds the nodule, the lower threshold gives its extent:
    a large isoechoic nodule that the network is sure of only in part is measured whole, and fragments of
    one nodule are one instance (a grow threshold at or above ``nodule_threshold`` is plain
    thresholding). ``nodule_grow_max_mm`` (> 0) bounds the growth to ``ceil(nodule_grow_max_mm /
    smaller pixel size)`` steps from the core (8-connected in-plane, or one slice / frame), so a low grow
    threshold cannot run away over neighbouring fat. A bundle chooses both for its network
    (``postprocessing`` in its metadata, as nnU-Net picks its post-processing on validation). MR
    components are 3-D nodules;
    an ultrasound component spanning several cine frames is one *tracked* nodule whose key frame is the
    frame of largest area (measurements and ``center_voxel`` come from that frame).

Measurements (all in mm, never invented: an uncalibrated ultrasound region gives no mm values)
    * ``diameters_mm``: extents along the principal axes of the voxel cloud in mm (each extent includes
      the voxel footprint), longest first; MR three, ultrasound two in-plane.
    * ``depth_mm``: skin surface → nearest nodule edge. Ultrasound: the top edge of region row ``row0`` is
      at depth ``region.depth_offset_mm`` below the transducer face, so the top edge of row ``r`` is at
      ``depth_offset_mm + (r - row0) * dy``. MR: the shortest way to the skin going posterior (+y, the
      needle's way): from every boundary voxel of the nodule, the distance along +y to the first sample
      outside the body mask (:class:`BodyMask`; the skin sits halfway between the last body sample and
      it), less the way from the voxel centre to its face along +y; ``None`` when no ray meets the skin
      inside the stack (a small field of view that crops the skin off gives no depth, not one to its edge).
    * ``fascia_depth_mm``: depth of the first fascia voxel (probability ≥ 0.5) met going deeper from the
      nodule centre, measured from the skin (ultrasound: down the columns of the nodule's central half,
      median over columns; MR: along −y from the centre's height down the columns of the central half of
      the nodule's footprint, at most 10 mm below its deepest voxel, median over the columns that meet
      it, added to the needle depth at the centre).
    * ``fascia_defect``: the defect-class peak (mean of the highest defect probabilities covering 1 mm² of
      in-plane area, which ignores single-pixel spikes) in a band of ``defect_band_mm`` around the
      nodule's deep half (voxels deeper than its centre), through the ``"defect"`` calibration;
      ``width_mm`` = extent across the beam of defect voxels (probability ≥ 0.5) in that band.
    * ``confidence``: mean nodule probability of the instance's core voxels through the ``"nodule"``
      calibration.
    * anatomical plausibility: an instance is dropped when less than ``min_fat_context`` of a 2 mm ring
      around it (key frame / central slice) is fat, fascia, nodule or defect by the model
      (:func:`fat_context`: a back mouse lies in the subcutaneous fat, on or through the fascia, never
      inside muscle, bone or the abdomen), and, on ultrasound, when more than ``max_fascia_above`` of
      its columns lie under a fascial sheet wider than itself with no fat between the two (it lies in
      the muscle under the thoracolumbar fascia; a membranous layer higher up in the fat and a nodule's
      own capsule do not count).
    * ``needle_target``: skin point straight above the centre (ultrasound: region top row at the centre
      column; MR: body surface reached along +y from the centre) and the skin → centre distance.

The series probability is the noisy-OR ``1 - prod(1 - confidence_i)`` over the reported nodules (0 when
there are none), through the ``"series"`` calibration when given.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ConfigError, ModelError
from .labels import BACKGROUND, DEFECT, FASCIA, FAT, MODEL_CLASSES, NODULE
from .model.calibration import apply_calibration
from .profiles import profile_for
from .resources import config_path
from .types import FasciaDefect, ImageSeries, NeedleTarget, Nodule, UltrasoundRegion


@dataclass(frozen=True)
class Thresholds(Mapping[str, float]):
    """The inference thresholds: a typed, frozen record (also a read-only mapping, ``thr["max_aspect"]``).

    The field defaults are neutral (every candidate reported: ``confidence_threshold`` 0); the operating
    point is ``configs/inference.yaml`` (:func:`load_thresholds`). Every way in
    (:meth:`from_mapping`, :meth:`replace`, ``Detector(thresholds=...)``, the YAML, ``backmice evaluate
    --threshold NAME=VALUE``) rejects an unknown name or a value that is not a finite number with a
    one-line :class:`~backmice_vision.errors.ConfigError`.
    """

    nodule_threshold: float = 0.5  # nodule probability of an instance's core voxels
    nodule_grow_threshold: float = 1.0  # the instance grows from its core over voxels above this (off)
    nodule_grow_max_mm: float = 0.0  # and this far from its core, in steps of the smaller pixel (0: off)
    defect_threshold: float = 0.5  # calibrated defect probability for FasciaDefect.present
    min_diameter_mm: float = 5.0  # instances with a shorter longest diameter are dropped
    max_diameter_mm: float = 60.0  # longer ones too: back mice are 1-3 cm, > 5 cm is referred as a lipoma
    max_aspect: float = 5.0  # and those longer than 5x their second diameter (strips along the fascia)
    min_volume_mm3: float = 30.0  # MR instances below this volume are dropped
    confidence_threshold: float = 0.0  # nodules below this calibrated confidence are not reported
    min_area_px: float = 20.0  # uncalibrated ultrasound: minimum key-frame area in pixels
    defect_band_mm: float = 5.0  # band around the nodule's deep half searched for the defect class
    # anatomical plausibility: a back mouse lies in the subcutaneous fat, on or through the fascia
    min_fat_context: float = 0.35  # share of a 2 mm ring around it the model calls fat/fascia/nodule/defect
    max_fascia_above: float = 0.5  # US: share of its columns under a fascia with no fat between (muscle)
    min_cine_frames: float = 2.0  # US: frames a track must span in a clip of 5 frames or more
    min_cine_fraction: float = 0.0  # US: and this share of the clip's frames (0: off)

    def __post_init__(self) -> None:
        for name in self:
            object.__setattr__(self, name, _threshold_value(name, getattr(self, name), "thresholds"))

    def __getitem__(self, name: str) -> float:
        if name not in _THRESHOLD_NAMES:
            raise KeyError(name)
        return float(getattr(self, name))

    def __iter__(self) -> Iterator[str]:
        return iter(_THRESHOLD_NAMES)

    def __len__(self) -> int:
        return len(_THRESHOLD_NAMES)

    @staticmethod
    def check(given: Mapping[str, Any], source: str = "thresholds") -> dict[str, float]:
        """``given`` as ``{name: float}``; ConfigError on an unknown name or a value that is no number."""
        if not isinstance(given, Mapping):
            raise ConfigError(f"{source}: expected a mapping of threshold names to numbers")
        out = {}
        for key, value in given.items():
            name = str(key).strip()
            if name not in _THRESHOLD_NAMES:
                close = difflib.get_close_matches(name, _THRESHOLD_NAMES, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(_THRESHOLD_NAMES)
                raise ConfigError(f"{source}: unknown threshold {name!r} ({hint})")
            if value is not None:  # an empty YAML value keeps the base value
                out[name] = _threshold_value(name, value, source)
        return out

    @classmethod
    def from_mapping(
        cls, given: Mapping[str, Any], source: str = "thresholds", base: Thresholds | None = None
    ) -> Thresholds:
        """``base`` (default: the neutral field defaults) with the values of ``given`` (checked)."""
        if isinstance(given, Thresholds) and base is None:
            return given
        return dataclasses.replace(base or cls(), **cls.check(given, source))

    def replace(self, overrides: Mapping[str, Any] | None = None, source: str = "thresholds") -> Thresholds:
        """A copy with ``overrides`` (checked like :meth:`from_mapping`)."""
        return self if not overrides else Thresholds.from_mapping(overrides, source, base=self)


def _threshold_value(name: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
        raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{source}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
    return number


_THRESHOLD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Thresholds))
DEFAULT_THRESHOLDS = Thresholds()  # the neutral record; the operating point is load_thresholds()
_FASCIA_P = 0.5
_DEFECT_P = 0.5
_SEARCH_MM = 120.0  # longest skin search from a nodule
_POSTERIOR = np.array([0.0, 1.0, 0.0])  # +y in LPS: from the nodule towards the skin of the back

Calibration = dict[str, dict[str, Any]]


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """The operating point: :data:`DEFAULT_THRESHOLDS` updated from a YAML file.

    ``path`` defaults to the shipped ``configs/inference.yaml``. Keys are read under
    ``thresholds:`` (else at the top level); an unknown key is a :class:`ConfigError` naming the file.
    """
    out = DEFAULT_THRESHOLDS
    cfg = Path(path) if path is not None else config_path("inference.yaml")
    if not cfg.is_file():
        if path is not None:
            raise ConfigError("threshold file not found", cfg)
        return out
    import yaml

    try:
        data = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({type(exc).__name__})", cfg) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of threshold names to numbers", cfg)
    section = data.get("thresholds", data)
    return _merge_thresholds(section if isinstance(section, dict) else {}, str(cfg))


def _merge_thresholds(given: Mapping[str, Any], source: str = "thresholds") -> Thresholds:
    return Thresholds.from_mapping(given, source)


# --------------------------------------------------------------------------- geometry helpers


def _tracking_structure() -> np.ndarray:
    """8-connected in-plane, linked across slices / frames only through overlap at the same (i, j)."""
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = True
    s[0, 1, 1] = s[2, 1, 1] = True
    return s


def label_tracks(mask: np.ndarray, series: ImageSeries) -> tuple[np.ndarray, int]:
    """Connected components of a bool ``(n, rows, cols)`` mask, numbered 1..N (int32, 0 = none).

    8-connected in-plane; linked across MR slices, and across the frames of one multi-frame ultrasound
    instance (a cine clip), through overlap at the same (i, j), bridging a one-frame gap (a nodule missed
    on one frame of a sweep stays one track). Separate ultrasound images of a series (other SOP
    instances) are never linked: each is its own view.
    """
    from scipy import ndimage

    if profile_for(series.modality).is_volume:
        labels, n = ndimage.label(mask, structure=_tracking_structure())
        return labels.astype(np.int32, copy=False), int(n)
    labels = np.zeros(mask.shape, dtype=np.int32)
    total = 0
    for start, stop in _views(series, mask.shape[0]):
        view = labels[start:stop]
        clip = mask[start:stop]
        if stop - start >= 3:  # bridge a nodule missed on one frame of a sweep: one track, not two
            bridged = clip.copy()
            bridged[1:-1] |= clip[:-2] & clip[2:]
            n = ndimage.label(bridged, structure=_tracking_structure(), output=view)  # in place
            view[~clip] = 0
        else:
            n = ndimage.label(clip, structure=_tracking_structure(), output=view)
        if total and n:
            view[view > 0] += total
        total += int(n)
    return labels, total


def _views(series: ImageSeries, n: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of the ``n`` frames that may be linked: the whole stack of a volume, else
    one range per ultrasound SOP instance (a cine clip, or one image)."""
    if profile_for(series.modality).is_volume:
        return [(0, n)]
    uids = [src.sop_instance_uid for src in series.sources]
    starts = [k for k in range(n) if k == 0 or uids[k] != uids[k - 1]]
    return list(zip(starts, [*starts[1:], n], strict=True))


def nodule_instances(
    nodule_p: np.ndarray,
    thresholds: Mapping[str, float],
    series: ImageSeries,
    spacing_mm: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hysteresis instances of a nodule-probability array ``(n, rows, cols)``: ``(labels, core, n)``.

    ``labels`` int32 numbers the :func:`label_tracks` components of ``nodule_p >
    nodule_grow_threshold`` (at most ``nodule_threshold``) that hold a core voxel (``> nodule_threshold``)
    1..n, 0 elsewhere; ``core`` is the bool core mask. With ``nodule_grow_max_mm`` > 0 and the in-plane
    pixel size ``spacing_mm`` (row, col) known, only the voxels of that mask reached from the core in
    ``ceil(nodule_grow_max_mm / min(spacing_mm))`` steps of :func:`label_tracks`' connectivity count.
    """
    from scipy import ndimage

    core = nodule_p > thresholds["nodule_threshold"]
    grow = min(thresholds["nodule_grow_threshold"], thresholds["nodule_threshold"])
    region = nodule_p > grow
    limit_mm = thresholds["nodule_grow_max_mm"]
    if limit_mm > 0 and spacing_mm is not None and grow < thresholds["nodule_threshold"] and core.any():
        steps = int(np.ceil(limit_mm / min(spacing_mm)))
        for start, stop in _views(series, core.shape[0]):  # never across separate ultrasound images
            if core[start:stop].any():
                region[start:stop] = ndimage.binary_dilation(
                    core[start:stop], _tracking_structure(), iterations=steps, mask=region[start:stop]
                )
            else:
                region[start:stop] = False
    labels, n = label_tracks(region, series)
    if n == 0:
        return labels, core, 0
    keep = np.zeros(n + 1, dtype=bool)
    keep[labels[core]] = True
    keep[0] = False
    renumber = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return renumber[labels], core, int(keep.sum())


def _linear(series: ImageSeries) -> np.ndarray | None:
    """3x3 matrix whose columns are the mm displacement of one step in k, i, j (None: uncalibrated)."""
    if series.affine is not None:
        return np.asarray(series.affine, dtype=np.float64)[:3, :3]
    if series.spacing_mm is not None:
        return np.diag(np.asarray(series.spacing_mm, dtype=np.float64))
    return None


def principal_extents_mm(points_mm: np.ndarray, edges_mm: np.ndarray) -> tuple[float, ...]:
    """Extents of a voxel cloud along its principal axes, longest first.

    ``points_mm`` (N, D) are voxel centres in mm; the columns of ``edges_mm`` (D, D) are the mm vectors of
    one voxel step along each index axis. Each extent is the centre-to-centre span plus the voxel
    footprint along that axis, so a box of ``n`` voxels along an axis measures ``n * spacing``.
    """
    d = points_mm.shape[1]
    centred = points_mm - points_mm.mean(axis=0)
    if points_mm.shape[0] > 1:
        _, vecs = np.linalg.eigh(centred.T @ centred)
    else:
        vecs = np.eye(d)
    out = []
    for m in range(d):
        u = vecs[:, m]
        proj = centred @ u
        out.append(float(proj.max() - proj.min() + np.abs(u @ edges_mm).sum()))
    return tuple(sorted(out, reverse=True))


def plausible_size(diameters_mm: tuple[float, ...], thresholds: dict[str, float]) -> bool:
    """Whether principal diameters (mm, longest first) fit a back mouse: ``min_diameter_mm`` to
    ``max_diameter_mm`` long and at most ``max_aspect`` times longer than the second diameter."""
    longest = diameters_mm[0]
    if not thresholds["min_diameter_mm"] <= longest <= thresholds["max_diameter_mm"]:
        return False
    return len(diameters_mm) < 2 or longest <= thresholds["max_aspect"] * diameters_mm[1]


class BodyMask:
    """Bool body mask of an MR stack ``(n, rows, cols)``, computed slice by slice when first indexed.

    Per slice: intensity above 10 % of the 99th percentile of the stack, united with voxels the model calls
    tissue (background probability < 0.5, which keeps fat-suppressed fat inside the body), holes filled,
    largest 8-connected component kept. Indexed like an array with integer index arrays ``(k, i, j)``;
    only the slices a query touches are computed (the depth rays of a few nodules cross a few slices).
    """

    def __init__(self, pixels: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        self.shape: tuple[int, ...] = tuple(pixels.shape)
        self._pixels, self._probabilities = pixels, probabilities
        self._threshold = 0.1 * float(np.percentile(pixels[:, ::2, ::2], 99))
        self._mask = np.zeros(pixels.shape, dtype=bool)
        self._done = np.zeros(pixels.shape[0], dtype=bool)

    def __getitem__(self, index: tuple[np.ndarray, ...]) -> np.ndarray:
        ks = np.unique(np.asarray(index[0], dtype=np.intp))
        for k in ks[~self._done[ks]]:
            self._mask[k] = self._slice(int(k))
            self._done[k] = True
        return self._mask[index]

    def _slice(self, k: int) -> np.ndarray:
        from scipy import ndimage

        m = self._pixels[k] > self._threshold
        if self._probabilities is not None:
            m |= self._probabilities[BACKGROUND, k] < 0.5
        m = ndimage.binary_fill_holes(m)
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            m = lab == int(np.argmax(sizes))
        return np.asarray(m, dtype=bool)


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _peak(values: np.ndarray, pixel_area_mm2: float | None) -> float:
    """Mean of the highest values covering 1 mm² (10 values when the pixel area is unknown)."""
    if values.size == 0:
        return 0.0
    n = 10 if pixel_area_mm2 is None else max(1, round(1.0 / pixel_area_mm2))
    n = min(n, values.size)
    return float(np.partition(values, values.size - n)[values.size - n :].mean(dtype=np.float64))


def _defect_band(
    mask: np.ndarray, deeper: np.ndarray, sampling: tuple[float, ...], band_mm: float
) -> np.ndarray:
    """Voxels within ``band_mm`` of the instance (mm distance transform) that lie deeper than its centre."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~mask, sampling=sampling)
    return (dist <= band_mm) & deeper


def _crop(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray, pad: np.ndarray) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, int(a - p)), min(n, int(b + p))) for a, b, p, n in zip(lo, hi, pad, shape, strict=True)
    )


# --------------------------------------------------------------------------- public entry point


def extract_nodules(
    series: ImageSeries,
    probabilities: np.ndarray,
    *,
    calibration: Calibration | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> tuple[list[Nodule], float]:
    """Find nodule instances in class probabilities and measure them.

    Parameters
    ----------
    series : ImageSeries
        The source series (geometry, regions, header laterality).
    probabilities : ndarray, float32, shape (C, n, rows, cols)
        Softmax class probabilities on the series' source grid, classes ``MODEL_CLASSES``.
    calibration : dict, optional
        ``{"nodule": params, "defect": params, "series": params}`` for
        :func:`backmice_vision.model.calibration.apply_calibration`; a missing entry is the identity.
    thresholds : Thresholds or mapping, optional
        A :class:`Thresholds`, or values replacing those of :data:`DEFAULT_THRESHOLDS` (an unknown name
        is a :class:`ConfigError`); ``None`` reads ``configs/inference.yaml``.

    Returns
    -------
    nodules : list of Nodule
        Sorted by decreasing confidence, ids 1, 2, ...
    series_probability : float
        Probability that the series shows at least one back mouse (see the module docstring).
    """
    thr = dict(load_thresholds() if thresholds is None else _merge_thresholds(thresholds))
    cal = calibration or {}
    probs = np.asarray(probabilities)
    expected = (len(MODEL_CLASSES), *series.shape)
    if probs.shape != expected:
        raise ModelError(f"probability map has shape {probs.shape}, expected {expected} for this series")
    if profile_for(series.modality).is_volume:
        found = _mr_instances(series, probs, thr, cal)
    else:
        found = _us_instances(series, probs, thr, cal)
    nodules = sorted(
        (f for f in found if f.confidence >= thr["confidence_threshold"]), key=lambda f: -f.confidence
    )
    for n, nodule in enumerate(nodules, start=1):
        nodule.id = n
    noisy_or = 1.0 - float(np.prod([1.0 - n.confidence for n in nodules]))
    series_p = float(apply_calibration(cal.get("series"), noisy_or)) if "series" in cal else noisy_or
    return nodules, series_p


def _defect_record(
    p_raw: float,
    pixels: np.ndarray,
    offset: tuple[int, ...],
    width: float | None,
    cal: Calibration,
    thr: dict,
) -> FasciaDefect:
    p = float(apply_calibration(cal.get("defect"), p_raw))
    loc: tuple[float, float, float] | None = None
    if pixels.any():
        c = np.argwhere(pixels).mean(axis=0) + np.asarray(offset)
        loc = (float(c[0]), float(c[1]), float(c[2])) if c.size == 3 else None
    return FasciaDefect(
        present=p >= thr["defect_threshold"], probability=p, width_mm=width, location_voxel=loc
    )


# --------------------------------------------------------------------------- MR


def _mr_instances(series: ImageSeries, probs: np.ndarray, thr: dict, cal: Calibration) -> list[Nodule]:
    from scipy import ndimage

    nod_p = probs[NODULE]
    lin = _linear(series)
    spacing = None if lin is None else tuple(float(v) for v in np.linalg.norm(lin, axis=0))
    labels, core, n = nodule_instances(
        nod_p, thr, series, None if spacing is None else (spacing[1], spacing[2])
    )
    if n == 0:
        return []
    affine = None if series.affine is None else np.asarray(series.affine, dtype=np.float64)
    voxel_mm3 = None if lin is None else abs(float(np.linalg.det(lin)))
    body = BodyMask(series.pixels, probs) if lin is not None else None
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        off = np.array([s.start for s in sl])
        idx = np.argwhere(comp) + off
        centre = idx.mean(axis=0)
        diameters: tuple[float, ...] = ()
        volume_ml = None
        if lin is not None and voxel_mm3 is not None:
            diameters = principal_extents_mm(idx @ lin.T, lin)
            volume_mm3 = idx.shape[0] * voxel_mm3
            if volume_mm3 < thr["min_volume_mm3"] or not plausible_size(diameters, thr):
                continue
            volume_ml = volume_mm3 / 1000.0
        kc = round(float(centre[0]))
        key = labels[kc] == lab
        if (
            key.any()
            and fat_context(probs[:, kc], key, None if spacing is None else (spacing[1], spacing[2]))
            < thr["min_fat_context"]
        ):
            continue
        score = float(nod_p[sl][comp & core[sl]].mean(dtype=np.float64))  # float64 sum: alignment-independent
        centre_mm = None if affine is None else affine[:3, :3] @ centre + affine[:3, 3]
        side: Literal["left", "right"] | None = None
        if centre_mm is not None and centre_mm[0] != 0:
            side = "left" if centre_mm[0] > 0 else "right"

        depth = None
        if affine is not None and centre_mm is not None and body is not None and spacing is not None:
            edge_mm = (np.argwhere(_boundary(comp)) + off) @ affine[:3, :3].T + affine[:3, 3]
            edge_mm = edge_mm[edge_mm[:, 1] >= centre_mm[1]]  # the posterior half faces the skin
            to_skin = _posterior_skin_distance(affine, edge_mm, body, min(spacing))
            if np.isfinite(to_skin).any():
                # from a voxel centre, +y leaves the voxel where one index has changed by half a step
                exit_mm = 0.5 / float(np.abs(np.linalg.solve(affine[:3, :3], _POSTERIOR)).max())
                depth = max(0.0, float(np.nanmin(to_skin)) - exit_mm)

        needle, fascia_depth = None, None
        if affine is not None and body is not None and centre_mm is not None and spacing is not None:
            needle = _mr_needle(affine, centre_mm, body, min(spacing))
            below = _mr_fascia_below(affine, centre_mm, idx, probs[FASCIA], min(spacing))
            if needle is not None and below is not None:
                fascia_depth = needle.depth_mm + below

        fdef = FasciaDefect(present=False, probability=float(apply_calibration(cal.get("defect"), 0.0)))
        if spacing is not None and lin is not None:
            pad = np.ceil((thr["defect_band_mm"] + 3.0) / np.asarray(spacing)).astype(int)
            crop = _crop(series.shape, idx.min(axis=0), idx.max(axis=0) + 1, pad)
            m = labels[crop] == lab
            grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in crop], indexing="ij"), -1)
            y_mm = grid @ lin[1] + (0.0 if affine is None else affine[1, 3])
            centre_y = float(lin[1] @ centre + (0.0 if affine is None else affine[1, 3]))
            band = _defect_band(m, y_mm <= centre_y, spacing, thr["defect_band_mm"])
            p_raw = _peak(probs[DEFECT][crop][band], spacing[1] * spacing[2])
            pix = band & (probs[DEFECT][crop] >= _DEFECT_P)
            width = None
            if pix.any():
                pts = (np.argwhere(pix) + [s.start for s in crop]) @ lin.T
                # across the beam (the y axis): the larger of the x and z extents, voxel footprint included
                width = max(float(np.ptp(pts[:, a]) + np.abs(lin[a]).sum()) for a in (0, 2))
            fdef = _defect_record(p_raw, pix, tuple(s.start for s in crop), width, cal, thr)

        k0, i0, j0 = (int(s.start) for s in sl)
        k1, i1, j1 = (int(s.stop) for s in sl)
        nodule = Nodule(
            id=0,
            center_voxel=(float(centre[0]), float(centre[1]), float(centre[2])),
            center_patient_mm=None
            if centre_mm is None
            else (float(centre_mm[0]), float(centre_mm[1]), float(centre_mm[2])),
            diameters_mm=diameters,
            depth_mm=depth,
            fascia_depth_mm=fascia_depth,
            side=side,
            fascia_defect=fdef,
            confidence=float(apply_calibration(cal.get("nodule"), score)),
            needle_target=needle,
            volume_ml=volume_ml,
            bbox=(k0, i0, j0, k1, i1, j1),
            mask=comp.copy(),
            # a stack's first or last slice cuts it, as does the in-plane edge
            truncated=_touches_edge(idx, series.shape, (1, *_edge_margin(spacing and spacing[1:], 2))),
        )
        out.append(nodule)
    return out


def _posterior_skin_distance(
    affine: np.ndarray, points_mm: np.ndarray, body: BodyMask, step_mm: float
) -> np.ndarray:
    """Distance (mm) along +y from each of ``points_mm`` (M, 3) LPS to the skin, NaN where none is met.

    Samples every ``step_mm / 2`` up to ``_SEARCH_MM``; the skin lies halfway between the last sample in
    ``body`` and the first one outside it. A ray that leaves the stack first meets no skin (NaN).
    """
    inv = np.linalg.inv(affine)
    h = 0.5 * step_mm
    ts = np.arange(h, _SEARCH_MM, h)
    pts = points_mm[:, None, :] + ts[None, :, None] * _POSTERIOR  # (M, T, 3)
    vox = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.intp)
    inside = np.all((vox >= 0) & (vox < np.asarray(body.shape)), axis=2)
    air = np.zeros(inside.shape, dtype=bool)
    air[inside] = ~body[tuple(vox[inside].T)]
    first_out = np.where(inside.all(axis=1), len(ts), np.argmin(inside, axis=1))
    first_air = np.where(air.any(axis=1), np.argmax(air, axis=1), len(ts))
    return np.where(first_air < first_out, ts[np.minimum(first_air, len(ts) - 1)] - 0.5 * h, np.nan)


def _mr_needle(
    affine: np.ndarray, centre_mm: np.ndarray, body: BodyMask, step_mm: float
) -> NeedleTarget | None:
    """The skin entry point straight posterior (+y) of the nodule centre, None if no skin is met."""
    t_skin = float(_posterior_skin_distance(affine, centre_mm[None, :], body, step_mm)[0])
    if not np.isfinite(t_skin):
        return None
    inv = np.linalg.inv(affine)
    skin_mm = centre_mm + t_skin * _POSTERIOR
    skin_vox = inv[:3, :3] @ skin_mm + inv[:3, 3]
    return NeedleTarget(
        skin_voxel=(float(skin_vox[0]), float(skin_vox[1]), float(skin_vox[2])),
        skin_patient_mm=(float(skin_mm[0]), float(skin_mm[1]), float(skin_mm[2])),
        depth_mm=t_skin,
    )


_FASCIA_BELOW_MM = 10.0  # MR: the fascia under a nodule is sought at most this far below its deepest voxel
_MAX_COLUMNS = 400  # rays per nodule at most (evenly spread over its central columns)


def _mr_fascia_below(
    affine: np.ndarray, centre_mm: np.ndarray, idx: np.ndarray, fascia_p: np.ndarray, step_mm: float
) -> float | None:
    """Distance (mm) along −y from the nodule centre's height down to the fascia under the nodule.

    One ray per column of the central half of the nodule's footprint (its voxels' patient x and z on a
    ``step_mm`` grid, within a quarter of the footprint's x and z extents of its middle, as on
    ultrasound: outer columns graze the capsule, which the model may call fascia), from the centre's y
    down to the first fascia sample (probability ≥ 0.5), no deeper than ``_FASCIA_BELOW_MM`` below the
    nodule's deepest voxel; the median over the columns that meet it. Columns beside a fascia defect
    still meet the sheet at its level, and a deeper sheet (the fascia of a muscle under an unsegmented
    patch) is out of reach. None when no column meets a fascia within the bound.
    """
    lin, origin = affine[:3, :3], affine[:3, 3]
    pts = idx @ lin.T + origin
    xz = pts[:, [0, 2]]
    lo, hi = xz.min(axis=0), xz.max(axis=0)
    central = np.all(np.abs(xz - 0.5 * (lo + hi)) <= 0.25 * (hi - lo) + 0.5 * step_mm, axis=1)
    cols = np.unique(np.rint(xz[central] / step_mm).astype(np.int64), axis=0) * step_mm
    if len(cols) > _MAX_COLUMNS:
        cols = cols[np.linspace(0, len(cols) - 1, _MAX_COLUMNS).astype(np.intp)]
    h = 0.5 * step_mm
    reach = float(centre_mm[1] - pts[:, 1].min()) + _FASCIA_BELOW_MM
    ts = np.arange(h, reach + h, h)
    starts = np.column_stack([cols[:, 0], np.full(len(cols), centre_mm[1]), cols[:, 1]])
    samples = starts[:, None, :] - ts[None, :, None] * _POSTERIOR  # (M, T, 3)
    inv = np.linalg.inv(affine)
    vox = np.rint(samples @ inv[:3, :3].T + inv[:3, 3]).astype(np.intp)
    inside = np.all((vox >= 0) & (vox < np.asarray(fascia_p.shape)), axis=2)
    hit = np.zeros(inside.shape, dtype=bool)
    hit[inside] = fascia_p[tuple(vox[inside].T)] >= _FASCIA_P
    met = hit.any(axis=1)
    if not met.any():
        return None
    return float(np.median(ts[np.argmax(hit[met], axis=1)]))


# --------------------------------------------------------------------------- ultrasound


def _laterality(series: ImageSeries) -> Literal["left", "right"] | None:
    for key in ("ImageLaterality", "Laterality"):
        value = str(series.header.get(key) or "").strip().upper()
        if value == "L":
            return "left"
        if value == "R":
            return "right"
    return None


_RING_MM = 2.0


def fat_context(probs_2d: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> float:
    """Share of a 2 mm ring around ``mask`` (one frame or slice, bool ``(h, w)``) whose most likely class
    is subcutaneous fat, fascia, defect or nodule (the rest of a nodule larger than the thresholded
    mask) (``probs_2d``: ``(C, h, w)`` on the same grid).

    A back mouse sits in the subcutaneous fat on the thoracolumbar fascia or herniates through it, so
    its surroundings are fat and fascia; a candidate inside muscle, bone or the abdomen is ringed by
    background. Without calibration the ring is 10 pixels wide.
    """
    from scipy import ndimage

    r = [10, 10] if spacing_mm is None else [max(1, round(_RING_MM / s)) for s in spacing_mm]
    rows, cols = np.nonzero(mask)
    lo = np.maximum([rows.min() - r[0] - 1, cols.min() - r[1] - 1], 0)
    hi = np.minimum([rows.max() + r[0] + 2, cols.max() + r[1] + 2], mask.shape)
    m = mask[lo[0] : hi[0], lo[1] : hi[1]]
    yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1]
    disk = (yy / r[0]) ** 2 + (xx / r[1]) ** 2 <= 1.0
    ring = ndimage.binary_dilation(m, structure=disk) & ~m
    if not ring.any():
        return 1.0
    p = probs_2d[:, lo[0] : hi[0], lo[1] : hi[1]]
    best = np.argmax(p, axis=0)
    return float(np.isin(best[ring], (FAT, FASCIA, NODULE, DEFECT)).mean())


def _fascia_above(
    fascia_p: np.ndarray,
    fat_p: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    spacing_mm: tuple[float, float] | None,
) -> float:
    """Share of a US key-frame mask's columns in which the candidate lies under a fascial sheet: the
    deepest fascia (p >= 0.5) ending at least 1 mm above its top, with less than 1 mm of fat (p >= 0.5)
    between the two, and belonging to a sheet (fascia joined across gaps of up to 2 mm) that runs at
    least 5 mm past both sides of the candidate or to the region's edge. That is a candidate in the
    muscle under the thoracolumbar fascia. A membranous layer higher up in the fat (fat between) and
    the bright capsule arching over a nodule (no wider than the nodule) do not count.
    """
    from scipy import ndimage

    dy, dx = (0.1, 0.1) if spacing_mm is None else spacing_mm
    one_mm, side = max(1, round(1.0 / dy)), max(1, round(5.0 / dx))
    joined = ndimage.binary_closing(fascia_p >= _FASCIA_P, np.ones((1, 2 * max(1, round(1.0 / dx)) + 1)))
    sheets, _ = ndimage.label(joined | (fascia_p >= _FASCIA_P), np.ones((3, 3)))
    spans = {i + 1: (sl[1].start, sl[1].stop) for i, sl in enumerate(ndimage.find_objects(sheets)) if sl}
    n_cols = fascia_p.shape[1]
    left, right = max(0, int(cols.min()) - side), min(n_cols, int(cols.max()) + 1 + side)
    tops: dict[int, int] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        tops[c] = min(r, tops.get(c, r))
    above = []
    for c, top in tops.items():
        hits = np.flatnonzero(fascia_p[: max(0, top - one_mm), c] >= _FASCIA_P)
        if not hits.size:
            above.append(False)
            continue
        fat_between = int((fat_p[hits[-1] + 1 : top, c] >= 0.5).sum())
        c0, c1 = spans[int(sheets[hits[-1], c])]
        above.append(fat_between < one_mm and c0 <= left and c1 >= right)
    return float(np.mean(above)) if above else 0.0


def _us_instances(series: ImageSeries, probs: np.ndarray, thr: dict, cal: Calibration) -> list[Nodule]:
    regions = list(series.regions)
    whole_frame = not regions
    if whole_frame:
        sp = None if series.spacing_mm is None else (float(series.spacing_mm[1]), float(series.spacing_mm[2]))
        regions = [UltrasoundRegion(index=0, box=(0, 0, series.shape[1], series.shape[2]), spacing_mm=sp)]
    side = _laterality(series)
    out = []
    for region in regions:
        for inst in _us_region_instances(series, probs, region, thr, cal, side):
            if whole_frame:
                inst.region_index = None
            out.append(inst)
    return out


def _us_region_instances(
    series: ImageSeries,
    probs: np.ndarray,
    region: UltrasoundRegion,
    thr: dict,
    cal: Calibration,
    side: Literal["left", "right"] | None,
) -> list[Nodule]:
    from scipy import ndimage

    r0, c0, r1, c1 = region.box
    nod_p = probs[NODULE, :, r0:r1, c0:c1]
    labels, core, n = nodule_instances(nod_p, thr, series, region.spacing_mm)
    if n == 0:
        return []
    sp = region.spacing_mm
    # frames of the instance (clip or image) each frame belongs to
    clip_frames = [stop - start for start, stop in _views(series, nod_p.shape[0]) for _ in range(start, stop)]
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        areas = comp.reshape(comp.shape[0], -1).sum(axis=1)
        kk = int(np.argmax(areas))  # key frame, relative to the track
        key = comp[kk]
        k = sl[0].start + kk
        core_frames = int((comp & core[sl]).reshape(comp.shape[0], -1).any(axis=1).sum())
        if clip_frames[k] >= 5 and (
            core_frames < thr["min_cine_frames"] or core_frames < thr["min_cine_fraction"] * clip_frames[k]
        ):
            continue  # a blip on one frame of a sweep is not a nodule, nor one on a few frames of a long clip
        rows, cols = np.nonzero(key)
        rows = rows + sl[1].start  # region-relative
        cols = cols + sl[2].start
        truncated = _touches_edge(np.stack([rows, cols], 1), (r1 - r0, c1 - c0), _edge_margin(sp, 2))
        ci, cj = float(rows.mean()), float(cols.mean())
        score = float(nod_p[sl][comp & core[sl]].mean(dtype=np.float64))  # float64 sum: alignment-independent

        diameters: tuple[float, ...] = ()
        depth = fascia_depth = None
        needle = None
        width = None
        if sp is None:
            if rows.size < thr["min_area_px"]:
                continue
        else:
            dy, dx = sp
            diameters = principal_extents_mm(np.stack([rows * dy, cols * dx], 1), np.diag([dy, dx]))
            if not plausible_size(diameters, thr):
                continue
            depth = region.depth_offset_mm + float(rows.min()) * dy
            needle = NeedleTarget(
                skin_voxel=(float(k), float(r0), cj + c0),
                skin_patient_mm=None,
                depth_mm=region.depth_offset_mm + (ci + 0.5) * dy,
            )
            fascia_depth = _us_fascia_depth(probs[FASCIA, k, r0:r1, c0:c1], rows, cols, ci, region)
        frame_p = probs[:, k, r0:r1, c0:c1]
        if fat_context(frame_p, _key_mask(rows, cols, (r1 - r0, c1 - c0)), sp) < thr["min_fat_context"]:
            continue
        if _fascia_above(frame_p[FASCIA], frame_p[FAT], rows, cols, sp) > thr["max_fascia_above"]:
            continue

        # defect: band around the deep half of the key-frame mask, within the region
        band_mm = thr["defect_band_mm"]
        sampling = sp if sp is not None else (1.0, 1.0)  # uncalibrated: the band is in pixels
        pad = np.ceil((band_mm + 3.0) / np.asarray(sampling)).astype(int)
        crop = _crop(
            (r1 - r0, c1 - c0),
            np.array([rows.min(), cols.min()]),
            np.array([rows.max(), cols.max()]) + 1,
            pad,
        )
        m = np.zeros((crop[0].stop - crop[0].start, crop[1].stop - crop[1].start), dtype=bool)
        m[rows - crop[0].start, cols - crop[1].start] = True
        deeper = (np.arange(crop[0].start, crop[0].stop) >= ci)[:, None] & np.ones_like(m)
        band = _defect_band(m, deeper, sampling, band_mm)
        dprob = probs[DEFECT, k, r0:r1, c0:c1][crop]
        p_raw = _peak(dprob[band], None if sp is None else sp[0] * sp[1])
        pix = band & (dprob >= _DEFECT_P)
        if pix.any() and sp is not None:
            pc = np.nonzero(pix)[1]
            width = float(pc.max() - pc.min() + 1) * sp[1]
        pix3 = pix[None]
        fdef = _defect_record(p_raw, pix3, (k, r0 + crop[0].start, c0 + crop[1].start), width, cal, thr)

        k0, k1 = sl[0].start, sl[0].stop
        i0, i1 = sl[1].start + r0, sl[1].stop + r0
        j0, j1 = sl[2].start + c0, sl[2].stop + c0
        nodule = Nodule(
            id=0,
            center_voxel=(float(k), ci + r0, cj + c0),
            center_patient_mm=None,
            diameters_mm=diameters,
            depth_mm=depth,
            fascia_depth_mm=fascia_depth,
            side=side,
            fascia_defect=fdef,
            confidence=float(apply_calibration(cal.get("nodule"), score)),
            needle_target=needle,
            volume_ml=None,
            bbox=(k0, i0, j0, k1, i1, j1),
            mask=comp.copy(),
            region_index=region.index,
            truncated=truncated,
        )
        out.append(nodule)
    return out


EDGE_PX = 2  # an instance this close to the edge of an image is cut by it ...
EDGE_MM = 0.5  # ... or this close in mm: about one model pixel, by which a resampled mask may stop short


def _edge_margin(spacing_mm: tuple[float, ...] | None, n_axes: int) -> tuple[int, ...]:
    """Per-axis margin in pixels for :func:`_touches_edge`: ``EDGE_PX``, or ``EDGE_MM`` where wider."""
    if spacing_mm is None:
        return (EDGE_PX,) * n_axes
    return tuple(max(EDGE_PX, math.ceil(EDGE_MM / s)) for s in spacing_mm)


def _touches_edge(index: np.ndarray, shape: tuple[int, ...], margin: tuple[int, ...]) -> bool:
    """Whether voxel indices ``(N, D)`` come within ``margin`` of the first or last index of an axis of
    ``shape`` (a margin of 1: on the first or last index). Axes one voxel long (a single MR slice) do
    not cut."""
    size, m = np.asarray(shape), np.asarray(margin)
    lo, hi = index.min(axis=0), index.max(axis=0)
    cut = (lo < m) | (hi > size - 1 - m)
    return bool((cut & (size > 1)).any())


def _key_mask(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def _us_fascia_depth(
    fascia_p: np.ndarray, rows: np.ndarray, cols: np.ndarray, ci: float, region: UltrasoundRegion
) -> float | None:
    """Median over the central half of the nodule's columns of the first fascia row below the centre."""
    assert region.spacing_mm is not None
    lo, hi = int(cols.min()), int(cols.max())
    quarter = (hi - lo) / 4.0
    start = int(np.ceil(ci))
    found = []
    for j in range(int(np.floor(lo + quarter)), int(np.ceil(hi - quarter)) + 1):
        hit = np.nonzero(fascia_p[start:, j] >= _FASCIA_P)[0]
        if hit.size:
            found.append(start + int(hit[0]))
    if not found:
        return None
    return region.depth_offset_mm + float(np.median(found)) * region.spacing_mm[0]


# --------------------------------------------------------------------------- matching and overlap


@dataclass(frozen=True)
class Match:
    """One row of :func:`match_nodules`: a hit (both indices), a miss (``pred`` None) or a false positive
    (``truth`` None). ``duplicate`` marks a second hit on an already detected truth nodule."""

    pred: int | None
    truth: int | None
    distance_mm: float | None
    duplicate: bool = False


def match_radius_mm(truth: dict[str, Any]) -> float:
    """Hit radius of a ground-truth nodule: half its longest diameter, at least 5 mm."""
    diam = truth.get("diameters_mm") or [0.0]
    return max(0.5 * float(max(diam)), 5.0)


def _pred_position(pred: Nodule, frame: int) -> np.ndarray | None:
    """(i, j) of a predicted ultrasound nodule on ``frame``: its mask centroid there, else None."""
    k0, i0, j0, k1, _, _ = pred.bbox
    if pred.mask is not None and k0 <= frame < k1 and pred.mask[frame - k0].any():
        rows, cols = np.nonzero(pred.mask[frame - k0])
        return np.array([rows.mean() + i0, cols.mean() + j0])
    if round(pred.center_voxel[0]) == frame:
        return np.array(pred.center_voxel[1:])
    return None


def _distance_mm(pred: Nodule, truth: dict[str, Any], series: ImageSeries) -> float | None:
    tv = np.asarray(truth["center_voxel"], dtype=np.float64)
    if profile_for(series.modality).is_volume:
        # a nodule centred outside the series (cut by the slab or the field of view) shows only its part
        # inside: it is localised at the nearest voxel centre of the grid
        near = np.clip(tv, 0.0, np.asarray(series.shape, dtype=np.float64) - 1.0)
        tp = truth.get("center_patient_mm")
        if np.array_equal(near, tv) and pred.center_patient_mm is not None and tp is not None:
            return float(
                np.linalg.norm(np.asarray(pred.center_patient_mm) - np.asarray(tp, dtype=np.float64))
            )
        lin = _linear(series)
        return None if lin is None else float(np.linalg.norm(lin @ (np.asarray(pred.center_voxel) - near)))
    ri = truth.get("region_index")
    if ri is not None and pred.region_index is not None and ri != pred.region_index:
        return None
    ri = pred.region_index if ri is None else ri
    region = next((r for r in series.regions if r.index == ri), None)
    if region is None or region.spacing_mm is None:
        return None  # no calibration: no mm distance, no match
    pos = _pred_position(pred, round(float(tv[0])))
    if pos is None:
        return None
    return float(np.hypot((pos[0] - tv[1]) * region.spacing_mm[0], (pos[1] - tv[2]) * region.spacing_mm[1]))


def match_nodules(pred: list[Nodule], truth: list[dict[str, Any]], series: ImageSeries) -> list[Match]:
    """Match predicted nodules to ground-truth nodules (dicts of ``ground_truth.json``'s series entries).

    A prediction hits a truth nodule when its centre lies within :func:`match_radius_mm` of the truth
    centre, in mm: MR in patient mm (``center_patient_mm``; voxel offsets through the affine otherwise; a
    truth centre outside the grid, a nodule cut by the slab, is moved to the nearest voxel centre inside),
    ultrasound in the region's row/col mm on the truth nodule's frame (a cine prediction is placed at its
    mask centroid on that frame). Predictions are taken by decreasing confidence, each to the nearest
    undetected truth nodule in reach; a prediction whose reachable truth nodules are all detected already is
    a ``duplicate`` (neither hit nor false positive). Returns one :class:`Match` per prediction plus one
    per missed truth nodule.
    """
    order = sorted(range(len(pred)), key=lambda p: -pred[p].confidence)
    detected: set[int] = set()
    out: list[Match] = []
    for p in order:
        reach = []
        for t, tr in enumerate(truth):
            d = _distance_mm(pred[p], tr, series)
            if d is not None and d <= match_radius_mm(tr):
                reach.append((d, t))
        reach.sort()
        fresh = [(d, t) for d, t in reach if t not in detected]
        if fresh:
            d, t = fresh[0]
            detected.add(t)
            out.append(Match(p, t, d))
        elif reach:
            d, t = reach[0]
            out.append(Match(p, t, d, duplicate=True))
        else:
            out.append(Match(p, None, None))
    out.extend(Match(None, t, None) for t in range(len(truth)) if t not in detected)
    return out


def nodule_full_mask(nodule: Nodule, shape: tuple[int, int, int]) -> np.ndarray:
    """The nodule's bool ``mask`` pasted into a full ``(n, rows, cols)`` grid at its ``bbox``."""
    out = np.zeros(shape, dtype=bool)
    if nodule.mask is not None:
        k0, i0, j0, k1, i1, j1 = nodule.bbox
        out[k0:k1, i0:i1, j0:j1] = nodule.mask
    return out


def nodule_dice(pred_mask: np.ndarray, truth_mask: np.ndarray) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two bool masks of one shape (1.0 when both are empty)."""
    a = np.asarray(pred_mask, dtype=bool)
    b = np.asarray(truth_mask, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
