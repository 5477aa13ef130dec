"""Domain-randomised training images from tissue label maps (in the manner of SynthSeg).

Billot et al. (Medical Image Analysis 2023) train segmentation on synthetic images only: every sample
draws a new appearance for a fixed label map (intensity per tissue, texture, resolution, noise, bias),
so the network cannot learn one simulator's look and has to learn the anatomy. Here the label maps
come from the phantom anatomy (:func:`.labelmaps.us_label_map`, :func:`.labelmaps.mr_label_stack`: planes
and slice stacks through :class:`~backmice_vision.phantoms.anatomy.Subject`, sampled directly at the model
spacing) and
the appearance from :func:`randomise_us` / :func:`randomise_mr`. The physics simulators
(:mod:`.ultrasound`, :mod:`.mr`) stay as a second, realistic source.

Everything is a pure function of its inputs and a ``numpy.random.Generator``. Label maps are uint8
:class:`~backmice_vision.labels.Tissue` labels; images float32. Geometry: rows are depth for ultrasound
(row 0 at the transducer face) and the DICOM column direction for MR (axial: anterior at the top, see
``anatomy.md`` §2); spacing is ``spacing_mm`` in both directions.

Ranges below are deliberately wider than any one scanner ([E] for all of them); the realistic values
they contain are those of ``configs/phantom_*.yaml`` and ``shared/docs/domain.md``.
"""

from __future__ import annotations

import io
import math

import numpy as np
from scipy import ndimage

from ..labels import NODULE_TISSUES, Tissue
from .labelmaps import MRLabelStack

T = Tissue
_FAT = (T.SUPERFICIAL_FAT, T.DEEP_FAT)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------------------------------
# appearance helpers


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale_px: float) -> np.ndarray:
    """A smooth zero-mean, unit-std random field float32 of ``shape`` (last two axes) at ``scale_px``."""
    coarse = [max(2, math.ceil(s / max(scale_px, 1.0)) + 1) for s in shape[-2:]]
    f = rng.standard_normal(coarse).astype(np.float32)
    zoom = [s / c for s, c in zip(shape[-2:], coarse, strict=True)]
    out = ndimage.zoom(f, zoom, order=3, mode="nearest")[: shape[-2], : shape[-1]]
    pad = [(0, max(0, s - o)) for s, o in zip(shape[-2:], out.shape, strict=True)]
    out = np.pad(out, pad, mode="edge")
    out -= out.mean()
    out /= max(float(out.std()), 1e-6)
    return out.astype(np.float32)


def _stripes(
    rng: np.random.Generator, shape: tuple[int, int], spacing_px: float, angle_rad: float
) -> np.ndarray:
    """Thin bright lines of period ~``spacing_px`` at ``angle_rad`` from the rows, with random
    breaks: a narrow-band random field, thresholded; float32 in [0, 1]."""
    rows, cols = shape
    ii, jj = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    acc = np.zeros(shape, np.float32)
    for _ in range(6):
        a = angle_rad + float(rng.normal(0.0, 0.08))
        k = 2 * np.pi / (spacing_px * float(rng.uniform(0.8, 1.25)))
        along = float(rng.uniform(-0.15, 0.15)) * k  # slow modulation along the lines
        acc += np.cos(
            k * (ii * math.cos(a) - jj * math.sin(a)) + along * jj + float(rng.uniform(0, 2 * np.pi))
        )
    acc /= math.sqrt(3.0)
    return np.clip(acc / 1.5, 0.0, 1.0)


def _septa(rng: np.random.Generator, shape: tuple[int, int], lobule_px: float, width_px: float) -> np.ndarray:
    """A network of thin curved septa (zero set of a smooth field), stretched along the rows; [0, 1]."""
    stretch = float(rng.uniform(1.0, 3.0))  # fat septa lie mostly parallel to the skin
    f = _smooth_field(rng, (shape[0], max(2, round(shape[1] / stretch))), lobule_px / 2.0)
    f = ndimage.zoom(f, (1.0, shape[1] / f.shape[1]), order=1)[:, : shape[1]]
    if f.shape[1] < shape[1]:
        f = np.pad(f, ((0, 0), (0, shape[1] - f.shape[1])), mode="edge")
    grad = np.hypot(*np.gradient(f)) + 1e-3
    return np.exp(-((f / (grad * max(width_px, 0.3))) ** 2)).astype(np.float32)


def _jpeg(img01: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip a [0, 1] image through 8-bit JPEG at ``quality`` (Pillow)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(img01 * 255), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32) / 255.0


def _resolution(img: np.ndarray, rng: np.random.Generator, max_factor: float) -> np.ndarray:
    """Down- then up-sample the last two axes by a random factor (a coarser acquisition)."""
    f = _u(rng, 1.2, max_factor)
    small = ndimage.zoom(img, [1.0] * (img.ndim - 2) + [1 / f, 1 / f], order=1)
    back = ndimage.zoom(
        small,
        [1.0] * (img.ndim - 2) + [a / b for a, b in zip(img.shape[-2:], small.shape[-2:], strict=True)],
        order=1,
    )
    out = np.zeros_like(img)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(img.shape, back.shape, strict=True))
    out[sl] = back[sl]
    return out


# --------------------------------------------------------------------------------------------------
# ultrasound


def _us_levels(rng: np.random.Generator) -> np.ndarray:
    """Mean backscatter (dB vs fat) per tissue label, drawn wide."""
    db = np.zeros(256, np.float32)
    fat_deep = _u(rng, -2.0, 2.0)
    db[T.SUPERFICIAL_FAT], db[T.DEEP_FAT] = 0.0, fat_deep
    db[T.SKIN] = _u(rng, 4.0, 22.0)
    db[T.SUPERFICIAL_FASCIA] = _u(rng, 3.0, 18.0)
    db[T.TLF] = _u(rng, 5.0, 26.0)
    db[T.MUSCLE] = _u(rng, -10.0, 6.0)
    db[T.BONE] = _u(rng, 12.0, 32.0)
    db[T.CYST] = _u(rng, -35.0, -8.0)
    db[T.VESSEL] = _u(rng, -45.0, -20.0)
    db[T.HAEMATOMA] = _u(rng, -22.0, 2.0)
    db[T.OEDEMA] = _u(rng, -4.0, 10.0)
    db[T.VISCERA] = _u(rng, -12.0, 6.0)
    db[T.CSF] = _u(rng, -45.0, -20.0)
    # the back mouse: within a few dB of the fat it came from in half the draws (its shape, capsule and
    # stalk are the cues, domain.md [S19]), clearly hypoechoic in 35 % (oedema; 62.5 % of subcutaneous
    # lipomas are hypoechoic [S20]) and hyperechoic in 15 % (fibrosis; 18 % [S20]). A nodule always keeps
    # one cue: without an echogenic capsule it differs from the fat by 4 dB or more (an iso-echoic nodule
    # without a capsule is fat on the image, and a label there would teach the network to flag fat).
    kind = rng.random()
    if kind < 0.5:
        nodule = fat_deep + _u(rng, -2.5, 3.0)
    else:
        nodule = fat_deep + (_u(rng, -12.0, -3.0) if kind < 0.85 else _u(rng, 3.0, 10.0))
    if rng.random() < 0.85:
        capsule = nodule + _u(rng, 5.0, 15.0)
    else:
        if abs(nodule - fat_deep) < 4.0:
            nodule = fat_deep + (_u(rng, -12.0, -4.0) if rng.random() < 0.7 else _u(rng, 4.0, 10.0))
        capsule = nodule + _u(rng, -2.0, 3.0)
    db[T.NODULE] = nodule
    db[T.STALK] = nodule + _u(rng, -2.0, 2.0)
    db[T.NODULE_CAPSULE] = capsule
    for t in range(19, 256):  # labels of finer anatomy (if any): muscle- or bone-like
        db[t] = db[T.MUSCLE]
    return db


def _us_alpha(rng: np.random.Generator) -> np.ndarray:
    """Attenuation dB/cm/MHz per tissue (domain.md [S22] ranges, widened)."""
    a = np.full(256, _u(rng, 0.9, 1.5), np.float32)  # muscle-like default
    fat = _u(rng, 0.5, 0.9)
    for t in (*_FAT, T.NODULE, T.NODULE_CAPSULE, T.STALK, T.OEDEMA, T.SUPERFICIAL_FASCIA):
        a[t] = fat
    a[T.AIR] = 0.0
    a[T.SKIN] = _u(rng, 0.3, 0.8)
    a[T.TLF] = _u(rng, 1.2, 2.0)
    a[T.BONE] = _u(rng, 15.0, 30.0)
    for t in (T.CYST, T.VESSEL, T.CSF):
        a[t] = _u(rng, 0.05, 0.3)
    a[T.HAEMATOMA] = _u(rng, 0.2, 0.6)
    return a


def _fat_mimics(labels: np.ndarray, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """Echo in dB float32 ``(rows, cols)`` of 1-3 fat lobules outlined by partial septa: ovals of
    5-30 mm long axis roughly parallel to the skin, in the fat away from any nodule, each with one or
    two bright arcs covering 25-60 % of its outline (a lobule's septa, never the closed ring of a
    capsule) and an interior within 1.5 dB of the fat. Zero elsewhere."""
    rows, cols = labels.shape
    out = np.zeros(labels.shape, np.float32)
    fat = np.isin(labels, _FAT)
    away = fat & (ndimage.distance_transform_edt(~np.isin(labels, NODULE_TISSUES)) * spacing_mm > 3.0)
    where = np.flatnonzero(away)
    if where.size == 0:
        return out
    ii, jj = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    for _ in range(int(rng.integers(1, 4))):
        ci, cj = np.unravel_index(int(where[rng.integers(where.size)]), labels.shape)
        a = _u(rng, 2.5, 15.0) / spacing_mm
        b = a / _u(rng, 1.3, 3.0)
        tilt = math.radians(_u(rng, -15.0, 15.0))
        u = (jj - cj) * math.cos(tilt) + (ii - ci) * math.sin(tilt)
        v = -(jj - cj) * math.sin(tilt) + (ii - ci) * math.cos(tilt)
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        theta = np.arctan2(v / b, u / a)
        arcs = np.zeros(labels.shape, bool)
        n_arcs = int(rng.integers(1, 3))
        for length in rng.dirichlet(np.ones(n_arcs)) * _u(rng, 0.25, 0.6) * 2 * np.pi:
            start = _u(rng, -np.pi, np.pi)
            arcs |= np.mod(theta - start, 2 * np.pi) < length
        band = np.abs(r - 1.0) * b < max(0.5, _u(rng, 0.2, 0.5) / spacing_mm)
        out += np.where(band & arcs & away, _u(rng, 4.0, 12.0), 0.0).astype(np.float32)
        out += np.where((r < 1.0) & away, _u(rng, -1.5, 1.5), 0.0).astype(np.float32)
    return out


def _fascia_dimming(labels: np.ndarray, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """Echo lost by the thoracolumbar fascia, dB float32 ``(rows, cols)`` (>= 0 on TLF pixels, 0
    elsewhere): its specular share fades as the beam (along the rows) leaves the fascia normal
    (anatomy.md: it dims about 5 degrees off perpendicular), on the fascia's own slope plus a random
    undulation along it, and (randomly) drops out over a few millimetres where nothing is torn. Such
    dim stretches, with no nodule above, are hard negatives for a fascia gap (the stalk's is filled)."""
    out = np.zeros(labels.shape, np.float32)
    tlf = labels == T.TLF
    if not tlf.any():
        return out
    cols = labels.shape[1]
    smooth = ndimage.gaussian_filter(tlf.astype(np.float32), max(1.0 / spacing_mm, 1.0))
    g_row, g_col = np.gradient(smooth)
    slope_deg = np.degrees(np.arctan2(np.abs(g_col), np.abs(g_row) + 1e-6))
    bend = _smooth_field(rng, (2, cols), _u(rng, 3.0, 12.0) / spacing_mm)[0] * _u(rng, 0.0, 8.0)
    angle = np.abs(slope_deg + bend[None, :])
    specular_db, width_deg = _u(rng, 4.0, 16.0), _u(rng, 2.0, 8.0)
    dim = specular_db * (1.0 - np.exp(-((angle / width_deg) ** 2)))
    if rng.random() < 0.5:  # dropouts: a few millimetres of fascia without its specular echo
        f = _smooth_field(rng, (2, cols), _u(rng, 2.0, 10.0) / spacing_mm)[0]
        dim = dim + np.where(f > _u(rng, 0.5, 1.5), np.float32(_u(rng, 4.0, 14.0)), np.float32(0.0))[None, :]
    out[tlf] = dim[tlf]
    return out


def randomise_us(
    labels: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float,
    fat_mimic_prob: float = 0.0,
    fascia_dimming_prob: float = 0.0,
) -> np.ndarray:
    """A random B-mode-like image float32 ``(rows, cols)`` in [0, 1] for Tissue ``labels``.

    Per-tissue backscatter, fat septa and muscle striations of random size and direction, (with
    probability ``fat_mimic_prob``) fat lobules outlined by partial septa as hard negatives, (with
    probability ``fascia_dimming_prob``) the fascia's specular dimming and dropouts, Rayleigh
    speckle through a random anisotropic PSF, frequency-dependent attenuation, (randomly) reverberation
    of the near field below the fascia and near-field clutter as in :func:`.ultrasound.simulate_bmode`,
    a partial, gain-limited TGC, electronic noise, random dynamic range and gain, then (randomly) gamma, a
    coarser resolution, a smooth gain field and JPEG compression. Rows are depth.
    """
    from .ultrasound import near_field_clutter, reverberation

    rows, cols = labels.shape
    s = float(spacing_mm)
    levels = _us_levels(rng)
    db = levels[labels]
    fat = np.isin(labels, _FAT)
    if fat.any() and rng.random() < 0.85:
        sep = _septa(rng, labels.shape, _u(rng, 3.0, 10.0) / s, _u(rng, 0.08, 0.4) / s)
        db += np.where(fat, _u(rng, 3.0, 12.0) * sep, 0.0).astype(np.float32)
    if fat_mimic_prob > 0.0 and rng.random() < fat_mimic_prob:
        db += _fat_mimics(labels, rng, s)
    if fascia_dimming_prob > 0.0 and rng.random() < fascia_dimming_prob:
        # the diffuse echo stays: a dimmed fascia is never darker than the fat over it
        floor = np.float32(levels[T.DEEP_FAT] + _u(rng, 0.0, 3.0))
        db = np.where(labels == T.TLF, np.maximum(db - _fascia_dimming(labels, rng, s), floor), db)
    muscle = labels == T.MUSCLE
    if muscle.any() and rng.random() < 0.85:
        angle = math.radians(_u(rng, -30.0, 30.0))
        strip = _stripes(rng, labels.shape, _u(rng, 0.6, 2.0) / s, angle)
        if rng.random() < 0.3:  # short axis: dotted septa
            strip = strip * _stripes(rng, labels.shape, _u(rng, 0.6, 2.0) / s, angle + math.pi / 2)
        db += np.where(muscle, _u(rng, 3.0, 12.0) * strip, 0.0).astype(np.float32)
    db += _u(rng, 0.0, 3.0) * _smooth_field(rng, labels.shape, _u(rng, 2.0, 10.0) / s)
    amp = np.power(np.float32(10.0), db / np.float32(20.0))
    amp[labels == T.AIR] = 0.0
    # speckle: complex Gaussian scatterers through an anisotropic Gaussian PSF (lateral grains longer)
    z = rng.standard_normal((2, rows, cols), dtype=np.float32)
    sig_ax = _u(rng, 0.04, 0.18) / s
    sig_lat = sig_ax * _u(rng, 1.3, 4.0)
    sig = (max(sig_ax, 0.3), max(sig_lat, 0.3))
    norm = math.sqrt(sum(1.0 / (2 * math.sqrt(math.pi) * q) for q in sig) / 2.0)  # keep unit speckle power
    gain = np.float32(1.0 / max(norm, 1e-3))
    field = (ndimage.gaussian_filter(z[0] * amp, sig) + 1j * ndimage.gaussian_filter(z[1] * amp, sig)) * gain
    # attenuation, then (randomly) the near field repeated below the fascia and clutter at the face
    freq = _u(rng, 5.0, 18.0)
    step = (2.0 * freq * s / 10.0) * _us_alpha(rng)[labels]
    att = np.cumsum(step, axis=0) - 0.5 * step
    field *= np.power(np.float32(10.0), -att / np.float32(20.0))
    tlf = labels == T.TLF
    if tlf.any() and rng.random() < 0.6:
        field += reverberation(field, tlf, att, _u(rng, -35.0, -15.0))
    if rng.random() < 0.7:  # speckle-grained clutter over the top 0.5-4 mm, up to 6 dB above fat
        depth_mm = ((np.arange(rows) + 0.5) * s).astype(np.float32)
        z = rng.standard_normal((2, rows, cols), dtype=np.float32)
        grain = (ndimage.gaussian_filter(z[0], sig) + 1j * ndimage.gaussian_filter(z[1], sig)) * gain
        field += grain * near_field_clutter(depth_mm, _u(rng, -15.0, 6.0), _u(rng, 0.5, 4.0))[:, None]
    # a partial TGC, gain-limited at a noise ceiling
    soft = np.minimum(step, np.float32(2.0 * freq * s / 10.0 * 1.6))
    typical = np.median(np.cumsum(soft, axis=0), axis=1)
    depth_frac = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    tgc = _u(rng, 0.7, 1.05) * typical + _u(rng, -10.0, 10.0) * depth_frac
    noise_db = _u(rng, -110.0, -70.0)
    tgc = np.minimum(tgc, _u(rng, -25.0, -5.0) - noise_db)
    noise = np.hypot(*rng.standard_normal((2, rows, cols), dtype=np.float32)) / np.float32(math.sqrt(2.0))
    lin = np.abs(field).astype(np.float32) + noise * np.float32(10.0 ** (noise_db / 20.0))
    lin *= np.power(np.float32(10.0), tgc / 20.0)[:, None]
    level = 20.0 * np.log10(np.maximum(lin, 1e-12))
    dyn = _u(rng, 35.0, 80.0)
    fat_level = float(np.median(level[fat])) if fat.sum() > 50 else float(np.median(level))
    img = (level - fat_level) / dyn + _u(rng, 0.2, 0.6)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return _post(img, rng, jpeg=True)


def _post(img: np.ndarray, rng: np.random.Generator, jpeg: bool) -> np.ndarray:
    """Random gamma, resolution loss, smooth gain field and (2-D) JPEG, on a [0, 1] image."""
    if rng.random() < 0.5:
        img = np.power(img, np.float32(_u(rng, 0.6, 1.7)))
    if rng.random() < 0.3:
        img = _resolution(img, rng, 2.5)
    if rng.random() < 0.3:
        img = img * (1.0 + _u(rng, 0.0, 0.3) * _smooth_field(rng, img.shape, max(img.shape[-2:]) / 3))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if jpeg and img.ndim == 2 and rng.random() < 0.4:
        img = _jpeg(img, int(rng.integers(20, 96)))
    return img


# --------------------------------------------------------------------------------------------------
# MR

_MR_TISSUES = tuple(int(t) for t in T)


def _mr_levels(rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Signal per tissue: half the time near a real contrast (T1, T2, STIR tables of :mod:`.mr`),
    otherwise uniform random per tissue (SynthSeg). Back mice keep the signal of fat mostly; on the
    uniform draws a nodule keeps a cue as on the real contrasts (a capsule 0.3 or more from the fat, or
    a nodule 0.15 or more from it), so no nodule is fat with a nodule label.

    Also returns whether the nodules are invisible: fat-signal nodules on a fat-suppressed contrast
    vanish with the fat (their capsule is within the noise of suppressed fat), as :mod:`.mr` labels them.
    """
    from .mr import _FAT as FAT_SIGNAL
    from .mr import FAT_SUPPRESSED, SIGNAL

    lut = np.zeros(256, np.float32)
    contrast = ""
    if rng.random() < 0.5:
        contrast = ("T1", "T2", "STIR")[int(rng.integers(3))]
        fat = _u(rng, *FAT_SIGNAL[contrast])
        for t in _MR_TISSUES:
            lo, hi = SIGNAL[contrast].get(T(t), FAT_SIGNAL[contrast])
            lut[t] = _u(rng, lo, hi) * _u(rng, 0.75, 1.3)
        lut[T.SUPERFICIAL_FAT] = lut[T.DEEP_FAT] = fat
    else:
        for t in _MR_TISSUES:
            lut[t] = _u(rng, 0.0, 1.0)
        fat = lut[T.SUPERFICIAL_FAT] = lut[T.DEEP_FAT] = _u(rng, 0.0, 1.0)
    lut[T.AIR] = 0.0
    fat_like = bool(rng.random() < 0.75)
    nod = fat * _u(rng, 0.9, 1.1) if fat_like else _u(rng, 0.0, 1.2)
    lut[T.NODULE] = lut[T.STALK] = nod
    if not contrast and abs(lut[T.NODULE_CAPSULE] - fat) < 0.3 and abs(nod - fat) < 0.15:
        darker = fat >= 0.3 and (fat > 0.7 or rng.random() < 0.5)
        lut[T.NODULE_CAPSULE] = fat - _u(rng, 0.3, fat) if darker else fat + _u(rng, 0.3, 1.3 - fat)
    for t in range(len(_MR_TISSUES), 256):
        lut[t] = lut[T.MUSCLE]
    return lut, fat_like and contrast in FAT_SUPPRESSED


def mr_signal(stack: MRLabelStack, lut: np.ndarray) -> np.ndarray:
    """Noise-free signal float32 ``(C, rows, cols)`` of ``stack`` for the signal per tissue ``lut``
    (float32, indexed by label): ``lut`` of the centre label, or the mean over the voxel's sub-samples
    where :func:`mr_label_stack` refined it."""
    img = lut[stack.labels]
    flat = img.reshape(len(img), -1)
    for c, (idx, sub) in enumerate(stack.refined):
        flat[c, idx] = lut[sub].mean(axis=1)
    return img


def randomise_mr(
    stack: MRLabelStack, rng: np.random.Generator, spacing_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """A random MR-like stack float32 ``(C, rows, cols)`` in [0, 1] for the tissues of ``stack``, and
    the tissue labels uint8 ``(C, rows, cols)`` it shows (nodules it cannot show relabelled as fat).

    One intensity per tissue for the whole stack, partial volume over the slice thickness where the
    tissue changes, a smooth texture per tissue, in-plane blur, a multiplicative coil bias, Rician
    noise, and randomly gamma and a coarser resolution.
    """
    lut, hidden = _mr_levels(rng)
    labels = stack.labels
    img = mr_signal(stack, lut)
    if hidden:
        labels = np.where(np.isin(labels, NODULE_TISSUES), np.uint8(T.SUPERFICIAL_FAT), labels)
    shape = labels.shape
    tex_amp = _u(rng, 0.0, 0.2)
    if tex_amp > 0:
        img = img * (1.0 + tex_amp * _smooth_field(rng, shape, _u(rng, 3.0, 20.0) / spacing_mm))[None]
    blur = _u(rng, 0.0, 1.2)
    if blur > 0.2:
        img = ndimage.gaussian_filter(img, (0.0, blur, blur))
    bias = 1.0 + _u(rng, 0.0, 0.4) * _smooth_field(rng, shape, max(shape[-2:]) / _u(rng, 1.5, 4.0))
    img = img * np.clip(bias, 0.2, None)[None]
    ref = float(np.percentile(img[labels != T.AIR], 90)) if (labels != T.AIR).any() else 1.0
    sigma = np.float32(max(ref, 1e-3) / _u(rng, 5.0, 60.0))
    n1, n2 = rng.standard_normal((2, *img.shape), dtype=np.float32)
    img = np.hypot(img + sigma * n1, sigma * n2)
    lo, hi = np.percentile(img, (0.5, 99.5))
    img = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    return _post(img, rng, jpeg=False), labels
