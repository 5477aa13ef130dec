"""findings.extract_nodules / match_nodules on hand-built series with known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from backmice_vision.errors import ConfigError, ModelError
from backmice_vision.findings import (
    DEFAULT_THRESHOLDS,
    BodyMask,
    extract_nodules,
    label_tracks,
    load_thresholds,
    match_nodules,
    nodule_dice,
    nodule_full_mask,
    plausible_size,
    principal_extents_mm,
)
from backmice_vision.labels import BACKGROUND, DEFECT, FASCIA, FAT, MODEL_CLASSES, NODULE
from backmice_vision.types import FrameSource, ImageSeries, UltrasoundRegion

THR = dict(DEFAULT_THRESHOLDS)
GROW = {**THR, "nodule_grow_threshold": 0.25}  # hysteresis instances (a bundle's postprocessing)
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def _series(modality, pixels, spacing=None, affine=None, regions=(), header=None) -> ImageSeries:
    n = pixels.shape[0]
    return ImageSeries(
        modality=modality,
        pixels=pixels.astype(np.float32),
        spacing_mm=spacing,
        sources=[FrameSource(f"1.2.3.{k}", "1.2.840.10008.5.1.4.1.1.4") for k in range(n)],
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        affine=affine,
        regions=list(regions),
        header=header or {},
    )


def _probs(shape, tissue) -> np.ndarray:
    """Softmax-like maps: background where ``tissue`` is False, fat inside."""
    p = np.zeros((len(MODEL_CLASSES), *shape), dtype=np.float32)
    p[BACKGROUND] = ~tissue
    p[FAT] = tissue
    return p


def _put(p: np.ndarray, cls: int, where, value: float) -> None:
    """Set class ``cls`` to ``value`` at ``where`` and give the rest to fat (sums stay 1)."""
    p[:, where[0], where[1], where[2]] = 0.0
    p[cls, where[0], where[1], where[2]] = value
    p[FAT, where[0], where[1], where[2]] = 1.0 - value


# ------------------------------------------------------------------------------------------ MR

SHAPE_MR = (12, 64, 64)
NODULE_BOX = (slice(4, 8), slice(30, 40), slice(20, 35))  # 4 slices x 10 rows x 15 cols


def _mr_case(affine: np.ndarray):
    """Body = rows 0..49 in every slice (skin between rows 49 and 50), nodule box, fascia rows 20-21."""
    body = np.zeros(SHAPE_MR, dtype=bool)
    body[:, :50, :] = True
    pixels = np.where(body, 100.0, 0.0)
    p = _probs(SHAPE_MR, body)
    _put(p, NODULE, NODULE_BOX, 0.9)
    _put(p, FASCIA, (slice(None), slice(20, 22), slice(None)), 1.0)
    _put(p, DEFECT, (slice(5, 6), slice(27, 30), slice(24, 32)), 0.9)  # deep side (lower i = anterior)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return _series("MR", pixels, spacing=spacing, affine=affine), p


def _affine(cols: list[list[float]], origin: list[float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.array(cols, dtype=float).T
    a[:3, 3] = origin
    return a


FLIPPED = _affine([[0, 0, -4.0], [0, 0.8, 0], [-0.8, 0, 0]], [50.0, -20.0, 30.0])


def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_body_mask_computes_only_the_slices_it_is_asked_about():
    """Holes filled, the largest component kept, the model's tissue united; slices computed on demand."""
    pixels = np.zeros(SHAPE_MR, dtype=np.float32)
    pixels[:, 5:50, 5:60] = 100.0
    pixels[:, 20:25, 20:25] = 0.0  # a hole (dark fat-suppressed tissue): filled
    pixels[:, 55:60, 2:4] = 100.0  # a separate blob (an arm, a marker): dropped
    p = _probs(SHAPE_MR, pixels > 0)
    p[BACKGROUND, 3, 50:53, 10:20], p[FAT, 3, 50:53, 10:20] = 0.0, 1.0  # tissue by the model only, slice 3
    body = BodyMask(pixels, p)
    ks, iis, js = np.array([3, 3, 3, 3, 7]), np.array([22, 51, 57, 0, 22]), np.array([22, 15, 3, 0, 22])
    assert body[(ks, iis, js)].tolist() == [True, True, False, False, True]
    assert np.flatnonzero(body._done).tolist() == [3, 7]
    every = body[(np.arange(SHAPE_MR[0]),)]
    assert every.shape == SHAPE_MR and body._done.all()
    expected = np.zeros(SHAPE_MR[1:], dtype=bool)
    expected[5:50, 5:60] = True
    assert np.array_equal(every[0], expected)
    expected[50:53, 10:20] = True
    assert np.array_equal(every[3], expected)


def test_mr_flipped_affine_measurements_match_hand_computation():
    series, p = _mr_case(FLIPPED)
    nodules, series_p = extract_nodules(series, p, thresholds=THR)
    assert len(nodules) == 1
    n = nodules[0]
    assert n.id == 1
    assert n.center_voxel == pytest.approx((5.5, 34.5, 27.0))
    # x = 50 - 0.8 * 27, y = -20 + 0.8 * 34.5, z = 30 - 4 * 5.5
    assert n.center_patient_mm == pytest.approx((28.4, 7.6, 8.0))
    assert n.side == "left"
    assert n.diameters_mm == pytest.approx((16.0, 12.0, 8.0))
    assert n.volume_ml == pytest.approx(600 * 4 * 0.8 * 0.8 / 1000)
    # last nodule row 39, first air row 50: rows 40..49 between = 8.0 mm (found by samples every 0.4 mm
    # along +y: within half a step)
    assert n.depth_mm == pytest.approx(8.0, abs=0.21)
    # skin surface y = 19.6; centre y = 7.6 -> 12 mm; fascia posterior edge y = -2.8 -> 22.4 mm
    assert n.needle_target is not None
    assert n.needle_target.depth_mm == pytest.approx(12.0, abs=0.45)
    assert n.needle_target.skin_patient_mm is not None
    assert n.needle_target.skin_patient_mm[1] == pytest.approx(19.6, abs=0.45)
    assert n.needle_target.skin_voxel[1] == pytest.approx(49.5, abs=0.6)
    assert n.fascia_depth_mm == pytest.approx(22.4, abs=0.45)
    d = n.fascia_defect
    assert d.present and d.probability == pytest.approx(0.9)
    # defect voxels: 8 cols x 0.8 mm along x, one 4 mm slice along z -> 6.4 mm
    assert d.width_mm == pytest.approx(6.4)
    assert d.location_voxel == pytest.approx((5.0, 28.0, 27.5))
    assert n.confidence == pytest.approx(0.9, abs=1e-6)
    assert series_p == pytest.approx(0.9, abs=1e-6)
    assert n.bbox == (4, 30, 20, 8, 40, 35)
    assert n.mask is not None and n.mask.shape == (4, 10, 15) and n.mask.all()


def test_mr_fascia_depth_bridges_a_gap_under_the_centre_and_ignores_deeper_sheets():
    """The fascia under a nodule: the median over its footprint's columns, a deeper sheet out of reach."""
    series, p = _mr_case(FLIPPED)
    _put(p, FAT, (slice(None), slice(20, 22), slice(26, 29)), 1.0)  # a 3-column gap under the centre
    _put(p, FASCIA, (slice(None), slice(2, 4), slice(None)), 1.0)  # a deeper sheet, 25 mm below the centre
    (n,), _ = extract_nodules(series, p, thresholds=THR)
    # the central half of the 15 footprint columns (with half a step's margin) is 23..31: six meet the
    # sheet at its level (22.4 mm, as without the gap); the three under the gap find nothing within
    # 10 mm of the nodule's deep face
    assert n.fascia_depth_mm == pytest.approx(22.4, abs=0.45)
    _put(p, FAT, (slice(None), slice(20, 22), slice(None)), 1.0)  # only the deep sheet is left
    (n,), _ = extract_nodules(series, p, thresholds=THR)
    assert n.fascia_depth_mm is None
    assert n.needle_target is not None and n.needle_target.depth_mm == pytest.approx(12.0, abs=0.45)


def test_mr_oblique_affine_rotation_invariant_sizes_and_right_side():
    # columns: k -> 3.5 mm along rotated z, i -> 0.8 mm along rotated y, j -> 0.8 mm along -x
    rot = _rot_x(30.0)
    cols = [list(rot @ np.array([0, 0, 3.5])), list(rot @ np.array([0, 0.8, 0])), [-0.8, 0, 0]]
    affine = _affine(cols, [-10.0, 5.0, -40.0])
    series, p = _mr_case(affine)
    (n,), _ = extract_nodules(series, p, thresholds=THR)
    expected = affine[:3, :3] @ np.array([5.5, 34.5, 27.0]) + affine[:3, 3]
    assert n.center_patient_mm == pytest.approx(tuple(expected))
    assert expected[0] < 0 and n.side == "right"
    assert n.diameters_mm == pytest.approx((14.0, 12.0, 8.0))  # 4 x 3.5 mm, 15 x 0.8 mm, 10 x 0.8 mm
    assert n.volume_ml == pytest.approx(600 * 3.5 * 0.8 * 0.8 / 1000)
    # depth is measured along +y, the needle's way: the 8 mm gap to the skin rows is crossed obliquely
    assert n.depth_mm == pytest.approx(8.0 / math.cos(math.radians(30)), abs=0.25)
    # +y in patient space is oblique to the rows now: the skin is met after 12 / cos(30°)
    assert n.needle_target is not None
    assert n.needle_target.depth_mm == pytest.approx(12.0 / math.cos(math.radians(30)), abs=1.2)


def test_mr_small_components_removed_and_zero_findings():
    series, p = _mr_case(FLIPPED)
    _put(p, NODULE, (slice(9, 10), slice(10, 12), slice(50, 52)), 0.95)  # 4 voxels = 10 mm^3
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    assert len(nodules) == 1
    empty = _probs(SHAPE_MR, series.pixels > 0)
    nodules, series_p = extract_nodules(series, empty, thresholds=THR)
    assert nodules == [] and series_p == 0.0


def test_separate_slabs_merge_only_through_overlap():
    series, p = _mr_case(FLIPPED)
    # a second box on slices 8..9 that overlaps the first one's (i, j) footprint on slice 7 -> merged
    _put(p, NODULE, (slice(8, 10), slice(35, 45), slice(30, 40)), 0.8)
    assert len(extract_nodules(series, p, thresholds=THR)[0]) == 1
    series, p = _mr_case(FLIPPED)
    # the same, shifted in-plane so it touches only diagonally across slices -> two nodules
    _put(p, NODULE, (slice(8, 10), slice(40, 48), slice(35, 45)), 0.8)
    assert len(extract_nodules(series, p, thresholds=THR)[0]) == 2


def test_calibration_and_noisy_or_series_probability():
    series, p = _mr_case(FLIPPED)
    _put(p, NODULE, (slice(0, 3), slice(5, 15), slice(40, 55)), 0.7)
    cal = {"nodule": {"method": "platt", "input": "probability", "a": 1.0, "b": 1.0}}
    nodules, series_p = extract_nodules(series, p, thresholds=THR, calibration=cal)
    expected = sorted((1 / (1 + math.exp(-(math.log(q / (1 - q)) + 1))) for q in (0.9, 0.7)), reverse=True)
    assert [n.confidence for n in nodules] == pytest.approx(expected)
    assert [n.id for n in nodules] == [1, 2]
    assert series_p == pytest.approx(1 - (1 - expected[0]) * (1 - expected[1]))
    strict = dict(THR, confidence_threshold=0.9)  # between 0.864 and 0.961
    assert len(extract_nodules(series, p, thresholds=strict, calibration=cal)[0]) == 1


def test_bad_probability_shape_is_a_model_error():
    series, p = _mr_case(FLIPPED)
    with pytest.raises(ModelError, match="shape"):
        extract_nodules(series, p[:, :5], thresholds=THR)


# ------------------------------------------------------------------------------------------ US

FRAME = (120, 160)
REGION = UltrasoundRegion(index=1, box=(20, 30, 100, 150), spacing_mm=(0.2, 0.25), depth_offset_mm=2.0)
EMPTY_REGION = UltrasoundRegion(index=0, box=(0, 0, 20, 30), spacing_mm=(0.2, 0.25))


def _us_case(region: UltrasoundRegion, header=None):
    tissue = np.zeros((1, *FRAME), dtype=bool)
    r0, c0, r1, c1 = region.box
    tissue[:, r0:r1, c0:c1] = True
    p = _probs(tissue.shape, tissue)
    _put(p, NODULE, (slice(0, 1), slice(50, 80), slice(60, 100)), 0.8)  # 30 rows x 40 cols
    _put(p, FASCIA, (slice(0, 1), slice(90, 93), slice(c0, c1)), 1.0)
    _put(p, DEFECT, (slice(0, 1), slice(80, 83), slice(70, 78)), 0.9)
    # a nodule-like blob outside every region: must be ignored
    p[:, 0, 105:120, 0:25] = 0.0
    p[NODULE, 0, 105:120, 0:25] = 1.0
    pixels = np.random.default_rng(0).random((1, *FRAME)).astype(np.float32)
    return _series("US", pixels, regions=[EMPTY_REGION, region], header=header), p


def test_us_calibrated_region_offset_uses_region_spacing_and_source_grid():
    series, p = _us_case(REGION, header={"ImageLaterality": "R"})
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    assert len(nodules) == 1
    n = nodules[0]
    assert n.region_index == 1
    assert n.center_voxel == pytest.approx((0.0, 64.5, 79.5))  # frame coordinates, not region ones
    assert n.center_patient_mm is None and n.volume_ml is None
    assert n.diameters_mm == pytest.approx((40 * 0.25, 30 * 0.2))
    assert n.depth_mm == pytest.approx(2.0 + (50 - 20) * 0.2)
    assert n.fascia_depth_mm == pytest.approx(2.0 + (90 - 20) * 0.2)
    assert n.side == "right"
    assert n.needle_target is not None
    assert n.needle_target.skin_voxel == pytest.approx((0.0, 20.0, 79.5))
    assert n.needle_target.depth_mm == pytest.approx(2.0 + (64.5 - 20 + 0.5) * 0.2)
    d = n.fascia_defect
    assert d.present and d.probability == pytest.approx(0.9) and d.width_mm == pytest.approx(8 * 0.25)
    assert d.location_voxel == pytest.approx((0.0, 81.0, 73.5))
    assert n.bbox == (0, 50, 60, 1, 80, 100)


def test_a_nodule_cut_by_the_edge_of_the_image_is_flagged_and_labelled_as_a_lower_bound():
    from backmice_vision.render import _label

    series, p = _us_case(REGION)
    (inside,), _ = extract_nodules(series, p, thresholds=THR)
    assert not inside.truncated and ">" not in _label(inside, True)
    # the same blob slid to the region's right edge (frame columns 110-149; the region spans 30-149)
    p2 = p.copy()
    _put(p2, FAT, (slice(0, 1), slice(50, 80), slice(60, 100)), 1.0)
    _put(p2, NODULE, (slice(0, 1), slice(50, 80), slice(110, 150)), 0.8)
    (cut,), _ = extract_nodules(series, p2, thresholds=THR)
    assert cut.truncated and cut.diameters_mm == pytest.approx((40 * 0.25, 30 * 0.2))
    assert _label(cut, True).startswith(f"#{cut.id} >10.0 mm")
    # the margin: max(2 px, 0.5 mm) = 2 columns of 0.25 mm; a blob ending 2 columns short is whole,
    # 1 column short is cut
    for stop, is_cut in ((148, False), (149, True)):
        p3 = p.copy()
        _put(p3, FAT, (slice(0, 1), slice(50, 80), slice(60, 100)), 1.0)
        _put(p3, NODULE, (slice(0, 1), slice(50, 80), slice(110, stop)), 0.8)
        (near,), _ = extract_nodules(series, p3, thresholds=THR)
        assert near.truncated is is_cut
    # MR: the first slice of the stack cuts a nodule; a nodule inside the stack is whole
    mr, pm = _mr_case(FLIPPED)
    (whole,), _ = extract_nodules(mr, pm, thresholds=THR)
    assert not whole.truncated
    _put(pm, NODULE, (slice(0, 4), slice(30, 40), slice(20, 35)), 0.9)  # joins the box: slices 0-7
    (first,), _ = extract_nodules(mr, pm, thresholds=THR)
    assert first.truncated and first.bbox[0] == 0


def test_us_without_calibration_reports_no_millimetres():
    region = UltrasoundRegion(index=1, box=REGION.box, spacing_mm=None)
    series, p = _us_case(region)
    (n,), _ = extract_nodules(series, p, thresholds=THR)
    assert n.diameters_mm == () and n.longest_diameter_mm is None
    assert n.depth_mm is None and n.fascia_depth_mm is None and n.needle_target is None
    assert n.fascia_defect.width_mm is None
    assert n.center_voxel == pytest.approx((0.0, 64.5, 79.5))
    assert n.side is None


def test_us_cine_blob_moving_two_pixels_per_frame_is_one_tracked_nodule():
    n_frames = 8
    tissue = np.zeros((n_frames, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    p = _probs(tissue.shape, tissue)
    rr, cc = np.mgrid[: FRAME[0], : FRAME[1]]
    for k in range(n_frames):
        radius = 14 if k == 5 else 10  # frame 5 is the largest: the key frame
        disc = (rr - 60) ** 2 + (cc - (60 + 2 * k)) ** 2 <= radius**2
        p[:, k][:, disc] = 0.0
        p[NODULE, k][disc] = 0.9
    series = _series("US", np.zeros((n_frames, *FRAME)), regions=[REGION])
    series.sources = [FrameSource("1.2.3.9", US_MULTIFRAME, k + 1) for k in range(n_frames)]  # one clip
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    assert len(nodules) == 1
    n = nodules[0]
    assert n.center_voxel == pytest.approx((5.0, 60.0, 70.0))
    assert n.bbox[0] == 0 and n.bbox[3] == n_frames
    assert n.mask is not None and n.mask.shape[0] == n_frames
    assert n.diameters_mm[0] == pytest.approx(29 * 0.25, abs=0.3)  # key-frame disc across 29 columns
    # a truth nodule on frame 2 is matched through the track's mask on that frame
    truth = [{"center_voxel": [2, 60, 64], "diameters_mm": [6.0], "region_index": 1}]
    (m,) = match_nodules(nodules, truth, series)
    assert m.pred == 0 and m.truth == 0 and m.distance_mm == pytest.approx(0.0, abs=1e-6)


def test_us_zero_findings():
    series, p = _us_case(REGION)
    p[NODULE] = 0.0
    p[FAT] = 1.0 - p[BACKGROUND] - p[FASCIA] - p[DEFECT]
    nodules, series_p = extract_nodules(series, p, thresholds=THR)
    assert nodules == [] and series_p == 0.0


# ------------------------------------------------------------------------------------------ matching


def test_match_nodules_mr_radius_duplicates_and_misses():
    series, p = _mr_case(FLIPPED)
    _put(p, NODULE, (slice(4, 8), slice(30, 40), slice(40, 50)), 0.6)  # second nodule 14 mm to the right
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    assert len(nodules) == 2
    c = np.array(nodules[0].center_patient_mm)
    truth = [
        {
            "center_patient_mm": (c + np.array([0, 0, 4.0])).tolist(),
            "center_voxel": [0, 0, 0],
            "diameters_mm": [12.0],
        },
        {
            "center_patient_mm": (c + np.array([0, 60.0, 0])).tolist(),
            "center_voxel": [0, 0, 0],
            "diameters_mm": [30.0],
        },
    ]
    matches = match_nodules(nodules, truth, series)
    hits = [m for m in matches if m.pred is not None and m.truth is not None and not m.duplicate]
    assert [(m.pred, m.truth) for m in hits] == [(0, 0)]
    assert hits[0].distance_mm == pytest.approx(4.0)
    # the second prediction is 14.6 mm away from truth 0 (radius 6 mm) -> false positive
    assert any(m.pred == 1 and m.truth is None for m in matches)
    assert any(m.pred is None and m.truth == 1 for m in matches)
    # a wider truth nodule reaches both predictions: the weaker one is a duplicate
    truth[0]["diameters_mm"] = [40.0]
    matches = match_nodules(nodules, truth, series)
    assert any(m.pred == 1 and m.truth == 0 and m.duplicate for m in matches)


def test_match_nodules_mr_nodule_cut_by_the_slab_is_hit_on_its_visible_part():
    series, p = _mr_case(FLIPPED)  # 4 mm slices
    p[NODULE] = 0.0
    p[FAT] = 1.0 - p[BACKGROUND] - p[FASCIA] - p[DEFECT]
    _put(p, NODULE, (slice(10, 12), slice(30, 40), slice(20, 35)), 0.9)  # the last two slices
    (n,) = extract_nodules(series, p, thresholds=THR)[0]
    assert n.center_voxel[0] == pytest.approx(10.5)
    # truth centre 3.5 slices (14 mm) beyond the slab, radius 10 mm: its visible part is the last slice
    centre = [14.0, n.center_voxel[1], n.center_voxel[2]]
    lin = FLIPPED[:3, :3]
    truth = [
        {
            "center_voxel": centre,
            "center_patient_mm": (lin @ centre + FLIPPED[:3, 3]).tolist(),
            "diameters_mm": [20.0, 12.0, 12.0],
        }
    ]
    (m,) = match_nodules([n], truth, series)
    assert m.pred == 0 and m.truth == 0 and m.distance_mm == pytest.approx(0.5 * 4.0)
    # inside the slab the truth centre is used as it is: 3.5 slices off is out of reach
    truth[0]["center_voxel"] = [7.0, *centre[1:]]
    truth[0]["center_patient_mm"] = (lin @ truth[0]["center_voxel"] + FLIPPED[:3, 3]).tolist()
    assert [(m.pred, m.truth) for m in match_nodules([n], truth, series)] == [(0, None), (None, 0)]


def test_match_nodules_us_uses_region_millimetres():
    series, p = _us_case(REGION)
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    # 20 rows (4 mm) below the predicted centre: inside a 5 mm radius, outside with a column offset of 30
    near = {"center_voxel": [0, 84.5, 79.5], "diameters_mm": [8.0], "region_index": 1}
    far = {"center_voxel": [0, 64.5, 109.5], "diameters_mm": [8.0], "region_index": 1}  # 7.5 mm
    (m,) = [m for m in match_nodules(nodules, [near], series) if m.pred == 0]
    assert m.truth == 0 and m.distance_mm == pytest.approx(4.0)
    (m,) = [m for m in match_nodules(nodules, [far], series) if m.pred == 0]
    assert m.truth is None
    other_region = dict(near, region_index=0)
    assert match_nodules(nodules, [other_region], series)[0].truth is None


def test_dice_and_full_mask():
    series, p = _mr_case(FLIPPED)
    (n,), _ = extract_nodules(series, p, thresholds=THR)
    full = nodule_full_mask(n, series.shape)
    assert full.sum() == 600
    truth = np.zeros(series.shape, dtype=bool)
    truth[4:8, 30:40, 20:30] = True  # 400 voxels, all inside the prediction
    assert nodule_dice(full, truth) == pytest.approx(2 * 400 / 1000)
    assert nodule_dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert nodule_dice(np.array([1, 0], bool), np.array([0, 1], bool)) == 0.0


def test_principal_extents_of_rotated_box():
    rng = np.random.default_rng(3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lin = rot @ np.diag([2.0, 1.0, 0.5])
    idx = np.argwhere(np.ones((5, 7, 9), bool))
    assert principal_extents_mm(idx @ lin.T, lin) == pytest.approx((10.0, 7.0, 4.5))


def test_load_thresholds_from_yaml(tmp_path):
    cfg = tmp_path / "inference.yaml"
    cfg.write_text("thresholds:\n  nodule_threshold: 0.35\n  min_diameter_mm: 8\nother: 1\n")
    thr = load_thresholds(cfg)
    assert thr["nodule_threshold"] == 0.35 and thr["min_diameter_mm"] == 8.0
    assert thr["defect_threshold"] == DEFAULT_THRESHOLDS["defect_threshold"]
    cfg.write_text("nodule_threshold: high\n")
    with pytest.raises(ConfigError, match="nodule_threshold"):
        load_thresholds(cfg)
    with pytest.raises(ConfigError, match="not found"):
        load_thresholds(tmp_path / "missing.yaml")


def test_strips_and_oversized_instances_are_not_nodules():
    series, p = _us_case(REGION)
    _put(p, NODULE, (slice(0, 1), slice(30, 33), slice(35, 145)), 0.9)  # 27.5 x 0.6 mm strip
    nodules, _ = extract_nodules(series, p, thresholds=THR)
    assert [round(n.diameters_mm[0], 1) for n in nodules] == [10.0]  # only the 40 x 30 px nodule
    assert plausible_size((20.0, 10.0), THR) and not plausible_size((20.0, 3.0), THR)
    assert not plausible_size((65.0, 40.0), THR) and not plausible_size((4.0, 3.0), THR)
    assert plausible_size((12.0, 8.0, 2.0), THR)  # only the second diameter sets the aspect


def test_label_tracks_links_cine_frames_but_not_separate_images():
    mask = np.zeros((4, 20, 20), dtype=bool)
    mask[:, 5:12, 5:12] = True  # the same blob on every frame
    cine = _series("US", np.zeros(mask.shape), regions=[REGION])
    cine.sources = [FrameSource("1.2.3.7", US_MULTIFRAME, k + 1) for k in range(4)]
    labels, n = label_tracks(mask, cine)
    assert n == 1 and set(np.unique(labels)) == {0, 1}
    # two clips of two frames, then the four frames as four single images
    cine.sources = [
        FrameSource(f"1.2.3.{7 + k // 2}", "1.2.840.10008.5.1.4.1.1.3.1", k % 2 + 1) for k in range(4)
    ]
    assert label_tracks(mask, cine)[1] == 2
    singles = _series("US", np.zeros(mask.shape), regions=[REGION])  # one SOP instance per frame
    labels, n = label_tracks(mask, singles)
    assert n == 4 and [int(np.unique(labels[k])[-1]) for k in range(4)] == [1, 2, 3, 4]
    assert label_tracks(mask, _series("MR", np.zeros(mask.shape)))[1] == 1  # MR slices link


# ------------------------------------------------------------------------------------------ plausibility


def test_us_candidate_under_the_fascia_or_ringed_by_muscle_is_not_a_nodule():
    """A back mouse lies in the fat on or through the fascia: the same blob below the fascia (in the
    muscle) or inside tissue the model calls background is dropped; the one above it is kept."""
    tissue = np.zeros((1, *FRAME), dtype=bool)
    r0, c0, r1, c1 = REGION.box
    tissue[:, r0:r1, c0:c1] = True
    base = _probs(tissue.shape, tissue)
    _put(base, FASCIA, (slice(0, 1), slice(45, 48), slice(c0, c1)), 1.0)  # fascia at rows 45-47
    base[FAT, :, 48:r1, c0:c1] = 0.0  # muscle (background) below the fascia
    base[BACKGROUND, :, 48:r1, c0:c1] = 1.0
    series = _series("US", np.zeros((1, *FRAME)), regions=[REGION])

    def blob(p: np.ndarray, rows: slice) -> np.ndarray:
        q = p.copy()
        q[:, 0, rows, 70:100] = 0.0
        q[NODULE, 0, rows, 70:100] = 0.9
        return q

    above = blob(base, slice(28, 42))  # in the fat, just over the fascia
    deep = blob(base, slice(60, 74))  # in the muscle under it
    assert len(extract_nodules(series, above, thresholds=THR)[0]) == 1
    # a membranous layer higher up in the fat (fat between it and the blob) does not make it deep
    layered = blob(base, slice(30, 42))
    layered[:, :, 21:23, c0:c1] = 0.0
    layered[FASCIA, :, 21:23, c0:c1] = 1.0
    assert len(extract_nodules(series, layered, thresholds=THR)[0]) == 1
    # nor does its own bright capsule arching over it, called fascia by the model (no wider than it)
    capsule = blob(base, slice(30, 42))
    capsule[:, :, 22:30, 72:98] = 0.0
    capsule[FASCIA, :, 22:24, 72:98] = 1.0
    capsule[BACKGROUND, :, 24:30, 72:98] = 1.0  # no fat between the arc and the (undersegmented) blob
    assert len(extract_nodules(series, capsule, thresholds=THR)[0]) == 1
    # a sheet broken into segments (gaps of 0.75 mm) still covers the blob in the muscle
    broken = deep.copy()
    for gap in range(c0 + 6, c1, 12):
        broken[:, :, 45:48, gap : gap + 3] = 0.0
        broken[BACKGROUND, :, 45:48, gap : gap + 3] = 1.0
    assert extract_nodules(series, broken, thresholds=THR)[0] == []
    assert extract_nodules(series, deep, thresholds=THR)[0] == []
    # with the plausibility test off (the thresholds of the ablation), the deep blob is reported
    off = {**THR, "min_fat_context": 0.0, "max_fascia_above": 1.0}
    assert len(extract_nodules(series, deep, thresholds=off)[0]) == 1
    # ringed by background but with no fascia above: dropped by the fat-context test alone
    ringed = blob(base, slice(60, 74))
    ringed[:, :, 45:48] = 0.0
    ringed[BACKGROUND, :, 45:48, c0:c1] = 1.0
    only_ring = {**THR, "max_fascia_above": 1.0}
    assert extract_nodules(series, ringed, thresholds=only_ring)[0] == []


def test_mr_candidate_inside_muscle_is_not_a_nodule():
    series, p = _mr_case(FLIPPED)
    assert len(extract_nodules(series, p, thresholds=THR)[0]) == 1
    q = p.copy()
    ring = (slice(None), slice(26, 44), slice(16, 39))
    inside = (slice(4, 8), slice(30, 40), slice(20, 35))
    keep = q[:, inside[0], inside[1], inside[2]].copy()
    q[:, ring[0], ring[1], ring[2]] = 0.0
    q[BACKGROUND, ring[0], ring[1], ring[2]] = 1.0  # e.g. inside the erector spinae
    q[:, inside[0], inside[1], inside[2]] = keep
    assert extract_nodules(series, q, thresholds=THR)[0] == []


def test_us_cine_one_frame_gap_is_bridged_and_a_one_frame_blip_dropped():
    n_frames = 8
    tissue = np.zeros((n_frames, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    rr, cc = np.mgrid[: FRAME[0], : FRAME[1]]
    disc = (rr - 60) ** 2 + (cc - 80) ** 2 <= 10**2

    def clip(frames: list[int]) -> tuple[ImageSeries, np.ndarray]:
        p = _probs(tissue.shape, tissue)
        for k in frames:
            p[:, k][:, disc] = 0.0
            p[NODULE, k][disc] = 0.9
        series = _series("US", np.zeros((n_frames, *FRAME)), regions=[REGION])
        series.sources = [FrameSource("1.2.3.9", US_MULTIFRAME, k + 1) for k in range(n_frames)]
        return series, p

    (n,), _ = extract_nodules(*clip([0, 1, 2, 4, 5, 6, 7]), thresholds=THR)  # missed on frame 3
    assert n.bbox[0] == 0 and n.bbox[3] == n_frames  # reported once, over its whole extent
    assert extract_nodules(*clip([3]), thresholds=THR)[0] == []
    assert len(extract_nodules(*clip([3, 4]), thresholds=THR)[0]) == 1
    # a single image (not a clip) is one frame by nature: kept
    series, p = clip([3])
    series.sources = [FrameSource(f"1.2.3.{k}", US_MULTIFRAME, 1) for k in range(n_frames)]
    assert len(extract_nodules(series, p, thresholds=THR)[0]) == 1


def test_us_instance_is_grown_from_its_core_over_the_lower_threshold():
    """Hysteresis: a 40 x 30 px nodule the network is sure of (p 0.9) only in a 10 x 10 px core, the
    rest at p 0.35, measures 40 x 30 px; its confidence is the core's; two cores joined by p 0.35 are
    one nodule; a p 0.35 blob without a core is none."""
    tissue = np.zeros((1, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    p = _probs(tissue.shape, tissue)
    _put(p, NODULE, (slice(0, 1), slice(50, 80), slice(60, 100)), 0.35)
    _put(p, NODULE, (slice(0, 1), slice(60, 70), slice(65, 75)), 0.9)
    _put(p, NODULE, (slice(0, 1), slice(60, 70), slice(85, 95)), 0.9)
    _put(p, NODULE, (slice(0, 1), slice(25, 45), slice(110, 140)), 0.35)  # no core: not a nodule
    series = _series("US", np.zeros((1, *FRAME)), regions=[REGION])
    (n,), _ = extract_nodules(series, p, thresholds=GROW)
    assert n.diameters_mm == pytest.approx((40 * 0.25, 30 * 0.2))
    assert n.confidence == pytest.approx(0.9)
    # without growing (the default): two 2.5 x 2 mm blobs, below the 5 mm minimum, so no finding at all
    assert extract_nodules(series, p, thresholds=THR)[0] == []


def test_us_growth_is_bounded_in_mm_from_the_core_and_never_crosses_images():
    """``nodule_grow_max_mm``: a 10 x 10 px core (p 0.9) in a p 0.35 band 80 px wide grows over the
    whole band without a bound, and with a 1 mm bound only 5 steps (1 mm of the smaller, 0.2 mm pixel
    size) beyond the core on each side; a second image of the series with the band
    at the same pixels but no core of its own gets nothing from the first one's core."""
    tissue = np.zeros((2, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    p = _probs(tissue.shape, tissue)
    _put(p, NODULE, (slice(0, 2), slice(55, 75), slice(35, 115)), 0.35)  # the band, on both images
    _put(p, NODULE, (slice(0, 1), slice(60, 70), slice(65, 75)), 0.9)  # the core, on the first
    series = _series("US", np.zeros((2, *FRAME)), regions=[REGION])
    series.sources = [FrameSource("1.2.3.1", US_MULTIFRAME, 1), FrameSource("1.2.3.2", US_MULTIFRAME, 1)]
    (free,), _ = extract_nodules(series, p, thresholds=GROW)
    assert free.diameters_mm == pytest.approx((80 * 0.25, 20 * 0.2))
    (bounded,), _ = extract_nodules(series, p, thresholds={**GROW, "nodule_grow_max_mm": 1.0})
    assert bounded.diameters_mm == pytest.approx(((10 + 2 * 5) * 0.25, (10 + 2 * 5) * 0.2))
    assert bounded.bbox[0] == 0 and bounded.bbox[3] == 1  # the first image only
    # a bound without a lower grow threshold changes nothing: plain thresholding
    plain_thr = {**THR, "nodule_grow_max_mm": 1.0, "min_diameter_mm": 1.0}
    (plain,), _ = extract_nodules(series, p, thresholds=plain_thr)
    assert plain.diameters_mm == pytest.approx((10 * 0.25, 10 * 0.2))


def test_mr_growth_is_bounded_in_plane_and_one_slice_per_step():
    """An MR core of 2 slices x 4 x 5 voxels in a p 0.35 slab 8 slices thick and 60 voxels wide: with a
    1.4 mm bound (two steps of the 0.7 mm pixels) it grows by two steps, each one voxel in-plane
    (8-connected) or one slice."""
    series, p = _mr_case(np.diag([0.8, 0.7, 0.7, 1.0]))
    _put(p, NODULE, (slice(2, 10), slice(28, 42), slice(2, 62)), 0.35)
    _put(p, NODULE, (slice(5, 7), slice(33, 37), slice(25, 30)), 0.9)
    (free,), _ = extract_nodules(series, p, thresholds=GROW)
    assert free.volume_ml == pytest.approx(8 * 14 * 60 * 0.8 * 0.7 * 0.7 / 1000)
    (bounded,), _ = extract_nodules(series, p, thresholds={**GROW, "nodule_grow_max_mm": 1.4})
    # one dilation step of the tracking structure: 8-connected in-plane, or one slice at the same (i, j)
    core = np.zeros(SHAPE_MR, dtype=bool)
    core[5:7, 33:37, 25:30] = True
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    structure[0, 1, 1] = structure[2, 1, 1] = True
    expected = ndimage.binary_dilation(core, structure, iterations=2).sum()
    assert bounded.volume_ml == pytest.approx(expected * 0.8 * 0.7 * 0.7 / 1000)
    assert bounded.volume_ml < free.volume_ml / 10


def test_us_cine_blip_with_a_halo_on_other_frames_is_still_a_blip():
    n_frames = 6
    tissue = np.zeros((n_frames, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    p = _probs(tissue.shape, tissue)
    _put(p, NODULE, (slice(0, n_frames), slice(50, 70), slice(60, 90)), 0.3)  # halo on every frame
    _put(p, NODULE, (slice(2, 3), slice(50, 70), slice(60, 90)), 0.9)  # core on one frame
    series = _series("US", np.zeros((n_frames, *FRAME)), regions=[REGION])
    series.sources = [FrameSource("1.2.3.9", US_MULTIFRAME, k + 1) for k in range(n_frames)]
    assert extract_nodules(series, p, thresholds=GROW)[0] == []
    _put(p, NODULE, (slice(3, 4), slice(50, 70), slice(60, 90)), 0.9)  # and on a second frame: a finding
    (n,), _ = extract_nodules(series, p, thresholds=GROW)
    assert n.bbox[0] == 0 and n.bbox[3] == n_frames  # its extent is the halo's


def test_us_cine_track_must_span_a_share_of_the_clip():
    """``min_cine_fraction``: a nodule whose core is on 3 of a 10-frame clip is kept at 0.3 and dropped at
    0.4; a single image is never held to it; and a track on every frame passes any share."""
    n_frames = 10
    tissue = np.zeros((n_frames, *FRAME), dtype=bool)
    tissue[:, 20:100, 30:150] = True
    p = _probs(tissue.shape, tissue)
    _put(p, NODULE, (slice(4, 7), slice(50, 80), slice(60, 100)), 0.9)
    series = _series("US", np.zeros((n_frames, *FRAME)), regions=[REGION])
    series.sources = [FrameSource("1.2.3.9", US_MULTIFRAME, k + 1) for k in range(n_frames)]
    assert len(extract_nodules(series, p, thresholds={**THR, "min_cine_fraction": 0.3})[0]) == 1
    assert extract_nodules(series, p, thresholds={**THR, "min_cine_fraction": 0.4})[0] == []
    _put(p, NODULE, (slice(0, n_frames), slice(50, 80), slice(60, 100)), 0.9)
    assert len(extract_nodules(series, p, thresholds={**THR, "min_cine_fraction": 1.0})[0]) == 1
    single = _series("US", np.zeros((1, *FRAME)), regions=[REGION])
    assert len(extract_nodules(single, p[:, :1], thresholds={**THR, "min_cine_fraction": 1.0})[0]) == 1


def test_mr_instance_is_grown_from_its_core():
    series, p = _mr_case(np.diag([0.8, 0.7, 0.7, 1.0]))
    _put(p, NODULE, (slice(4, 8), slice(30, 40), slice(20, 35)), 0.35)
    _put(p, NODULE, (slice(5, 7), slice(33, 37), slice(25, 30)), 0.9)
    (n,), _ = extract_nodules(series, p, thresholds=GROW)
    assert n.volume_ml == pytest.approx(4 * 10 * 15 * 0.8 * 0.7 * 0.7 / 1000)
    assert n.confidence == pytest.approx(0.9)
