"""Ultrasound B-mode simulation: measure the simulated images against the configured physics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import ndimage

from backmice_vision.errors import ConfigError
from backmice_vision.labels import Tissue
from backmice_vision.phantoms import ultrasound as us

SKIN_Y = 100.0


@dataclass
class _Nod:
    id: int
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    variant: str = "typical"
    defect_present: bool = False
    side: str = "left"


@dataclass
class LayeredBack:
    """A flat back (skin at y = 100) with known layers, nodules, a cyst and a bone plateau.

    Depth d = 100 - y: skin 0-2, SAT 2-10, superficial fascia 10-10.5, DAT 10.5-20, TLF 20-21.5,
    muscle below; bone for d >= 30 under -30 < x < 0. Nodule 1 (typical, stalk 5 mm wide) at x = 40,
    nodule 2 (oedematous) at x = -60, a cyst of radius 3 mm at x = 80, depth 6 mm (all at z = 0).
    """

    nodules: list[_Nod] = field(
        default_factory=lambda: [
            _Nod(1, (40.0, SKIN_Y - 15.0, 0.0), (6.0, 3.5, 4.0), defect_present=True),
            _Nod(2, (-60.0, SKIN_Y - 15.0, 0.0), (6.0, 3.5, 4.0), variant="oedematous", side="right"),
        ]
    )
    capsule_mm: float = 0.3

    def skin_y(self, x: float, z: float) -> float:
        return SKIN_Y

    def labels_at(self, points_mm: np.ndarray) -> np.ndarray:
        x, y, z = (points_mm[..., k].astype(np.float64) for k in range(3))
        d = SKIN_Y - y
        t = Tissue
        lab = np.full(d.shape, int(t.MUSCLE), np.uint8)
        for lo, hi, tissue in [
            (0, 2, t.SKIN),
            (2, 10, t.SUPERFICIAL_FAT),
            (10, 10.5, t.SUPERFICIAL_FASCIA),
            (10.5, 20, t.DEEP_FAT),
            (20, 21.5, t.TLF),
        ]:
            lab[(d >= lo) & (d < hi)] = tissue
        lab[(d >= 30) & (x > -30) & (x < 0)] = t.BONE
        lab[d < 0] = t.AIR
        lab[(x - 80) ** 2 + (d - 6) ** 2 + z**2 < 9] = t.CYST
        for nod in self.nodules:
            if nod.defect_present:  # stalk 5 mm wide (x), 5 mm long (z), through the TLF
                c = nod.center_mm
                lab[(np.abs(x - c[0]) < 2.5) & (np.abs(z - c[2]) < 2.5) & (d > 18) & (d < 23)] = t.STALK
            r = np.sqrt(
                sum(
                    ((p - c) / s) ** 2
                    for p, c, s in zip((x, y, z), nod.center_mm, nod.semi_axes_mm, strict=True)
                )
            )
            lab[r < 1] = t.NODULE
            lab[(r < 1) & (r > 1 - self.capsule_mm / min(nod.semi_axes_mm))] = t.NODULE_CAPSULE
        return lab


PROBE = us.ProbeSettings(frequency_mhz=15.0, depth_mm=40.0, width_mm=40.0, pixel_mm=0.08, tgc_error_db=0.0)
NO_SEPTA = {"fat_septa_db": 0.0, "fat_alpha": 0.7, "deep_fat_db": 0.0}


def _plane(x: float, z: float = 0.0) -> us.ScanPlane:
    return us.ScanPlane((x, SKIN_Y, z))


def _image(
    x: float, seed: int = 0, z: float = 0.0, probe: us.ProbeSettings = PROBE, echo: dict | None = None
) -> us.BModeImage:
    rng = np.random.default_rng(seed)
    return us.simulate_bmode(
        LayeredBack(), _plane(x, z), probe, rng, echo=us.random_echo(rng, echo) if echo is not None else None
    )


def _rows(depth0: float, depth1: float, px: float = PROBE.pixel_mm) -> slice:
    return slice(int(depth0 / px), int(depth1 / px))


def _log(env: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(env, 1e-12))


def test_fat_speckle_is_fully_developed_rayleigh():
    img = _image(-100.0, echo=NO_SEPTA)
    patch = img.envelope[_rows(4.0, 9.0), 20:-20]
    assert np.all(img.labels[_rows(4.0, 9.0), 20:-20] == Tissue.SUPERFICIAL_FAT)
    snr = patch.mean() / patch.std()
    assert abs(snr - 1.91) < 0.15, snr
    # log compression of a Rayleigh envelope: std of 20 log10 is 5.57 dB
    assert abs(_log(patch).std() - 5.57) < 0.5


def _contrast(img: us.BModeImage) -> float:
    """Mean log envelope of the nodule interior minus that of deep fat at the same depths, away from
    the rim (more than ~3 lateral PSF widths)."""
    nodule = img.labels == Tissue.NODULE
    inner = ndimage.binary_erosion(nodule, iterations=8)
    rows = np.unique(np.nonzero(inner)[0])
    fat = np.zeros_like(inner)
    fat[rows] = img.labels[rows] == Tissue.DEEP_FAT
    fat &= ~ndimage.binary_dilation(nodule | (img.labels == Tissue.NODULE_CAPSULE), iterations=15)
    return float(_log(img.envelope[inner]).mean() - _log(img.envelope[fat]).mean())


def test_nodule_contrast_matches_the_configured_range():
    for seed in range(3):
        img = _image(40.0, seed=seed, echo=NO_SEPTA)
        info = {n["id"]: n for n in img.nodules}[1]
        assert 0.0 <= info["echo_db"] <= 3.0
        contrast = _contrast(img)
        assert abs(contrast - info["echo_db"]) < 1.0, (contrast, info["echo_db"])

    img = _image(-60.0, seed=5, echo=NO_SEPTA)
    info = {n["id"]: n for n in img.nodules}[2]
    contrast = _contrast(img)
    assert -6.0 <= info["echo_db"] <= -3.0
    assert -7.0 < contrast < -2.0 and abs(contrast - info["echo_db"]) < 1.0, contrast


def test_fascia_and_capsule_brighter_than_fat():
    img = _image(40.0)
    logi = _log(img.envelope)
    fat = logi[img.labels == Tissue.DEEP_FAT].mean()
    assert logi[img.labels == Tissue.TLF].mean() > fat + 8.0
    assert logi[img.labels == Tissue.NODULE_CAPSULE].mean() > fat + 3.0  # thin rim, blurred by the PSF
    assert logi[img.labels == Tissue.SKIN].mean() > fat + 6.0
    # the displayed image agrees
    assert img.image[img.labels == Tissue.TLF].mean() > img.image[img.labels == Tissue.DEEP_FAT].mean() + 30


def test_acoustic_shadow_under_bone():
    # no electronic noise floor (it would fill the shadow at the TGC gain of ~70 dB at 35 mm)
    quiet = us.ProbeSettings(depth_mm=40.0, width_mm=40.0, pixel_mm=0.08, noise_db=-150.0)
    img = _image(0.0, probe=quiet)  # bone plateau (depth >= 30) under -30 < x < 0: left half of the image
    cols = img.image.shape[1]
    under = slice(int(cols * 0.1), int(cols * 0.4))  # x -16..-4: over the bone
    beside = slice(int(cols * 0.6), int(cols * 0.95))  # x > 0: muscle goes on
    assert np.all(img.labels[_rows(31, 38), under] == Tissue.BONE)
    above = _log(img.envelope[_rows(24, 29), under]).mean()
    below = _log(img.envelope[_rows(32, 38), under]).mean()
    same_depth = _log(img.envelope[_rows(32, 38), beside]).mean()
    assert below < above - 20.0
    assert below < same_depth - 20.0
    profile = _log(img.envelope[:, under]).mean(axis=1)  # bright bone surface over the muscle just above
    assert profile[_rows(29.7, 30.5)].max() > profile[_rows(28.5, 29.5)].mean() + 15.0


def test_posterior_enhancement_under_cyst():
    img = _image(80.0)
    cols = img.image.shape[1]
    centre = cols // 2
    half = int(1.5 / PROBE.pixel_mm)
    under = _log(img.envelope[_rows(12, 19), centre - half : centre + half]).mean()
    beside = np.concatenate(
        [img.envelope[_rows(12, 19), : centre - 4 * half], img.envelope[_rows(12, 19), centre + 4 * half :]],
        axis=1,
    )
    assert _log(img.envelope[img.labels == Tissue.CYST]).mean() < _log(beside).mean() - 10.0
    assert under > _log(beside).mean() + 1.5


def test_nodule_measurements_match_the_ellipsoid_cross_section():
    z0 = 1.5
    img = _image(40.0, z=z0)
    (info,) = [n for n in img.nodules if n["id"] == 1]
    f = math.sqrt(1 - (z0 / 4.0) ** 2)
    px = PROBE.pixel_mm
    expected = (2 * 6.0 * f, 2 * 3.5 * f)
    assert all(abs(m - e) < 0.03 * e + px for m, e in zip(info["diameters_mm"], expected, strict=True))
    i, j = info["center_pixel"]
    assert abs(i - (15.0 / px - 0.5)) < 1.0 and abs(j - (img.image.shape[1] / 2 - 0.5)) < 1.0
    assert abs(info["depth_mm"] - (15.0 - 3.5 * f)) <= px + 1e-6
    assert abs(info["fascia_depth_mm"] - 20.0) <= px + 1e-6
    assert info["defect_present"] and info["defect_in_plane"]
    assert abs(info["defect_width_mm"] - 5.0) <= 2 * px
    assert info["visible"] and not info["truncated"] and info["side"] == "left"
    ids = img.nodule_ids
    assert set(np.unique(ids[img.labels == Tissue.NODULE])) == {1}
    assert np.all(ids[~np.isin(img.labels, [Tissue.NODULE, Tissue.NODULE_CAPSULE, Tissue.STALK])] == 0)
    # outside the cut: no nodule, and a plane beyond the stalk has no defect in plane
    assert _image(40.0, z=6.0).nodules == []
    far = {n["id"]: n for n in _image(40.0, z=3.0).nodules}[1]
    assert far["defect_present"] and not far["defect_in_plane"] and far["defect_width_mm"] is None


def test_deterministic_for_a_seed():
    a, b, c = _image(40.0, seed=7), _image(40.0, seed=7), _image(40.0, seed=8)
    assert np.array_equal(a.image, b.image) and a.nodules == b.nodules
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint8 and a.labels.dtype == np.uint8 and a.envelope.dtype == np.float32
    assert a.image.shape == a.labels.shape == PROBE.shape == (500, 500)


def test_cine_speckle_moves_with_the_tissue():
    probe = us.ProbeSettings(depth_mm=16.0, width_mm=30.0, pixel_mm=0.1, elevation_fwhm_mm=1.0)
    rng = np.random.default_rng(3)
    frames = us.simulate_cine(
        LayeredBack(),
        _plane(-100.0),
        probe,
        rng,
        n_frames=20,
        sweep_mm=8.0,
        echo=us.random_echo(rng, NO_SEPTA),
    )
    assert len(frames) == 20
    z = [f.plane.center_mm[2] for f in frames]
    assert z[0] == pytest.approx(4.0) and z[-1] == pytest.approx(-4.0)  # normal of a +x / -y plane is -z
    patch = (_rows(3, 9, 0.1), slice(10, -10))

    def corr(a: us.BModeImage, b: us.BModeImage) -> float:
        return float(np.corrcoef(a.envelope[patch].ravel(), b.envelope[patch].ravel())[0, 1])

    steps = [corr(frames[k], frames[k + 1]) for k in range(19)]
    # elevational step 0.42 mm, slice FWHM 1 mm: intensity correlation ~ exp(-step^2 / (2 sigma_e^2))
    assert min(steps) > 0.3 and max(steps) < 0.97, steps
    assert abs(corr(frames[0], frames[-1])) < 0.1
    assert not np.array_equal(frames[0].image, frames[1].image)

    rng = np.random.default_rng(4)
    lateral = us.simulate_cine(
        LayeredBack(),
        _plane(-100.0),
        probe,
        rng,
        n_frames=3,
        sweep_mm=2.0,
        direction="lateral",
        echo=us.random_echo(rng, NO_SEPTA),
    )
    shift = 10  # 1 mm per frame at 0.1 mm pixels: the same scatterers 10 columns to the left
    a = lateral[0].envelope[_rows(3, 9, 0.1), shift:]
    b = lateral[1].envelope[_rows(3, 9, 0.1), :-shift]
    assert float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) > 0.95


def test_plan_planes_on_real_anatomy():
    from backmice_vision.phantoms.anatomy import AnatomyConfig, make_subject

    subject = next(
        s
        for s in (make_subject(seed, AnatomyConfig(force_nodules=2)) for seed in range(11, 40))
        if not all(n.lobulated for n in s.nodules)
    )
    rng = np.random.default_rng(0)
    planes = us.plan_planes(subject, rng, 8, p_on_nodule=1.0)
    assert all(p.target_nodule in {n.id for n in subject.nodules} for p in planes)
    for p in planes:
        x, y, z = p.center_mm
        assert abs(y - float(subject.skin_y(x, z))) < 1e-3
        assert float(np.dot(p.beam_dir, (0.0, -1.0, 0.0))) > 0.9
    negatives = us.plan_planes(subject, rng, 5, p_on_nodule=0.0)
    assert all(p.target_nodule is None for p in negatives)

    probe = us.ProbeSettings(depth_mm=35.0, width_mm=40.0, pixel_mm=0.1)
    hits = 0
    for p in planes[:3]:
        img = us.simulate_bmode(subject, p, probe, rng)
        hits += any(n["id"] == p.target_nodule and n["visible"] for n in img.nodules)
    assert hits >= 2

    nod = next(n for n in subject.nodules if not n.lobulated)
    cx, _, cz = nod.center_mm
    plane = us.ScanPlane((cx, float(subject.skin_y(cx, cz)), cz))
    img = us.simulate_bmode(subject, plane, us.ProbeSettings(depth_mm=45.0, width_mm=50.0, pixel_mm=0.1), rng)
    info = next(n for n in img.nodules if n["id"] == nod.id)
    a, b, _ = nod.semi_axes_mm
    if not info["truncated"]:
        assert info["diameters_mm"][0] == pytest.approx(2 * a, rel=0.05, abs=0.2)
        assert info["diameters_mm"][1] == pytest.approx(2 * b, rel=0.05, abs=0.2)


def test_random_probe_ranges_and_bad_settings():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = us.random_probe(rng)
        assert 12 <= p.frequency_mhz <= 18 and 30 <= p.depth_mm <= 60 and 38 <= p.width_mm <= 50
        assert 50 <= p.dynamic_range_db <= 70 and 0.05 <= p.pixel_mm <= 0.1
        assert p.shape[0] <= us.MAX_RANDOM_ROWS
        assert 0.07 < p.axial_fwhm_mm < 0.2 and 0.2 < p.lateral_fwhm_mm < 0.7
    assert us.random_probe(rng, {"frequency_mhz": 15, "depth_mm": [40, 40]}).depth_mm == 40.0
    with pytest.raises(ConfigError, match="unknown probe setting 'freq'"):
        us.random_probe(rng, {"freq": 10})
    with pytest.raises(ConfigError, match="frequency_mhz"):
        us.ProbeSettings(frequency_mhz=0.0)
    with pytest.raises(ConfigError, match="invalid range"):
        us.random_probe(rng, {"gain_db": [5, -5]})
    with pytest.raises(ConfigError, match="perpendicular"):
        us.ScanPlane((0.0, 100.0, 0.0), lateral_dir=(1.0, 0.0, 0.0), beam_dir=(1.0, -1.0, 0.0))
    with pytest.raises(ConfigError, match="unknown echo setting"):
        us.random_echo(rng, {"bogus": 1})


def _coherence(log_image: np.ndarray, mask: np.ndarray, pixel_mm: float) -> float:
    """Structure-tensor coherence ((l1 - l2) / (l1 + l2))^2 of the tensor averaged over ``mask``, on the
    tissue scale: speckle smoothed out (0.25 mm), tensor integrated over 1 mm."""
    from skimage.feature import structure_tensor

    arr = ndimage.gaussian_filter(log_image.astype(np.float64), 0.25 / pixel_mm)
    a_rr, a_rc, a_cc = structure_tensor(arr, sigma=1.0 / pixel_mm, order="rc")
    t_rr, t_rc, t_cc = (float(v[mask].mean()) for v in (a_rr, a_rc, a_cc))
    root = math.sqrt((t_rr - t_cc) ** 2 + 4 * t_rc**2)
    return (root / (t_rr + t_cc)) ** 2


def _real_planes(n_subjects: int = 4, p_longitudinal: float = 0.0) -> list[us.BModeImage]:
    from backmice_vision.phantoms.anatomy import make_subject

    out = []
    for seed in range(n_subjects):
        subject = make_subject(100 + seed)
        rng = np.random.default_rng(seed)
        (plane,) = us.plan_planes(subject, rng, 1, p_on_nodule=0.5, p_longitudinal=p_longitudinal)
        probe = us.random_probe(rng, {"depth_mm": [40.0, 60.0]})
        out.append(us.simulate_bmode(subject, plane, probe, rng))
    return out


def test_deep_field_fades_to_the_noise_floor_instead_of_brightening():
    for img in _real_planes():
        rows = img.image.shape[0]
        middle = img.image[int(0.4 * rows) : int(0.6 * rows)].mean()
        deepest = img.image[int(0.85 * rows) :].mean()
        assert deepest <= middle, (deepest, middle)
        # where the echo is gone the display shows gain-limited noise: dark, never a white band
        assert deepest < 0.35 * 255
    # a probe whose TGC over-compensates is still gain-limited at the noise ceiling
    over = us.ProbeSettings(depth_mm=40.0, width_mm=40.0, pixel_mm=0.08, tgc_fraction=1.2, tgc_error_db=10.0)
    img = _image(-100.0, probe=over)
    level = _log(img.envelope[_rows(30.0, 40.0), :])
    noise_only = img.labels[_rows(30.0, 40.0), :] == Tissue.MUSCLE  # LayeredBack labels base tissues
    assert np.median(level[noise_only]) < over.noise_ceiling_db + 25.0


def test_muscle_texture_is_more_anisotropic_than_fat():
    """Long-axis views of the paraspinal muscle show pennate fascicle stripes; fat shows curved septa."""
    from backmice_vision.phantoms.anatomy import AnatomyConfig, make_subject

    gaps = []
    for seed in range(6):
        subject = make_subject(200 + seed, AnatomyConfig(habitus="lean"))
        x, z = 30.0 + 5 * (seed % 3), 15.0  # over the erector spinae, above the iliac crest (no bone)
        plane = us.ScanPlane((x, float(subject.skin_y(x, z)), z), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))
        probe = us.ProbeSettings(frequency_mhz=12.0, depth_mm=35.0, width_mm=40.0, pixel_mm=0.08)
        img = us.simulate_bmode(subject, plane, probe, np.random.default_rng(seed))
        logi = _log(img.envelope)
        muscle = ndimage.binary_erosion(
            np.isin(img.labels, (Tissue.MULTIFIDUS, Tissue.ERECTOR_SPINAE)), iterations=15
        )
        fat = ndimage.binary_erosion(
            np.isin(img.labels, [Tissue.SUPERFICIAL_FAT, Tissue.DEEP_FAT]), iterations=15
        )
        if fat.sum() < 15000:  # a thin fat layer measures its bounding lines, not its texture
            continue
        assert muscle.sum() > 5000
        px = img.pixel_mm[0]
        gaps.append(_coherence(logi, muscle, px) - _coherence(logi, fat, px))
    assert len(gaps) >= 3, gaps
    assert float(np.mean(gaps)) > 0.1 and min(gaps) > -0.05, gaps


def test_fascia_is_specular_brighter_than_fat_and_dimmer_when_tilted():
    rng = np.random.default_rng(0)
    echo = us.random_echo(rng, {**NO_SEPTA, "tlf_db": 22.0, "tlf_specular_db": 10.0})

    def tlf_level(tilt_deg: float) -> tuple[float, float]:
        t = math.radians(tilt_deg)  # heel-toe: the beam turns about the array (x) axis
        plane = us.ScanPlane((-100.0, SKIN_Y, 0.0), (1.0, 0.0, 0.0), (0.0, -math.cos(t), math.sin(t)))
        img = us.simulate_bmode(LayeredBack(), plane, PROBE, np.random.default_rng(1), echo=echo)
        logi = _log(img.envelope)
        return float(logi[img.labels == Tissue.TLF].mean()), float(logi[img.labels == Tissue.DEEP_FAT].mean())

    straight, fat = tlf_level(0.0)
    tilted, fat_tilted = tlf_level(9.0)
    assert straight > fat + 6.0 and tilted > fat_tilted  # still brighter than fat
    assert tilted < straight - 5.0  # the specular part is lost ~2 lobe widths off the normal


def test_lateral_resolution_is_best_at_the_focus():
    probe = us.ProbeSettings(focus_mm=15.0, depth_of_field_mm=8.0, lateral_fwhm_mm_at_15mhz=0.4)
    fwhm = probe.lateral_fwhm_at(np.array([5.0, 15.0, 35.0]))
    assert fwhm[1] == pytest.approx(0.4) and fwhm[0] > fwhm[1] and fwhm[2] > 2 * fwhm[1]
    # measured on speckle: lateral correlation length at the focus is shorter than far from it
    img = _image(-100.0, probe=us.ProbeSettings(depth_mm=40.0, width_mm=40.0, pixel_mm=0.08, focus_mm=6.0))

    def lateral_corr(r0: float, r1: float) -> float:
        env = img.envelope[_rows(r0, r1), 20:-20]
        env = env - env.mean(axis=1, keepdims=True)
        return float((env[:, 3:] * env[:, :-3]).sum() / (env * env).sum())

    assert lateral_corr(4.0, 8.0) < lateral_corr(25.0, 29.0)


def test_the_probe_flattens_the_skin():
    from backmice_vision.phantoms.anatomy import make_subject

    subject = make_subject(3)
    rng = np.random.default_rng(2)
    for plane in us.plan_planes(subject, rng, 3, p_on_nodule=0.0):
        img = us.simulate_bmode(
            subject, plane, us.ProbeSettings(depth_mm=30.0, width_mm=50.0, pixel_mm=0.1), rng
        )
        # the body starts within a pixel of the transducer face in every column, even on a curved back
        first = np.argmax(img.labels != Tissue.AIR, axis=0)
        assert np.all(first <= 1) and img.labels[0].max() > 0
