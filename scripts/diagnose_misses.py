"""Why does a model miss the nodules it misses? One line per missed target lesion of a phantom set.

``python scripts/diagnose_misses.py [--false-positives] MODEL_DIR build/eval2/us_stress [more folders...]``

For every target lesion that the model's own thresholds (``configs/inference.yaml`` and the bundle's
``postprocessing``; every confidence) leave without a finding: its longest diameter and depth (ground
truth), the highest nodule probability inside it and the share of its pixels above the nodule threshold,
whether it is cut by the image border, the subject's habitus and fat thickness, the share of its
pixels the network gives each class (background is muscle and everything else that is
not fat, fascia, nodule or defect), which relaxed threshold sets would have found it and, for
ultrasound, what the image shows of it on the frame where it is largest (its contrast against a ring
around it, the gradient on its outline); last, the medians of those for the missed and the found target
lesions (is a miss a nodule the image shows?). A cine lesion is one line (its frames form one lesion, as
in :mod:`backmice_vision.evaluation`).

``--false-positives`` (first argument) lists instead every finding at the operating point (the confidence
threshold of ``configs/inference.yaml``) that hits no ground-truth nodule: its confidence, longest
diameter, depth and fascia depth (mm), the subject's habitus and fat thickness, whether the series
shows a nodule elsewhere and, for ultrasound, what the image shows of it (the mean inside against a ring
around it, the gradient on its outline, the brightness of the fascia under it against the rest of that
fascia); last, the medians of those for the false positives and for the hits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

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
from backmice_vision.labels import FASCIA, MODEL_CLASSES, NODULE
from backmice_vision.pipeline import DetectorSpec, get_detector

RELAXED = {
    "no plausibility": {"min_fat_context": 0.0, "max_fascia_above": 1.0},
    "no fat ring": {"min_fat_context": 0.0},
    "no fascia above": {"max_fascia_above": 1.0},
    "grown from 0.25": {"nodule_grow_threshold": 0.25},
    "aspect up to 10": {"max_aspect": 10.0},
    "no size filter": {
        "min_diameter_mm": 0.0,
        "max_diameter_mm": 1000.0,
        "max_aspect": 1000.0,
        "min_area_px": 0.0,
    },
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


def _contrast_edge(img: np.ndarray, inside: np.ndarray, sp: float) -> tuple[float, float]:
    """What one frame shows of a region ``inside`` (bool, the frame's shape; ``sp`` mm per pixel): the mean
    inside it (1 mm in from its outline) against a 2 mm ring around it, in the ring's standard
    deviations, and the smoothed gradient on its outline against that of the 6 mm around it."""
    ring = ndimage.binary_dilation(inside, iterations=max(1, round(2.0 / sp))) & ~inside
    core = ndimage.binary_erosion(inside, iterations=max(1, round(1.0 / sp)))
    core = core if core.sum() >= 20 else inside
    smooth = ndimage.gaussian_filter(img, 0.5 / sp)
    outline = inside & ~ndimage.binary_erosion(inside)
    band = ndimage.binary_dilation(outline, iterations=max(1, round(0.7 / sp)))
    around = ndimage.binary_dilation(inside, iterations=max(1, round(6.0 / sp))) & ~band
    grad = np.hypot(*np.gradient(smooth))
    contrast = float(smooth[core].mean() - smooth[ring].mean()) / max(float(img[ring].std()), 1e-3)
    return contrast, float(np.median(grad[band])) / max(float(np.median(grad[around])), 1e-6)


def _us_spacing(series) -> float | None:
    if series.modality != "US" or not series.regions or series.regions[0].spacing_mm is None:
        return None
    return float(series.regions[0].spacing_mm[0])


def _image_measures(series, probs, n) -> tuple[float, float, float] | None:
    """What the image shows of a finding on its key frame (ultrasound, calibrated): :func:`_contrast_edge`
    of its mask, and the brightness of the fascia the model segments under it against the rest of that
    fascia (median per column)."""
    sp = _us_spacing(series)
    if n.mask is None or sp is None:
        return None
    k0, i0, j0, _, i1, j1 = n.bbox
    k = round(n.center_voxel[0])
    img = series.pixels[k]
    inside = np.zeros(img.shape, dtype=bool)
    inside[i0:i1, j0:j1] = n.mask[k - k0]
    contrast, edge = _contrast_edge(img, inside, sp)
    fascia = np.argmax(probs[:, k], axis=0) == FASCIA
    fascia[:i0] = False  # the fascia under the finding, not a superficial line
    cols = fascia.any(axis=0)
    col_mean = np.where(cols, (img * fascia).sum(axis=0) / np.maximum(fascia.sum(axis=0), 1), np.nan)
    under = np.zeros(cols.shape, dtype=bool)
    under[j0:j1] = True
    if not (cols & under).any() or not (cols & ~under).any():
        return contrast, edge, float("nan")
    return contrast, edge, float(np.median(col_mean[cols & under]) / np.median(col_mean[cols & ~under]))


def _lesion_measures(series, pixels: np.ndarray) -> tuple[float, float] | None:
    """:func:`_contrast_edge` of a ground-truth lesion on the frame where it is largest (ultrasound)."""
    sp = _us_spacing(series)
    if sp is None:
        return None
    k = int(np.argmax(pixels.reshape(pixels.shape[0], -1).sum(axis=1)))
    return _contrast_edge(series.pixels[k], pixels[k], sp)


def _false_positives(where, case, series, probs, bundle, thresholds, truth, min_confidence, tally) -> None:
    nodules, _ = extract_nodules(series, probs, calibration=bundle.calibration, thresholds=thresholds)
    for m in match_nodules(nodules, truth, series):
        if m.pred is None:
            continue
        n = nodules[m.pred]
        if n.confidence < min_confidence:
            continue
        measures = _image_measures(series, probs, n)
        if measures is not None:
            tally["hit" if m.truth is not None else "false positive"].append(measures)
        if m.truth is not None:  # a hit (a duplicate has a truth too)
            continue
        shown = (
            ""
            if measures is None
            else "; contrast {:+.2f} sd, outline gradient x{:.2f}, fascia under it x{:.2f}".format(*measures)
        )
        print(
            f"{where} false positive: confidence {n.confidence:.2f}, {_mm(n.longest_diameter_mm)} mm, "
            f"depth {_mm(n.depth_mm)} mm, fascia {_mm(n.fascia_depth_mm)} mm ({case.get('habitus', '?')}, "
            f"{case.get('total_fat_mm') or 0.0:.0f} mm of fat); "
            + ("the series shows a nodule elsewhere" if truth else "the series shows no nodule")
            + shown
        )


def main(model: str, data_dirs: list[Path], false_positives: bool = False) -> None:
    detector = get_detector(DetectorSpec.of(model, "cpu", thresholds={"confidence_threshold": 0.0}))
    min_confidence = load_thresholds()["confidence_threshold"]
    tally: dict[str, list[tuple[float, float, float]]] = {"false positive": [], "hit": []}
    looks: dict[str, list[tuple[float, float]]] = {"missed": [], "found": []}  # target lesions (US)
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
                    _false_positives(where, case, series, probs, bundle, base, truth, min_confidence, tally)
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
                if not any(is_target(truth[t]) for t in members):
                    continue
                pixels = np.zeros(series.shape, dtype=bool)
                for t in members:
                    pixels |= instances.get(t, pixels)
                if not pixels.any():
                    continue
                shown = _lesion_measures(series, pixels)
                if shown is not None:
                    looks["found" if found & set(members) else "missed"].append(shown)
                if found & set(members):
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
                    + (
                        ""
                        if shown is None
                        else "; contrast {:+.2f} sd, outline gradient x{:.2f}".format(*shown)
                    )
                )

    summaries: list[tuple[str, list[Any]]] = [(f"{k} target lesions", rows) for k, rows in looks.items()]
    summaries += [(f"{k}s", rows) for k, rows in tally.items()]
    for what, rows in summaries:
        if rows:
            print(_look_summary(what, np.asarray(rows, dtype=np.float64)))


def _look_summary(what: str, a: np.ndarray) -> str:
    """Medians of the image measures of ``a`` (rows of :func:`_lesion_measures` or of
    :func:`_image_measures`, whose third column is the fascia under a finding)."""
    contrast, edge = a[:, 0], a[:, 1]
    line = (
        f"{len(a)} {what} (ultrasound, median): contrast {np.median(contrast):+.2f} sd "
        f"(|contrast| > 0.3: {np.mean(np.abs(contrast) > 0.3):.0%}), outline gradient x{np.median(edge):.2f}"
    )
    if a.shape[1] == 2:
        either = np.mean((np.abs(contrast) > 0.3) | (edge > 1.2))
        return line + f" (above x1.2: {np.mean(edge > 1.2):.0%}; either: {either:.0%})"
    return line + f", fascia under it x{np.nanmedian(a[:, 2]):.2f} (below x0.8: {np.mean(a[:, 2] < 0.8):.0%})"


if __name__ == "__main__":
    args = sys.argv[1:]
    fps = bool(args) and args[0] == "--false-positives"
    args = args[1:] if fps else args
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], [Path(a) for a in args[1:]], false_positives=fps)
