"""MR simulation: contrasts, noise statistics, bias, geometry and coverage, measured on the images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from backmice_vision.errors import ConfigError
from backmice_vision.labels import Tissue
from backmice_vision.phantoms.anatomy import AnatomyConfig, Subject, make_subject
from backmice_vision.phantoms.mr import MRConfig, MRImage, MRProtocol, random_protocol, simulate_mr


@pytest.fixture(scope="module")
def subject() -> Subject:
    cfg = AnatomyConfig(force_nodules=2, oedematous_prob=0.0, habitus="overweight")
    for seed in range(20, 80):  # the first subject with a nodule large enough to erode in 1.2 mm voxels
        s = make_subject(seed, cfg)
        if any(n.semi_axes_mm[0] >= 8 and n.semi_axes_mm[1] >= 3 for n in s.nodules):
            return s
    raise AssertionError("no subject with a large nodule")


def _axial(contrast: str, z: float, **kw: object) -> MRProtocol:
    args: dict = {
        "fov_mm": (380.0, 380.0),
        "matrix": (320, 320),
        "slice_thickness_mm": 4.0,
        "spacing_between_slices_mm": 4.4,
        "n_slices": 5,
        "center_z_mm": z,
    }
    args.update(kw)
    return MRProtocol(contrast=contrast, plane="axial", **args)


def _biggest(s: Subject):
    return max(s.nodules, key=lambda n: n.semi_axes_mm[0])


def _local_fat_mean(img: MRImage, mask: np.ndarray, grow: int = 12) -> float:
    """Mean of deep-fat voxels within ``grow`` pixels of ``mask`` (same slices): cancels the bias field."""
    near = ndimage.binary_dilation(mask, structure=np.ones((1, 3, 3), bool), iterations=grow)
    fat = near & (img.labels == Tissue.DEEP_FAT)
    fat &= ~ndimage.binary_dilation(img.labels != Tissue.DEEP_FAT, structure=np.ones((1, 3, 3), bool))
    return float(img.volume[fat].mean())


def test_t1_fascia_dark_nodule_like_fat(subject: Subject) -> None:
    nod = _biggest(subject)
    img = simulate_mr(subject, _axial("T1", nod.center_mm[2]), np.random.default_rng(1))
    assert img.volume.dtype == np.float32 and img.volume.min() >= 0 and img.volume.max() <= 4095
    back = np.zeros(img.labels.shape, bool)
    back[:, img.labels.shape[1] // 2 :, :] = True  # posterior half
    fat = float(img.volume[(img.labels == Tissue.DEEP_FAT) & back].mean())
    tlf = float(img.volume[(img.labels == Tissue.TLF) & back].mean())
    muscle = float(img.volume[np.isin(img.labels, (Tissue.MULTIFIDUS, Tissue.ERECTOR_SPINAE)) & back].mean())
    assert tlf < 0.6 * fat  # thin dark line despite partial volume
    assert 0.2 * fat < muscle < 0.6 * fat
    core = (img.nodule_ids == nod.id) & (img.labels == Tissue.NODULE)
    core &= ndimage.binary_erosion(core, structure=np.ones((1, 3, 3), bool))
    assert core.sum() >= 10
    assert float(img.volume[core].mean()) == pytest.approx(_local_fat_mean(img, core), rel=0.1)


def test_stir_suppresses_fat_and_shows_oedematous_nodule(subject: Subject) -> None:
    s = make_subject(subject.seed, AnatomyConfig(force_nodules=2, oedematous_prob=1.0, habitus="overweight"))
    nod = _biggest(s)
    img = simulate_mr(s, _axial("STIR", nod.center_mm[2]), np.random.default_rng(2))
    core = (img.nodule_ids == nod.id) & (img.labels == Tissue.NODULE)
    csf = float(img.volume[img.labels == Tissue.CSF].mean())
    fat = _local_fat_mean(img, core)
    assert float(img.volume[core].mean()) > 2.5 * fat
    assert csf > 5 * fat
    t1 = simulate_mr(s, _axial("T1", nod.center_mm[2]), np.random.default_rng(2))
    assert float(t1.volume[core].mean()) < 0.9 * _local_fat_mean(t1, core)  # lower T1 signal


def test_stir_hides_fat_signal_nodule_from_labels_and_visibility(subject: Subject) -> None:
    s = make_subject(subject.seed, AnatomyConfig(force_nodules=1, oedematous_prob=0.0, habitus="overweight"))
    nod = _biggest(s)
    t1 = simulate_mr(s, _axial("T1", nod.center_mm[2]), np.random.default_rng(5))
    stir = simulate_mr(s, _axial("STIR", nod.center_mm[2]), np.random.default_rng(5))
    seen = (t1.nodule_ids == nod.id) & np.isin(t1.labels, (Tissue.NODULE, Tissue.NODULE_CAPSULE))
    assert seen.sum() >= 10 and next(d for d in t1.nodules if d["id"] == nod.id)["visible"]
    hidden = next(d for d in stir.nodules if d["id"] == nod.id)
    assert not hidden["visible"] and hidden["n_voxels"] == 0
    assert not np.isin(stir.labels, (Tissue.NODULE, Tissue.NODULE_CAPSULE, Tissue.STALK)).any()
    assert (stir.labels[seen] == Tissue.SUPERFICIAL_FAT).all()  # labelled as the fat it looks like


def test_background_is_rayleigh_and_fat_snr(subject: Subject) -> None:
    snr = 30.0
    p = _axial("T1", 0.0, snr_fat=snr, bias_amplitude=0.25, n_slices=3)
    img = simulate_mr(subject, p, np.random.default_rng(3))
    air = img.labels == Tissue.AIR
    air &= ~ndimage.binary_dilation(~air, structure=np.ones((1, 3, 3), bool), iterations=4)
    bg = img.volume[air]
    assert bg.size > 20000
    assert float(bg.mean() / bg.std()) == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), rel=0.05)  # 1.91
    sigma = float(bg.mean()) / np.sqrt(np.pi / 2)
    fat = img.labels == Tissue.SUPERFICIAL_FAT
    fat &= ~ndimage.binary_dilation(~fat, structure=np.ones((1, 3, 3), bool))  # no partial volume
    fat_snr = img.volume[fat] / sigma
    # fat SNR follows the configured value within the bias range (±25 %, 10 % lateral fall-off)
    lo, hi = np.percentile(fat_snr, [2, 98])
    assert snr * 0.75 * 0.9 - 3 < lo < np.median(fat_snr) < hi < snr * 1.25 + 3
    assert hi - lo > 0.2 * snr  # the bias spreads it


def test_bias_brightest_posteriorly(subject: Subject) -> None:
    img = simulate_mr(subject, _axial("T1", 10.0, bias_amplitude=0.35, n_slices=2), np.random.default_rng(4))
    rows = img.labels.shape[1]
    fat = img.labels == Tissue.SUPERFICIAL_FAT
    anterior = fat.copy()
    anterior[:, rows // 2 :, :] = False
    posterior = fat.copy()
    posterior[:, : rows // 2, :] = False
    ratio = float(img.volume[posterior].mean() / img.volume[anterior].mean())
    assert ratio > 1.25
    # in the posterior fat the signal rises towards the skin (row index grows posteriorly)
    i = np.nonzero(posterior)[1]
    assert np.corrcoef(i, img.volume[posterior])[0, 1] > 0.2


def test_geometry_labels_match_anatomy_with_tilt_and_flips(subject: Subject) -> None:
    p = _axial(
        "T2",
        -10.0,
        tilt_deg=9.0,
        flip_rows=True,
        flip_cols=True,
        matrix=(160, 192),
        fov_mm=(300.0, 360.0),
        n_slices=4,
    )
    img = simulate_mr(subject, p, np.random.default_rng(5))
    ori = img.orientation
    assert np.allclose(np.linalg.norm(ori[:3]), 1) and np.allclose(np.linalg.norm(ori[3:]), 1)
    assert abs(float(ori[:3] @ ori[3:])) < 1e-9
    assert ori[0] < 0 and ori[4] < 0  # flipped: rows run to the patient's right, columns anterior-ward
    normal = np.cross(ori[:3], ori[3:])
    along = img.image_position_mm @ normal
    assert np.allclose(np.diff(along), 4.4)
    a = img.affine
    assert np.allclose(a @ [2, 0, 0, 1], [*img.image_position_mm[2], 1])
    assert img.pixel_spacing_mm == pytest.approx((300 / 160, 360 / 192))
    rng = np.random.default_rng(0)
    kij = np.stack([rng.integers(0, n, 500) for n in img.labels.shape], axis=1)
    xyz = (a @ np.c_[kij, np.ones(500)].T).T[:, :3]
    assert np.array_equal(subject.labels_at(xyz.astype(np.float32)), img.labels[tuple(kij.T)])


def test_small_fov_and_sagittal_crop_lateral_nodules() -> None:
    s = make_subject(5, AnatomyConfig(force_nodules=4))
    lateral = [n for n in s.nodules if abs(n.center_mm[0]) - n.semi_axes_mm[0] > 62]
    assert lateral
    nod = lateral[0]
    z = nod.center_mm[2]
    wide = simulate_mr(s, _axial("T1", z, n_slices=3, matrix=(256, 256)), np.random.default_rng(6))
    small = simulate_mr(
        s,
        _axial("T1", z, n_slices=3, matrix=(192, 192), fov_mm=(120.0, 120.0), anchor="spine"),
        np.random.default_rng(6),
    )
    by_id = {d["id"]: d for d in wide.nodules}
    assert by_id[nod.id]["visible"] and by_id[nod.id]["n_voxels"] > 0
    k, i, j = (round(v) for v in by_id[nod.id]["center_voxel"])
    assert wide.nodule_ids[k, i, j] == nod.id
    assert np.allclose(wide.affine @ [*by_id[nod.id]["center_voxel"], 1], [*nod.center_mm, 1])
    hidden = {d["id"]: d for d in small.nodules}[nod.id]
    assert not hidden["visible"] and hidden["n_voxels"] == 0
    j_small = hidden["center_voxel"][2]
    assert j_small < 0 or j_small > 191  # its centre projects outside the columns
    sag = MRProtocol(
        contrast="T2",
        plane="sagittal",
        fov_mm=(240.0, 240.0),
        matrix=(128, 128),
        slice_thickness_mm=3.5,
        spacing_between_slices_mm=3.9,
        n_slices=19,
        anchor="back",
        center_z_mm=z,
    )
    img = simulate_mr(s, sag, np.random.default_rng(7))
    assert not {d["id"]: d for d in img.nodules}[nod.id]["visible"]
    assert (img.labels == Tissue.CSF).any() and (img.labels == Tissue.SKIN).any()
    # the posterior skin lies inside the FOV, near its posterior (last-column) edge
    skin_cols = np.nonzero((img.labels[img.labels.shape[0] // 2] == Tissue.SKIN).any(axis=0))[0]
    assert skin_cols.max() > 128 - 20


def test_deterministic(subject: Subject) -> None:
    p = _axial("T2", 0.0, n_slices=2, matrix=(128, 128))
    a = simulate_mr(subject, p, np.random.default_rng(9))
    b = simulate_mr(subject, p, np.random.default_rng(9))
    assert np.array_equal(a.volume, b.volume) and np.array_equal(a.labels, b.labels)


def test_random_protocol_ranges() -> None:
    rng = np.random.default_rng(0)
    cfg = MRConfig()
    for _ in range(40):
        p = random_protocol(rng, {}, "axial_t1")
        assert p.plane == "axial" and p.contrast == "T1" and 12 <= p.n_slices <= 20
        assert 3.5 <= p.slice_thickness_mm <= p.spacing_between_slices_mm <= 1.2 * 5.0 + 1e-9
        assert p.anchor in ("body", "spine") and p.matrix[0] % 32 == 0 and p.matrix[1] % 32 == 0
        if p.anchor == "spine":
            assert cfg.small_fov_mm[0] <= p.fov_mm[1] <= cfg.small_fov_mm[1]
        s = random_protocol(rng, None, "sagittal_stir")
        half = (s.n_slices - 1) / 2 * s.spacing_between_slices_mm
        assert s.contrast == "STIR" and s.ti_ms is not None
        assert 30 - s.spacing_between_slices_mm <= half <= 40 + s.spacing_between_slices_mm
        pix = s.fov_mm[1] / s.matrix[1]
        assert 0.45 <= pix <= 0.95
    assert random_protocol(rng, {"p_small_fov": 1.0}, "axial").anchor == "spine"
    assert random_protocol(rng, {}, "mr_axial_wide_t2").anchor == "body"
    with pytest.raises(ConfigError, match="kind"):
        random_protocol(rng, {}, "coronal_t1")
    with pytest.raises(ConfigError, match="unknown key"):
        random_protocol(rng, {"slices": 3}, "axial_t1")
    with pytest.raises(ConfigError, match="contrast"):
        MRProtocol(
            contrast="PD",
            plane="axial",
            fov_mm=(200, 200),
            matrix=(64, 64),
            slice_thickness_mm=4,
            spacing_between_slices_mm=4,
            n_slices=3,
        )


def test_partial_volume_blends_thin_layers(subject: Subject) -> None:
    """The TLF (1-2.5 mm) in 1.2 mm voxels: refined voxels take intermediate values between fat and fascia."""
    img = simulate_mr(subject, _axial("T1", 20.0, n_slices=2, snr_fat=200.0), np.random.default_rng(8))
    tlf = img.volume[img.labels == Tissue.TLF]
    fat = float(np.median(img.volume[img.labels == Tissue.DEEP_FAT]))
    mid = (tlf > 0.25 * fat) & (tlf < 0.75 * fat)
    assert mid.mean() > 0.2
