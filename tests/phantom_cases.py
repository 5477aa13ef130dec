"""Fixed phantom cases for the detection tests (issue #5) and the ground-truth side of their checks.

Every case is written by the project's own generator (:func:`generate_cases`) from a fixed seed and a
config override, so the ground truth is exact and the files are ordinary DICOM. The seeds were chosen by
scanning the generator output once (see ``tests/test_detection_phantoms.py``); :func:`check_case` re-asserts
the properties each test relies on, so a change in the generator that breaks a choice fails loudly instead
of silently testing something else.

Cases (one subject each; writing all of them takes about 6 s on one core):

* ``us``: one typical, non-lobulated nodule (at least 12 mm in every image) with a fascial defect that lies in
  every imaged plane; a single-image series (MONOCHROME2), a 4-frame cine sweep over it (YBR_FULL_422, JPEG)
  and a dual-view export (two transverse views side by side, YBR_FULL_422).
* ``mr_left``: axial T1 stack tilted about 9° (oblique), whole cross-section, a 21.75 mm typical nodule on
  the left, no fascial defect.
* ``mr_right``: the same protocol, an 18.75 mm typical nodule on the right with a 6.4 mm fascial defect.
* ``us_negative`` / ``mr_negative``: subjects without nodules (distractors may be present).

Conventions are those of :mod:`backmice_vision.types`: ``center_voxel`` ``(k, i, j)`` in the source grid,
MR centres also in LPS mm, measurements in mm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backmice_vision.evaluation import read_ground_truth, read_truth_mask, split_truth_instances
from backmice_vision.findings import _linear, match_nodules, match_radius_mm, principal_extents_mm
from backmice_vision.phantoms.generate import generate_cases
from backmice_vision.types import ImageSeries, Nodule

US_POSITIVE = {
    "anatomy": {"force_nodules": 1, "nodule_long_axis_mm": [14.0, 24.0], "habitus": "overweight"},
    "probe": {"depth_mm": 35.0, "width_mm": 45.0, "pixel_mm": 0.1},
    "single_series": [1, 1],
    "images_per_series": [1, 1],
    "cine_frames": [4, 4],
    "cine_sweep_mm": [4.0, 4.0],
    "p_dual": 1.0,
    "p_on_nodule": 1.0,
    "max_tilt_deg": 0.0,
}
US_NEGATIVE = {
    "anatomy": {"force_nodules": 0, "habitus": "overweight"},
    "probe": {"depth_mm": 35.0, "width_mm": 45.0, "pixel_mm": 0.1},
    "single_series": [1, 1],
    "images_per_series": [1, 1],
    "p_cine": 0.0,
    "p_dual": 0.0,
}
MR_PROTOCOL = {
    "p_small_fov": 0.0,  # whole cross-section: lateral nodules stay in the field of view
    "axial_tilt_deg": [8.0, 12.0],  # oblique axial stack
    "axial_slices": [14, 14],
    "flip_prob": 0.0,
    "wide_pixel_mm": [1.1, 1.2],
    "axial_center_z_mm": [-30.0, -10.0],
}
MR_POSITIVE = {
    "anatomy": {"force_nodules": 1, "nodule_long_axis_mm": [16.0, 26.0], "habitus": "overweight"},
    "protocol": MR_PROTOCOL,
    "contrasts": ["T1"],
    "p_sagittal": 0.0,
    "p_enhanced": 0.0,
    "p_rescale": 0.0,
}
MR_NEGATIVE = {**MR_POSITIVE, "anatomy": {"force_nodules": 0, "habitus": "overweight"}}

# name -> (generator modality, run seed, config)
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "us": ("us", 4, US_POSITIVE),
    "mr_left": ("mr", 12, MR_POSITIVE),
    "mr_right": ("mr", 11, MR_POSITIVE),
    "us_negative": ("us", 5, US_NEGATIVE),
    "mr_negative": ("mr", 3, MR_NEGATIVE),
}

# (case, series kind) of every series the tests detect on
POSITIVE_SERIES = [
    ("us", "us_single"),
    ("us", "us_cine"),
    ("us", "us_dual"),
    ("mr_left", "mr_axial"),
    ("mr_right", "mr_axial"),
]
NEGATIVE_SERIES = [("us_negative", "us_single"), ("mr_negative", "mr_axial")]


def write_cases(root: Path) -> dict[str, Path]:
    """Generate every case of :data:`CASES` under ``root``; returns name -> case folder."""
    out = {}
    for name, (modality, seed, config) in CASES.items():
        (case,) = generate_cases(modality, 1, seed, root / name, config=config, progress=False, workers=1)
        out[name] = case
    return out


def series_entry(case: Path, kind: str) -> dict[str, Any]:
    """The single ``ground_truth.json`` series entry of ``kind`` in ``case``."""
    entries = [s for s in read_ground_truth(case / "ground_truth.json")["series"] if s["kind"] == kind]
    assert len(entries) == 1, f"{case.name}: expected one {kind} series, found {len(entries)}"
    return entries[0]


def check_case(name: str, case: Path) -> None:
    """Assert the ground-truth properties the detection tests rely on (see the module docstring)."""
    truth = json.loads((case / "ground_truth.json").read_text())
    nodules = truth["nodules"]
    if name.endswith("negative"):
        assert nodules == [] and all(s["nodules"] == [] for s in truth["series"])
        return
    (nod,) = nodules
    assert nod["variant"] == "typical" and not nod["lobulated"]
    for s in truth["series"]:
        assert s["nodules"], f"{name} {s['kind']}: no ground-truth nodule in the series"
        for e in s["nodules"]:
            assert e["visible"] and max(e["diameters_mm"]) >= 12.0, (name, s["kind"], e)
            if s["kind"].startswith("us"):
                assert not e["truncated"]
                assert e["defect"]["in_plane"] == e["defect"]["present"]  # the image shows what truth says
            else:
                k = e["center_voxel"][0]
                assert 2.0 <= k <= s["n_frames"] - 3.0, "MR nodule centre too close to the stack's end"
                col_cosine = np.asarray(s["orientation"][3:])
                assert 5.0 < np.degrees(np.arccos(abs(col_cosine[1]))) < 15.0  # oblique axial
    if name == "us":
        assert [s["kind"] for s in truth["series"]] == ["us_single", "us_cine", "us_dual"]
        assert nod["defect"]["present"]
        dual = series_entry(case, "us_dual")
        assert len(dual["regions"]) == 2 and {e["region_index"] for e in dual["nodules"]} == {0, 1}
    if name == "mr_left":
        assert nod["side"] == "left" and not nod["defect"]["present"]
    if name == "mr_right":
        assert nod["side"] == "right" and nod["defect"]["present"]


# --------------------------------------------------------------------------- measured ground truth


def seg_longest_diameters_mm(
    series: ImageSeries, seg_path: Path, entries: list[dict[str, Any]]
) -> list[float]:
    """Longest diameter (mm) of each truth entry's nodule in the ground-truth SEG, measured with the
    detector's own geometry code (:func:`principal_extents_mm`, voxel footprint included).

    MR: the 3-D SEG instance through the affine. Ultrasound: the instance's pixels on the entry's frame
    inside the entry's region, with that region's (row, col) spacing.
    """
    mask = read_truth_mask(seg_path, series)
    instances = split_truth_instances(mask, entries, series)
    out = []
    for t, e in enumerate(entries):
        inst = instances[t]
        if series.modality == "MR":
            lin = _linear(series)
            assert lin is not None
            out.append(principal_extents_mm(np.argwhere(inst) @ lin.T, lin)[0])
            continue
        region = next(r for r in series.regions if r.index == e["region_index"])
        assert region.spacing_mm is not None
        r0, c0, r1, c1 = region.box
        rows, cols = np.nonzero(inst[int(e["center_voxel"][0]), r0:r1, c0:c1])
        dy, dx = region.spacing_mm
        out.append(principal_extents_mm(np.stack([rows * dy, cols * dx], 1), np.diag([dy, dx]))[0])
    return out


# --------------------------------------------------------------------------- matching


@dataclass
class TargetHit:
    """A ground-truth target (one nodule in one region; a cine's frames of one nodule are one target) and
    the prediction that hit it, with the truth entry on the prediction's key frame for the measurements."""

    key: tuple[int, int | None]  # (nodule id, region index)
    pred: Nodule | None
    entry: dict[str, Any]  # truth on the key frame (or the target's first entry when missed)
    distance_mm: float | None
    radius_mm: float


@dataclass
class Assessment:
    targets: list[TargetHit]
    false_positives: list[Nodule]


def assess(series: ImageSeries, nodules: list[Nodule], entries: list[dict[str, Any]]) -> Assessment:
    """Match predictions to truth entries with :func:`match_nodules` (centre within half the longest
    diameter, at least 5 mm) and group the entries into targets by (nodule id, region)."""
    matches = match_nodules(nodules, entries, series)
    keys = sorted({(int(e["id"]), e.get("region_index")) for e in entries}, key=str)
    hits: dict[tuple[int, int | None], TargetHit] = {}
    for m in matches:
        if m.pred is None or m.truth is None or m.duplicate:
            continue
        e = entries[m.truth]
        key = (int(e["id"]), e.get("region_index"))
        pred = nodules[m.pred]
        if key in hits:
            continue  # a second track on the same target: neither a hit nor a false positive
        frame = round(pred.center_voxel[0])
        on_key = [
            x
            for x in entries
            if (int(x["id"]), x.get("region_index")) == key and x["center_voxel"][0] == frame
        ]
        ref = on_key[0] if on_key else e
        hits[key] = TargetHit(key, pred, ref, m.distance_mm, match_radius_mm(e))
    targets = []
    for key in keys:
        if key in hits:
            targets.append(hits[key])
        else:
            first = next(e for e in entries if (int(e["id"]), e.get("region_index")) == key)
            targets.append(TargetHit(key, None, first, None, match_radius_mm(first)))
    fps = [nodules[m.pred] for m in matches if m.pred is not None and m.truth is None]
    return Assessment(targets, fps)


def relative_error(got: float | None, want: float) -> float:
    """``|got - want| / want`` (inf when nothing was measured)."""
    return float("inf") if got is None else abs(float(got) - want) / want
