"""Evaluation metrics against hand-computed values; SEG ground truth read back from a real highdicom SEG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backmice_vision.errors import ConfigError, InvalidDicom
from backmice_vision.evaluation import (
    auc,
    bootstrap_sensitivity,
    case_scores,
    evaluate_series,
    find_cases,
    froc,
    froc_plot,
    paired_bootstrap,
    read_ground_truth,
    read_truth_mask,
    run_evaluation,
    sensitivity_at_rate,
    split_truth_instances,
    summarise,
    truth_from_labels,
)
from backmice_vision.findings import DEFAULT_THRESHOLDS, extract_nodules
from backmice_vision.labels import BACKGROUND, DEFECT, FAT, MODEL_CLASSES, NODULE
from backmice_vision.types import FrameSource, ImageSeries, UltrasoundRegion

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def test_froc_hand_computed():
    # thresholds 0.9 .8 .6 .5 .3 .2 -> (fp/img, sens): (0,.25) (.25,.25) (.25,.5) (.5,.5) (.5,.75) (.75,.75)
    out = froc([0.9, 0.6, None, 0.3], [0.8, 0.5, 0.2], n_images=4)
    assert out["sensitivity"] == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    assert out["mean_sensitivity"] == pytest.approx(0.6)
    assert out["curve"][0] == [0.0, 0.0] and out["curve"][-1] == pytest.approx([0.75, 0.75])
    # all lesions found before any false positive
    assert froc([0.9, 0.8], [0.1], 1)["sensitivity"] == [1.0] * 5
    # nothing found
    assert froc([None], [0.9, 0.9, 0.9], 1)["sensitivity"] == [0.0] * 5
    assert froc([], [0.5], 2)["sensitivity"] == [None] * 5
    with pytest.raises(ValueError):
        froc([0.5], [], 0)


def test_sensitivity_at_rate_agrees_with_the_froc_curve():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_les, n_fp, n_img = int(rng.integers(1, 12)), int(rng.integers(0, 15)), int(rng.integers(1, 9))
        # coarse scores: ties between hits and false positives happen
        lesions = [None if rng.random() < 0.3 else float(rng.integers(0, 6)) / 5 for _ in range(n_les)]
        fps = [float(rng.integers(0, 6)) / 5 for _ in range(n_fp)]
        curve = froc(lesions, fps, n_img)
        assert [sensitivity_at_rate(lesions, fps, n_img, r) for r in curve["fp_rates"]] == curve[
            "sensitivity"
        ]
    assert sensitivity_at_rate([], [0.5], 2, 0.25) is None


def _cases(n: int, seed: int) -> dict[str, tuple[list[float | None], list[float], int]]:
    rng = np.random.default_rng(seed)
    return {
        f"case_{i:03d}": (
            [None if rng.random() < 0.25 else float(rng.uniform(0.3, 1.0))],
            [float(rng.uniform(0.0, 0.6)) for _ in range(int(rng.integers(0, 3)))],
            2,
        )
        for i in range(n)
    }


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_cases():
    few, many = _cases(20, 1), _cases(320, 1)
    for cases in (few, many):
        lesions = [s for c in cases.values() for s in c[0]]
        fps = [s for c in cases.values() for s in c[1]]
        point = sensitivity_at_rate(lesions, fps, 2 * len(cases), 0.25)
        low, high = bootstrap_sensitivity(list(cases.values()), 0.25, n_boot=500)
        assert point is not None and low <= point <= high
    width = [
        np.subtract(*bootstrap_sensitivity(list(c.values()), 0.25, n_boot=500)[::-1]) for c in (few, many)
    ]
    assert width[1] < 0.5 * width[0]  # 16 times the cases: about a quarter of the width
    assert bootstrap_sensitivity([([], [0.4], 1)], 0.25) is None


def test_paired_bootstrap_compares_two_models_on_the_same_cases():
    a = _cases(40, 2)
    same = paired_bootstrap(a, a, 0.25, n_boot=300)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_b_not_better"] == 1.0
    # B finds every lesion A misses, with the same false positives
    b = {k: ([0.99 if s is None else s for s in les], fps, n) for k, (les, fps, n) in a.items()}
    better = paired_bootstrap(a, b, 0.25, n_boot=300)
    assert better["difference"] > 0 and better["ci95"][0] > 0 and better["p_b_not_better"] < 0.05
    assert better["n_cases"] == 40 and better["n_lesions"] == 40
    worse = paired_bootstrap(b, a, 0.25, n_boot=300)
    assert worse["difference"] == pytest.approx(-better["difference"]) and worse["p_b_not_better"] == 1.0
    with pytest.raises(ValueError, match="different cases"):
        paired_bootstrap(a, {k: a[k] for k in list(a)[:-1]}, 0.25)
    entries = [
        {"case": k, "modality": "US", "lesion_scores": v[0], "fp_scores": v[1], "n_images": 1}
        for k, v in a.items()
    ] * 2  # two series per case
    grouped = case_scores([*entries, {**entries[0], "modality": "MR"}], "US")
    assert grouped["case_000"] == (a["case_000"][0] * 2, a["case_000"][1] * 2, 2) and len(grouped) == 40


def test_auc_mann_whitney():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert auc([0.2, 0.9], [0, 1]) == 1.0
    assert auc([0.2, 0.9], [1, 1]) is None


# ---------------------------------------------------------------------- a hand-made MR series


AFFINE = np.array([[0, 0, 0.8, -20.0], [0, 0.8, 0, -20.0], [4.0, 0, 0, 0.0], [0, 0, 0, 1]])
SHAPE = (6, 48, 48)


def _series() -> ImageSeries:
    body = np.zeros(SHAPE, dtype=np.float32)
    body[:, :40] = 100.0
    return ImageSeries(
        modality="MR",
        pixels=body,
        spacing_mm=(4.0, 0.8, 0.8),
        sources=[FrameSource(f"1.2.826.0.1.3680043.8.498.{100 + k}", MR_IMAGE) for k in range(SHAPE[0])],
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        affine=AFFINE,
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.3",
    )


def _probabilities(series: ImageSeries) -> np.ndarray:
    p = np.zeros((len(MODEL_CLASSES), *SHAPE), dtype=np.float32)
    tissue = series.pixels > 0
    p[BACKGROUND], p[FAT] = ~tissue, tissue

    def put(cls, sl, value):
        p[(slice(None), *sl)] = 0.0
        p[(cls, *sl)] = value
        p[(FAT, *sl)] = 1.0 - value

    put(NODULE, (slice(1, 4), slice(10, 20), slice(5, 20)), 0.9)  # hits truth 0
    put(DEFECT, (slice(2, 3), slice(7, 10), slice(8, 14)), 0.8)
    put(NODULE, (slice(1, 3), slice(10, 18), slice(30, 40)), 0.6)  # false positive
    return p


def _truth(series: ImageSeries) -> dict:
    def centre(v):
        return (AFFINE[:3, :3] @ np.asarray(v, float) + AFFINE[:3, 3]).tolist()

    return {
        "folder": "dicom/MR_axial_T1",
        "series_instance_uid": series.series_instance_uid,
        "nodules": [
            {"id": 1, "visible": True, "center_voxel": [2, 15, 12], "center_patient_mm": centre([2, 15, 12]),
             "diameters_mm": [12.0, 10.0, 8.0], "depth_mm": 15.0, "fascia_depth_mm": None,
             "defect": {"present": True, "width_mm": 5.0}},
            {"id": 2, "visible": True, "center_voxel": [4, 25, 44], "center_patient_mm": centre([4, 25, 44]),
             "diameters_mm": [10.0, 8.0, 6.0], "depth_mm": 10.0, "fascia_depth_mm": None,
             "defect": {"present": False, "width_mm": None}},
            {"id": 3, "visible": False, "center_voxel": [0, 30, 5], "center_patient_mm": centre([0, 30, 5]),
             "diameters_mm": [20.0, 10.0, 8.0], "depth_mm": 5.0, "fascia_depth_mm": None,
             "defect": {"present": False, "width_mm": None}},
        ],
    }  # fmt: skip


def _truth_mask() -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    m[1:4, 10:20, 5:15] = True  # nodule 1: 300 voxels, 300 of them inside the 450-voxel prediction
    m[3:5, 22:28, 40:46] = True  # nodule 2: 72 voxels
    return m


def test_evaluate_series_and_summarise_on_real_findings(tmp_path):
    series = _series()
    nodules, series_p = extract_nodules(series, _probabilities(series), thresholds=dict(DEFAULT_THRESHOLDS))
    assert [round(n.confidence, 3) for n in nodules] == [0.9, 0.6]
    rec = evaluate_series(series, nodules, series_p, _truth(series), _truth_mask(), case="case_0000")
    assert rec.lesion_scores == pytest.approx([0.9, None])  # nodule 3 is not visible: not a target
    assert rec.lesion_scores_all == pytest.approx([0.9, None, None])
    assert rec.fp_scores == pytest.approx([0.6])
    assert rec.dice == pytest.approx([2 * 300 / (450 + 300)])
    assert rec.defect_pairs == [(0, pytest.approx(0.8), True)]
    assert rec.calibration_pairs == [(pytest.approx(0.9), True), (pytest.approx(0.6), False)]
    assert rec.has_target
    # prediction longest diameter 15 cols x 0.8 = 12 mm, truth 12 mm
    assert rec.errors_mm["longest_diameter"] == pytest.approx([0.0])
    # a truth of 15 mm: the 12 mm finding is 20 % too small, signed -0.2
    larger = _truth(series)
    larger["nodules"][0]["diameters_mm"] = [15.0, 10.0, 8.0]
    rec15 = evaluate_series(series, nodules, series_p, larger, _truth_mask(), case="case_0002")
    assert rec15.errors_mm["longest_diameter_rel"] == pytest.approx([0.2])
    assert rec15.errors_mm["longest_diameter_signed_rel"] == pytest.approx([-0.2])
    assert summarise([rec15])["MR"]["longest_diameter_signed_rel_error"]["median"] == pytest.approx(-0.2)
    # the same nodule cut by the edge of the image: no diameter error (no measurable truth), depth kept
    larger["nodules"][0]["truncated"] = True
    cut = evaluate_series(series, nodules, series_p, larger, _truth_mask(), case="case_0002")
    assert cut.errors_mm["longest_diameter"] == [] and cut.errors_mm["longest_diameter_rel"] == []
    assert cut.errors_mm["depth"] == rec15.errors_mm["depth"] and cut.lesion_scores == rec15.lesion_scores
    # its sensitivity is reported apart from that of the nodules inside the image
    assert rec15.lesion_cut_by_border == [False, False] and cut.lesion_cut_by_border == [True, False]
    by_border = summarise([cut])["MR"]["by_border"]
    assert by_border["cut by the image border"] == {"n": 1, "sensitivity_at_0.5": 1.0}
    assert by_border["inside the image"] == {"n": 1, "sensitivity_at_0.5": 0.0}

    empty = ImageSeries(**{**series.__dict__, "series_instance_uid": "1.2.3.9"})
    empty_rec = evaluate_series(empty, [], 0.0, {"folder": "x", "nodules": []}, None, case="case_0001")
    metrics = summarise([rec, empty_rec], tmp_path)["MR"]
    assert metrics["n_series"] == 2 and metrics["n_cases"] == 2 and metrics["n_target_nodules"] == 2
    # one FP in 2 series = 0.5 FP/series: at 0.125 and 0.25 only the 0.9 hit counts
    assert metrics["froc"]["sensitivity"] == pytest.approx([0.5] * 5)
    assert metrics["froc_all"]["sensitivity"] == pytest.approx([1 / 3] * 5)
    assert metrics["series_auc"] == pytest.approx(1.0)  # 1 - 0.1 * 0.4 against 0.0
    assert metrics["defect_auc"] is None  # only a positive pair
    # ECE of (0.9, hit) and (0.6, miss): (0.1 + 0.6) / 2
    assert metrics["ece"] == pytest.approx(0.35)
    assert (tmp_path / metrics["reliability_png"]).is_file()
    json.dumps(metrics)
    png = froc_plot({"MR": metrics["froc"]["curve"]}, tmp_path / "froc.png")
    with Image.open(png) as img:
        px = np.asarray(img.convert("RGB"))
    assert ((px[..., 0] > 150) & (px[..., 1] < 80)).sum() > 50  # the red curve is drawn


def test_cine_lesion_counts_once_across_its_frames():
    n_frames, shape = 6, (80, 100)
    region = UltrasoundRegion(index=0, box=(0, 0, *shape), spacing_mm=(0.2, 0.2))
    p = np.zeros((len(MODEL_CLASSES), n_frames, *shape), dtype=np.float32)
    p[FAT] = 1.0
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for k in range(n_frames):
        disc = (rr - 40) ** 2 + (cc - (40 + k)) ** 2 <= 15**2
        p[:, k][:, disc] = 0.0
        p[NODULE, k][disc], p[FAT, k][disc] = 0.8, 0.2
    series = ImageSeries(
        modality="US",
        pixels=np.zeros((n_frames, *shape), dtype=np.float32),
        sources=[FrameSource("1.2.826.0.1.3680043.8.498.7", US_MULTIFRAME, k + 1) for k in range(n_frames)],
        spacing_mm=None,
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        regions=[region],
    )
    nodules, series_p = extract_nodules(series, p, thresholds=dict(DEFAULT_THRESHOLDS))
    assert len(nodules) == 1  # tracked through the cine
    truth = [
        {"id": 1, "visible": True, "center_voxel": [k, 40, 40 + k], "diameters_mm": [9.0, 6.0],
         "region_index": 0, "depth_mm": 5.0, "fascia_depth_mm": None, "defect": {"present": False}}
        for k in range(n_frames)
    ]  # fmt: skip
    rec = evaluate_series(series, nodules, series_p, {"kind": "us_cine", "nodules": truth})
    assert rec.lesion_scores == pytest.approx([0.8]) and rec.fp_scores == []
    assert rec.n_images == 1  # one clip
    # the same entries read as separate single images: one hit, five misses, six images
    sources = [FrameSource(f"1.2.826.0.1.3680043.8.498.{20 + k}", US_IMAGE) for k in range(n_frames)]
    singles = ImageSeries(**{**series.__dict__, "sources": sources})
    rec = evaluate_series(singles, nodules, series_p, {"kind": "us_single", "nodules": truth})
    assert rec.lesion_scores.count(None) == n_frames - 1
    assert rec.n_images == n_frames
    assert summarise([rec])["US"]["froc"]["n_images"] == n_frames


def test_split_truth_instances_by_component_and_centre():
    series = _series()
    parts = split_truth_instances(_truth_mask(), _truth(series)["nodules"], series)
    assert parts[0].sum() == 300 and parts[1].sum() == 72
    # nodule 3's centre lies in no component: it gets the nearest component (nodule 1's)
    assert (parts[2] == parts[0]).all()


def _seg_file(series: ImageSeries, mask: np.ndarray, path):
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian

    sources = []
    for k, src in enumerate(series.sources):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PH0", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study_instance_uid, series.series_instance_uid
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", ""
        ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "", "MR", 1, k + 1
        ds.SOPClassUID, ds.SOPInstanceUID = src.sop_class_uid, src.sop_instance_uid
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        pos = AFFINE[:3, :3] @ np.array([k, 0, 0]) + AFFINE[:3, 3]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 4.0
        ds.Rows, ds.Columns, ds.SamplesPerPixel = SHAPE[1], SHAPE[2], 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros(SHAPE[1:], np.uint16).tobytes()
        sources.append(ds)
    seg_class = codes.SCT.Tissue
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, segmented_property_category=seg_class,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in ((1, "fat"), (2, "nodule"))
    ]  # fmt: skip
    labels = np.stack([np.zeros_like(mask), mask], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0",
    )  # fmt: skip
    seg.save_as(path)
    return path


def test_read_truth_mask_from_a_real_seg(tmp_path):
    series = _series()
    mask = _truth_mask()
    path = _seg_file(series, mask, tmp_path / "seg.dcm")
    got = read_truth_mask(path, series)
    assert got.shape == SHAPE and (got == mask).all()
    # the same SEG against a series whose slices are in reverse order: frames follow the UIDs
    flipped = ImageSeries(**{**series.__dict__, "sources": series.sources[::-1]})
    assert (read_truth_mask(path, flipped) == mask[::-1]).all()
    assert not read_truth_mask(path, series, segment="fascia").any()
    other = ImageSeries(**{**series.__dict__, "sources": [FrameSource("1.2.3.4.5", MR_IMAGE)] * SHAPE[0]})
    with pytest.raises(InvalidDicom, match="outside the series"):
        read_truth_mask(path, other)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(InvalidDicom, match=r"bad\.dcm"):
        read_truth_mask(bad, series)


def test_ground_truth_and_case_discovery(tmp_path):
    case = tmp_path / "set" / "case_0000"
    case.mkdir(parents=True)
    (case / "ground_truth.json").write_text(json.dumps({"schema": "backmice.phantom/1", "series": []}))
    assert find_cases([tmp_path / "set"]) == [case / "ground_truth.json"]
    assert find_cases([case]) == [case / "ground_truth.json"]
    assert read_ground_truth(case / "ground_truth.json")["series"] == []
    (case / "ground_truth.json").write_text("{")
    with pytest.raises(ConfigError, match=r"ground_truth\.json"):
        read_ground_truth(case / "ground_truth.json")
    (case / "ground_truth.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ConfigError, match=r"backmice\.phantom/1"):
        read_ground_truth(case / "ground_truth.json")
    with pytest.raises(ConfigError, match="not found"):
        find_cases([tmp_path / "missing"])


def test_backmice_evaluate_on_a_generated_mr_case_writes_json_markdown_and_plots(tmp_path):
    from backmice_vision.cli import main
    from backmice_vision.phantoms.generate import generate_cases

    generate_cases("mr", 1, 5, tmp_path / "data", progress=False, workers=1)
    variant = "loose:nodule_threshold=0.3,nodule_grow_threshold=0.1,nodule_grow_max_mm=2,min_fat_context=0"
    ev = ["evaluate", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "ev")]
    assert main([*ev, "--variant", variant]) == 0
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    # the variant post-processes the same network output: as a run with those thresholds would
    loose = {
        "nodule_threshold": 0.3,
        "nodule_grow_threshold": 0.1,
        "nodule_grow_max_mm": 2.0,
        "min_fat_context": 0.0,
    }
    assert report["variants"] == {"loose": loose}
    again = run_evaluation([tmp_path / "data"], tmp_path / "ev_loose", thresholds=loose, progress=False)
    varied = json.loads((tmp_path / "ev" / "loose" / "evaluation.json").read_text())
    assert varied["threshold_overrides"] == again["threshold_overrides"] == loose
    assert varied["series"] == again["series"] != report["series"]
    assert varied["modalities"]["MR"]["froc"] == again["modalities"]["MR"]["froc"]
    for bad in ("loose", "lo/se:nodule_threshold=0.3", "loose:nodule_treshold=0.3"):
        assert main([*ev, "--variant", bad]) == 2
    mr = report["modalities"]["MR"]
    truth = read_ground_truth(tmp_path / "data" / "case_0000" / "ground_truth.json")
    assert report["n_series"] == mr["n_series"] == mr["n_images"] == len(truth["series"])
    assert not report["problems"]
    assert mr["n_nodules"] == sum(len(s["nodules"]) for s in truth["series"])
    assert (tmp_path / "ev" / report["froc_png"]).is_file()
    page = (tmp_path / "ev" / "evaluation.md").read_text()
    rows = ("sensitivity ≥ 0.9", "mean Dice of detected targets ≥ 0.8", "fascia-defect AUC", "ECE ≤ 0.08")
    assert all(f"| {row}" in page for row in rows)
    assert page.count("PASS") + page.count("FAIL") + page.count("n/a") >= 4
    # per-series scores in the JSON reproduce the summary (paired comparisons of two models need them)
    per_case = case_scores(report["series"], "MR")
    lesions = [s for c in per_case.values() for s in c[0]]
    fps = [s for c in per_case.values() for s in c[1]]
    assert sensitivity_at_rate(lesions, fps, mr["n_images"], 0.5) == mr["froc"]["sensitivity"][2]
    assert len(lesions) == mr["n_target_nodules"]

    # the operating point: configs/inference.yaml's, else the bundle's own (`backmice calibrate` may choose
    # it), else an override; the FROC sweeps every confidence whatever it is
    import shutil

    from backmice_vision.findings import load_thresholds
    from backmice_vision.model.bundle import METADATA, default_bundle_dir

    assert mr["operating_point"]["confidence_threshold"] == load_thresholds()["confidence_threshold"]
    bundle = tmp_path / "mr_bundle"
    shutil.copytree(default_bundle_dir("MR"), bundle)
    meta = json.loads((bundle / METADATA).read_text())
    meta["postprocessing"] = {**meta.get("postprocessing", {}), "confidence_threshold": 0.7}
    (bundle / METADATA).write_text(json.dumps(meta))
    own = run_evaluation([tmp_path / "data"], tmp_path / "ev_own", model=str(bundle), progress=False)
    assert own["modalities"]["MR"]["operating_point"]["confidence_threshold"] == 0.7
    assert own["modalities"]["MR"]["froc"] == mr["froc"]
    data = [tmp_path / "data"]
    over = run_evaluation(data, tmp_path / "ev_o", str(bundle), thresholds={"confidence_threshold": 0.5})
    assert over["modalities"]["MR"]["operating_point"]["confidence_threshold"] == 0.5

    # a second set whose case has the same folder name is a different case
    shutil.copytree(tmp_path / "data", tmp_path / "data2")
    both = run_evaluation([tmp_path / "data", tmp_path / "data2"], tmp_path / "ev2", progress=False)
    assert both["n_cases"] == both["modalities"]["MR"]["n_cases"] == 2
    assert {s["case"] for s in both["series"]} == {"data/case_0000", "data2/case_0000"}
    assert both["modalities"]["MR"]["n_target_nodules"] == 2 * mr["n_target_nodules"]
    # two blocks of one set (the same set and case names under two roots) stay two cases in the
    # per-series scores that the bootstrap and the paired comparison resample
    shutil.copytree(tmp_path / "data", tmp_path / "block2" / "data")
    blocks = [tmp_path / "data", tmp_path / "block2" / "data"]
    pooled = run_evaluation(blocks, tmp_path / "ev3", progress=False)
    names = {s["case"] for s in pooled["series"]}
    assert len(names) == pooled["n_cases"] == 2 and "block2/data/case_0000" in names
    assert len(case_scores(pooled["series"], "MR")) == 2


def test_truth_from_labels_measures_an_annotated_nodule_like_a_prediction(tmp_path):
    from model_factory import SEGMENT_MAP, write_mr_with_seg

    from backmice_vision.model.data import collect_items, load_item

    write_mr_with_seg(tmp_path / "case", seed=4)
    (item,) = collect_items([{"type": "dicom_seg", "path": str(tmp_path), "segment_map": SEGMENT_MAP}])
    series, labels = load_item(item, "MR")
    (truth,) = truth_from_labels(series, labels)
    nodule = np.argwhere(labels == NODULE)
    assert truth["center_voxel"] == pytest.approx(nodule.mean(axis=0).tolist())
    # a 13-pixel disc at 1.5 mm on 3 slices 4 mm apart: 19.5 mm across, 12 mm through the slices
    assert truth["diameters_mm"][0] == pytest.approx(19.5, abs=0.5)
    assert min(truth["diameters_mm"]) == pytest.approx(12.0, abs=0.5)
    assert truth["visible"] is True  # (defect flags on real phantom geometry: test_detection_phantoms)
    assert truth_from_labels(series, np.where(labels == NODULE, FAT, labels).astype(np.uint8)) == []


def test_compare_evaluations_names_a_missing_report_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_evaluations.py"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "evaluation.json").write_text("{")
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"compare: {tmp_path / 'a' / 'evaluation.json'}: not valid JSON"


def test_compare_evaluations_scores_defects_on_the_lesions_both_models_found(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    def report(folder, pairs_by_case):
        series = [
            {"case": case, "folder": "dicom/US_single_01", "modality": "US", "n_images": 1,
             "lesion_scores": [0.9] * 2, "fp_scores": [], "defect_pairs": pairs}
            for case, pairs in pairs_by_case.items()
        ]  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "evaluation.json").write_text(
            json.dumps({"modalities": {"US": {}}, "series": series})
        )

    report("a", {"c0": [[0, 0.9, True], [1, 0.2, False]], "c1": [[0, 0.4, True]]})
    # b also found c1's lesion 1 (a hard one, scored wrong): not part of the comparison
    report("b", {"c0": [[0, 0.3, True], [1, 0.5, False]], "c1": [[0, 0.6, True], [1, 0.1, True]]})
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_evaluations.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"| {tmp_path / 'a'} | {tmp_path / 'b'} | US | 3 | 1.000 | 0.500 |" in run.stdout.splitlines()
