"""Why does a model miss the nodules it misses? One line per missed target lesion of a phantom set.

``python scripts/diagnose_misses.py [--false-positives] MODEL_DIR build/eval2/us_stress [more folders...]``

For every target lesion that the model's own thresholds (``configs/inference.yaml`` and the bundle's
``postprocessing``; every confidence) leave without a finding: its longest diameter and depth (ground
truth), the highest nodule probability inside it and the share of its pixels above the nodule threshold,
whether it is cut by the image border, the subject's habitus and fat thickness, the share of its
pixels the network gives each class (background is muscle and everything else that is
not fat, fascia, nodule or defect), and which relaxed threshold sets would have found it. A cine lesion
is one line (its frames form one lesion, as in :mod:`backmice_vision.evaluation`).

``--false-positives`` (first argument) lists instead every finding at the operating point (the confidence
threshold of ``configs/inference.yaml``) that hits no ground-truth nodule: its confidence, longest
diameter, depth and fascia depth (mm), the subject's habitus and fat thickness, and whether the series
shows a nodule elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from backmice_vision.errors import BackmiceError
from backmice_vision.evaluation import (
    _lesion_groups,
    find_cases,
    is_target,
    read_ground_truth,
    read_truth_mask,
    split_truth_instances,
)
from backmice_vision.findings import extract_nodules, load_thresholds, match_nodules
from backmice_vision.io import load_series
from backmice_vision.labels import MODEL_CLASSES, NODULE
from backmice_vision.pipeline import DetectorSpec, get_detector

RELAXED = {
    "no plausibility": {"min_fat_context": 0.0, "max_fascia_above": 1.0},
    "no fat ring": {"min_fat_context": 0.0},
    "no fascia above": {"max_fascia_above": 1.0},
    "grown from 0.25": {"nodule_grow_threshold": 0.25},
    "aspect up to 10": {"max_aspect": 10.0},
    "threshold 0.3, no plausibility": {
        "nodule_threshold": 0.3,
        "min_fat_context": 0.0,
        "max_fascia_above": 1.0,
    },
}


def _found(series, probs, bundle, thresholds, truth) -> set[int]:
    nodules, _ = extract_nodules(series, probs, calibration=bundle.calibration, thresholds=thresholds)
    return {
        m.truth for m in match_nodules(nodules, truth, series) if m.pred is not None and m.truth is not None
    }


def _mm(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _false_positives(where, case, series, probs, bundle, thresholds, truth, min_confidence) -> None:
    nodules, _ = extract_nodules(series, probs, calibration=bundle.calibration, thresholds=thresholds)
    for m in match_nodules(nodules, truth, series):
        if m.pred is None or m.truth is not None:  # a duplicate has a truth
            continue
        n = nodules[m.pred]
        if n.confidence < min_confidence:
            continue
        print(
            f"{where} false positive: confidence {n.confidence:.2f}, {_mm(n.longest_diameter_mm)} mm, "
            f"depth {_mm(n.depth_mm)} mm, fascia {_mm(n.fascia_depth_mm)} mm ({case.get('habitus', '?')}, "
            f"{case.get('total_fat_mm') or 0.0:.0f} mm of fat); "
            + ("the series shows a nodule elsewhere" if truth else "the series shows no nodule")
        )


def main(model: str, data_dirs: list[Path], false_positives: bool = False) -> None:
    detector = get_detector(DetectorSpec.of(model, "cpu", thresholds={"confidence_threshold": 0.0}))
    min_confidence = load_thresholds()["confidence_threshold"]
    for gt_path in find_cases(data_dirs):
        case = read_ground_truth(gt_path)
        for entry in case["series"]:
            truth = list(entry.get("nodules", []))
            if not false_positives and (not any(is_target(t) for t in truth) or not entry.get("seg")):
                continue
            where = f"{gt_path.parent.name}/{entry['folder']}"
            try:
                series = load_series(gt_path.parent / entry["folder"])
                probs = detector.probabilities(series)
                bundle = detector.bundle_for(series.modality)
                base = detector.thresholds_for(series.modality)
                if false_positives:
                    _false_positives(where, case, series, probs, bundle, base, truth, min_confidence)
                    continue
                instances = split_truth_instances(
                    read_truth_mask(gt_path.parent / entry["seg"], series), truth, series
                )
            except BackmiceError as exc:
                print(f"{where}: skipped ({exc.reason})")
                continue
            found = _found(series, probs, bundle, base, truth)
            relaxed = {
                name: _found(series, probs, bundle, base.replace(o), truth) for name, o in RELAXED.items()
            }
            lesions = _lesion_groups(truth, cine=entry.get("kind") == "us_cine")  # as the evaluation
            for members in lesions:
                if found & set(members) or not any(is_target(truth[t]) for t in members):
                    continue
                pixels = np.zeros(series.shape, dtype=bool)
                for t in members:
                    pixels |= instances.get(t, pixels)
                if not pixels.any():
                    continue
                p_nod = probs[NODULE][pixels]
                shares = np.bincount(np.argmax(probs[:, pixels], axis=0), minlength=len(MODEL_CLASSES))
                shares = shares / pixels.sum()
                big = max(members, key=lambda t: max(truth[t].get("diameters_mm") or [0.0]))
                by = [name for name, hit in relaxed.items() if hit & set(members)] or [
                    "none of the relaxed sets"
                ]
                size_mm = max(truth[big].get("diameters_mm") or [0.0])
                cut = ", cut by the image border" if any(truth[t].get("truncated") for t in members) else ""
                print(
                    f"{where} lesion {truth[big].get('id')}: {size_mm:.1f} mm "
                    f"at {truth[big].get('depth_mm') or 0.0:.1f} mm depth{cut} ({case.get('habitus', '?')}, "
                    f"{case.get('total_fat_mm') or 0.0:.0f} mm of fat); nodule p max {p_nod.max():.2f}, "
                    f"{(p_nod > base['nodule_threshold']).mean():.0%} above threshold; classes "
                    + ", ".join(
                        f"{c} {v:.0%}" for c, v in zip(MODEL_CLASSES, shares, strict=True) if v >= 0.01
                    )
                    + f"; found with: {', '.join(by)}"
                )


if __name__ == "__main__":
    args = sys.argv[1:]
    fps = bool(args) and args[0] == "--false-positives"
    args = args[1:] if fps else args
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], [Path(a) for a in args[1:]], false_positives=fps)
