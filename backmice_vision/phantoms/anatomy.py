"""Analytic 3-D model of the lower back: layers, back mice, fascial defects and distractors.

Frame (see ``docs/architecture.md``): LPS millimetres, ``x`` to the patient's left, ``y`` posterior,
``z`` superior. The midline is ``x = 0``, the iliac-crest level ``z = 0`` and the body's axial outline
is centred on ``x = y = 0``. The back's skin is ``y = skin_y(x, z)``; depth below it is
``skin_y(x, z) - y``.

The body outline is a super-ellipse (exponent 4 behind ``y = 0``: a flat back; 2 in front). Under the
back the layers are stacked along ``-y``: skin, superficial fat (SAT), superficial fascia, deep fat
(DAT), thoracolumbar fascia (TLF), muscle. Each layer thickness is a smooth random field (a sum of
low-frequency sinusoids, wavelength 20-80 mm) clipped to its configured range, so thicknesses measured
along ``y`` anywhere in the back zone (``|x| <= 0.8 * half_width``) lie in those ranges. Towards the
flanks the depth becomes the distance to the outline, so the layers wrap around the whole body for MR.

Ranges and probabilities come from the phantom parameter table in ``shared/docs/domain.md``
(tags [S#] / [E] there); :class:`AnatomyConfig` names the source of each.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..labels import Tissue
from .deep import DeepAnatomy, deep_labels, sample_deep

Range = tuple[float, float]
Vec3 = tuple[float, float, float]

HABITUS = ("lean", "overweight", "obese")
DISTRACTOR_KINDS = ("cyst", "vessel", "haematoma", "oedema_band")
_FAT_LABELS = (Tissue.SUPERFICIAL_FAT, Tissue.SUPERFICIAL_FASCIA, Tissue.DEEP_FAT, Tissue.OEDEMA)


@dataclass
class AnatomyConfig:
    """Sampling ranges of the phantom anatomy (mm unless named otherwise; ranges are ``(low, high)``).

    Sources are the rows of the phantom parameter table in ``shared/docs/domain.md``.
    """

    habitus: str | None = None  # force "lean" | "overweight" | "obese"; None samples habitus_probs
    habitus_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)  # [E]
    # "Total subcutaneous fat by BMI" [S14, S15] -> [E]
    total_fat_lean_mm: Range = (5.0, 15.0)
    total_fat_overweight_mm: Range = (15.0, 35.0)
    total_fat_obese_mm: Range = (35.0, 70.0)
    skin_mm: Range = (1.5, 3.0)  # "Skin (epidermis + dermis)" [S16]
    sat_mm: Range = (3.0, 20.0)  # "Superficial fat (SAT)"; SAT/DAT split of the total fat [E]
    sat_fraction: Range = (0.3, 0.55)  # share of the total fat above the superficial fascia [E]
    superficial_fascia_mm: Range = (0.2, 0.8)  # "Superficial fascia (membranous layer)" [S13]
    superficial_fascia_sublayers: tuple[int, int] = (1, 3)  # same row [S13]
    dat_mm: Range = (3.0, 40.0)  # "Deep fat (lumbar/gluteal pad)" [S3, S13]
    tlf_mm: Range = (1.0, 2.5)  # "Posterior TLF" [S11, S12]
    muscle_mm: Range = (30.0, 60.0)  # "Paraspinal muscle" [E]
    body_width_mm: Range = (300.0, 380.0)  # axial outline, lean → obese thirds of the range [E]
    body_ap_mm: Range = (200.0, 300.0)  # same [E]
    undulation_mm: Range = (1.0, 3.0)  # boundary undulation amplitude [E]
    undulation_wavelength_mm: Range = (20.0, 80.0)  # [E]
    psis_x_mm: Range = (35.0, 50.0)  # PSIS distance from the midline [S5] -> [E]
    psis_z_mm: Range = (-60.0, -40.0)  # PSIS below the crest level (architecture.md) [E]
    # "Prevalence of negatives" [S6, S7] + Sutro; "Nodules per positive patient" (1, 2, 3, 4)
    no_nodule_prob: float = 0.5
    nodule_count_probs: tuple[float, float, float, float] = (0.5, 0.3, 0.1, 0.1)
    force_nodules: int | None = None  # exact nodule count (0-4) instead of sampling
    bilateral_prob: float = 0.5  # Sutro 49/94 bilateral
    nodule_x_mm: Range = (40.0, 90.0)  # "Nodule location" [S5]: distance from the midline
    nodule_z_top_mm: float = 20.0  # same row: 20 mm above the crest down to the PSIS level
    nodule_long_axis_mm: Range = (8.0, 40.0)  # "Nodule long axis" (backmice.info), log-normal
    nodule_long_axis_median_mm: float = 18.0
    nodule_long_axis_sigma: float = 0.4  # log-normal sigma (ln units) [E]
    nodule_aspect: Range = (1.3, 2.5)  # "Nodule shape": long / short axis [S3]
    lobulated_prob: float = 0.2  # same row
    capsule_mm: Range = (0.2, 0.5)  # "Nodule echogenicity vs fat": rim 0.2-0.5 mm [S19, S20]
    septa_count: tuple[int, int] = (0, 4)  # same row
    oedematous_prob: float = 0.15  # edematous variant [S19] -> [E]
    oedema_halo_mm: Range = (1.0, 3.0)  # perinodular oedema of that variant [E]
    defect_prob: float = 0.7  # "Fascial defect": present in 60-80 % of nodules
    defect_width_mm: Range = (3.0, 15.0)  # same row
    stalk_extra_mm: Range = (1.0, 3.0)  # stalk length = TLF thickness + 1-3 mm
    cyst_prob: float = 0.15  # differential table: epidermoid / sebaceous cyst [S34]
    cyst_diameter_mm: Range = (5.0, 20.0)
    punctum_prob: float = 0.1  # tract to the skin in about 10 % [S34]
    vessel_count: tuple[int, int] = (0, 3)  # subcutaneous vessels [E]
    vessel_diameter_mm: Range = (1.0, 4.0)
    haematoma_prob: float = 0.1  # haematoma / seroma / Morel-Lavallée [S36]
    haematoma_length_mm: Range = (20.0, 80.0)
    haematoma_thickness_mm: Range = (3.0, 12.0)
    oedema_band_prob_obese: float = 0.45  # PLSE: "MR coverage confounder" 20-70 % of obese [S32]
    oedema_band_prob_other: float = 0.2  # 21 % of non-obese [S32]
    oedema_band_thickness_mm: Range = (2.0, 8.0)  # [E]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_range = f.name.endswith(("_mm", "_aspect", "_count", "fraction", "sublayers"))
            if is_range and isinstance(value, tuple) and len(value) == 2 and not value[0] <= value[1]:
                raise ConfigError(f"anatomy config: {f.name} range {list(value)} has low > high")
        if self.habitus is not None and self.habitus not in HABITUS:
            raise ConfigError(f"anatomy config: habitus must be one of {HABITUS}, not {self.habitus!r}")
        if self.force_nodules is not None and not 0 <= self.force_nodules <= 4:
            raise ConfigError("anatomy config: force_nodules must be between 0 and 4")
        for name in ("habitus_probs", "nodule_count_probs"):
            probs = getattr(self, name)
            if min(probs) < 0 or sum(probs) <= 0:
                raise ConfigError(f"anatomy config: {name} must be non-negative with a positive sum")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AnatomyConfig:
        """Build from a (YAML) mapping; lists become tuples. Unknown keys raise :class:`ConfigError`."""
        d = dict(d or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"anatomy config: unknown key(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            default = getattr(cls(), key)
            try:
                if isinstance(default, tuple):
                    if not isinstance(value, (list, tuple)) or len(value) != len(default):
                        raise TypeError
                    kwargs[key] = tuple(type(x)(v) for x, v in zip(default, value, strict=True))
                elif isinstance(default, float):
                    kwargs[key] = float(value)
                elif key == "habitus":
                    kwargs[key] = None if value is None else str(value)
                elif key == "force_nodules":
                    kwargs[key] = None if value is None else int(value)
                else:
                    kwargs[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(f"anatomy config: bad value for {key}: {value!r}") from None
        return cls(**kwargs)


@dataclass
class NoduleSpec:
    """One back mouse: fat ellipsoid(s) in the deep fat just above the TLF (LPS mm).

    ``lobes`` holds ``(center_mm, semi_axes_mm)`` of every ellipsoid of the union (the main one first).
    Semi-axes are along x (transverse, longest), y (AP) and z (SI). The lobes drape over the undulating
    fascia: a point's ``y`` is taken as its height above the TLF added to ``tlf_top_y_mm``, so the bottom
    keeps its clearance above the fascia everywhere (x and z extents are exact, y extents nearly).
    The derived measurements (``diameters_mm`` longest first, ``volume_ml``, ``depth_mm`` skin → nearest
    edge along ``-y``, ``fascia_depth_mm`` skin → TLF top at the centre) are filled in by
    :func:`make_subject`.
    """

    id: int
    center_mm: Vec3
    semi_axes_mm: Vec3
    lobulated: bool
    variant: str  # "typical" | "oedematous"
    defect_present: bool
    defect_width_mm: float | None
    side: str  # "left" (x > 0) | "right"
    n_septa: int
    capsule_mm: float
    lobes: list[tuple[Vec3, Vec3]]
    septa_y_mm: list[float] = field(default_factory=list)
    septa_thickness_mm: float = 0.2
    halo_mm: float = 0.0  # perinodular oedema (oedematous variant only)
    tlf_top_y_mm: float = 0.0  # LPS y of the TLF's top at the centre; see below
    defect_center_xz_mm: tuple[float, float] = (0.0, 0.0)
    defect_semi_axes_xz_mm: tuple[float, float] = (0.0, 0.0)
    stalk_extra_mm: float = 0.0  # stalk reaches this far below the TLF's deep surface
    stalk_length_mm: float = 0.0  # TLF thickness at the defect + stalk_extra_mm
    diameters_mm: Vec3 = (0.0, 0.0, 0.0)
    volume_ml: float = 0.0
    depth_mm: float = 0.0
    fascia_depth_mm: float = 0.0

    def bbox_mm(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounds ``(low, high)`` of the lobes, grown by ``margin`` mm."""
        c = np.array([lobe[0] for lobe in self.lobes])
        s = np.array([lobe[1] for lobe in self.lobes])
        return (c - s).min(axis=0) - margin, (c + s).max(axis=0) + margin

    def ground_truth(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "center_patient_mm": [round(v, 3) for v in self.center_mm],
            "diameters_mm": [round(v, 3) for v in self.diameters_mm],
            "volume_ml": round(self.volume_ml, 4),
            "depth_mm": round(self.depth_mm, 3),
            "fascia_depth_mm": round(self.fascia_depth_mm, 3),
            "side": self.side,
            "variant": self.variant,
            "lobulated": self.lobulated,
            "defect": {
                "present": self.defect_present,
                "width_mm": None if self.defect_width_mm is None else round(self.defect_width_mm, 3),
            },
        }


@dataclass
class Distractor:
    """A lesion that is not a back mouse (LPS mm).

    ``cyst`` and ``haematoma`` are ellipsoids with ``semi_axes_mm`` along x, y, z. ``vessel`` is a tube at
    constant depth below the skin: ``semi_axes_mm = (half_length, radius, radius)`` and the direction
    ``angle_deg`` in the x-z plane from +x. ``oedema_band`` is a sheet lying on the TLF:
    ``semi_axes_mm = (half_width_x, thickness / 2, half_extent_z)``.
    """

    kind: str
    center_mm: Vec3
    semi_axes_mm: Vec3
    angle_deg: float = 0.0
    punctum: bool = False
    depth_mm: float = 0.0  # vessel centreline / band centre depth below the skin

    def ground_truth(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "center_patient_mm": [round(v, 3) for v in self.center_mm],
            "size_mm": [round(2 * v, 3) for v in self.semi_axes_mm],
        }


@dataclass
class _Field:
    """Smooth random field ``sum_k a_k sin(kx_k x + kz_k z + phi_k)`` over (x, z) in mm."""

    amp: np.ndarray
    kx: np.ndarray
    kz: np.ndarray
    phase: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude: float, wavelength: Range, n: int = 3) -> _Field:
        lam = rng.uniform(*wavelength, n)
        theta = rng.uniform(0, np.pi, n)
        amp = amplitude * rng.uniform(0.5, 1.0, n) / math.sqrt(n)
        k = 2 * np.pi / lam
        return cls(amp, k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * np.pi, n))

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(z)), np.float32)
        for a, kx, kz, ph in zip(self.amp, self.kx, self.kz, self.phase, strict=True):
            out += np.float32(a) * np.sin(np.float32(kx) * x + np.float32(kz) * z + np.float32(ph))
        return out


def _smoothstep(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((v - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


@dataclass(eq=False)
class Subject:
    """One synthetic lower back. Build with :func:`make_subject`; query with :meth:`labels_at`.

    ``layers_mm`` holds the nominal (field-mean) thickness of skin, sat, superficial_fascia, dat, tlf and
    muscle; the local thickness at ``(x, z)`` comes from :meth:`layer_depths`.
    """

    seed: int
    habitus: str
    total_fat_mm: float
    nodules: list[NoduleSpec]
    distractors: list[Distractor]
    half_width_mm: float
    half_ap_mm: float
    layers_mm: dict[str, float]
    sf_sublayers: int
    psis_mm: tuple[float, float]  # (|x|, z) of the posterior superior iliac spines
    groove_mm: float
    config: AnatomyConfig = field(repr=False)
    _skin: _Field = field(repr=False)
    _thick: dict[str, _Field] = field(repr=False)
    deep: DeepAnatomy = field(default_factory=DeepAnatomy, repr=False)

    # ------------------------------------------------------------------ surfaces and layers
    def skin_y(self, x: np.ndarray | float, z: np.ndarray | float) -> np.ndarray:
        """LPS ``y`` (mm) of the posterior skin surface above ``(x, z)``; exact for ``|x| <= 0.8 A``.

        ``A`` is ``half_width_mm``; beyond that the outline blends into the flank (see module doc).
        """
        x = np.asarray(x, np.float32)
        z = np.asarray(z, np.float32)
        a, b = np.float32(self.half_width_mm), np.float32(self.half_ap_mm)
        u = np.minimum(np.abs(x) / a, np.float32(0.999))
        base = b * np.sqrt(np.sqrt(1 - u**4))
        groove = np.float32(self.groove_mm) * np.exp(-(x * x) / np.float32(2 * 15.0**2))
        return (base - groove + self._skin(x, z)).astype(np.float32)

    def layer_depths(self, x: np.ndarray | float, z: np.ndarray | float) -> dict[str, np.ndarray]:
        """Depths (mm below the skin, along ``-y``) of the deep surface of each layer at ``(x, z)``.

        Keys ``skin``, ``sat``, ``superficial_fascia``, ``dat``, ``tlf`` (cumulative); ``tlf_top`` is
        ``dat``. Each layer's thickness lies in its configured range.
        """
        x = np.asarray(x, np.float32)
        z = np.asarray(z, np.float32)
        c = self.config
        out: dict[str, np.ndarray] = {}
        depth = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
        ranges = {
            "skin": c.skin_mm,
            "sat": c.sat_mm,
            "superficial_fascia": c.superficial_fascia_mm,
            "dat": c.dat_mm,
            "tlf": c.tlf_mm,
        }
        for name, (lo, hi) in ranges.items():
            t = np.float32(self.layers_mm[name]) + self._thick[name](x, z)
            if name == "dat":  # the gluteal fat pad thickens below the crest
                t = t * (1 + np.float32(0.15) * _smoothstep(-z, 0.0, 60.0))
            depth = depth + np.clip(t, np.float32(lo), np.float32(hi))
            out[name] = depth
        out["tlf_top"] = out["dat"]
        return out

    def _depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth below the skin (mm; negative outside the body) and the back-zone weight (1 = back)."""
        a, b = np.float32(self.half_width_mm), np.float32(self.half_ap_mm)
        xn, yn = x / a, y / b
        xn2, yn2 = xn * xn, yn * yn
        post = np.nonzero(y > 0)[0]
        rho = np.sqrt(xn2 + yn2)
        xp, yp = xn2[post], yn2[post]
        rho[post] = np.sqrt(np.sqrt(xp * xp + yp * yp))
        rho = np.maximum(rho, np.float32(1e-3))
        # gradient of rho: (xn / a, yn / b) / rho, times (xn / rho)^2, (yn / rho)^2 behind y = 0 (exponent 4)
        fx, fy = np.ones_like(rho), np.ones_like(rho)
        rp = rho[post]
        inv2 = 1 / (rp * rp)
        fx[post] = xp * inv2
        fy[post] = yp * inv2
        gx, gy = xn * fx / a, yn * fy / b
        d_norm = (1 - rho) * rho / np.maximum(np.sqrt(gx * gx + gy * gy), np.float32(1e-4))
        w = (1 - _smoothstep(np.abs(x), 0.8 * self.half_width_mm, 0.95 * self.half_width_mm)) * _smoothstep(
            y, -0.1 * self.half_ap_mm, 0.2 * self.half_ap_mm
        )
        depth = d_norm
        back = np.nonzero(w > 0)[0]
        wb = w[back]
        depth[back] = wb * (self.skin_y(x[back], z[back]) - y[back]) + (1 - wb) * d_norm[back]
        return depth, w

    @property
    def canal_y_mm(self) -> float:
        """LPS ``y`` of the spinal canal's centre (x = 0), below the nominal layers and paraspinal muscle."""
        m = self.layers_mm
        y_lamina = self.half_ap_mm - self.groove_mm - (m["skin"] + self.total_fat_mm + m["tlf"]) - m["muscle"]
        return float(y_lamina - 9)

    # ------------------------------------------------------------------ labels
    def labels_at(self, points_mm: np.ndarray) -> np.ndarray:
        """Tissue labels (uint8, :class:`~backmice_vision.labels.Tissue`) at LPS points ``(..., 3)`` mm."""
        return self.labels_and_ids_at(points_mm)[0]

    def labels_and_ids_at(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue labels and nodule ids (uint8, 0 = no nodule; its capsule, septa and stalk included)."""
        pts = np.asarray(points_mm, np.float32)
        if pts.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
        shape = pts.shape[:-1]
        pts = pts.reshape(-1, 3)
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        depth, w = self._depth(x, y, z)
        lab = np.zeros(x.shape, np.uint8)
        ids = np.zeros(x.shape, np.uint8)
        inside = depth > 0
        if not inside.any():
            return lab.reshape(shape), ids.reshape(shape)
        idx = np.nonzero(inside)[0]
        xi, yi, zi, di, wi = x[idx], y[idx], z[idx], depth[idx], w[idx]
        layers = self.layer_depths(xi, zi)
        li = self._deep_labels(xi, yi, zi, di, wi, layers)
        self._layer_labels(li, xi, yi, zi, di, wi, layers)
        nid = np.zeros(idx.shape, np.uint8)
        shallow = np.nonzero(di < layers["tlf"] + 6)[0]
        if shallow.size:
            sub_layers = {k: v[shallow] for k, v in layers.items()}
            sl = li[shallow]
            sid = nid[shallow]
            self._lesions(sl, sid, xi[shallow], yi[shallow], zi[shallow], di[shallow], sub_layers)
            li[shallow] = sl
            nid[shallow] = sid
        lab[idx] = li
        ids[idx] = nid
        return lab.reshape(shape), ids.reshape(shape)

    def _deep_labels(
        self,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        d: np.ndarray,
        w: np.ndarray,
        layers: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Spine, muscles, pelvis and abdomen below the TLF (:func:`.deep.deep_labels`)."""
        return deep_labels(self, x, y, z, d - layers["tlf"], w)

    def _layer_labels(
        self,
        lab: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        d: np.ndarray,
        w: np.ndarray,
        layers: dict[str, np.ndarray],
    ) -> None:
        """Overwrite ``lab`` with the subcutaneous layers where ``d`` is above the TLF's deep surface."""
        sel = d < layers["tlf"]
        tlf_label = np.where(w[sel] >= 0.5, Tissue.TLF, Tissue.ABDOMINAL_WALL).astype(np.uint8)
        ds = d[sel]
        out = tlf_label.copy()
        out[ds < layers["dat"][sel]] = Tissue.DEEP_FAT
        sat_bottom = layers["sat"][sel]
        sf = (ds >= sat_bottom) & (ds < layers["superficial_fascia"][sel])
        out[sf] = Tissue.SUPERFICIAL_FASCIA
        if self.sf_sublayers > 1:  # alternate membranous sheets and thin fat gaps
            n_parts = 2 * self.sf_sublayers - 1
            t_sf = layers["superficial_fascia"][sel] - sat_bottom
            part = np.floor((ds - sat_bottom) / np.maximum(t_sf, np.float32(1e-3)) * n_parts)
            out[sf & (np.mod(part, 2) == 1)] = Tissue.SUPERFICIAL_FAT
        out[ds < sat_bottom] = Tissue.SUPERFICIAL_FAT
        out[ds < layers["skin"][sel]] = Tissue.SKIN
        lab[sel] = out

    def _lesions(
        self,
        lab: np.ndarray,
        nid: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        d: np.ndarray,
        layers: dict[str, np.ndarray],
    ) -> None:
        """Paint distractors, stalks and nodules onto the near-surface points (in place)."""
        for dis in sorted(self.distractors, key=lambda dd: dd.kind != "oedema_band"):  # sheets first
            self._paint_distractor(dis, lab, x, y, z, d, layers)
        fat = np.isin(lab, _FAT_LABELS)
        for nod in self.nodules:
            lo, hi = nod.bbox_mm(margin=nod.halo_mm + 1.0)
            lo[1], hi[1] = lo[1] - 8.0, hi[1] + 8.0  # room for the drape over the fascia
            if nod.defect_present:  # the stalk column reaches below the TLF
                cx, cz = nod.defect_center_xz_mm
                rx, rz = nod.defect_semi_axes_xz_mm
                lo[0], hi[0] = min(lo[0], cx - rx), max(hi[0], cx + rx)
                lo[2], hi[2] = min(lo[2], cz - rz), max(hi[2], cz + rz)
                lo[1] -= nod.stalk_length_mm + 4.0
            sel = np.nonzero(
                (x > lo[0]) & (x < hi[0]) & (y > lo[1]) & (y < hi[1]) & (z > lo[2]) & (z < hi[2])
            )[0]
            if sel.size == 0:
                continue
            xs, zs, ds = x[sel], z[sel], d[sel]
            ys = np.float32(nod.tlf_top_y_mm) - (ds - layers["dat"][sel])  # height above the TLF, draped
            ls = lab[sel]
            ns = nid[sel]
            fs = fat[sel]
            sd = _union_sdist(nod.lobes, xs, ys, zs)
            if nod.defect_present:
                cx, cz = nod.defect_center_xz_mm
                rx, rz = nod.defect_semi_axes_xz_mm
                col = ((xs - cx) / rx) ** 2 + ((zs - cz) / rz) ** 2 < 1
                # from inside the nodule's bottom (the nodule overpaints its part) to below the TLF
                y_top = nod.center_mm[1] - nod.semi_axes_mm[1] + 1.0
                stalk = (
                    col & (ys < y_top) & (ds < layers["tlf"][sel] + nod.stalk_extra_mm) & (ls != Tissue.BONE)
                )
                stalk &= (ls != Tissue.SKIN) & (ls != Tissue.SUPERFICIAL_FAT)
                ls[stalk] = Tissue.STALK
                ns[stalk] = nod.id
            if nod.halo_mm > 0:
                halo = fs & (sd < 0) & (sd > -nod.halo_mm)
                ls[halo] = Tissue.OEDEMA
            inside = (sd >= 0) & (fs | (ls == Tissue.STALK) | (ls == Tissue.VESSEL) | (ls == Tissue.OEDEMA))
            ls[inside] = Tissue.NODULE
            ns[inside] = nod.id
            rim = inside & (sd < nod.capsule_mm)
            for ys_mm in nod.septa_y_mm:
                rim |= inside & (np.abs(ys - np.float32(ys_mm)) < nod.septa_thickness_mm / 2)
            ls[rim] = Tissue.NODULE_CAPSULE
            lab[sel] = ls
            nid[sel] = ns

    def _paint_distractor(
        self,
        dis: Distractor,
        lab: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        d: np.ndarray,
        layers: dict[str, np.ndarray],
    ) -> None:
        cx, cy, cz = dis.center_mm
        sx, sy, sz = dis.semi_axes_mm
        if dis.kind == "vessel":
            ang = math.radians(dis.angle_deg)
            r = sx * max(abs(math.cos(ang)), abs(math.sin(ang)))
            ext = (r + sy + 1, 80.0, r + sy + 1)
        elif dis.kind == "oedema_band":
            ext = (sx, 80.0, sz)
        else:
            ext = (sx + 1, sy + 6, sz + 1)
        sel = np.nonzero((np.abs(x - cx) < ext[0]) & (np.abs(y - cy) < ext[1]) & (np.abs(z - cz) < ext[2]))[0]
        if sel.size == 0:
            return
        xs, ys, zs, ds = x[sel] - cx, y[sel] - cy, z[sel] - cz, d[sel]
        ls = lab[sel]
        fs = np.isin(ls, _FAT_LABELS)
        if dis.kind == "vessel":
            ca, sa = math.cos(math.radians(dis.angle_deg)), math.sin(math.radians(dis.angle_deg))
            u = xs * ca + zs * sa
            v = -xs * sa + zs * ca
            m = fs & (np.abs(u) < sx) & (v * v + (ds - dis.depth_mm) ** 2 < sy * sy)
            ls[m] = Tissue.VESSEL
        elif dis.kind == "oedema_band":
            top = layers["dat"][sel] - 2 * sy * (0.6 + 0.4 * np.cos(xs / 9.0) * np.cos(zs / 13.0))
            m = fs & ((xs / sx) ** 2 + (zs / sz) ** 2 < 1) & (ds > top) & (ds < layers["dat"][sel])
            ls[m] = Tissue.OEDEMA
        else:
            inside = (xs / sx) ** 2 + (ys / sy) ** 2 + (zs / sz) ** 2 < 1
            if dis.kind == "cyst":
                m = inside & (lab[sel] != Tissue.TLF)
                if dis.punctum:
                    m |= (xs * xs + zs * zs < 0.16) & (ys > 0) & (ds > 0)
            else:
                m = inside & fs
            ls[m] = Tissue.CYST if dis.kind == "cyst" else Tissue.HAEMATOMA
        lab[sel] = ls

    # ------------------------------------------------------------------ ground truth
    def ground_truth(self) -> dict[str, Any]:
        """Subject-level part of ``ground_truth.json`` (seed, habitus, fat, nodules, distractors)."""
        return {
            "seed": self.seed,
            "habitus": self.habitus,
            "total_fat_mm": round(self.total_fat_mm, 3),
            "layers_mm": {k: round(v, 3) for k, v in self.layers_mm.items()},
            "nodules": [n.ground_truth() for n in self.nodules],
            "distractors": [dd.ground_truth() for dd in self.distractors],
        }


def _union_sdist(lobes: list[tuple[Vec3, Vec3]], x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, > 0 inside) to a union of axis-aligned ellipsoids."""
    best = np.full(x.shape, -np.inf, np.float32)
    for (cx, cy, cz), (a, b, c) in lobes:
        dx, dy, dz = x - np.float32(cx), y - np.float32(cy), z - np.float32(cz)
        r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
        g = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + (dz / c**2) ** 2)
        sd = (1 - r) * r / np.maximum(g, np.float32(1e-6))
        sd = np.where(r < 1e-3, np.float32(min(a, b, c)), sd)
        best = np.maximum(best, sd.astype(np.float32))
    return best


# ---------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, probs: tuple[float, ...]) -> int:
    p = np.asarray(probs, float)
    return int(rng.choice(len(p), p=p / p.sum()))


def _lognormal_long_axis(rng: np.random.Generator, c: AnatomyConfig) -> float:
    lo, hi = c.nodule_long_axis_mm
    for _ in range(100):
        v = float(c.nodule_long_axis_median_mm * math.exp(rng.normal(0.0, c.nodule_long_axis_sigma)))
        if lo <= v <= hi:
            return v
    return float(np.clip(c.nodule_long_axis_median_mm, lo, hi))


def _overlaps(lo: np.ndarray, hi: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]], gap: float) -> bool:
    return any(bool(np.all(lo - gap < h) and np.all(hi + gap > low)) for low, h in boxes)


def make_subject(seed: int, config: AnatomyConfig | None = None) -> Subject:
    """Sample one subject deterministically from ``seed`` (same seed and config → same subject)."""
    c = config or AnatomyConfig()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6BAC]))
    h = HABITUS.index(c.habitus) if c.habitus else _pick(rng, c.habitus_probs)
    habitus = HABITUS[h]
    frac_w = (h + rng.uniform()) / 3
    half_w = 0.5 * (c.body_width_mm[0] + frac_w * (c.body_width_mm[1] - c.body_width_mm[0]))
    half_ap = 0.5 * (c.body_ap_mm[0] + frac_w * (c.body_ap_mm[1] - c.body_ap_mm[0]))
    total = rng.uniform(*(c.total_fat_lean_mm, c.total_fat_overweight_mm, c.total_fat_obese_mm)[h])
    sf = rng.uniform(*c.superficial_fascia_mm)
    sat = float(
        np.clip(total * rng.uniform(*c.sat_fraction), max(c.sat_mm[0], total - sf - c.dat_mm[1]), c.sat_mm[1])
    )
    dat = float(np.clip(total - sat - sf, *c.dat_mm))
    layers = {
        "skin": rng.uniform(*c.skin_mm),
        "sat": sat,
        "superficial_fascia": sf,
        "dat": dat,
        "tlf": rng.uniform(*c.tlf_mm),
        "muscle": rng.uniform(*c.muscle_mm),
    }
    wl = c.undulation_wavelength_mm
    amp = rng.uniform(*c.undulation_mm)
    thick = {
        "skin": _Field.random(rng, 0.2, wl),
        "sat": _Field.random(rng, min(amp, 0.3 * sat), wl),
        "superficial_fascia": _Field.random(rng, 0.15 * sf, wl),
        "dat": _Field.random(rng, min(amp, 0.3 * dat), wl),
        "tlf": _Field.random(rng, 0.2, wl),
    }
    subject = Subject(
        seed=int(seed),
        habitus=habitus,
        total_fat_mm=float(sat + sf + dat),
        nodules=[],
        distractors=[],
        half_width_mm=float(half_w),
        half_ap_mm=float(half_ap),
        layers_mm={k: float(v) for k, v in layers.items()},
        sf_sublayers=int(
            rng.integers(c.superficial_fascia_sublayers[0], c.superficial_fascia_sublayers[1] + 1)
        ),
        psis_mm=(float(rng.uniform(*c.psis_x_mm)), float(rng.uniform(*c.psis_z_mm))),
        groove_mm=float(rng.uniform(0.0, 4.0 if h == 0 else 2.0)),
        config=c,
        _skin=_Field.random(rng, amp, wl),
        _thick=thick,
    )
    # the deep anatomy draws from its own stream: adding it left every other draw of a seed unchanged
    subject.deep = sample_deep(
        np.random.default_rng(np.random.SeedSequence([int(seed), 0xDEE9])), h, float(half_w), float(half_ap)
    )
    boxes: list[tuple[np.ndarray, np.ndarray]] = []
    subject.nodules = _sample_nodules(rng, subject, boxes)
    subject.distractors = _sample_distractors(rng, subject, boxes)
    for nod in subject.nodules:
        _measure(subject, nod)
    return subject


def _n_nodules(rng: np.random.Generator, c: AnatomyConfig) -> int:
    if c.force_nodules is not None:
        return c.force_nodules
    if rng.uniform() < c.no_nodule_prob:
        return 0
    return 1 + _pick(rng, c.nodule_count_probs)


def _sample_nodules(
    rng: np.random.Generator, s: Subject, boxes: list[tuple[np.ndarray, np.ndarray]]
) -> list[NoduleSpec]:
    c = s.config
    n = _n_nodules(rng, c)
    first_side = 1.0 if rng.uniform() < 0.5 else -1.0
    bilateral = n > 1 and rng.uniform() < c.bilateral_prob
    nodules: list[NoduleSpec] = []
    for i in range(n):
        sign = first_side if not bilateral or i % 2 == 0 else -first_side
        for _attempt in range(200):
            nod = _sample_one_nodule(rng, s, i + 1, sign)
            lo, hi = nod.bbox_mm()
            if not _overlaps(lo, hi, boxes, 3.0):
                boxes.append((lo, hi))
                nodules.append(nod)
                break
    return nodules


def _sample_one_nodule(rng: np.random.Generator, s: Subject, nid: int, sign: float) -> NoduleSpec:
    c = s.config
    x = sign * rng.uniform(*c.nodule_x_mm)
    z = rng.uniform(s.psis_mm[1], c.nodule_z_top_mm)
    lay = {k: float(v) for k, v in s.layer_depths(x, z).items()}
    a = _lognormal_long_axis(rng, c) / 2
    cz = a / rng.uniform(*c.nodule_aspect)
    # the bottom rests gap mm above the TLF; the top stays below the dermis everywhere under the footprint
    u, v = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9))
    inside = u * u + v * v <= 1
    fl = s.layer_depths((x + a * u[inside]).astype(np.float32), (z + cz * v[inside]).astype(np.float32))
    tlf_top_y = float(s.skin_y(x, z)) - lay["tlf_top"]
    gap = rng.uniform(0.0, 1.0)
    y_bottom = tlf_top_y + gap
    room = float(np.min(fl["tlf_top"] - fl["skin"])) - 0.5 - gap
    by = min(cz * rng.uniform(0.6, 1.0), max(room / 2, 0.75))
    cy = y_bottom + by
    lobes: list[tuple[Vec3, Vec3]] = [((x, cy, z), (a, by, cz))]
    lobulated = bool(rng.uniform() < c.lobulated_prob)
    if lobulated:
        for k in range(int(rng.integers(1, 3))):
            al = a * rng.uniform(0.4, 0.6)
            dx = (1 if k == 0 else -1) * (a - al) * rng.uniform(0.7, 1.0) * (1 if rng.uniform() < 0.5 else -1)
            cl = cz * rng.uniform(0.75, 0.95)
            dz = (cz - cl) * rng.uniform(-1, 1)
            bl = by * rng.uniform(0.7, 1.0)
            lobes.append(((x + dx, y_bottom + bl, z + dz), (al, bl, cl)))
    defect = bool(rng.uniform() < c.defect_prob)
    width = min(rng.uniform(*c.defect_width_mm), 1.6 * a) if defect else None
    extra = rng.uniform(*c.stalk_extra_mm) if defect else 0.0
    tlf_t = lay["tlf"] - lay["tlf_top"]
    n_septa = int(rng.integers(c.septa_count[0], c.septa_count[1] + 1))
    oedematous = bool(rng.uniform() < c.oedematous_prob)
    return NoduleSpec(
        id=nid,
        center_mm=(float(x), float(cy), float(z)),
        semi_axes_mm=(float(a), float(by), float(cz)),
        lobulated=lobulated,
        variant="oedematous" if oedematous else "typical",
        defect_present=defect,
        defect_width_mm=None if width is None else float(width),
        side="left" if x > 0 else "right",
        n_septa=n_septa,
        capsule_mm=float(rng.uniform(*c.capsule_mm)),
        lobes=lobes,
        septa_y_mm=[float(cy + by * v) for v in rng.uniform(-0.6, 0.6, n_septa)],
        septa_thickness_mm=float(rng.uniform(0.1, 0.3)),
        halo_mm=float(rng.uniform(*c.oedema_halo_mm)) if oedematous else 0.0,
        defect_center_xz_mm=(float(x + rng.uniform(-0.3, 0.3) * a), float(z)),
        defect_semi_axes_xz_mm=(0.0, 0.0)
        if width is None
        else (width / 2, width / 2 * rng.uniform(0.6, 1.0)),
        tlf_top_y_mm=tlf_top_y,
        stalk_extra_mm=float(extra),
        stalk_length_mm=float(tlf_t + extra) if defect else 0.0,
    )


def _sample_distractors(
    rng: np.random.Generator, s: Subject, boxes: list[tuple[np.ndarray, np.ndarray]]
) -> list[Distractor]:
    c = s.config
    out: list[Distractor] = []

    def place(kind: str, semi: Vec3, depth_of_center: Any, **kw: Any) -> None:
        for _attempt in range(50):
            x, z = rng.uniform(-120, 120), rng.uniform(-85, 55)
            lay = {k: float(v) for k, v in s.layer_depths(x, z).items()}
            dc = float(depth_of_center(lay))
            cy = float(s.skin_y(x, z)) - dc
            lo = np.array([x - semi[0], cy - semi[1], z - semi[2]])
            hi = np.array([x + semi[0], cy + semi[1], z + semi[2]])
            if kind == "vessel":  # a long tube: keep only its centre clear of nodules
                shrink = np.array([semi[0] - 3, 0, semi[2] - 3])
                lo, hi = lo + shrink, hi - shrink
            if not _overlaps(lo, hi, boxes, 3.0):
                boxes.append((lo, hi))
                out.append(Distractor(kind, (float(x), cy, float(z)), semi, depth_mm=dc, **kw))
                return

    if rng.uniform() < c.cyst_prob:
        r = rng.uniform(*c.cyst_diameter_mm) / 2
        ry = r * rng.uniform(0.6, 0.9)
        top = rng.uniform(0.5, 1.0)  # fraction of the skin thickness where the cyst starts
        place(
            "cyst",
            (r, ry, r * rng.uniform(0.8, 1.0)),
            lambda lay: lay["skin"] * top + ry,
            punctum=bool(rng.uniform() < c.punctum_prob),
        )
    for _ in range(int(rng.integers(c.vessel_count[0], c.vessel_count[1] + 1))):
        rad = rng.uniform(*c.vessel_diameter_mm) / 2
        frac = rng.uniform(0.2, 0.8)
        place(
            "vessel",
            (rng.uniform(20, 60), rad, rad),
            lambda lay, rad=rad, frac=frac: (
                lay["skin"] + rad + frac * max(lay["tlf_top"] - lay["skin"] - 2 * rad, 0)
            ),
            angle_deg=float(rng.uniform(0, 180)),
        )
    if rng.uniform() < c.haematoma_prob:
        length = rng.uniform(*c.haematoma_length_mm) / 2
        th = rng.uniform(*c.haematoma_thickness_mm) / 2
        place(
            "haematoma", (length, th, length * rng.uniform(0.5, 1.0)), lambda lay: lay["tlf_top"] - th - 0.3
        )
    p_band = c.oedema_band_prob_obese if s.habitus == "obese" else c.oedema_band_prob_other
    if rng.uniform() < p_band:
        th = rng.uniform(*c.oedema_band_thickness_mm) / 2
        x = rng.uniform(-30, 30)
        z = rng.uniform(-30, 40)
        cy = float(s.skin_y(x, z) - s.layer_depths(x, z)["tlf_top"] + th)
        out.append(
            Distractor(
                "oedema_band",
                (float(x), cy, float(z)),
                (float(rng.uniform(60, 130)), float(th), float(rng.uniform(40, 70))),
                depth_mm=float(s.layer_depths(x, z)["tlf_top"] - th),
            )
        )
    return out


def _measure(s: Subject, nod: NoduleSpec, step: float = 0.25) -> None:
    """Fill the derived measurements of ``nod`` from its rasterized labels on a ``step`` mm grid."""
    lo, hi = nod.bbox_mm(margin=step)
    fx, fz = np.meshgrid(np.linspace(lo[0], hi[0], 12), np.linspace(lo[2], hi[2], 12))
    drape = (
        s.skin_y(fx, fz) - s.layer_depths(fx, fz)["tlf_top"] - nod.tlf_top_y_mm
    )  # the drape over the fascia
    lo[1], hi[1] = lo[1] + min(float(drape.min()), 0.0) - 0.5, hi[1] + max(float(drape.max()), 0.0) + 0.5
    axes = [np.arange(lo[i], hi[i] + step, step, dtype=np.float32) for i in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([gx, gy, gz], axis=-1)
    lab, ids = s.labels_and_ids_at(pts)
    m = (ids == nod.id) & ((lab == Tissue.NODULE) | (lab == Tissue.NODULE_CAPSULE))
    cx, cy, cz = nod.center_mm
    if m.any():
        ext = [float(np.ptp(g[m]) + step) for g in (gx, gy, gz)]
        nod.diameters_mm = tuple(sorted(ext, reverse=True))  # type: ignore[assignment]
        nod.volume_ml = float(m.sum() * step**3 / 1000.0)
        xs, ys, zs = gx[m], gy[m], gz[m]
        nod.depth_mm = float(np.min(s.skin_y(xs, zs) - ys) - step / 2)
    else:  # fully hidden (cannot happen with the sampling above, kept defined)
        a, b, c = nod.semi_axes_mm
        nod.diameters_mm = tuple(sorted((2 * a, 2 * b, 2 * c), reverse=True))  # type: ignore[assignment]
        nod.volume_ml = 4 / 3 * math.pi * a * b * c / 1000.0
        nod.depth_mm = float(s.skin_y(cx, cz)) - (cy + b)
    nod.fascia_depth_mm = float(s.layer_depths(cx, cz)["tlf_top"])
