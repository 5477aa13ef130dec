"""Phantom anatomy: layer ranges, nodule sampling and geometry, labels, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from backmice_vision.errors import ConfigError
from backmice_vision.labels import TISSUE_BASE, Tissue, tissue_base_lut
from backmice_vision.phantoms.anatomy import AnatomyConfig, Subject, make_subject

CFG4 = AnatomyConfig(force_nodules=4)


@pytest.fixture(scope="module")
def subjects() -> list[Subject]:
    return [make_subject(seed) for seed in range(30)]


@pytest.fixture(scope="module")
def nodular() -> list[Subject]:
    return [make_subject(seed, CFG4) for seed in range(100, 112)]


def _column(s: Subject, x: float, z: float, depth_mm: float = 90.0, step: float = 0.01) -> np.ndarray:
    """Labels along -y below the skin at (x, z): index i is depth (i + 0.5) * step."""
    d = (np.arange(int(depth_mm / step)) + 0.5) * step
    pts = np.stack([np.full_like(d, x), s.skin_y(x, z) - d, np.full_like(d, z)], axis=-1)
    return s.labels_at(pts.astype(np.float32))


def _runs(col: np.ndarray, step: float) -> list[tuple[int, float]]:
    edges = np.flatnonzero(np.diff(col.astype(int))) + 1
    starts = np.r_[0, edges]
    ends = np.r_[edges, col.size]
    return [(int(col[a]), (b - a) * step) for a, b in zip(starts, ends, strict=True)]


def test_config_from_dict_and_errors() -> None:
    c = AnatomyConfig.from_dict({"tlf_mm": [1.2, 2.0], "habitus": "obese", "force_nodules": 2})
    assert c.tlf_mm == (1.2, 2.0) and c.habitus == "obese" and c.force_nodules == 2
    with pytest.raises(ConfigError, match="unknown key"):
        AnatomyConfig.from_dict({"tlf_thickness": [1, 2]})
    with pytest.raises(ConfigError, match="low > high"):
        AnatomyConfig.from_dict({"skin_mm": [3.0, 1.5]})
    with pytest.raises(ConfigError, match="bad value"):
        AnatomyConfig.from_dict({"skin_mm": "thick"})
    with pytest.raises(ConfigError, match="habitus"):
        AnatomyConfig.from_dict({"habitus": "athletic"})


def test_deterministic_per_seed() -> None:
    a, b, c = make_subject(7, CFG4), make_subject(7, CFG4), make_subject(8, CFG4)
    assert a.ground_truth() == b.ground_truth()
    assert a.ground_truth() != c.ground_truth()
    pts = np.random.default_rng(0).uniform([-130, 0, -90], [130, 180, 60], (20000, 3)).astype(np.float32)
    assert np.array_equal(a.labels_at(pts), b.labels_at(pts))


def test_layer_thickness_fields_within_ranges(subjects: list[Subject]) -> None:
    cfg = AnatomyConfig()
    x, z = np.meshgrid(np.linspace(-130, 130, 53), np.linspace(-90, 60, 31))
    for s in subjects:
        lay = s.layer_depths(x, z)
        tops = {
            "skin": 0.0,
            "sat": lay["skin"],
            "superficial_fascia": lay["sat"],
            "dat": lay["superficial_fascia"],
            "tlf": lay["dat"],
        }
        for name, rng in {
            "skin": cfg.skin_mm,
            "sat": cfg.sat_mm,
            "superficial_fascia": cfg.superficial_fascia_mm,
            "dat": cfg.dat_mm,
            "tlf": cfg.tlf_mm,
        }.items():
            t = lay[name] - tops[name]
            assert t.min() >= rng[0] - 1e-4 and t.max() <= rng[1] + 1e-4, (s.seed, name)
        lo, hi = {
            "lean": cfg.total_fat_lean_mm,
            "overweight": cfg.total_fat_overweight_mm,
            "obese": cfg.total_fat_obese_mm,
        }[s.habitus]
        cap = cfg.sat_mm[1] + cfg.superficial_fascia_mm[1] + cfg.dat_mm[1]  # the layer ranges bound the total
        assert lo - 1e-6 <= s.total_fat_mm <= min(hi, cap), (s.seed, s.habitus, s.total_fat_mm)
        assert cfg.muscle_mm[0] <= s.layers_mm["muscle"] <= cfg.muscle_mm[1]


def test_rasterized_layers_match_layer_depths(subjects: list[Subject]) -> None:
    """Labels along a vertical line reproduce the layer stack: skin, SAT, fascia, DAT, TLF, muscle."""
    step = 0.01
    for s in subjects[:8]:
        for x, z in ((-20.0, 40.0), (110.0, -80.0)):
            runs = _runs(_column(s, x, z), step)
            lay = {k: float(v) for k, v in s.layer_depths(x, z).items()}
            if any(
                t in (Tissue.CYST, Tissue.VESSEL, Tissue.HAEMATOMA, Tissue.OEDEMA, Tissue.NODULE)
                for t, _ in runs
            ):
                continue  # a lesion crosses this line
            labels = [t for t, _ in runs]
            assert labels[:2] == [Tissue.SKIN, Tissue.SUPERFICIAL_FAT]
            deep = labels[2 + 2 * (s.sf_sublayers - 1) + 1 : 2 + 2 * (s.sf_sublayers - 1) + 4]
            assert deep[:2] == [Tissue.DEEP_FAT, Tissue.TLF]
            assert TISSUE_BASE[Tissue(deep[2])] == Tissue.MUSCLE  # multifidus, erector, gluteus ...
            assert runs[0][1] == pytest.approx(lay["skin"], abs=2 * step)
            tlf = next(t for lab, t in runs if lab == Tissue.TLF)
            assert tlf == pytest.approx(lay["tlf"] - lay["dat"], abs=2 * step)
            dat = next(t for lab, t in runs if lab == Tissue.DEEP_FAT)
            assert dat == pytest.approx(lay["dat"] - lay["superficial_fascia"], abs=2 * step)
            n_sf = sum(1 for lab in labels if lab == Tissue.SUPERFICIAL_FASCIA)
            assert n_sf == s.sf_sublayers


def test_nodule_sampling_ranges(nodular: list[Subject]) -> None:
    cfg = AnatomyConfig()
    nods = [(s, n) for s in nodular for n in s.nodules]
    assert len(nods) >= 40
    for s, n in nods:
        x, _, z = n.center_mm
        assert 40 <= abs(x) <= 90 and s.psis_mm[1] <= z <= 20
        assert n.side == ("left" if x > 0 else "right")
        a, b, c = n.semi_axes_mm
        assert 8 - 1e-6 <= 2 * a <= 40 + 1e-6
        assert 1.3 - 1e-6 <= a / c <= 2.5 + 1e-6 and b <= c + 1e-6
        assert n.diameters_mm[0] == pytest.approx(2 * a, abs=0.6)  # the lobes stay inside the main extent
        assert list(n.diameters_mm) == sorted(n.diameters_mm, reverse=True)
        assert cfg.capsule_mm[0] <= n.capsule_mm <= cfg.capsule_mm[1]
        assert 0 <= n.n_septa <= 4 and len(n.septa_y_mm) == n.n_septa
        if n.defect_present:
            assert n.defect_width_mm is not None and 3 - 1e-6 <= n.defect_width_mm <= 15 + 1e-6
            lay = s.layer_depths(*n.defect_center_xz_mm)
            tlf_t = float(lay["tlf"] - lay["dat"])
            assert (
                1 <= n.stalk_length_mm - tlf_t <= 3.0 + 0.3
            )  # the TLF thickness varies a little under the neck
        else:
            assert n.defect_width_mm is None
        if not n.lobulated:
            assert n.volume_ml == pytest.approx(4 / 3 * np.pi * a * b * c / 1000, rel=0.08, abs=0.01)
    lobulated = [n.lobulated for _, n in nods]
    assert 0 < sum(lobulated) < len(lobulated)


def test_nodule_depths_consistent_with_skin(nodular: list[Subject]) -> None:
    for s in nodular:
        for n in s.nodules:
            x, y, z = n.center_mm
            lay = s.layer_depths(x, z)
            assert n.fascia_depth_mm == pytest.approx(float(lay["dat"]), abs=1e-3)
            top = y + n.semi_axes_mm[1]  # the main lobe's top
            assert n.depth_mm <= float(s.skin_y(x, z)) - top + 0.3
            assert n.depth_mm >= float(lay["skin"]) - 0.6  # never above the dermis
            assert n.depth_mm < n.fascia_depth_mm
            # the nodule rests in the fat on the undulating fascia: its bottom is a few mm at most above it
            bottom_depth = float(s.skin_y(x, z)) - (y - n.semi_axes_mm[1])
            assert 0 <= n.fascia_depth_mm - bottom_depth <= 5.0


def test_nodule_labels_stalk_and_intact_fascia(nodular: list[Subject]) -> None:
    seen_defect = seen_intact = 0
    for s in nodular:
        for n in s.nodules:
            x, y, z = n.center_mm
            lab, ids = s.labels_and_ids_at(np.array([[x, y, z]], np.float32))
            assert lab[0] in (Tissue.NODULE, Tissue.NODULE_CAPSULE) and ids[0] == n.id
            if n.defect_present:
                dx, dz = n.defect_center_xz_mm
                lay = s.layer_depths(dx, dz)
                mid_tlf = float(s.skin_y(dx, dz) - (lay["dat"] + lay["tlf"]) / 2)
                deep = float(s.skin_y(dx, dz) - lay["tlf"]) - 0.5 * n.stalk_extra_mm
                lab, ids = s.labels_and_ids_at(np.array([[dx, mid_tlf, dz], [dx, deep, dz]], np.float32))
                assert list(lab) == [Tissue.STALK, Tissue.STALK] and list(ids) == [n.id, n.id]
                seen_defect += 1
            else:
                col = _column(s, x, z, step=0.02)
                assert Tissue.TLF in col and Tissue.STALK not in col
                seen_intact += 1
    assert seen_defect and seen_intact


def test_nodule_counts_and_prevalence() -> None:
    subs = [make_subject(seed) for seed in range(200, 260)]
    counts = np.array([len(s.nodules) for s in subs])
    assert counts.max() <= 4
    assert 0.3 <= np.mean(counts == 0) <= 0.7  # 50 % nodule-free by default, binomial n=60
    for s in subs:
        if len(s.nodules) > 1:
            ids = [n.id for n in s.nodules]
            assert ids == list(range(1, len(ids) + 1))
    assert sum(len({n.side for n in s.nodules}) == 2 for s in subs) >= 1  # bilateral subjects occur


def test_distractors_are_labelled() -> None:
    cfg = AnatomyConfig(
        cyst_prob=1.0,
        haematoma_prob=1.0,
        vessel_count=(2, 2),
        oedema_band_prob_other=1.0,
        oedema_band_prob_obese=1.0,
        force_nodules=0,
    )
    want = {
        "cyst": Tissue.CYST,
        "haematoma": Tissue.HAEMATOMA,
        "vessel": Tissue.VESSEL,
        "oedema_band": Tissue.OEDEMA,
    }
    for seed in range(5):
        s = make_subject(seed, cfg)
        kinds = {d.kind for d in s.distractors}
        assert {"cyst", "haematoma", "oedema_band"} <= kinds
        for d in s.distractors:
            assert s.labels_at(np.array(d.center_mm, np.float32)) == want[d.kind], (seed, d.kind)
        gt = s.ground_truth()
        assert gt["nodules"] == [] and len(gt["distractors"]) == len(s.distractors)


def test_labels_shape_dtype_and_body_outline() -> None:
    s = make_subject(3)
    pts = np.zeros((4, 5, 3), np.float32)
    pts[..., 1] = np.linspace(-400, 400, 5)
    lab = s.labels_at(pts)
    assert lab.shape == (4, 5) and lab.dtype == np.uint8
    assert np.all(lab[:, 0] == Tissue.AIR) and np.all(lab[:, -1] == Tissue.AIR)
    # just above / below the posterior skin at the midline
    y = float(s.skin_y(0.0, 0.0))
    assert list(s.labels_at(np.array([[0, y + 0.05, 0], [0, y - 0.05, 0]], np.float32))) == [
        Tissue.AIR,
        Tissue.SKIN,
    ]
    # the whole axial section contains the deep tissues the MR simulation needs
    xs, ys = np.meshgrid(np.linspace(-200, 200, 201), np.linspace(-170, 170, 171))
    sec = s.labels_at(np.stack([xs, ys, np.full_like(xs, 10.0)], -1).astype(np.float32))
    base = np.asarray(tissue_base_lut(), np.uint8)
    for t in (Tissue.MUSCLE, Tissue.BONE, Tissue.VISCERA, Tissue.CSF, Tissue.DEEP_FAT, Tissue.TLF):
        assert (base[sec] == t).any(), t
    below_crest = s.labels_at(np.stack([xs, ys, np.full_like(xs, -40.0)], -1).astype(np.float32))
    assert (below_crest == Tissue.ILIUM).sum() > (sec == Tissue.ILIUM).sum()  # iliac wings below the crest


def test_ground_truth_schema() -> None:
    s = make_subject(11, CFG4)
    gt = s.ground_truth()
    assert gt["seed"] == 11 and gt["habitus"] in ("lean", "overweight", "obese")
    n = gt["nodules"][0]
    assert set(n) == {
        "id",
        "center_patient_mm",
        "diameters_mm",
        "volume_ml",
        "depth_mm",
        "fascia_depth_mm",
        "side",
        "variant",
        "lobulated",
        "defect",
    }
    assert set(n["defect"]) == {"present", "width_mm"} and n["variant"] in ("typical", "oedematous")


# Cross-sectional areas at L5 (anatomy.md §1; cm², one side for paired structures, both sides counted
# and halved). A single cited value is a mean: the phantom must lie within +-35 % of it.
L5_AREAS_CM2 = {
    Tissue.MULTIFIDUS: (6.7 * 0.65, 9.6 * 1.35),  # 6.7 F / 8.9 M (US, L5), 9.6 (MRI, L4-5)
    Tissue.ERECTOR_SPINAE: (5.0 * 0.65, 10.0 * 1.35),  # ~5-10, thinning to an aponeurosis
    Tissue.PSOAS: (15.7 * 0.65, 15.7 * 1.35),
    # body 49-52 x 34-36 mm (ellipse 13.1-14.7 cm²), scaled 0.88-1.05 (0.77-1.1 in area), marrow inside the
    # cortex and the posterior concavity 60-95 % of it
    Tissue.VERTEBRAL_BODY: (0.6 * 0.77 * 13.1, 0.95 * 1.1 * 14.7),
}


def test_l5_section_has_the_lumbar_anatomy_with_cited_sizes() -> None:
    """An axial L5 slice (z = -22: mid-body) of typical subjects holds every structure of a real
    axial lumbar MR at L5 (anatomy.md §1-2), with areas within the cited ranges."""
    step = 0.5
    xs, ys = np.meshgrid(np.arange(-200, 200, step), np.arange(-170, 170, step))
    required = {
        Tissue.SKIN,
        Tissue.SUPERFICIAL_FAT,
        Tissue.SUPERFICIAL_FASCIA,
        Tissue.DEEP_FAT,
        Tissue.TLF,
        Tissue.BONE,  # cortex of the body
        Tissue.VERTEBRAL_BODY,
        Tissue.PEDICLE,
        Tissue.LAMINA,
        Tissue.SPINOUS_PROCESS,
        Tissue.TRANSVERSE_PROCESS,
        Tissue.CSF,  # dural sac
        Tissue.EPIDURAL_FAT,
        Tissue.MULTIFIDUS,
        Tissue.ERECTOR_SPINAE,
        Tissue.INTRAMUSCULAR_FAT,
        Tissue.PSOAS,
        Tissue.ILIUM,
        Tissue.ILIACUS,
        Tissue.GLUTEUS_MEDIUS,
        Tissue.BOWEL,
        Tissue.RETROPERITONEAL_FAT,
        Tissue.ABDOMINAL_WALL,
    }
    for seed in (1, 2, 3):
        s = make_subject(seed, AnatomyConfig(habitus="overweight", force_nodules=0))
        sec = s.labels_at(np.stack([xs, ys, np.full_like(xs, -22.0)], -1).astype(np.float32))
        present = {Tissue(t) for t in np.unique(sec)}
        assert required <= present, required - present
        area = np.bincount(sec.ravel(), minlength=64) * step * step / 100.0  # cm²
        for t, (lo, hi) in L5_AREAS_CM2.items():
            one_side = area[t] / (1 if t == Tissue.VERTEBRAL_BODY else 2)
            assert lo <= one_side <= hi, (seed, t.name, one_side)
        # the dural sac (CSF) area of a normal canal: 152 +- 54 mm² at L4-5 [6, 7]
        assert 60 <= area[Tissue.CSF] * 100 <= 260
        # the vertebral body is in front of the canal, the spinous process behind it; anterior is up
        rows = {
            t: float(np.nonzero(sec == t)[0].mean())
            for t in (Tissue.VERTEBRAL_BODY, Tissue.CSF, Tissue.SPINOUS_PROCESS)
        }
        assert rows[Tissue.VERTEBRAL_BODY] < rows[Tissue.CSF] < rows[Tissue.SPINOUS_PROCESS]
    # quadratus lumborum above the crest (L4: 3.5 cm² thin strap; 6.8-7.3 at L3-4), gone at L5
    sec = s.labels_at(np.stack([xs, ys, np.full_like(xs, 15.0)], -1).astype(np.float32))
    assert 0.5 <= (sec == Tissue.QUADRATUS_LUMBORUM).sum() * step * step / 200.0 <= 7.3
    # levels: a disc at L4/5 (z = -3), the S1 sacrum below -46 and gluteus maximus from S1 down
    for z, t in (
        (-3.0, Tissue.DISC),
        (-60.0, Tissue.SACRUM),
        (-60.0, Tissue.GLUTEUS_MAXIMUS),
        (-3.0, Tissue.FACET),
    ):
        sec = s.labels_at(np.stack([xs, ys, np.full_like(xs, z)], -1).astype(np.float32))
        assert (sec == t).sum() > 20, (z, t.name)
