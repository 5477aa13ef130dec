"""Evaluation on phantom case folders: lesion FROC, per-nodule Dice, fascia-defect AUC, calibration.

``backmice evaluate --data DIR`` calls :func:`run_evaluation`. Each case folder holds ``ground_truth.json``
(schema ``backmice.phantom/1``, see ``docs/architecture.md``), ``dicom/<series-folder>/`` and
``seg/<series-folder>.dcm``. Per series the detector's nodules are matched to the series' ground-truth
nodules with :func:`backmice_vision.findings.match_nodules` (centre within half the longest diameter,
at least 5 mm; an MR nodule centred outside the slab is localised at the nearest voxel centre inside).

Definitions (per modality):

* **Targets** are ground-truth nodules with ``visible`` true (the series shows them: inside its slices or
  image plane, and on a fat-suppressed MR series only the oedematous variant, since a fat nodule is
  suppressed with the fat; :mod:`backmice_vision.phantoms.mr`) and a longest diameter ≥ 8 mm; ``froc`` uses
  them, ``froc_all`` uses every ground-truth nodule. A prediction that hits a target is a true positive for
  that lesion (its confidence is the lesion's score); a prediction that hits no ground-truth nodule is a
  false positive; second hits on one nodule and hits on non-target nodules are neither.
* **FROC**: sensitivity at 0.125, 0.25, 0.5, 1, 2 false positives per image; ``mean_sensitivity`` averages
  those five. An ultrasound image is one stored instance (a single image, a cine clip whose frames are
  tracked into one finding per nodule, a dual-view export); an MR image is a whole series (a stack).
* **Dice**: per detected target nodule, between the prediction's mask and that nodule's ground-truth mask.
  The ground-truth SEG's "nodule" segment is split into instances by connected components
  (:func:`backmice_vision.findings.label_tracks`, as the predictions are); each instance goes to
  the ground-truth nodule whose ``center_voxel`` it contains, else to the nodule with the nearest
  centroid (in voxels). Touching nodules share one instance.
* **Defect AUC**: over hit ground-truth nodules, predicted ``fascia_defect.probability`` against the
  ground truth's ``defect.present`` (Mann-Whitney AUC, ties count one half).
* **Calibration**: every prediction's ``confidence`` against whether it hit a ground-truth nodule: ECE
  (10 bins) and a reliability diagram.
* **Series AUC**: ``series_probability`` against "the series shows at least one target".
* **Measurements**: per detected target, the absolute error of longest diameter, depth and fascia depth,
  and the relative error of the longest diameter; the diameter only for nodules the image shows whole
  (``truncated`` false in the ground truth, which the ultrasound phantoms and annotated series set; a
  nodule cut by the image's edge has no measurable diameter, and the detector reports its size as a lower
  bound, :attr:`backmice_vision.types.Nodule.truncated`).
* **Uncertainty**: the sensitivity at the target false-positive rate carries a 95 % percentile interval
  from resampling cases with replacement (a case's series, lesions and false positives stay together);
  :func:`paired_bootstrap` compares two models on the same cases.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackmiceError, ConfigError
from .findings import load_thresholds, match_nodules, nodule_dice, nodule_full_mask
from .types import ImageSeries, Nodule, Precision

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
# issue #4 targets per modality: sensitivity at this many false positives per image, Dice, AUC, ECE
TARGET_FP_RATE = {"US": 0.25, "MR": 0.5}
TARGET_SENSITIVITY, TARGET_DICE, TARGET_DEFECT_AUC, TARGET_ECE = 0.90, 0.80, 0.90, 0.08
TARGET_MIN_DIAMETER_MM = 8.0
SCHEMA = "backmice.evaluation/1"


# --------------------------------------------------------------------------- pure metrics


def froc(
    lesion_scores: Sequence[float | None],
    fp_scores: Sequence[float],
    n_images: int,
    fp_rates: Sequence[float] = FP_RATES,
) -> dict[str, Any]:
    """Lesion-level free-response ROC.

    Parameters
    ----------
    lesion_scores : sequence of float or None
        One entry per target lesion: the confidence of the prediction that detected it, None if missed.
    fp_scores : sequence of float
        Confidences of the false-positive predictions.
    n_images : int
        Number of images (series) the false positives are spread over.
    fp_rates : sequence of float
        False positives per image at which sensitivity is reported.

    Returns
    -------
    dict
        ``sensitivity`` at each rate (the best sensitivity of any confidence threshold whose false
        positives per image do not exceed the rate; None when there are no lesions),
        ``mean_sensitivity`` and ``curve`` (``[fp_per_image, sensitivity]`` per distinct threshold).
    """
    if n_images <= 0:
        raise ValueError("FROC needs at least one image")
    hits = np.array([s for s in lesion_scores if s is not None], dtype=np.float64)
    fps = np.asarray(fp_scores, dtype=np.float64)
    n_les = len(lesion_scores)
    thresholds = np.unique(np.concatenate([hits, fps]))[::-1]
    curve = [[0.0, 0.0]]
    for t in thresholds:
        curve.append([float((fps >= t).sum()) / n_images, float((hits >= t).sum()) / n_les if n_les else 0.0])
    if n_les == 0:
        return {
            "fp_rates": list(fp_rates),
            "sensitivity": [None] * len(fp_rates),
            "mean_sensitivity": None,
            "curve": curve,
            "n_lesions": 0,
            "n_images": n_images,
        }
    sens = [max(s for f, s in curve if f <= rate) for rate in fp_rates]
    return {
        "fp_rates": list(fp_rates),
        "sensitivity": sens,
        "mean_sensitivity": float(np.mean(sens)),
        "curve": curve,
        "n_lesions": n_les,
        "n_images": n_images,
    }


def auc(scores: Sequence[float], labels: Sequence[int | bool]) -> float | None:
    """ROC AUC by the Mann-Whitney U statistic (ties count one half); None without both classes."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- ground truth


def is_target(truth: dict[str, Any]) -> bool:
    """A ground-truth nodule counted for the headline metrics: visible and ≥ 8 mm longest diameter."""
    diam = truth.get("diameters_mm") or [0.0]
    return bool(truth.get("visible", True)) and float(max(diam)) >= TARGET_MIN_DIAMETER_MM


def read_ground_truth(path: Path) -> dict[str, Any]:
    """Read and check a phantom ``ground_truth.json``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read ground truth ({type(exc).__name__})", path) from exc
    if not isinstance(data, dict) or data.get("schema") != "backmice.phantom/1":
        raise ConfigError("not a backmice.phantom/1 ground-truth file", path)
    if not isinstance(data.get("series"), list):
        raise ConfigError("ground truth has no series list", path)
    return data


def nodules_from_labels(
    series: ImageSeries, labels: np.ndarray, thresholds: dict[str, float] | None = None
) -> list[Nodule]:
    """The annotated nodules of a class label map, found and measured exactly as predicted ones are.

    ``labels`` uint8 ``(n, rows, cols)`` holds class indices (:data:`~backmice_vision.labels.MODEL_CLASSES`)
    on the series' grid, e.g. a user's DICOM SEG read by :func:`backmice_vision.model.data.load_item`. Its
    one-hot map goes through :func:`~backmice_vision.findings.extract_nodules` (same tracking and size
    limits; ``fascia_defect.present`` is whether defect voxels lie in the nodule's band).
    """
    from .findings import extract_nodules
    from .labels import MODEL_CLASSES

    onehot = np.zeros((len(MODEL_CLASSES), *labels.shape), dtype=np.float32)
    for c in range(len(MODEL_CLASSES)):
        onehot[c] = labels == c
    thr = {**load_thresholds(), **(thresholds or {}), "confidence_threshold": 0.0}
    return extract_nodules(series, onehot, calibration=None, thresholds=thr)[0]


def truth_from_labels(
    series: ImageSeries, labels: np.ndarray, thresholds: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Ground-truth nodules (``ground_truth.json`` style, all ``visible``) of an annotated series that has
    no ground-truth file: :func:`nodules_from_labels` as dicts."""
    return [
        {
            "id": n.id,
            "center_voxel": list(n.center_voxel),
            "center_patient_mm": None if n.center_patient_mm is None else list(n.center_patient_mm),
            "region_index": n.region_index,
            "diameters_mm": list(n.diameters_mm),
            "depth_mm": n.depth_mm,
            "fascia_depth_mm": n.fascia_depth_mm,
            "defect": {"present": bool(n.fascia_defect.present)},
            "visible": True,
            "truncated": n.truncated,
        }
        for n in nodules_from_labels(series, labels, thresholds)
    ]


def read_truth_mask(seg_path: Path, series: ImageSeries, segment: str = "nodule") -> np.ndarray:
    """The ``segment`` of a DICOM SEG as bool ``(n, rows, cols)`` on the series' source grid (all False
    when the SEG has no such segment); read by :func:`backmice_vision.io.seg.read_seg`."""
    from .io.seg import read_seg

    mask = read_seg(seg_path, series, [segment]).get(segment.lower())
    return np.zeros(series.shape, dtype=bool) if mask is None else mask


def split_truth_instances(
    mask: np.ndarray, truth: list[dict[str, Any]], series: ImageSeries
) -> dict[int, np.ndarray]:
    """Split a ground-truth nodule mask into one bool mask per truth index (see the module docstring)."""
    from scipy import ndimage

    from .findings import label_tracks

    labels, n = label_tracks(mask, series)
    if n == 0:
        return {}
    centroids = np.array(ndimage.center_of_mass(mask, labels, range(1, n + 1)), dtype=np.float64).reshape(
        n, 3
    )
    out = {}
    for t, tr in enumerate(truth):
        c = np.asarray(tr["center_voxel"], dtype=np.float64)
        idx = tuple(np.clip(np.rint(c).astype(int), 0, np.array(mask.shape) - 1))
        lab = int(labels[idx])
        if lab == 0:
            lab = 1 + int(np.argmin(np.linalg.norm(centroids - c, axis=1)))
        out[t] = labels == lab
    return out


# --------------------------------------------------------------------------- per series


@dataclass
class SeriesRecord:
    """What one series contributes to the metrics."""

    modality: str
    case: str
    folder: str
    n_predictions: int
    lesion_scores: list[float | None]  # targets
    lesion_scores_all: list[float | None]  # every ground-truth nodule
    fp_scores: list[float]
    dice: list[float] = field(default_factory=list)
    defect_pairs: list[tuple[int, float, bool]] = field(default_factory=list)  # (lesion, p, present)
    calibration_pairs: list[tuple[float, bool]] = field(default_factory=list)
    series_probability: float = 0.0
    has_target: bool = False
    errors_mm: dict[str, list[float]] = field(default_factory=dict)
    detect_s: float = 0.0
    n_images: int = 1  # FROC denominator: ultrasound instances, or 1 for an MR series
    lesion_sizes_mm: list[float] = field(default_factory=list)  # longest diameter of each target
    lesion_cut_by_border: list[bool] = field(default_factory=list)  # each target: cut by the image edge
    kind: str = ""  # ground truth "kind": us_single, us_cine, us_dual, mr_axial, ...
    photometric: str = ""  # ultrasound photometric interpretation of the export


def evaluate_series(
    series: ImageSeries,
    nodules: list[Nodule],
    series_probability: float,
    truth_entry: dict[str, Any],
    truth_mask: np.ndarray | None = None,
    case: str = "",
) -> SeriesRecord:
    """Match one series' predictions to its ground-truth entry (``ground_truth.json`` ``series[i]``).

    A cine's ground truth lists a nodule once per frame (same ``id`` and ``region_index``): those entries
    form one lesion, hit when a prediction hits any of its frames; further predictions on it are duplicates.
    """
    truth = list(truth_entry.get("nodules", []))
    groups = _lesion_groups(truth, cine=truth_entry.get("kind") == "us_cine")
    group_of = {t: g for g, members in enumerate(groups) for t in members}
    targets = [any(is_target(truth[t]) for t in members) for members in groups]
    matches = match_nodules(nodules, truth, series)
    best: dict[int, float] = {}
    fp_scores: list[float] = []
    calibration: list[tuple[float, bool]] = []
    hit_pred: dict[int, tuple[int, int]] = {}  # lesion -> (prediction, matched truth entry)
    predicted = [(m.pred, m) for m in matches if m.pred is not None]
    for p, m in sorted(predicted, key=lambda pm: -nodules[pm[0]].confidence):
        conf = float(nodules[p].confidence)
        calibration.append((conf, m.truth is not None))
        if m.truth is None:
            fp_scores.append(conf)
        elif not m.duplicate and group_of[m.truth] not in best:
            best[group_of[m.truth]] = conf
            hit_pred[group_of[m.truth]] = (p, m.truth)
    instances = split_truth_instances(truth_mask, truth, series) if truth_mask is not None else {}
    dice: list[float] = []
    defect: list[tuple[int, float, bool]] = []
    errors: dict[str, list[float]] = {
        "longest_diameter": [],
        "longest_diameter_rel": [],
        "longest_diameter_signed_rel": [],
        "depth": [],
        "fascia_depth": [],
    }
    for g, (p, t) in hit_pred.items():
        pred, tr = nodules[p], truth[t]
        if targets[g] and t in instances:
            dice.append(nodule_dice(nodule_full_mask(pred, series.shape), instances[t]))
        gt_defect = tr.get("defect")
        if isinstance(gt_defect, dict) and "present" in gt_defect:
            defect.append((g, float(pred.fascia_defect.probability), bool(gt_defect["present"])))
        if targets[g]:
            # a nodule cut by the image edge has no measurable diameter: skipped where the truth says so
            whole = not tr.get("truncated", False)
            pairs = (
                (
                    "longest_diameter",
                    pred.longest_diameter_mm if whole else None,
                    max(tr.get("diameters_mm") or [0.0]),
                ),
                ("depth", pred.depth_mm, tr.get("depth_mm")),
                ("fascia_depth", pred.fascia_depth_mm, tr.get("fascia_depth_mm")),
            )
            for name, got, want in pairs:
                if got is not None and want is not None:
                    errors[name].append(abs(float(got) - float(want)))
                    if name == "longest_diameter" and float(want) > 0:
                        signed = (float(got) - float(want)) / float(want)
                        errors["longest_diameter_rel"].append(abs(signed))
                        errors["longest_diameter_signed_rel"].append(signed)
    return SeriesRecord(
        modality=series.modality,
        case=case,
        folder=str(truth_entry.get("folder", "")),
        n_predictions=len(nodules),
        lesion_scores=[best.get(g) for g in range(len(groups)) if targets[g]],
        lesion_sizes_mm=[
            max(max(truth[t].get("diameters_mm") or [0.0]) for t in members)
            for g, members in enumerate(groups)
            if targets[g]
        ],
        lesion_cut_by_border=[
            any(bool(truth[t].get("truncated", False)) for t in members)
            for g, members in enumerate(groups)
            if targets[g]
        ],
        kind=str(truth_entry.get("kind", "")),
        photometric=str(truth_entry.get("photometric", "")),
        lesion_scores_all=[best.get(g) for g in range(len(groups))],
        fp_scores=fp_scores,
        dice=dice,
        defect_pairs=defect,
        calibration_pairs=calibration,
        series_probability=float(series_probability),
        has_target=any(targets),
        errors_mm=errors,
        n_images=len({src.sop_instance_uid for src in series.sources}) if series.modality == "US" else 1,
    )


def _lesion_groups(truth: list[dict[str, Any]], cine: bool) -> list[list[int]]:
    """Truth entry indices per lesion: a cine's per-frame entries of one nodule (same id and region) join."""
    if not cine:
        return [[t] for t in range(len(truth))]
    groups: dict[tuple[Any, Any], list[int]] = {}
    for t, tr in enumerate(truth):
        groups.setdefault((tr.get("id", t), tr.get("region_index")), []).append(t)
    return list(groups.values())


def sensitivity_at_rate(
    lesion_scores: Sequence[float | None], fp_scores: Sequence[float], n_images: int, rate: float
) -> float | None:
    """The FROC sensitivity at ``rate`` false positives per image (as :func:`froc`, without the curve).

    The best threshold admits at most ``floor(rate * n_images)`` false positives: every hit scoring above
    the next false positive counts. None without lesions.
    """
    if not lesion_scores:
        return None
    allowed = int(np.floor(rate * n_images + 1e-9))
    hits = np.array([s for s in lesion_scores if s is not None], dtype=np.float64)
    fps = np.sort(np.asarray(fp_scores, dtype=np.float64))[::-1]
    found = len(hits) if len(fps) <= allowed else int((hits > fps[allowed]).sum())
    return found / len(lesion_scores)


CaseScores = tuple[list[float | None], list[float], int]  # a case's target lesion scores, FP scores, images


def _group_by_case(
    items: Iterable[tuple[str, list[float | None], list[float], int]],
) -> dict[str, CaseScores]:
    out: dict[str, CaseScores] = {}
    for case, lesion_scores, fp_scores, n_images in items:
        lesions, fps, n = out.get(case, ([], [], 0))
        out[case] = (lesions + list(lesion_scores), fps + list(fp_scores), n + int(n_images))
    return out


def case_scores(series: Iterable[dict[str, Any]], modality: str) -> dict[str, CaseScores]:
    """Per case, the lesion and false-positive scores and image count of its series of ``modality``
    (entries of ``evaluation.json``'s ``series`` list)."""
    return _group_by_case(
        (e["case"], e["lesion_scores"], e["fp_scores"], e["n_images"])
        for e in series
        if e["modality"] == modality
    )


def _resampled_sensitivity(cases: list[CaseScores], picks: np.ndarray, rate: float) -> float | None:
    chosen = [cases[i] for i in picks]
    lesions = [s for c in chosen for s in c[0]]
    return sensitivity_at_rate(lesions, [s for c in chosen for s in c[1]], sum(c[2] for c in chosen), rate)


def bootstrap_sensitivity(
    cases: Sequence[CaseScores], rate: float, n_boot: int = 2000, seed: int = 0
) -> list[float] | None:
    """95 % percentile interval ``[low, high]`` of the sensitivity at ``rate`` FP/image over ``n_boot``
    resamplings of the cases (with replacement; resamples without a lesion are skipped)."""
    cases = list(cases)
    if not any(c[0] for c in cases):
        return None
    rng = np.random.default_rng(seed)
    values = [
        v
        for _ in range(n_boot)
        if (v := _resampled_sensitivity(cases, rng.integers(0, len(cases), len(cases)), rate)) is not None
    ]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def paired_bootstrap(
    a: dict[str, CaseScores], b: dict[str, CaseScores], rate: float, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Model B against model A on the same cases: the difference of their sensitivities at ``rate``
    FP/image, its 95 % interval from resampling cases (the same draw for both) and the share of draws in
    which B is not better (a one-sided bootstrap p-value). Raises ValueError when the cases differ."""
    if sorted(a) != sorted(b):
        raise ValueError("the two evaluations cover different cases")
    names = sorted(a)
    ca, cb = [a[n] for n in names], [b[n] for n in names]
    full = np.arange(len(names))
    sa, sb = _resampled_sensitivity(ca, full, rate), _resampled_sensitivity(cb, full, rate)
    if sa is None or sb is None:
        raise ValueError("no target lesions")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(names), len(names))
        da, db = _resampled_sensitivity(ca, picks, rate), _resampled_sensitivity(cb, picks, rate)
        if da is not None and db is not None:
            diffs.append(db - da)
    return {
        "rate": rate,
        "sensitivity_a": sa,
        "sensitivity_b": sb,
        "difference": sb - sa,
        "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "p_b_not_better": float(np.mean(np.asarray(diffs) <= 0)),
        "n_cases": len(names),
        "n_lesions": len([s for c in ca for s in c[0]]),
    }


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None}
    return {"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values))}


SIZE_BANDS_MM: tuple[tuple[float, float], ...] = ((5.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 46.0))


def _sens_at(lesions: list[float | None], fps: list[float], n_images: int, rate: float) -> float | None:
    return sensitivity_at_rate(lesions, fps, max(n_images, 1), rate)


def _by_lesion(recs: list[SeriesRecord], n_images: int, group: Any, names: list[str]) -> dict[str, Any]:
    """Sensitivity of the target lesions in each group at the modality's target false-positive rate (the
    false positives of the whole set: a false positive has no size or position). ``group(record, i)``
    names the group of target ``i`` of a record (one of ``names``, or None for none)."""
    fps = [s for r in recs for s in r.fp_scores]
    rate = TARGET_FP_RATE.get(recs[0].modality, 0.25) if recs else 0.25
    out: dict[str, Any] = {}
    for name in names:
        lesions = [s for r in recs for i, s in enumerate(r.lesion_scores) if group(r, i) == name]
        out[name] = {"n": len(lesions), f"sensitivity_at_{rate:g}": _sens_at(lesions, fps, n_images, rate)}
    return out


def _by_size(recs: list[SeriesRecord], n_images: int) -> dict[str, Any]:
    """:func:`_by_lesion` per longest-diameter band (:data:`SIZE_BANDS_MM`)."""

    def band(r: SeriesRecord, i: int) -> str | None:
        d = r.lesion_sizes_mm[i] if i < len(r.lesion_sizes_mm) else -1.0
        return next((f"{lo:g}-{hi:g}" for lo, hi in SIZE_BANDS_MM if lo <= d < hi), None)

    return _by_lesion(recs, n_images, band, [f"{lo:g}-{hi:g}" for lo, hi in SIZE_BANDS_MM])


BORDER_GROUPS = ("inside the image", "cut by the image border")


def _by_border(recs: list[SeriesRecord], n_images: int) -> dict[str, Any]:
    """:func:`_by_lesion` for target lesions inside the image and those the image border cuts (on any
    frame: the ground truth's ``truncated``)."""

    def where(r: SeriesRecord, i: int) -> str | None:
        return BORDER_GROUPS[int(r.lesion_cut_by_border[i])] if i < len(r.lesion_cut_by_border) else None

    return _by_lesion(recs, n_images, where, list(BORDER_GROUPS))


def _breakdown(recs: list[SeriesRecord], key: Any) -> dict[str, Any]:
    """Sensitivity at the target false-positive rate and FP per image within each group of series."""
    out: dict[str, Any] = {}
    for name in sorted({key(r) for r in recs} - {""}):
        group = [r for r in recs if key(r) == name]
        n_img = sum(r.n_images for r in group)
        lesions = [s for r in group for s in r.lesion_scores]
        fps = [s for r in group for s in r.fp_scores]
        rate = TARGET_FP_RATE.get(group[0].modality, 0.25)
        out[name] = {
            "n_series": len(group),
            "n_targets": len(lesions),
            f"sensitivity_at_{rate:g}": _sens_at(lesions, fps, n_img, rate),
            "fp_per_image": len(fps) / max(n_img, 1),
        }
    return out


def _per_case(recs: list[SeriesRecord]) -> dict[str, CaseScores]:
    return _group_by_case((r.case, r.lesion_scores, r.fp_scores, r.n_images) for r in recs)


def _no_target_fp(recs: list[SeriesRecord], threshold: float | None) -> float | None:
    """False positives per image (at the operating threshold) on series without any ground-truth nodule."""
    empty = [r for r in recs if not r.lesion_scores_all]
    n_img = sum(r.n_images for r in empty)
    if not n_img:
        return None
    t = 0.0 if threshold is None else threshold
    return sum(s >= t for r in empty for s in r.fp_scores) / n_img


def summarise(
    records: list[SeriesRecord],
    plots_dir: Path | None = None,
    operating_threshold: float | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Per-modality metrics from series records; with ``plots_dir``, reliability PNGs are written there.

    ``operating_threshold``: the confidence below which the detector does not report a nodule
    (``configs/inference.yaml``, or a bundle's ``postprocessing``), one for all or one per modality; its
    sensitivity and false positives per image are reported too.
    """
    from .model.calibration import expected_calibration_error, reliability_diagram

    out: dict[str, Any] = {}
    for modality in sorted({r.modality for r in records}):
        recs = [r for r in records if r.modality == modality]
        operating = (
            operating_threshold.get(modality)
            if isinstance(operating_threshold, Mapping)
            else operating_threshold
        )
        n = len(recs)
        n_images = sum(r.n_images for r in recs)
        lesions = [s for r in recs for s in r.lesion_scores]
        fps = [s for r in recs for s in r.fp_scores]
        cal = [c for r in recs for c in r.calibration_pairs]
        defect = [d for r in recs for d in r.defect_pairs]
        m: dict[str, Any] = {
            "n_series": n,
            "n_images": n_images,
            "n_cases": len({r.case for r in recs}),
            "n_target_nodules": len(lesions),
            "n_nodules": sum(len(r.lesion_scores_all) for r in recs),
            "n_predictions": sum(r.n_predictions for r in recs),
            "froc": froc(lesions, fps, n_images),
            "froc_all": froc([s for r in recs for s in r.lesion_scores_all], fps, n_images),
            "dice": _stats([d for r in recs for d in r.dice]),
            "defect_auc": auc([p for _, p, _ in defect], [y for _, _, y in defect]),
            "n_defect_pairs": len(defect),
            "series_auc": auc([r.series_probability for r in recs], [r.has_target for r in recs]),
            "measurement_abs_error_mm": {
                k: _stats([e for r in recs for e in r.errors_mm.get(k, [])])
                for k in ("longest_diameter", "depth", "fascia_depth")
            },
            "longest_diameter_rel_error": _stats(
                [e for r in recs for e in r.errors_mm.get("longest_diameter_rel", [])]
            ),
            # (measured - true) / true: below 0 when the detector draws nodules too small
            "longest_diameter_signed_rel_error": _stats(
                [e for r in recs for e in r.errors_mm.get("longest_diameter_signed_rel", [])]
            ),
            "fp_per_image_no_target": _no_target_fp(recs, operating),
            "by_size_mm": _by_size(recs, n_images),
            "by_border": _by_border(recs, n_images),
            "by_kind": _breakdown(recs, lambda r: r.kind),
            "by_photometric": _breakdown(recs, lambda r: r.photometric) if modality == "US" else {},
            "detect_seconds_per_series": _stats([r.detect_s for r in recs]),
            "ece": None,
            "n_calibration": len(cal),
            "sensitivity_at_target_ci95": bootstrap_sensitivity(
                list(_per_case(recs).values()), TARGET_FP_RATE.get(modality, 0.25)
            ),
        }
        if operating is not None and lesions:
            t = operating
            m["operating_point"] = {
                "confidence_threshold": t,
                "sensitivity": sum(x is not None and x >= t for x in lesions) / len(lesions),
                "fp_per_image": sum(x >= t for x in fps) / n_images,
            }
        if cal:
            probs, labels = [c for c, _ in cal], [int(y) for _, y in cal]
            m["ece"] = expected_calibration_error(probs, labels)
            if plots_dir is not None:
                png = reliability_diagram(
                    probs,
                    labels,
                    plots_dir / f"reliability_{modality.lower()}.png",
                    title=f"{modality} nodules",
                )
                m["reliability_png"] = png.name
        out[modality] = m
    return out


def froc_plot(curves: dict[str, list[list[float]]], path: Path) -> Path:
    """FROC curves (sensitivity against false positives per series, log2 x axis from 1/16 to 8) as PNG."""
    from PIL import Image, ImageDraw

    size, margin = 440, 55
    plot = size - 2 * margin
    lo, hi = -4.0, 3.0  # log2 range of the x axis
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def xy(fp: float, sens: float) -> tuple[float, float]:
        x = (np.clip(np.log2(max(fp, 2.0**lo)), lo, hi) - lo) / (hi - lo)
        return (margin + float(x) * plot, size - margin - sens * plot)

    draw.rectangle([xy(2.0**lo, 1.0), xy(2.0**hi, 0.0)], outline="black")
    for rate in (*FP_RATES, 4.0, 8.0):
        x, y = xy(rate, 0.0)
        draw.line([(x, y), (x, y + 4)], fill="black")
        draw.text((x - 10, y + 6), f"{rate:g}", fill="black")
    for s in (0.0, 0.5, 1.0):
        draw.text((margin - 30, xy(1.0, s)[1] - 6), f"{s:.1f}", fill="black")
    colours = [(200, 30, 30), (30, 90, 200), (30, 150, 60), (150, 60, 160)]
    for n, (name, curve) in enumerate(sorted(curves.items())):
        colour = colours[n % len(colours)]
        pts = []
        for (f0, s0), (f1, _) in zip(curve, [*curve[1:], [2.0**hi, 0.0]], strict=True):
            pts += [xy(f0, s0), xy(max(f1, f0), s0)]  # step function
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((margin + 8, margin + 8 + 14 * n), name, fill=colour)
    draw.text((size // 2 - 70, size - 20), "false positives per series", fill="black")
    draw.text((margin, 18), "FROC (target nodules)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# --------------------------------------------------------------------------- driver


def find_cases(data_dirs: Iterable[Path]) -> list[Path]:
    """``ground_truth.json`` files of the case folders in ``data_dirs`` (each a case or a parent of cases)."""
    found: set[Path] = set()
    for d in data_dirs:
        d = Path(d)
        if not d.exists():
            raise ConfigError("data folder not found", d)
        if (d / "ground_truth.json").is_file():
            found.add(d / "ground_truth.json")
        else:
            found.update(p for p in d.glob("*/ground_truth.json") if p.is_file())
    return sorted(found)


class _Progress:
    """A stderr line per evaluated series: done/total, series/min, ETA (rewritten in place on a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def each(self, items: list[Any]) -> Iterator[Any]:
        """The items, one line printed after each has been handled."""
        for item in items:
            yield item
            self.step()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-6)
        eta = (self.total - self.done) * elapsed / self.done
        rate = 60 * self.done / elapsed
        line = f"evaluate: {self.done}/{self.total} series  {rate:6.1f} series/min  ETA {eta:5.0f}s"
        last = self.done >= self.total
        print(
            ("\r" if self.tty else "") + line,
            end="\n" if last or not self.tty else "",
            file=sys.stderr,
            flush=True,
        )


def _case_names(case_dirs: list[Path]) -> dict[Path, str]:
    """Each case folder's name, with as many of its parents as make the names unique (two sets of
    ``case_0000``... are different cases: they must not merge in counts or resampling; two blocks of one
    set, ``a/us_stress/case_0000`` and ``b/us_stress/case_0000``, need two parents)."""
    parts = [d.resolve().parts for d in case_dirs]
    depth = 1
    while depth < max((len(p) for p in parts), default=1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
        depth += 1
    return {d: "/".join(p[-depth:]) for d, p in zip(case_dirs, parts, strict=True)}


def run_evaluation(
    data_dirs: list[Path],
    out_dir: Path,
    model: str | None = None,
    device: str = "auto",
    flip: bool = False,
    precision: Precision = "float32",
    progress: bool = True,
    thresholds: dict[str, float] | None = None,
    variants: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Run the detector over phantom case folders and write ``out_dir/evaluation.json`` and PNG plots.

    ``thresholds`` overrides inference thresholds (e.g. ``{"min_fat_context": 0}`` to measure what the
    anatomical plausibility test removes); the confidence threshold is always swept by the FROC.
    ``variants`` (name → more overrides) post-process the same network output again under each set and
    write each report to ``out_dir/<name>/``, as a run with ``thresholds`` and those overrides would
    (one network pass for all: a bundle's post-processing chosen on its validation set, as nnU-Net does);
    the detection times then include the variants' post-processing.

    ``flip`` turns on the detector's test-time left-right flip (its cost shows in
    ``detect_seconds_per_series``), ``precision`` ``"bfloat16"`` its forward pass under autocast (as
    ``Detector(precision=...)``). A progress line per series goes to stderr unless ``progress=False``.

    Series that cannot be loaded or detected are listed under ``problems`` (one line each) and skipped.
    Returns the report written to ``evaluation.json``.
    """
    from .model.detector import Detector
    from .pipeline import detect_stage

    cases = find_cases(data_dirs)
    if not cases:
        raise ConfigError(
            f"no phantom case folders (ground_truth.json) under {', '.join(map(str, data_dirs))}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every candidate is scored (FROC sweeps the threshold); the configured one is the operating point
    overrides = {**(thresholds or {}), "confidence_threshold": 0.0}
    # its own detector: it gets a hook below
    detector = Detector(model, device, thresholds=overrides, flip=flip, precision=precision)
    operating: dict[str, float] = {}  # per modality: inference.yaml < bundle postprocessing < thresholds
    records: list[SeriesRecord] = []
    problems: list[str] = []
    variants = {str(name): dict(more) for name, more in (variants or {}).items()}
    variant_records: dict[str, list[SeriesRecord]] = {name: [] for name in variants}
    variant_nodules: dict[str, tuple[list[Nodule], float]] = {}

    def post_process_variants(series: ImageSeries, probs: np.ndarray) -> None:
        from .findings import extract_nodules

        calibration = detector.bundle_for(series.modality).calibration
        base = detector.thresholds_for(series.modality)
        for name, more in variants.items():
            variant_nodules[name] = extract_nodules(
                series, probs, calibration=calibration, thresholds=base.replace(more)
            )

    if variants:
        detector.on_probabilities = post_process_variants
    truths = [(gt_path.parent, read_ground_truth(gt_path)) for gt_path in cases]
    entries = [(case_dir, entry) for case_dir, truth in truths for entry in truth["series"]]
    case_name = _case_names([case_dir for case_dir, _ in truths])
    for case_dir, entry in _Progress(len(entries), progress).each(entries):
        where = f"{case_name[case_dir]}/{entry.get('folder', '?')}"
        if "folder" not in entry:
            problems.append(f"{where}: ground-truth series entry lacks 'folder'")
            continue
        variant_nodules.clear()
        outcome, result = detect_stage(case_dir / entry["folder"], detector)  # the one pipeline, no writing
        if result is None:
            problems.append(outcome.error)  # one line naming the file
            continue
        series = result.series
        if series.modality not in operating:
            chosen = load_thresholds().replace(detector.bundle_for(series.modality).postprocessing)
            operating[series.modality] = float(chosen.replace(thresholds)["confidence_threshold"])
        if entry.get("series_instance_uid") not in (None, series.series_instance_uid):
            problems.append(f"{where}: series UID differs from the ground truth; skipped")
            continue
        detect_s = outcome.timings_s["detect"]
        try:
            seg = case_dir / entry["seg"] if entry.get("seg") else None
            mask = read_truth_mask(seg, series) if seg is not None and seg.is_file() else None
        except BackmiceError as exc:
            problems.append(f"{where}: {exc.reason}")
            continue
        record = evaluate_series(
            series, result.nodules, result.series_probability, entry, mask, case_name[case_dir]
        )
        record.detect_s = detect_s
        records.append(record)
        for name, (nodules, series_p) in variant_nodules.items():
            variant = evaluate_series(series, nodules, series_p, entry, mask, case_name[case_dir])
            variant.detect_s = detect_s
            variant_records[name].append(variant)
    for name, more in variants.items():
        _write_report(
            variant_records[name],
            problems,
            out_dir / name,
            operating,
            model=model,
            flip=flip,
            precision=precision,
            thresholds={**(thresholds or {}), **more},
            n_cases=len(cases),
        )
    return _write_report(
        records,
        problems,
        out_dir,
        operating,
        model=model,
        flip=flip,
        precision=precision,
        thresholds=thresholds or {},
        n_cases=len(cases),
        variants=variants,
    )


def _write_report(
    records: list[SeriesRecord],
    problems: list[str],
    out_dir: Path,
    operating: Mapping[str, float],
    *,
    model: str | None,
    flip: bool,
    precision: str,
    thresholds: Mapping[str, float],
    n_cases: int,
    variants: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Summarise ``records`` into ``out_dir``: ``evaluation.json``, ``evaluation.md`` and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = summarise(records, out_dir, operating)
    froc_png = froc_plot({m: v["froc"]["curve"] for m, v in metrics.items()}, out_dir / "froc.png")
    report = {
        "schema": SCHEMA,
        "model": model or "default",
        "test_time_flip": flip,
        "precision": precision,
        "threshold_overrides": dict(thresholds),
        "variants": {name: dict(more) for name, more in (variants or {}).items()},
        "n_cases": n_cases,
        "n_series": len(records),
        "target_definition": (
            f"visible on the series (STIR: oedematous only), longest diameter >= {TARGET_MIN_DIAMETER_MM:g}mm"
        ),
        "modalities": metrics,
        "froc_png": froc_png.name,
        "series": [
            {
                "case": r.case,
                "folder": r.folder,
                "modality": r.modality,
                "n_predictions": r.n_predictions,
                "n_targets": len(r.lesion_scores),
                "n_detected_targets": sum(s is not None for s in r.lesion_scores),
                "n_false_positives": len(r.fp_scores),
                "series_probability": r.series_probability,
                "n_images": r.n_images,
                "lesion_scores": r.lesion_scores,  # per target lesion: its finding's confidence, or null
                "lesion_sizes_mm": r.lesion_sizes_mm,  # per target lesion: its longest diameter
                "lesion_cut_by_border": r.lesion_cut_by_border,  # per target lesion: the image edge cuts it
                "fp_scores": r.fp_scores,
                # per hit lesion with a known defect: [index among the series ground-truth lesions (a cine
                # nodule is one), defect probability, defect present]
                "defect_pairs": [list(d) for d in r.defect_pairs],
            }
            for r in records
        ],
        "problems": problems,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "evaluation.md").write_text(evaluation_markdown(report))
    return report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "PASS" if (value >= target if higher else value <= target) else "FAIL"


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The evaluation report as a Markdown page: targets with PASS/FAIL, then the other figures."""
    mods = report["modalities"]
    names = sorted(mods)
    lines = [
        "# Evaluation",
        "",
        f"Model: {report['model']}; test-time flip: {'on' if report.get('test_time_flip') else 'off'}; "
        f"precision: {report.get('precision', 'float32')}; "
        f"{report['n_cases']} cases, {report['n_series']} series. Targets: {report['target_definition']}.",
        "Written by `backmice evaluate` (see `evaluation.json`, `froc.png`, `reliability_*.png`).",
        "",
        "| target | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def sens_at(m: dict[str, Any], rate: float) -> float | None:
        fr = m["froc"]
        return fr["sensitivity"][fr["fp_rates"].index(rate)] if rate in fr["fp_rates"] else None

    cells = []
    for n in names:
        rate = TARGET_FP_RATE.get(n, 0.25)
        value = sens_at(mods[n], rate)
        ci = mods[n].get("sensitivity_at_target_ci95")
        ci_txt = f" (95 % CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
        cells.append(f"{_fmt(value)}{ci_txt} at {rate:g} FP/image: {_verdict(value, TARGET_SENSITIVITY)}")
    row(f"sensitivity ≥ {TARGET_SENSITIVITY:g}", cells)
    dice = [mods[n]["dice"]["mean"] for n in names]
    row(
        f"mean Dice of detected targets ≥ {TARGET_DICE:g}",
        [f"{_fmt(d)}: {_verdict(d, TARGET_DICE)}" for d in dice],
    )
    aucs = [mods[n]["defect_auc"] for n in names]
    row(
        f"fascia-defect AUC ≥ {TARGET_DEFECT_AUC:g}",
        [f"{_fmt(a)}: {_verdict(a, TARGET_DEFECT_AUC)}" for a in aucs],
    )
    eces = [mods[n]["ece"] for n in names]
    row(f"ECE ≤ {TARGET_ECE:g}", [f"{_fmt(e)}: {_verdict(e, TARGET_ECE, higher=False)}" for e in eces])
    lines += ["", "| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    row("series / images / target nodules", [
        f"{mods[n]['n_series']} / {mods[n]['n_images']} / {mods[n]['n_target_nodules']}" for n in names
    ])  # fmt: skip
    for rate in FP_RATES:
        row(f"sensitivity at {rate:g} FP/image", [_fmt(sens_at(mods[n], rate)) for n in names])
    row("mean FROC sensitivity", [_fmt(mods[n]["froc"]["mean_sensitivity"]) for n in names])
    row(
        "sensitivity at 2 FP/image, all nodules",
        [_fmt(mods[n]["froc_all"]["sensitivity"][-1]) for n in names],
    )
    for n in names:
        op = mods[n].get("operating_point")
        if op:
            row(
                f"{n} operating point (confidence ≥ {op['confidence_threshold']:g})",
                [
                    f"sensitivity {_fmt(op['sensitivity'])}, {_fmt(op['fp_per_image'])} FP/image"
                    if k == n
                    else ""
                    for k in names
                ],
            )
    row("series AUC (any target)", [_fmt(mods[n]["series_auc"]) for n in names])
    for key, label in (
        ("longest_diameter", "longest diameter"),
        ("depth", "depth"),
        ("fascia_depth", "fascia depth"),
    ):
        row(
            f"{label}: mean absolute error (mm)",
            [_fmt(mods[n]["measurement_abs_error_mm"][key]["mean"], 2) for n in names],
        )
    row(
        "longest diameter: median relative error, nodules inside the image (target ≤ 0.12)",
        [_fmt(mods[n]["longest_diameter_rel_error"]["median"]) for n in names],
    )
    row(
        "longest diameter: median signed relative error (< 0: drawn too small)",
        [_fmt(mods[n]["longest_diameter_signed_rel_error"]["median"]) for n in names],
    )
    row(
        "FP/image on series without nodules (operating point; target ≤ 0.1)",
        [_fmt(mods[n]["fp_per_image_no_target"]) for n in names],
    )
    for band in [f"{lo:g}-{hi:g}" for lo, hi in SIZE_BANDS_MM]:
        cells = []
        for n in names:
            b = mods[n]["by_size_mm"].get(band, {})
            value = next((v for k, v in b.items() if k.startswith("sensitivity_at")), None)
            cells.append(f"{_fmt(value)} (n={b.get('n', 0)})")
        row(f"sensitivity, nodules {band} mm (at the target FP rate)", cells)
    for where in BORDER_GROUPS:
        cells = []
        for n in names:
            b = mods[n].get("by_border", {}).get(where, {})
            value = next((v for k, v in b.items() if k.startswith("sensitivity_at")), None)
            cells.append(f"{_fmt(value)} (n={b.get('n', 0)})")
        row(f"sensitivity, nodules {where} (at the target FP rate)", cells)
    for group in ("by_kind", "by_photometric"):
        keys = sorted({k for n in names for k in mods[n].get(group, {})})
        for key in keys:
            cells = []
            for n in names:
                b = mods[n].get(group, {}).get(key)
                value = (
                    None
                    if b is None
                    else next((v for k, v in b.items() if k.startswith("sensitivity_at")), None)
                )
                cells.append(
                    ""
                    if b is None
                    else f"{_fmt(value)}, {_fmt(b['fp_per_image'])} FP/image (n={b['n_series']})"
                )
            row(f"{key}: sensitivity at the target FP rate, FP/image", cells)
    row(
        "detection time per series (s, mean)",
        [_fmt(mods[n]["detect_seconds_per_series"]["mean"], 2) for n in names],
    )
    problems = report.get("problems") or []
    lines += [
        "",
        f"{len(problems)} series skipped" + (":" if problems else "."),
        *[f"- {p}" for p in problems],
    ]
    return "\n".join(lines) + "\n"
