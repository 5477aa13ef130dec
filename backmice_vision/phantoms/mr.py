"""MR slice stacks (T1 FSE, T2 FSE, STIR) through a phantom :class:`~.anatomy.Subject`.

Signal model: the relative intensities of the phantom parameter table in ``shared/docs/domain.md``
("MR intensity vs fat (1.0)"), sampled once per series from the ranges in :data:`SIGNAL`; not a
spin-echo equation. Back mice have the signal of fat; the oedematous variant is darker on T1 and
brighter on STIR; on STIR (:data:`FAT_SUPPRESSED`) a fat-signal nodule is labelled as the fat it
looks like. Each voxel is the mean signal of its sub-samples (3 through the slice thickness x
2 x 2 in-plane) wherever the tissue changes near it (in-plane label boundaries and around lesions),
else the signal at its centre. A smooth multiplicative coil bias (brightest at the posterior
surface, ``±bias_amplitude``) is applied, then complex Gaussian noise whose magnitude gives Rician
statistics (Rayleigh in air, mean / std = 1.91). ``sigma = 1 / snr_fat`` in units of the fat signal.

Geometry (DICOM, LPS mm): ``orientation`` holds the row cosine (direction along a row, increasing
column index ``j``) then the column cosine (increasing row index ``i``); slices are ordered along the
normal ``row x col`` with ``image_position_mm[k]`` the centre of pixel ``(0, 0)`` of slice ``k``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..labels import BONES, DEEP_FATS, MUSCLES, NODULE_TISSUES, Tissue
from .anatomy import Subject

Range = tuple[float, float]
CONTRASTS = ("T1", "T2", "STIR")
FAT_SUPPRESSED = frozenset({"STIR"})  # contrasts on which fat, and so a non-oedematous back mouse, is dark

# Relative intensity (fat = 1.0) per tissue and contrast, sampled per series (phantom table [S28] -> [E]).
_FAT = {"T1": (1.0, 1.0), "T2": (0.9, 1.0), "STIR": (0.03, 0.1)}
SIGNAL: dict[str, dict[Tissue, Range]] = {
    "T1": {
        Tissue.SKIN: (0.45, 0.6),
        Tissue.SUPERFICIAL_FASCIA: (0.05, 0.15),
        Tissue.TLF: (0.05, 0.15),
        Tissue.MUSCLE: (0.3, 0.45),
        Tissue.BONE: (0.03, 0.08),  # cortex: signal void
        Tissue.VERTEBRAL_BODY: (0.55, 0.75),  # fatty marrow
        Tissue.DISC: (0.3, 0.4),
        Tissue.BOWEL: (0.2, 0.4),
        Tissue.NODULE_CAPSULE: (0.1, 0.2),
        Tissue.CYST: (0.2, 0.35),
        Tissue.VESSEL: (0.03, 0.1),
        Tissue.HAEMATOMA: (0.6, 0.9),
        Tissue.OEDEMA: (0.55, 0.75),
        Tissue.VISCERA: (0.25, 0.4),
        Tissue.CSF: (0.1, 0.2),
    },
    "T2": {
        Tissue.SKIN: (0.3, 0.45),
        Tissue.SUPERFICIAL_FASCIA: (0.05, 0.1),
        Tissue.TLF: (0.05, 0.1),
        Tissue.MUSCLE: (0.15, 0.3),
        Tissue.BONE: (0.03, 0.08),
        Tissue.VERTEBRAL_BODY: (0.4, 0.55),
        Tissue.DISC: (0.9, 1.4),  # hydrated nucleus [S31]: T2 102 ms vs fat 60-68
        Tissue.BOWEL: (0.4, 1.0),
        Tissue.NODULE_CAPSULE: (0.08, 0.15),
        Tissue.CYST: (1.2, 2.0),
        Tissue.VESSEL: (0.03, 0.1),
        Tissue.HAEMATOMA: (1.0, 1.6),
        Tissue.OEDEMA: (1.0, 1.3),
        Tissue.VISCERA: (0.3, 0.6),
        Tissue.CSF: (1.2, 2.5),
    },
    "STIR": {
        Tissue.SKIN: (0.25, 0.4),
        Tissue.SUPERFICIAL_FASCIA: (0.05, 0.1),
        Tissue.TLF: (0.05, 0.1),
        Tissue.MUSCLE: (0.2, 0.3),
        Tissue.BONE: (0.03, 0.08),
        Tissue.VERTEBRAL_BODY: (0.1, 0.2),
        Tissue.DISC: (0.8, 1.2),
        Tissue.BOWEL: (0.3, 0.6),
        Tissue.NODULE_CAPSULE: (0.08, 0.15),
        Tissue.CYST: (1.0, 1.5),
        Tissue.VESSEL: (0.03, 0.1),
        Tissue.HAEMATOMA: (0.8, 1.2),
        Tissue.OEDEMA: (0.6, 1.0),
        Tissue.VISCERA: (0.3, 0.5),
        Tissue.CSF: (1.0, 1.5),
    },
}
_OEDEMATOUS_NODULE = {"T1": (0.6, 0.8), "T2": (1.0, 1.2), "STIR": (0.3, 0.6)}  # [S19] -> [E]
_FAT_TISSUES = (Tissue.SUPERFICIAL_FAT, Tissue.DEEP_FAT, Tissue.NODULE, Tissue.STALK, *DEEP_FATS)
# fine labels that take the signal of another: bones have marrow inside, muscles are muscle
_SAME_SIGNAL: dict[Tissue, Tissue] = {
    **{t: Tissue.VERTEBRAL_BODY for t in BONES if t != Tissue.VERTEBRAL_BODY},
    **{t: Tissue.MUSCLE for t in MUSCLES},
}
# nominal sequence timing (ms) written to DICOM: TR, TE, TI, echo train length [S30] -> [E]
_TIMING = {
    "T1": ((400, 700), (8, 15), None, (2, 4)),
    "T2": ((3000, 5000), (80, 110), None, (12, 20)),
    "STIR": ((3500, 6000), (30, 60), (150, 220), (8, 14)),
}


@dataclass
class MRConfig:
    """Sampling ranges of :func:`random_protocol` (mm unless named; phantom table rows "MR voxel",
    "MR noise / bias" and "MR coverage confounder" of ``shared/docs/domain.md``)."""

    contrast_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)  # T1, T2, STIR when the kind names none
    p_small_fov: float = 0.35  # axial: small spine-centred FOV (crops lateral nodules) [S30] -> [E]
    wide_fov_mm: Range = (360.0, 420.0)  # axial whole cross-section [E]
    wide_pixel_mm: Range = (0.8, 1.2)  # [E]
    small_fov_mm: Range = (160.0, 220.0)  # FOV 20-24 cm guidance [S30]
    sagittal_fov_mm: Range = (240.0, 320.0)  # [S30]
    pixel_mm: Range = (0.5, 0.9)  # "MR voxel": in-plane 0.5-0.9 mm
    axial_slices: tuple[int, int] = (12, 20)  # 12-15 slices [S30], up to 20
    axial_thickness_mm: Range = (3.5, 5.0)  # axial 4 mm at 4.4 mm [S30]
    sagittal_thickness_mm: Range = (3.0, 4.0)
    gap_fraction: Range = (0.0, 0.2)  # gap about 10 %
    sagittal_coverage_mm: Range = (30.0, 40.0)  # half-width of the sagittal stack [S30] -> [E]
    axial_center_z_mm: Range = (-40.0, 10.0)  # L3-4 to L5-S1 discs around the crest level [S30]
    axial_tilt_deg: Range = (
        0.0,
        0.0,
    )  # straight axial as stored by default; oblique along the discs is an option
    sagittal_tilt_deg: Range = (-5.0, 5.0)
    flip_prob: float = 0.0  # per axis: stored rows / columns reversed (an option for tests) [E]
    snr_fat: Range = (20.0, 60.0)  # "MR noise / bias" [S31] -> [E]
    bias_amplitude: Range = (0.2, 0.4)  # same row
    field_strengths_t: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_range = f.name.endswith(("_mm", "_deg", "_fraction", "slices", "snr_fat", "amplitude"))
            if is_range and not value[0] <= value[1]:
                raise ConfigError(f"MR protocol config: {f.name} range {list(value)} has low > high")
        if min(self.contrast_probs) < 0 or sum(self.contrast_probs) <= 0:
            raise ConfigError("MR protocol config: contrast_probs must be non-negative with a positive sum")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MRConfig:
        """Build from a mapping; lists become tuples. Unknown keys raise :class:`ConfigError`."""
        d = dict(d or {})
        defaults = cls()
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"MR protocol config: unknown key(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            default = getattr(defaults, key)
            try:
                if isinstance(default, tuple):
                    if not isinstance(value, (list, tuple)) or len(value) != len(default):
                        raise TypeError
                    kwargs[key] = tuple(type(x)(v) for x, v in zip(default, value, strict=True))
                else:
                    kwargs[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(f"MR protocol config: bad value for {key}: {value!r}") from None
        return cls(**kwargs)


@dataclass
class MRProtocol:
    """One MR series to simulate.

    ``fov_mm`` and ``matrix`` are ``(rows, cols)``. Axial: rows run posterior-ward (+y), columns to the
    patient's left (+x), tilted by ``tilt_deg`` about x. Sagittal: rows run inferior-ward (-z), columns
    posterior-ward (+y). ``flip_rows`` / ``flip_cols`` reverse the column / row cosine (stored image
    mirrored). ``center_mm`` is the stack centre (LPS); ``None`` centres by ``anchor``: ``"body"`` (axial
    cross-section), ``"spine"`` (the canal) or ``"back"`` (sagittal: posterior skin 15 mm inside the
    edge), at ``center_z_mm`` and ``center_x_mm``.
    """

    contrast: str
    plane: str
    fov_mm: tuple[float, float]
    matrix: tuple[int, int]
    slice_thickness_mm: float
    spacing_between_slices_mm: float
    n_slices: int
    center_mm: tuple[float, float, float] | None = None
    anchor: str = "body"
    center_x_mm: float = 0.0
    center_z_mm: float = 0.0
    tilt_deg: float = 0.0
    flip_rows: bool = False
    flip_cols: bool = False
    field_strength_t: float = 1.5
    snr_fat: float = 40.0
    bias_amplitude: float = 0.3
    tr_ms: float = 550.0
    te_ms: float = 12.0
    ti_ms: float | None = None
    echo_train_length: int = 3
    flip_angle_deg: float = 90.0

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ConfigError(f"MR protocol: contrast must be one of {CONTRASTS}, not {self.contrast!r}")
        if self.plane not in ("axial", "sagittal"):
            raise ConfigError(f"MR protocol: plane must be axial or sagittal, not {self.plane!r}")
        if self.anchor not in ("body", "spine", "back"):
            raise ConfigError(f"MR protocol: anchor must be body, spine or back, not {self.anchor!r}")
        if min(self.matrix) < 2 or self.n_slices < 1 or min(self.fov_mm) <= 0 or self.slice_thickness_mm <= 0:
            raise ConfigError("MR protocol: matrix, fov_mm, n_slices and slice thickness must be positive")


@dataclass(eq=False)
class MRImage:
    """A simulated series. See the module docstring for the geometry conventions.

    ``volume`` float32 ``(n, rows, cols)`` in 0..4095; ``labels`` uint8 Tissue and ``nodule_ids`` uint8
    (0 = none) at the voxel centres, as the sequence shows them (on a fat-suppressed contrast a
    non-oedematous nodule is labelled fat); ``nodules`` one dict per subject nodule: ``id``,
    ``visible`` (any labelled voxel centre inside it), ``n_voxels``, ``center_voxel`` (continuous
    ``(k, i, j)`` of the nodule centre, possibly outside the grid), ``center_patient_mm``,
    ``diameters_mm``, ``depth_mm``, ``fascia_depth_mm``, ``side``, ``variant``, ``lobulated`` and
    ``defect``.
    """

    volume: np.ndarray
    labels: np.ndarray
    nodule_ids: np.ndarray
    image_position_mm: np.ndarray  # (n, 3)
    orientation: np.ndarray  # (6,)
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    slice_thickness_mm: float
    spacing_between_slices_mm: float
    protocol: MRProtocol
    nodules: list[dict[str, Any]] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 with ``A @ [k, i, j, 1] = [x, y, z, 1]`` (LPS mm, voxel centres)."""
        return _affine(
            self.image_position_mm[0], self.orientation, self.pixel_spacing_mm, self.spacing_between_slices_mm
        )


def _affine(origin: np.ndarray, ori: np.ndarray, spacing: tuple[float, float], step: float) -> np.ndarray:
    row, col = ori[:3], ori[3:]
    a = np.eye(4)
    a[:3, 0] = np.cross(row, col) * step
    a[:3, 1] = col * spacing[0]
    a[:3, 2] = row * spacing[1]
    a[:3, 3] = origin
    return a


def _parse_kind(kind: str) -> tuple[str, str | None, str | None]:
    plane, contrast, fov = None, None, None
    for token in kind.lower().replace("-", "_").split("_"):
        if token in ("axial", "sagittal"):
            plane = token
        elif token.upper() in CONTRASTS:
            contrast = token.upper()
        elif token in ("wide", "small"):
            fov = token
        elif token not in ("mr", "enhanced", ""):
            plane = None
            break
    if plane is None or (fov is not None and plane != "axial"):
        raise ConfigError(f"MR protocol kind {kind!r}: expected e.g. axial_t1, axial_small_stir, sagittal_t2")
    return plane, contrast, fov


def _matrix(rng: np.random.Generator, fov: float, pixel: Range) -> int:
    """A multiple of 32 (256-512) giving a pixel in ``pixel`` where it can."""
    n = fov / rng.uniform(*pixel)
    return int(np.clip(round(n / 32) * 32, 256, 512))


def random_protocol(
    rng: np.random.Generator, config: MRConfig | Mapping[str, Any] | None, kind: str
) -> MRProtocol:
    """Sample a series protocol. ``kind`` names the plane and optionally contrast and axial FOV, e.g.
    ``"axial_t1"``, ``"axial_wide_t2"``, ``"axial_small_stir"``, ``"sagittal_t2"``, ``"sagittal"``.

    Axial stacks are wide (whole cross-section: lateral nodules visible) or small and spine-centred
    (lateral nodules cropped); sagittal stacks cover ±30-40 mm of the midline (lateral nodules missed).
    """
    c = config if isinstance(config, MRConfig) else MRConfig.from_dict(config)
    plane, contrast, fov_kind = _parse_kind(kind)
    if contrast is None:
        p = np.asarray(c.contrast_probs, float)
        contrast = CONTRASTS[int(rng.choice(3, p=p / p.sum()))]
    tr, te, ti, etl = _TIMING[contrast]
    field_t = float(rng.choice(c.field_strengths_t))
    common: dict[str, Any] = {
        "contrast": contrast,
        "plane": plane,
        "field_strength_t": field_t,
        "snr_fat": float(rng.uniform(*c.snr_fat)),
        "bias_amplitude": float(rng.uniform(*c.bias_amplitude)),
        "tr_ms": float(rng.uniform(*tr)),
        "te_ms": float(rng.uniform(*te)),
        "ti_ms": None if ti is None else float(ti[0] if field_t < 2 else ti[1]),
        "echo_train_length": int(rng.integers(etl[0], etl[1] + 1)),
        "flip_angle_deg": 90.0 if contrast == "T1" else 150.0,
        "flip_rows": bool(rng.uniform() < c.flip_prob),
        "flip_cols": bool(rng.uniform() < c.flip_prob),
    }
    if plane == "axial":
        if fov_kind is None:
            fov_kind = "small" if rng.uniform() < c.p_small_fov else "wide"
        thick = float(rng.uniform(*c.axial_thickness_mm))
        if fov_kind == "wide":
            cols_fov = float(rng.uniform(*c.wide_fov_mm))
            fov = (cols_fov * float(rng.uniform(0.8, 1.0)), cols_fov)
            pixel = c.wide_pixel_mm
        else:
            side = float(rng.uniform(*c.small_fov_mm))
            fov, pixel = (side, side), c.pixel_mm
        cols = _matrix(rng, fov[1], pixel)
        rows = int(np.clip(round(cols * fov[0] / fov[1] / 32) * 32, 192, 512))
        return MRProtocol(
            fov_mm=fov,
            matrix=(rows, cols),
            slice_thickness_mm=thick,
            spacing_between_slices_mm=thick * (1 + float(rng.uniform(*c.gap_fraction))),
            n_slices=int(rng.integers(c.axial_slices[0], c.axial_slices[1] + 1)),
            anchor="body" if fov_kind == "wide" else "spine",
            center_x_mm=float(rng.uniform(-5, 5)),
            center_z_mm=float(rng.uniform(*c.axial_center_z_mm)),
            tilt_deg=float(rng.uniform(*c.axial_tilt_deg)),
            **common,
        )
    side = float(rng.uniform(*c.sagittal_fov_mm))
    thick = float(rng.uniform(*c.sagittal_thickness_mm))
    step = thick * (1 + float(rng.uniform(*c.gap_fraction)))
    half = float(rng.uniform(*c.sagittal_coverage_mm))
    n = 2 * round(half / step) + 1
    m = _matrix(rng, side, c.pixel_mm)
    return MRProtocol(
        fov_mm=(side, side),
        matrix=(m, m),
        slice_thickness_mm=thick,
        spacing_between_slices_mm=step,
        n_slices=n,
        anchor="back",
        center_x_mm=float(rng.uniform(-3, 3)),
        center_z_mm=float(rng.uniform(-30, 0)),
        tilt_deg=float(rng.uniform(*c.sagittal_tilt_deg)),
        **common,
    )


def _geometry(subject: Subject, p: MRProtocol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and the stack centre (LPS mm)."""
    t = math.radians(p.tilt_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    if p.plane == "axial":
        row, col = rot @ [1.0, 0, 0], rot @ [0, 1.0, 0]
    else:
        row, col = rot @ [0, 1.0, 0], rot @ [0, 0, -1.0]
    if p.flip_rows:
        col = -col
    if p.flip_cols:
        row = -row
    if p.center_mm is not None:
        center = np.asarray(p.center_mm, float)
    elif p.anchor == "body":
        center = np.array([p.center_x_mm, 0.0, p.center_z_mm])
    elif p.anchor == "spine":
        center = np.array([p.center_x_mm, subject.canal_y_mm + 15.0, p.center_z_mm])
    else:  # the posterior skin 15 mm inside the posterior edge of the sagittal FOV
        y = float(subject.skin_y(p.center_x_mm, p.center_z_mm)) + 15.0 - p.fov_mm[1] / 2
        center = np.array([p.center_x_mm, y, p.center_z_mm])
    return row, col, center


def _smooth_field(rng: np.random.Generator, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random 3-D sinusoid field parameters: wave vectors (n, 3) in rad/mm and phases (n,)."""
    lam = rng.uniform(25.0, 90.0, n)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (2 * np.pi / lam)[:, None] * v, rng.uniform(0, 2 * np.pi, n)


def _eval_field(params: tuple[np.ndarray, np.ndarray], pts: np.ndarray) -> np.ndarray:
    k, ph = params
    out = np.zeros(pts.shape[:-1], np.float32)
    for kv, p in zip(k.astype(np.float32), ph, strict=True):
        out += np.sin(pts @ kv + np.float32(p))
    return out / np.float32(math.sqrt(len(ph)))


def simulate_mr(subject: Subject, protocol: MRProtocol, rng: np.random.Generator) -> MRImage:
    """Simulate one series (see the module docstring). About 1-3 s for 20 x 384 x 384 on one core."""
    p = protocol
    row, col, center = _geometry(subject, p)
    normal = np.cross(row, col)
    rows, cols = p.matrix
    dr, dc = p.fov_mm[0] / rows, p.fov_mm[1] / cols
    step = p.spacing_between_slices_mm
    ks = np.arange(p.n_slices) - (p.n_slices - 1) / 2
    slice_centres = center + ks[:, None] * step * normal
    ipp = slice_centres - ((cols - 1) / 2) * dc * row - ((rows - 1) / 2) * dr * col

    lut, oed_value, texture_amp = _signal_lut(rng, p.contrast)
    oedematous = np.zeros(256, bool)
    for nod in subject.nodules:
        oedematous[nod.id] = nod.variant == "oedematous"
    tex_params = _smooth_field(rng)
    bias_y = max(float(subject.skin_y(0.0, float(center[2]))), subject.half_ap_mm) + 5.0
    bias_len = float(rng.uniform(0.8, 1.4)) * subject.half_ap_mm
    boxes = lesion_boxes(subject, margin=p.slice_thickness_mm / 2 + max(dr, dc))

    jj, ii = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    in_plane = jj[..., None] * np.float32(dc) * row.astype(np.float32) + ii[..., None] * np.float32(
        dr
    ) * col.astype(np.float32)  # (rows, cols, 3)
    sub_offsets = voxel_sub_offsets(row, col, p.slice_thickness_mm, (dr, dc))

    volume = np.empty((p.n_slices, rows, cols), np.float32)
    labels = np.empty((p.n_slices, rows, cols), np.uint8)
    ids = np.empty((p.n_slices, rows, cols), np.uint8)
    for k in range(p.n_slices):
        pts = in_plane + ipp[k].astype(np.float32)
        lab, nid = subject.labels_and_ids_at(pts)
        labels[k], ids[k] = lab, nid
        sig = _signal(lut, oed_value, oedematous, lab, nid)
        r_idx = partial_volume_pixels(lab, pts, boxes)
        if r_idx.size:
            sub = pts.reshape(-1, 3)[r_idx][:, None, :] + sub_offsets[None]
            sl, sn = subject.labels_and_ids_at(sub)
            sig.ravel()[r_idx] = _signal(lut, oed_value, oedematous, sl, sn).mean(axis=1)
        tex = _eval_field(tex_params, pts)
        sig *= 1 + texture_amp[lab] * tex
        dist = np.maximum(np.float32(bias_y) - pts[..., 1], 0)
        lateral = 1 - np.float32(0.1) * (pts[..., 0] / np.float32(200.0)) ** 2
        bias = (1 + np.float32(p.bias_amplitude) * (2 * np.exp(-dist / np.float32(bias_len)) - 1)) * lateral
        volume[k] = sig * bias
    if p.contrast in FAT_SUPPRESSED:
        _hide_fat_signal_nodules(labels, ids, subject)

    sigma = np.float32(1.0 / p.snr_fat)
    noise_re = rng.standard_normal(volume.shape, dtype=np.float32)
    noise_im = rng.standard_normal(volume.shape, dtype=np.float32)
    volume += sigma * noise_re
    noise_im *= sigma
    np.hypot(volume, noise_im, out=volume)
    scale = np.float32(rng.uniform(1500.0, 2500.0) / (1 + p.bias_amplitude))
    volume *= scale
    np.clip(volume, 0, 4095, out=volume)

    img = MRImage(
        volume=volume,
        labels=labels,
        nodule_ids=ids,
        image_position_mm=ipp,
        orientation=np.concatenate([row, col]),
        pixel_spacing_mm=(dr, dc),
        slice_thickness_mm=p.slice_thickness_mm,
        spacing_between_slices_mm=step,
        protocol=p,
    )
    img.nodules = _series_nodules(subject, img)
    return img


def _signal_lut(rng: np.random.Generator, contrast: str) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-series signal per tissue label, the oedematous-nodule signal and texture amplitudes."""
    lut = np.zeros(256, np.float32)
    fat = float(rng.uniform(*_FAT[contrast]))
    for t in _FAT_TISSUES:
        lut[t] = fat
    for t, rng_ in SIGNAL[contrast].items():
        lut[t] = rng_[0] + rng.uniform() * (rng_[1] - rng_[0])
    for t, same in _SAME_SIGNAL.items():
        lut[t] = lut[same]
    lut[Tissue.AIR] = 0.0
    texture = np.full(256, 0.03, np.float32)
    texture[[Tissue.VISCERA, Tissue.BOWEL]] = (0.2, 0.3)
    for t, same in _SAME_SIGNAL.items():
        texture[t] = 0.06 if same == Tissue.MUSCLE else 0.08
    texture[Tissue.MUSCLE] = 0.06
    texture[Tissue.AIR] = 0.0
    return lut, float(rng.uniform(*_OEDEMATOUS_NODULE[contrast])), texture


def _signal(
    lut: np.ndarray, oed_value: float, oedematous: np.ndarray, lab: np.ndarray, nid: np.ndarray
) -> np.ndarray:
    sig = lut[lab]
    oed = (lab == Tissue.NODULE) & oedematous[nid]
    if oed.any():
        sig[oed] = oed_value
    return sig


def voxel_sub_offsets(
    row: np.ndarray, col: np.ndarray, thickness_mm: float, spacing_mm: tuple[float, float]
) -> np.ndarray:
    """Offsets float32 ``(12, 3)`` in mm from a voxel centre to the points whose mean signal the voxel
    holds: 3 through the slice thickness (along ``row x col``) x 2 x 2 in-plane (a quarter pixel from
    the centre). ``row`` / ``col`` are the unit row and column cosines, ``spacing_mm`` (row, column)
    spacing, i.e. DICOM PixelSpacing."""
    normal = np.cross(row, col)
    dr, dc = spacing_mm
    return np.array(
        [
            u * thickness_mm * normal + a * dr * col + b * dc * row
            for u in (-1 / 3, 0.0, 1 / 3)
            for a in (-0.25, 0.25)
            for b in (-0.25, 0.25)
        ],
        np.float32,
    )


def partial_volume_pixels(
    lab: np.ndarray, pts: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Flat indices (int64) of the pixels of one slice whose voxel may hold more than one tissue: an
    in-plane label boundary, or inside a lesion box (where a lesion may start within the slice
    thickness). ``lab`` are the centre labels ``(rows, cols)``, ``pts`` their centres ``(rows, cols, 3)``
    in mm; ``boxes`` from :func:`lesion_boxes`."""
    return np.nonzero((_boundaries(lab) | _in_boxes(pts, boxes)).ravel())[0]


def _boundaries(lab: np.ndarray) -> np.ndarray:
    """Pixels whose label differs from one of their 4-neighbours."""
    out = np.zeros(lab.shape, bool)
    d0 = lab[1:] != lab[:-1]
    out[1:] |= d0
    out[:-1] |= d0
    d1 = lab[:, 1:] != lab[:, :-1]
    out[:, 1:] |= d1
    out[:, :-1] |= d1
    return out


def lesion_boxes(subject: Subject, margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axis-aligned boxes (lo, hi) float32 in patient mm around every nodule (its stalk and the fascia
    under it included) and every cyst or haematoma, grown by ``margin`` mm."""
    boxes = []
    for nod in subject.nodules:
        lo, hi = nod.bbox_mm(margin=margin)
        lo[1] -= 8.0 + nod.stalk_length_mm  # drape over the fascia and the stalk
        hi[1] += 8.0
        boxes.append((lo.astype(np.float32), hi.astype(np.float32)))
    for d in subject.distractors:
        if d.kind in ("cyst", "haematoma"):
            c, s = np.asarray(d.center_mm), np.asarray(d.semi_axes_mm) + margin
            boxes.append(((c - s).astype(np.float32), (c + s).astype(np.float32)))
    return boxes


def _in_boxes(pts: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.zeros(pts.shape[:-1], bool)
    for lo, hi in boxes:
        out |= np.all((pts > lo) & (pts < hi), axis=-1)
    return out


def _hide_fat_signal_nodules(labels: np.ndarray, ids: np.ndarray, subject: Subject) -> None:
    """Relabel, in place, the nodules a fat-suppressed series cannot show as the fat they look like.

    A back mouse has the signal of fat and is suppressed with it (domain §4); its thin capsule, the
    stalk and the fascia gap are within the noise of suppressed fat. Only the oedematous variant is
    STIR-bright. The labels (and so the SEG and ``visible``) show what the sequence shows.
    """
    hidden = [nod.id for nod in subject.nodules if nod.variant != "oedematous"]
    if not hidden:
        return
    mask = np.isin(ids, hidden) & np.isin(labels, NODULE_TISSUES)
    labels[mask] = Tissue.SUPERFICIAL_FAT


def _series_nodules(subject: Subject, img: MRImage) -> list[dict[str, Any]]:
    inv = np.linalg.inv(img.affine)
    counts = np.bincount(
        img.nodule_ids[np.isin(img.labels, (Tissue.NODULE, Tissue.NODULE_CAPSULE))].ravel(), minlength=256
    )
    out = []
    for nod in subject.nodules:
        gt = nod.ground_truth()
        kij = inv @ np.array([*nod.center_mm, 1.0])
        n_vox = int(counts[nod.id])
        out.append(
            {
                "id": nod.id,
                "visible": n_vox > 0,
                "n_voxels": n_vox,
                "center_voxel": [float(v) for v in kij[:3]],
                "center_patient_mm": list(nod.center_mm),
                **{
                    k: gt[k]
                    for k in (
                        "diameters_mm",
                        "depth_mm",
                        "fascia_depth_mm",
                        "side",
                        "variant",
                        "lobulated",
                        "defect",
                    )
                },
            }
        )
    return out
