"""Deep anatomy of the lumbosacral cross-section (below the thoracolumbar fascia), L3 to S1.

Smooth parametric shapes (ellipses, superellipses, rounded bars and arcs), sized per vertebral level
from ``shared/docs/anatomy.md`` §1 (Panjabi, Zhou, Pierro, Zindrick, Jentzsch; muscle areas from
Stokes, Fortin data, Hofste, Ivanac), in the phantom frame of :mod:`.anatomy` (LPS mm, ``z = 0`` at
the iliac-crest level, discs at ``z = -3 + 38 k``: L4/5 at -3, L5/S1 at -41, L3/4 at 35, so the L5
body spans -36..-8 and S1 starts below -46).

Per axial point: the vertebra (kidney-bean body with a cortical rim and marrow, or the disc at the
disc levels), pedicles, laminae, spinous process, facet joints angled 39-47 degrees to the sagittal
plane, transverse processes, the dural sac (CSF) in epidural fat, multifidus on the laminae and the
erector spinae lateral to it (with intramuscular fat streaks; the erector thins to an aponeurosis at
L5-S1), psoas beside the body, quadratus lumborum lateral to it (ending at the crest), the iliac wings
below the crest with iliacus inside and gluteus medius outside, gluteus maximus behind the ilium and
sacrum from S1 down, the sacrum, the abdominal wall, bowel loops in retroperitoneal / mesenteric fat.
Everything scales with the subject's ``spine_scale`` (women 5-15 % smaller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..labels import Tissue

T = Tissue
Range = tuple[float, float]

# Per level (index 0 = L5, 1 = L4, 2 = L3), anatomy.md §1 table means.
BODY_WIDTH_MM = (50.5, 48.5, 46.5)
BODY_AP_MM = (35.0, 35.0, 34.0)
CANAL_AP_MM = (17.0, 16.5, 17.0)
CANAL_WIDTH_MM = (26.5, 24.0, 23.0)
DURAL_AP_MM = (10.5, 11.5, 12.5)
PEDICLE_WIDTH_MM = (18.0, 13.0, 10.0)
FACET_ANGLE_DEG = (47.0, 47.0, 39.0)
PSOAS_CM2 = (15.7, 17.7, 14.7)
QL_CM2 = (1.5, 3.5, 7.0)  # thin at L4-5, ending on the crest (anatomy.md §1)
DISC_Z0_MM, LEVEL_MM, DISC_MM = -3.0, 38.0, 10.0


@dataclass
class DeepAnatomy:
    """Per-subject random parts of the deep anatomy (drawn by :func:`sample_deep`)."""

    scale: float = 1.0  # spine and muscle size factor
    fat_streaks: float = 0.15  # intramuscular fat fraction of the back muscles (Dixon 12-32 %)
    streak_waves: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros((1, 3), np.float32), np.zeros(1, np.float32))
    )
    bowel: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = field(default_factory=list)
    wall_mm: float = 10.0  # abdominal wall muscle thickness


def sample_deep(
    rng: np.random.Generator, habitus_index: int, half_width_mm: float, half_ap_mm: float
) -> DeepAnatomy:
    """Draw :class:`DeepAnatomy`: scale 0.88-1.05, fat 8-32 % (more with habitus), bowel loops."""
    scale = float(rng.uniform(0.88, 1.05))
    fat = float(np.clip(rng.normal(0.13 + 0.05 * habitus_index, 0.05), 0.05, 0.35))
    # streaks: thin sheets along the fibres (z), the zero set of a few waves with k in the x-y plane
    theta = rng.uniform(0, np.pi, 3)
    k = np.stack([np.cos(theta), np.sin(theta), rng.normal(0, 0.05, 3)], axis=1) / rng.uniform(
        4.0, 9.0, (3, 1)
    )
    waves = (k.astype(np.float32), rng.uniform(0, 2 * np.pi, 3).astype(np.float32))
    bowel = []
    for _ in range(int(rng.integers(30, 45))):  # loops fill most of the abdomen, fat between them
        cx = float(rng.uniform(-0.7, 0.7) * half_width_mm)
        cy = float(rng.uniform(-0.8, 0.0) * half_ap_mm)
        r = float(rng.uniform(12.0, 30.0))
        bowel.append(
            (
                (cx, cy, float(rng.uniform(-90, 60))),
                (r, r * float(rng.uniform(0.6, 1.0)), float(rng.uniform(25, 70))),
            )
        )
    return DeepAnatomy(scale, fat, waves, bowel, float(rng.uniform(7.0, 14.0)))


def _level(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(level index 0 = L5 .. 2 = L3 clipped, position t in the body 0 = lower end plate .. 1 = upper,
    disc mask) for axial positions ``z`` (mm)."""
    rel = z - np.float32(DISC_Z0_MM)
    k = np.floor(rel / np.float32(LEVEL_MM))  # 0: between the L4/5 and L3/4 discs = L4 body
    zrel = rel - k * np.float32(LEVEL_MM)
    half = np.float32(DISC_MM / 2)
    disc = (zrel < half) | (zrel > np.float32(LEVEL_MM) - half)
    t = np.clip((zrel - half) / np.float32(LEVEL_MM - DISC_MM), 0, 1)
    level = np.clip(k + 1, 0, 2).astype(np.int32)  # body above disc k=-1 (L5/S1) is L5
    return level, t, disc


def _bar(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], half_w: float
) -> np.ndarray:
    """Points within ``half_w`` of the segment p0-p1 (a bar with rounded ends)."""
    ax, ay = p0
    bx, by = p1
    vx, vy = bx - ax, by - ay
    length2 = max(vx * vx + vy * vy, 1e-6)
    u = np.clip(((x - ax) * vx + (y - ay) * vy) / np.float32(length2), 0, 1)
    dx, dy = x - (ax + u * vx), y - (ay + u * vy)
    return dx * dx + dy * dy < np.float32(half_w * half_w)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: Any, cy: Any, a: Any, b: Any) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1


def deep_labels(
    s: Any, x: np.ndarray, y: np.ndarray, z: np.ndarray, below: np.ndarray, back: np.ndarray
) -> np.ndarray:
    """Labels below the TLF for points ``(x, y, z)`` (float32 1-D), ``below`` mm under the TLF's deep
    surface, ``back`` the back-zone weight of :mod:`.anatomy`. ``s`` is the :class:`~.anatomy.Subject`."""
    f32 = np.float32
    deep: DeepAnatomy = s.deep
    sc = f32(deep.scale)
    ax = np.abs(x)
    lab = np.full(x.shape, T.RETROPERITONEAL_FAT, np.uint8)
    level, t, disc = _level(z)
    lumbar = z > -44.0
    y_canal = f32(s.canal_y_mm)
    body_w = np.take(np.asarray(BODY_WIDTH_MM, np.float32), level) * sc
    body_ap = np.take(np.asarray(BODY_AP_MM, np.float32), level) * sc
    canal_ap = np.take(np.asarray(CANAL_AP_MM, np.float32), level) * sc
    canal_w = np.take(np.asarray(CANAL_WIDTH_MM, np.float32), level) * sc
    # the body's posterior wall lies 2 mm in front of the canal; centre half its depth further forward
    y_vb = y_canal - canal_ap / 2 - 2 - body_ap / 2
    px, pz = s.psis_mm

    # abdominal wall (outside the back zone) and bowel in the anterior abdomen
    wall = (below < f32(deep.wall_mm)) & (ax > 40)  # obliques / transversus, and the flank muscles
    lab[wall] = T.ABDOMINAL_WALL
    for (cx, cy, cz), (ra, rb, rc) in deep.bowel:
        inside = ((x - f32(cx)) / f32(ra)) ** 2 + ((y - f32(cy)) / f32(rb)) ** 2 + (
            (z - f32(cz)) / f32(rc)
        ) ** 2 < 1
        lab[inside & ~wall & (y < y_vb - body_ap / 2 + 5)] = T.BOWEL

    # psoas beside the body (round), quadratus lumborum lateral and posterior to it (lumbar only)
    psoas_r = np.sqrt(np.take(np.asarray(PSOAS_CM2, np.float32), level) * 100 / np.pi) * sc
    psoas_r = np.where(z < -46, psoas_r * 0.8, psoas_r)  # joins iliacus below S1 (iliopsoas)
    psoas = _ellipse(ax, y, body_w / 2 + psoas_r * 0.75, y_vb - 2, psoas_r * 1.1, psoas_r / 1.1)
    lab[psoas] = T.PSOAS
    ql_area = np.take(np.asarray(QL_CM2, np.float32), level) * sc * sc
    ql_a = np.sqrt(ql_area * 100 / np.pi * 2.5)
    ql = (
        lumbar
        & (z > pz + 25)
        & _ellipse(ax, y, body_w / 2 + 2 * psoas_r + ql_a * 0.6, y_vb + 12, ql_a, ql_a / 2.5)
    )
    lab[ql] = T.QUADRATUS_LUMBORUM

    # back muscles between the TLF and the transverse-process plane: multifidus medially on the laminae,
    # erector spinae lateral to it (thinning to an aponeurosis at L5-S1), with fat streaks
    y_tp = y_canal - 2
    y_top = y_canal + 9 + f32(s.layers_mm["muscle"])  # the TLF's deep surface over the spine (nominal)
    frac = np.clip((y - y_tp) / np.maximum(y_top - y_tp, 1), 0, 1)  # 0 at the TP plane, 1 under the TLF
    mf_base = np.where(level == 0, f32(34.0), np.where(level == 1, f32(30.0), f32(24.0))) * sc
    mf_base = np.where(z < -44, f32(36.0) * sc, mf_base)
    mf_x = mf_base * (1 - 0.45 * frac)
    # the erector's lateral border bulges (an oval section), the whole group rounds off under the TLF
    bulge = np.sqrt(np.clip(1 - (2 * frac - 1) ** 2, 0, 1))
    width = np.where(level == 0, f32(22.0), f32(48.0)) * sc
    raphe = mf_x + width * (0.35 + 0.65 * bulge)
    raphe = np.where(z < -44, mf_x + 5 * bulge, raphe)
    region = (y > y_tp) & (ax < raphe) & (below >= 0) & (ax > 3)
    es = region & (ax >= mf_x)
    lab[region & (ax < mf_x)] = T.MULTIFIDUS
    lab[es] = T.ERECTOR_SPINAE
    k, ph = deep.streak_waves
    pts = np.stack([x, y, z], axis=1)
    field_ = np.zeros(x.shape, f32)
    for kv, p in zip(k, ph, strict=True):
        field_ += np.cos(f32(2 * np.pi) * (pts @ kv) + p)
    field_ /= f32(math.sqrt(len(ph) / 2))
    streak = region & (np.abs(field_) < f32(deep.fat_streaks * 0.8))
    lab[streak] = T.INTRAMUSCULAR_FAT

    # iliac wing below the crest: a curved plate from the PSIS anterolaterally, iliacus inside,
    # gluteus medius outside; gluteus maximus behind the ilium and sacrum from S1 down
    crest = pz + (0 - pz) * np.clip((ax - px) / 50.0, 0, 1) ** 0.5
    wing = z < crest
    cxw, cyw = f32(px + 62.0), y_canal - 12.0
    rw = np.hypot(ax - cxw, y - cyw)
    ang = np.arctan2(y - cyw, ax - cxw)  # pi/2 = posterior, pi = medial
    arc = (ang > 0.15 * np.pi) & (ang < 0.95 * np.pi)
    r_wing = f32(58.0) * sc
    depth_below_crest = np.clip((crest - z) / 8.0, 0, 1)  # the plate is thin at the crest line
    ilium = wing & arc & (np.abs(rw - r_wing) < 2.5 + 2.5 * depth_below_crest) & (below > 12)  # under muscle
    gmed = wing & arc & (rw > r_wing + 4) & (rw < r_wing + 30 * sc) & (ang < 0.8 * np.pi) & (z < crest - 4)
    iliacus = wing & arc & (rw < r_wing - 4) & (rw > r_wing - 16 * sc) & (ang < 0.85 * np.pi)
    lab[gmed & (lab != T.ERECTOR_SPINAE) & (lab != T.MULTIFIDUS)] = T.GLUTEUS_MEDIUS
    lab[iliacus & (lab == T.RETROPERITONEAL_FAT)] = T.ILIACUS
    lab[ilium] = T.ILIUM
    # gluteus maximus: a lens under the fascia, thickest ~45 mm lateral of the PSIS, tapering at both ends
    across = np.clip(1 - ((ax - (px + 38)) / 55) ** 2, 0, 1)
    gmax = (z < -40) & (below >= 0) & (below < 35 * sc * np.sqrt(across)) & (y > cyw)
    lab[gmax & ~ilium] = T.GLUTEUS_MAXIMUS

    # sacrum (S1 and below): body and alae reaching the ilium, posterior surface behind a small canal
    sac = (z < -44) & _ellipse(ax, y, 0.0, y_canal - 10, f32(px + 8), 24 * sc)
    lab[sac] = T.SACRUM

    # lumbar vertebra: kidney-bean body (cortical rim, marrow) or disc; canal, dural sac, epidural fat
    bean = _ellipse(x, y, 0.0, y_vb, body_w / 2, body_ap / 2) & ~_ellipse(
        x, y, 0.0, y_vb + body_ap / 2 + 3, body_w * 0.18, 7.0 * sc
    )
    core = _ellipse(x, y, 0.0, y_vb, body_w / 2 - 1.5, body_ap / 2 - 1.5)
    vb = lumbar & bean & ~disc
    lab[vb] = T.BONE
    lab[vb & core] = T.VERTEBRAL_BODY
    lab[lumbar & bean & disc] = T.DISC
    s1 = (z < -44) & (z > -75) & bean
    lab[s1] = T.VERTEBRAL_BODY
    canal = _ellipse(x, y, 0.0, y_canal, canal_w / 2, canal_ap / 2)
    # posterior elements: pedicles (upper half of the body), laminae, spinous process, facets, TPs
    ped_w = np.take(np.asarray(PEDICLE_WIDTH_MM, np.float32), level) * sc
    ped_x = canal_w / 2 + ped_w / 2
    pedicle = (
        lumbar
        & ~disc
        & (t > 0.45)
        & (ax > canal_w / 2 - 1)
        & (ax < ped_x + ped_w / 2)
        & (y > y_vb + body_ap / 2 - 4)
        & (y < y_canal + 3)
    )
    lab[pedicle] = T.PEDICLE
    tp_len = np.where(level == 0, f32(20.0), np.where(level == 1, f32(28.0), f32(32.0))) * sc
    tproc = (
        lumbar
        & ~disc
        & (t > 0.45)
        & (t < 0.9)
        & (np.abs(y - y_tp) < 4 * sc)
        & (ax > ped_x)
        & (ax < ped_x + tp_len)
    )
    lab[tproc] = T.TRANSVERSE_PROCESS
    lam_half = f32(3.0) * sc
    lamina = np.zeros(x.shape, bool)
    for side in (-1.0, 1.0):
        xs = np.where(x * side > 0, x, f32(1e6))
        lam = _bar(
            xs * side,
            y,
            (float(np.mean(canal_w)) / 2 + 3, float(y_canal) + 3),
            (2.0, float(y_canal) + 12),
            float(lam_half),
        )
        lamina |= lam
    lab[lumbar & (t > 0.05) & lamina] = T.LAMINA
    spin_len = f32(30.0) * sc
    spinous = (z > -48) & (ax < 3.5 * sc) & (y > y_canal + 10) & (y < y_canal + 10 + spin_len) & (below > 2)
    spinous &= (t > 0.0) & (t < 0.75) & ~disc
    lab[spinous] = T.SPINOUS_PROCESS
    # facet joints around the disc level: articular pillars, the joint line angled to the sagittal plane
    fa = np.radians(np.take(np.asarray(FACET_ANGLE_DEG, np.float32), level))
    fx = canal_w / 2 + 4 * sc
    fy = y_canal + 4
    u = (ax - fx) * np.cos(fa) + (y - fy) * np.sin(fa)
    v = -(ax - fx) * np.sin(fa) + (y - fy) * np.cos(fa)
    near_disc = lumbar & ((t < 0.15) | (t > 0.85) | disc)
    facet = near_disc & (np.abs(u) < 6 * sc) & (np.abs(v) < 9 * sc)
    lab[facet & (np.abs(u) > 0.6)] = T.FACET
    lab[facet & (np.abs(u) <= 0.6)] = T.CSF  # joint fluid line
    lab[canal & lumbar] = T.EPIDURAL_FAT
    dural = _ellipse(
        x, y, 0.0, y_canal, canal_w / 2 - 2, np.take(np.asarray(DURAL_AP_MM, np.float32), level) * sc / 2
    )
    lab[dural & (z > -80)] = T.CSF
    return lab
