"""Domain randomisation: label maps from phantom subjects, random appearance, the mixed training set."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from model_factory import SEGMENT_MAP, TINY_NET, write_mr_with_seg
from scipy import ndimage

from backmice_vision.errors import ConfigError
from backmice_vision.labels import FAT, Tissue, tissue_to_class_lut
from backmice_vision.model.bundle import load_bundle
from backmice_vision.model.inference import DEFAULT_MR, Preprocessing
from backmice_vision.model.synthetic import MixedTrainingSet, SyntheticSource
from backmice_vision.phantoms import labelmaps as L
from backmice_vision.phantoms import randomise as R
from backmice_vision.phantoms.anatomy import AnatomyConfig, make_subject

US_PREP = Preprocessing("US", spacing_mm=0.4)


@pytest.fixture(scope="module")
def subject():
    return make_subject(11, AnatomyConfig(force_nodules=2))


def test_us_label_map_is_a_contact_scan_of_random_field_of_view(subject) -> None:
    shapes = set()
    for seed in range(6):
        lab = L.us_label_map(subject, np.random.default_rng(seed), 0.4, depth_mm=(20, 70), width_mm=(25, 60))
        assert lab.dtype == np.uint8
        assert 20 / 0.4 - 1 <= lab.shape[0] <= 70 / 0.4 + 1 and 25 / 0.4 - 1 <= lab.shape[1] <= 60 / 0.4 + 1
        assert np.all(np.argmax(lab != Tissue.AIR, axis=0) <= 1)  # skin at the transducer face
        shapes.add(lab.shape)
    assert len(shapes) == 6
    again = L.us_label_map(subject, np.random.default_rng(3), 0.4)
    assert np.array_equal(again, L.us_label_map(subject, np.random.default_rng(3), 0.4))


def test_randomised_us_images_vary_around_a_fixed_anatomy(subject) -> None:
    rng = np.random.default_rng(0)
    lab = next(
        m
        for m in (L.us_label_map(subject, rng, 0.4, p_on_nodule=1.0) for _ in range(20))
        if (m == Tissue.NODULE).sum() > 200
    )
    images = [R.randomise_us(lab, np.random.default_rng(s), 0.4) for s in range(24)]
    for img in images:
        assert img.shape == lab.shape and img.dtype == np.float32
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    nod, fat = lab == Tissue.NODULE, np.isin(lab, [Tissue.SUPERFICIAL_FAT, Tissue.DEEP_FAT])
    contrast = np.array([img[nod].mean() - img[fat].mean() for img in images])
    # the lesion is not one brightness: iso-, hypo- and hyperechoic draws all occur
    assert (contrast < -0.02).any() and (contrast > 0.02).any() and (np.abs(contrast) < 0.05).any()
    assert np.std([img.mean() for img in images]) > 0.03  # gain / dynamic range vary
    assert not np.array_equal(images[0], images[1])
    assert np.array_equal(images[5], R.randomise_us(lab, np.random.default_rng(5), 0.4))


def test_every_randomised_nodule_keeps_a_cue_against_the_fat() -> None:
    # an iso-echoic nodule without a capsule would be fat on the image with a nodule label
    capsule_cue = contrast_cue = 0
    vs_fat_db = []
    for seed in range(3000):
        db = R._us_levels(np.random.default_rng(seed))
        capsule = db[Tissue.NODULE_CAPSULE] - db[Tissue.NODULE] >= 5.0
        contrast = abs(db[Tissue.NODULE] - db[Tissue.DEEP_FAT]) >= 4.0
        assert capsule or contrast, seed
        capsule_cue += bool(capsule)
        contrast_cue += bool(contrast and not capsule)
        vs_fat_db.append(db[Tissue.NODULE] - db[Tissue.DEEP_FAT])
    assert 0.8 < capsule_cue / 3000 < 0.9 and contrast_cue > 300  # the capsule is the usual cue
    # most lipomas are hypoechoic (domain.md [S20]): a third or more of the draws, a sixth hyperechoic
    vs_fat = np.array(vs_fat_db)
    assert 0.33 < (vs_fat <= -3.0).mean() < 0.45 and 0.12 < (vs_fat >= 3.0).mean() < 0.24
    assert vs_fat.min() >= -12.0 and vs_fat.max() <= 10.0


def test_fat_mimics_are_partial_rings_in_fat_away_from_nodules() -> None:
    lab = np.full((200, 200), Tissue.DEEP_FAT, np.uint8)
    lab[150:] = Tissue.MUSCLE
    yy, xx = np.mgrid[:200, :200]
    lab[(yy - 60) ** 2 / 15**2 + (xx - 100) ** 2 / 30**2 < 1] = Tissue.NODULE
    near_nodule = ndimage.distance_transform_edt(lab != Tissue.NODULE) <= 7.0  # within 2.8 mm
    rims = []
    for seed in range(20):
        extra_db = R._fat_mimics(lab, np.random.default_rng(seed), 0.4)
        assert extra_db.dtype == np.float32 and extra_db.shape == lab.shape
        assert not extra_db[lab != Tissue.DEEP_FAT].any() and not extra_db[near_nodule].any()
        rims.append(extra_db >= 4.0)
    assert all(r.any() for r in rims)
    # the bright arcs of a lobule never close into the ring of a capsule: nothing they enclose
    for bright in rims:
        assert not (ndimage.binary_fill_holes(bright) & ~bright).any()


def test_randomised_us_hard_negatives_only_where_asked(subject) -> None:
    lab = L.us_label_map(subject, np.random.default_rng(2), 0.4, p_on_nodule=1.0)
    plain = R.randomise_us(lab, np.random.default_rng(7), 0.4)
    assert np.array_equal(plain, R.randomise_us(lab, np.random.default_rng(7), 0.4, fat_mimic_prob=0.0))
    assert not np.array_equal(plain, R.randomise_us(lab, np.random.default_rng(7), 0.4, fat_mimic_prob=1.0))
    entry = {"type": "synthetic", "subjects": 2, "pool": 3, "seed": 1, "fat_mimic_prob": 0.5}
    assert SyntheticSource.from_config(entry, US_PREP).fat_mimic_prob == 0.5
    with pytest.raises(ConfigError, match="ultrasound only"):
        SyntheticSource.from_config(entry, DEFAULT_MR)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        SyntheticSource.from_config({**entry, "fat_mimic_prob": 2}, US_PREP)


def test_fascia_dims_off_perpendicular_and_drops_out_only_on_the_fascia() -> None:
    # a flat fascia on the left, one 20 degrees off perpendicular to the beam (the rows) on the right
    lab = np.full((120, 240), Tissue.DEEP_FAT, np.uint8)
    lab[80:] = Tissue.MUSCLE
    cols = np.arange(240)
    top = np.where(cols < 120, 60.0, 60.0 + (cols - 120) * math.tan(math.radians(20.0)))
    rows = np.arange(120)[:, None]
    lab[(rows >= top[None, :]) & (rows < top[None, :] + 4)] = Tissue.TLF
    flat = np.zeros(240, bool)
    flat[20:100] = True
    flat_db, oblique_db, dropouts = [], [], 0
    for seed in range(30):
        dim = R._fascia_dimming(lab, np.random.default_rng(seed), 0.4)
        assert dim.dtype == np.float32 and dim.shape == lab.shape
        assert not dim[lab != Tissue.TLF].any() and dim.min() >= 0.0
        tlf = lab == Tissue.TLF
        flat_db.append(dim[tlf & flat[None, :]].mean())
        oblique_db.append(dim[tlf & (cols >= 140)[None, :]].mean())
        per_col = np.where(tlf, dim, 0).max(axis=0)[flat]
        dropouts += bool(per_col.max() - np.median(per_col) >= 4.0)
    assert np.mean(oblique_db) > np.mean(flat_db) + 3.0  # the specular echo fades with the angle
    assert 5 <= dropouts <= 25  # a flat fascia sometimes loses its echo over a few millimetres


def test_randomised_fascia_dimming_only_where_asked(subject) -> None:
    lab = L.us_label_map(subject, np.random.default_rng(2), 0.4, p_on_nodule=1.0)
    plain = R.randomise_us(lab, np.random.default_rng(7), 0.4)
    assert np.array_equal(plain, R.randomise_us(lab, np.random.default_rng(7), 0.4, fascia_dimming_prob=0.0))
    dimmed = R.randomise_us(lab, np.random.default_rng(7), 0.4, fascia_dimming_prob=1.0)
    assert not np.array_equal(plain, dimmed)
    entry = {"type": "synthetic", "subjects": 2, "pool": 3, "seed": 1, "fascia_dimming_prob": 0.5}
    assert SyntheticSource.from_config(entry, US_PREP).fascia_dimming_prob == 0.5
    with pytest.raises(ConfigError, match="fascia_dimming_prob is for ultrasound only"):
        SyntheticSource.from_config(entry, DEFAULT_MR)
    with pytest.raises(ConfigError, match="fascia_dimming_prob must be between 0 and 1"):
        SyntheticSource.from_config({**entry, "fascia_dimming_prob": -0.1}, US_PREP)


def test_reverberation_repeats_the_near_field_below_the_reflector() -> None:
    from backmice_vision.phantoms.ultrasound import near_field_clutter, reverberation

    rx = np.zeros((40, 3), np.complex64)
    rx[2] = 1.0 + 1.0j  # an echo 2 rows under the face
    reflector = np.zeros((40, 3), bool)
    reflector[10:13, 0] = True
    reflector[25:27, 1] = True  # column 2 has no reflector
    att_db = np.tile(np.arange(40, dtype=np.float32)[:, None], (1, 3))  # 1 dB per row
    rev = reverberation(rx, reflector, att_db, -20.0)
    assert np.flatnonzero(np.abs(rev[:, 0])).tolist() == [12]
    assert np.flatnonzero(np.abs(rev[:, 1])).tolist() == [27]
    assert not np.abs(rev[:, 2]).any()
    assert np.isclose(abs(rev[12, 0]), abs(rx[2, 0]) * 10 ** (-12 / 20) * 0.1, rtol=1e-5)
    gain = near_field_clutter(np.array([0.0, 1.5, 30.0], np.float32), -6.0, 1.5)
    assert np.allclose(gain, [10 ** (-6 / 20), 10 ** (-6 / 20) / np.e, 0.0], atol=1e-6)


def test_randomised_us_has_near_field_clutter_in_some_draws(monkeypatch) -> None:
    from backmice_vision.phantoms import ultrasound

    lab = np.full((300, 60), Tissue.SUPERFICIAL_FAT, np.uint8)  # 30 mm of fat from the face, no skin echo
    seeds = range(30)
    with_clutter = [R.randomise_us(lab, np.random.default_rng(s), 0.1) for s in seeds]
    monkeypatch.setattr(ultrasound, "near_field_clutter", lambda depth_mm, *_: np.zeros_like(depth_mm))
    without = [R.randomise_us(lab, np.random.default_rng(s), 0.1) for s in seeds]
    top = np.array([a[:5].mean() - b[:5].mean() for a, b in zip(with_clutter, without, strict=True)])
    deep = np.array([np.abs(a[200:] - b[200:]).mean() for a, b in zip(with_clutter, without, strict=True)])
    assert (top > 0.02).sum() >= 4 and top.min() > -0.02  # the first 0.5 mm brighter in many draws
    assert (np.abs(top) < 1e-6).sum() >= 3  # and untouched in others
    assert deep.max() < 0.05  # 20-30 mm deep: as without


def test_mr_label_stack_and_randomised_contrast(subject) -> None:
    rng = np.random.default_rng(1)
    stack = L.mr_label_stack(subject, rng, 0.9, context=1)
    labels = stack.labels
    assert labels.shape[0] == 3 and labels.shape[1] == labels.shape[2]
    assert not np.array_equal(labels[0], labels[2])  # neighbouring slices, 3-6 mm apart
    assert (labels != Tissue.AIR).mean() > 0.2
    img, shown = R.randomise_mr(stack, np.random.default_rng(2), 0.9)
    assert img.shape == labels.shape and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    fat_signal = []
    for s in range(12):
        im, shown = R.randomise_mr(stack, np.random.default_rng(s), 0.9)
        fat_signal.append(float(im[shown == Tissue.DEEP_FAT].mean()))
    assert max(fat_signal) - min(fat_signal) > 0.3  # fat bright (T1-like) in some draws, dark in others


def test_randomised_mr_nodules_keep_a_cue_unless_hidden() -> None:
    no_cue = hidden = 0
    for seed in range(3000):
        lut, is_hidden = R._mr_levels(np.random.default_rng(seed))
        fat = lut[Tissue.DEEP_FAT]
        capsule, nodule = abs(lut[Tissue.NODULE_CAPSULE] - fat), abs(lut[Tissue.NODULE] - fat)
        hidden += is_hidden
        if not is_hidden and capsule < 0.3 * max(fat, 1e-3) and nodule < 0.15 * max(fat, 0.3):
            no_cue += 1  # only a STIR-like draw of an oedematous nodule close to suppressed fat
    assert 250 < hidden < 500  # fat-signal nodules on STIR-like draws, relabelled as fat
    assert no_cue < 30  # one draw in ten before the uniform draws kept a cue


def test_randomised_mr_has_the_partial_volume_of_a_thick_slice(subject) -> None:
    rng = np.random.default_rng(0)
    stacks = [L.mr_label_stack(subject, rng, 0.6, fov_mm=(150, 200), p_on_nodule=1.0) for _ in range(4)]
    lut = np.ones(256, np.float32)  # fat, and everything else, 1; the capsule 0
    lut[Tissue.NODULE_CAPSULE] = 0.0
    capsule_signal = []
    for stack in stacks:
        signal = R.mr_signal(stack, lut)
        for c, (idx, sub) in enumerate(stack.refined):
            flat = signal[c].ravel()
            assert np.array_equal(flat[idx], lut[sub].mean(axis=1))
            rest = np.ones(flat.size, bool)
            rest[idx] = False
            assert np.array_equal(flat[rest], lut[stack.labels[c].ravel()[rest]])
        capsule_signal.append(signal[stack.labels == Tissue.NODULE_CAPSULE])
    values = np.concatenate(capsule_signal)
    assert values.size > 100
    # a 0.2-0.5 mm capsule cannot fill a 0.6 mm x 3-6 mm voxel: it darkens the voxel, mostly not fully
    assert np.mean(values > 0.0) > 0.8 and np.mean(values < 1.0) > 0.95


def test_randomised_mr_labels_fat_signal_nodules_on_fat_suppression_as_fat(subject) -> None:
    rng = np.random.default_rng(3)
    stack = next(
        s
        for s in (L.mr_label_stack(subject, rng, 0.9, p_on_nodule=1.0) for _ in range(20))
        if (s.labels == Tissue.NODULE).sum() > 50
    )
    hidden = shown_too = 0
    for seed in range(60):
        _, shown = R.randomise_mr(stack, np.random.default_rng(seed), 0.9)
        if (shown == Tissue.NODULE).any():
            assert np.array_equal(shown, stack.labels)
            shown_too += 1
        else:
            changed = shown != stack.labels
            nodule_tissues = {Tissue.NODULE, Tissue.NODULE_CAPSULE, Tissue.STALK}
            assert set(np.unique(stack.labels[changed])) <= nodule_tissues
            assert np.all(shown[changed] == Tissue.SUPERFICIAL_FAT)
            hidden += 1
    # fat-like nodules (3 in 4) on the STIR-like half of the real contrasts (1 in 6): about 1 draw in 8
    assert 2 <= hidden <= 18 and shown_too > 40


def test_synthetic_source_samples_in_model_space() -> None:
    entry = {"type": "synthetic", "subjects": 3, "pool": 5, "seed": 4, "anatomy": {"force_nodules": 1}}
    src = SyntheticSource.from_config(entry, US_PREP)
    a = src.sample(np.random.default_rng(9))
    b = src.sample(np.random.default_rng(9))
    assert a["image"].shape[0] == 1 and a["image"].shape[1:] == a["label"].shape[1:]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert a["label"].max() <= 4 and (a["label"] == FAT).any()
    lut = np.asarray(tissue_to_class_lut())
    p = next(iter(src._maps))
    assert np.array_equal(lut[src.label_map(p)], lut[src.label_map(p)])
    mr = SyntheticSource.from_config(entry, DEFAULT_MR).sample(np.random.default_rng(1))
    assert mr["image"].shape[0] == 3 and mr["label"].shape[0] == 1
    with pytest.raises(ConfigError, match="unknown key"):
        SyntheticSource.from_config({**entry, "shares": 1}, US_PREP)
    with pytest.raises(ConfigError, match="anatomy config"):
        SyntheticSource.from_config({**entry, "anatomy": {"nodule_sizes": 3}}, US_PREP)


def test_mixed_set_is_a_function_of_seed_epoch_and_index() -> None:
    src = SyntheticSource.from_config({"type": "synthetic", "subjects": 2, "pool": 4, "seed": 1}, US_PREP)
    tile = {"image": np.zeros((1, 8, 8), np.float16), "label": np.zeros((1, 8, 8), np.uint8)}

    def draw(share: float, epoch: int) -> list[bool]:
        ds = MixedTrainingSet([tile], src, share, lambda d: d, 12, seed=5)
        ds.set_epoch(epoch)
        return [ds.raw(i) is tile for i in range(12)]

    assert draw(0.5, 0) == draw(0.5, 0)
    assert draw(0.5, 0) != draw(0.5, 1)
    assert all(draw(0.0, 0)) and not any(draw(1.0, 0))
    only_synthetic = MixedTrainingSet([], src, 0.2, lambda d: d, 3, seed=5)
    assert all(only_synthetic.raw(i) is not tile for i in range(3))
    with pytest.raises(ConfigError):
        MixedTrainingSet([], None, 0.5, lambda d: d, 3, seed=5)


def test_training_mixes_synthetic_images_and_resumes_exactly(tmp_path: Path) -> None:
    import torch

    from backmice_vision.model.train import train

    write_mr_with_seg(tmp_path / "val", seed=2)
    write_mr_with_seg(tmp_path / "train", seed=0)

    def cfg(work: str) -> dict:
        return {
            "name": "tiny_mr",
            "modality": "MR",
            "seed": 3,
            "num_threads": 1,
            "work_dir": str(tmp_path / work),
            "cache_dir": str(tmp_path / "cache"),
            "out": str(tmp_path / work / "bundle"),
            "network": copy.deepcopy(TINY_NET),
            "calibrate": False,
            "data": {
                "train": [
                    {"type": "synthetic", "share": 0.7, "subjects": 2, "pool": 4, "seed": 1},
                    {"type": "dicom_seg", "path": str(tmp_path / "train"), "segment_map": SEGMENT_MAP},
                ],
                "val": [{"type": "dicom_seg", "path": str(tmp_path / "val"), "segment_map": SEGMENT_MAP}],
            },
            "augment": {"patch": [48, 48], "samples_per_image": 2},
            "optim": {"lr": 0.01, "batch_size": 4, "epochs": 2, "steps_per_epoch": 3},
        }

    lines: list[str] = []
    out = train(cfg("a"), device="cpu", log=lines.append)
    assert any("domain-randomised phantoms (70% of the images)" in line for line in lines)
    assert any("ETA" in line for line in lines if line.startswith("epoch 1/2"))
    assert "domain-randomised" in load_bundle(out).metadata["training"]["data"]

    class Stop(Exception):
        pass

    def stop_after_first(msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg("b"), device="cpu", log=stop_after_first)
    train(cfg("b"), resume=True, device="cpu", log=lambda m: None)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)


def test_label_map_pool_key_follows_the_map_code_of_its_modality(tmp_path: Path, monkeypatch) -> None:
    from backmice_vision.phantoms import ultrasound

    entry = {"type": "synthetic", "subjects": 2, "pool": 4, "seed": 5}

    def keys() -> tuple[Path, ...]:
        return tuple(
            SyntheticSource.from_config(entry, p, tmp_path)._pool_dir() for p in (US_PREP, DEFAULT_MR)
        )

    us_key, mr_key = keys()
    assert us_key != mr_key
    edited = tmp_path / "edited.py"
    edited.write_text(Path(R.__file__).read_text() + "\n# an appearance change\n")
    monkeypatch.setattr(R, "__file__", str(edited))
    assert keys() == (us_key, mr_key)  # new nodule echogenicities keep the cached maps
    edited.write_text(Path(ultrasound.__file__).read_text() + "\n# a change of the probe planes\n")
    monkeypatch.setattr(ultrasound, "__file__", str(edited))
    assert keys()[0] != us_key and keys()[1] == mr_key
    monkeypatch.undo()

    def placed_elsewhere(subject, rng, spacing_mm, offset_fraction=0.0):  # another US map builder
        return L.us_label_map(subject, rng, spacing_mm, offset_fraction=0.5)

    monkeypatch.setattr(L, "us_label_map", placed_elsewhere)
    assert keys()[0] != us_key and keys()[1] == mr_key
    monkeypatch.undo()
    entry["nodule_offset_fraction"] = 0.5  # another placement: another pool
    assert SyntheticSource.from_config(entry, US_PREP, tmp_path)._pool_dir() != us_key


def test_nodule_offset_puts_the_nodule_anywhere_across_the_image(subject) -> None:
    def centres(offset_fraction: float) -> np.ndarray:
        """Column of the nodule's centre as a fraction of the image width, per map showing a nodule."""
        rng = np.random.default_rng(4)
        out = []
        for _ in range(40):
            lab = L.us_label_map(subject, rng, 0.4, p_on_nodule=1.0, offset_fraction=offset_fraction)
            cols = np.nonzero((lab == Tissue.NODULE).any(axis=0))[0]
            if cols.size:
                out.append((cols.min() + cols.max()) / 2 / (lab.shape[1] - 1))
        return np.asarray(out)

    central, spread = centres(0.0), centres(0.5)
    assert len(central) >= 30 and len(spread) >= 25
    assert np.all(np.abs(central - 0.5) < 0.3)  # within 6 mm of the centre of a >= 25 mm image
    assert np.mean(np.abs(spread - 0.5) > 0.3) > 0.2  # at the outer fifths in a fair share of the maps
    assert np.mean(np.abs(spread - 0.5) < 0.2) > 0.2  # and still in the middle in others
    with pytest.raises(ConfigError, match="nodule_offset_fraction must be between 0 and 1"):
        SyntheticSource.from_config({"type": "synthetic", "nodule_offset_fraction": 2.0}, US_PREP)
    with pytest.raises(ConfigError, match="nodule_offset_fraction is for ultrasound only"):
        SyntheticSource.from_config({"type": "synthetic", "nodule_offset_fraction": 0.5}, DEFAULT_MR)


@pytest.mark.parametrize("prep", [US_PREP, DEFAULT_MR], ids=["US", "MR"])
def test_label_map_pool_on_disk_gives_the_maps_a_fresh_build_gives(prep, tmp_path: Path, monkeypatch) -> None:
    entry = {"type": "synthetic", "subjects": 2, "pool": 4, "seed": 5, "anatomy": {"force_nodules": 1}}
    built = SyntheticSource.from_config(entry, prep, tmp_path)
    first = [built.label_map(p) for p in range(3)]
    (pool,) = tmp_path.iterdir()
    assert sorted(f.name for f in pool.iterdir()) == ["00000.npz", "00001.npz", "00002.npz"]

    def no_build(self, p):  # a later run (a resumed one, another session) reads the pool from disk
        raise AssertionError(f"map {p} rebuilt")

    monkeypatch.setattr(SyntheticSource, "_build_map", no_build)
    reread = SyntheticSource.from_config(entry, prep, tmp_path)
    for a, b in zip(first, (reread.label_map(p) for p in range(3)), strict=True):
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and b.dtype == np.uint8 and np.array_equal(a, b)
        else:
            assert isinstance(b, L.MRLabelStack) and np.array_equal(a.labels, b.labels)
            assert len(a.refined) == len(b.refined) == 3
            for (ia, ta), (ib, tb) in zip(a.refined, b.refined, strict=True):
                assert np.array_equal(ia, ib) and np.array_equal(ta, tb) and tb.dtype == ta.dtype
    with pytest.raises(AssertionError, match="map 3 rebuilt"):  # not in the pool yet: built
        reread.label_map(3)
    monkeypatch.undo()

    # other settings are another pool; a broken file is rebuilt and rewritten
    other = SyntheticSource.from_config({**entry, "seed": 6}, prep, tmp_path)
    other.label_map(0)
    assert len(list(tmp_path.iterdir())) == 2
    (pool / "00001.npz").write_bytes(b"not a zip")
    fresh = SyntheticSource.from_config(entry, prep, tmp_path).label_map(1)
    assert np.array_equal(getattr(fresh, "labels", fresh), getattr(first[1], "labels", first[1]))
    assert (pool / "00001.npz").stat().st_size > 100
