"""Performance benchmark (``python benchmarks/benchmark.py``): speed, memory, throughput.

Inputs are simulated deterministically (fixed seeds) with the phantom simulators and written with the
phantom DICOM writers at realistic sizes:

* ``mr``: axial T2, 20 slices of 384 x 384 (1.0 mm pixels, 4 mm slices every 4.4 mm), single-frame files;
* ``us_cine``: one US Multi-frame file, 30 frames of 600 x 800 stored pixels, JPEG baseline YBR_FULL_422,
  B-mode region 500 x 625 at 0.08 mm;
* ``us_single``: one US Image file, 600 x 800, MONOCHROME2 uncompressed, same probe.

Every series is measured in a fresh subprocess (so that its peak RSS is its own): our pipeline
(``load_series`` → ``Detector.detect`` → ``DetectionResult.save``) once to warm up, then ``repeats`` timed
runs (median per stage); then, in the same process and side by side, the bare baseline (pydicom decode of
every file + the bare network forward on the same tiles) and a reference pipeline written as a MONAI user
would (``LoadImage(PydicomReader)``, percentile scaling, resampling to the bundle spacing,
``sliding_window_inference`` with the same weights, softmax, resampling back; once per inference zoom of
the bundle, averaged), followed by our own
:func:`~backmice_vision.findings.extract_nodules` so the findings can be compared (:func:`compare_findings`).
Batch throughput is measured with :func:`~backmice_vision.batch.run_batch` on copies of the MR series
(distinct UIDs), each run in a fresh subprocess: wall clock, and the steady-state rate after the first
series per worker (:func:`measure_batch`). Four runs (:data:`BATCH_RUNS`): 1 worker with one torch
thread, 2 workers (one thread each, as ``--workers 2`` shares the cores), 1 worker with the default
threads (all cores), and the series one after the other in one process with one thread, no overlap (what
each of the 2 workers does). The four are alternated ``throughput_rounds`` times (medians; each ratio is
the median of its per-round ratios). The worker target compares 2 workers ÷ 1 worker at one thread per
worker; beside it are 2 workers ÷ the all-cores worker, 2 workers ÷ the sequential run, what the machine
itself allows (the same fixed single-thread work in one process and in two at once,
:func:`measure_ceiling`) and the cores each run kept busy (CPU seconds of the process and its joined
workers / wall seconds): the single one-thread worker overlaps writing series ``n`` with detecting
``n + 1`` on the free core (:func:`~backmice_vision.batch.run_batch`), so it already uses more than one
core, which bounds what a second worker adds. The overhead target is checked twice for MR: one series on
its own (latency) and per series inside the all-cores batch (throughput).
CLI start-up: ``backmice --help`` and a bad argument, median of several subprocess runs.

Speed and memory targets live only here (:data:`TARGETS`); results print as a table and can be written
as JSON. Heavy packages (torch, monai) are imported inside functions only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from backmice_vision.errors import BackmiceError, ConfigError

INPUTS_VERSION = 1
SERIES_KINDS = ("mr", "us_cine", "us_single")
STAGES = ("decode", "preprocess", "model", "postprocess", "write")

# name: (comparison, target, description)
TARGETS: dict[str, tuple[str, float, str]] = {
    "overhead_ratio": ("<=", 1.3, "end-to-end / (pydicom decode + bare forward)"),
    "reference_ratio": (">=", 1.5, "MONAI reference / ours (decode → findings)"),
    "workers_ratio": (">=", 1.7, "throughput 2 workers / 1 worker, one torch thread per worker"),
    "mr_peak_rss_gb": ("<", 1.5, "peak RSS of the MR series (GB)"),
    "cli_help_s": ("<", 1.0, "cold `backmice --help` (s)"),
    "cli_bad_arg_s": ("<", 1.0, "cold `backmice` with a bad argument (s)"),
}

# Throughput runs: name, label, workers, torch threads (0 = default), series after series without run_batch
BATCH_RUNS = (
    ("w1t1", "1 worker, 1 thread", 1, 1, False),
    ("w2", "2 workers, 1 thread each", 2, 0, False),
    ("w1", "1 worker, all cores", 1, 0, False),
    ("seq", "one series after the other, 1 thread", 1, 1, True),
)
BATCH_LABELS = {name: label for name, label, *_ in BATCH_RUNS}

# Simulation parameters of the benchmark inputs (fixed: the figures must be comparable between runs).
MR_SEED, US_SEED = 4, 6
MR_SHAPE = (20, 384, 384)
US_FRAME = (600, 800)
US_CINE_FRAMES = 30
CONFIDENT = 0.5  # findings at or above this confidence must agree between ours and the reference


@dataclass(frozen=True)
class BenchOptions:
    """What to run. ``repeats``: timed runs per series after one warm-up; ``worker_series``: MR series
    in the throughput batch; ``cli_runs``: subprocess runs per CLI timing; ``threads``: torch threads of
    the per-series runs (0 = torch's default); ``reference_roi``: ROI of the reference's
    sliding_window_inference, ``"patch"`` (the training patch) or ``"image"`` (the whole padded image);
    ``throughput_rounds``: alternated rounds of the batch runs."""

    data_dir: Path
    repeats: int = 3
    worker_series: int = 10
    cli_runs: int = 5
    threads: int = 0
    formats: tuple[str, ...] = ("png", "json", "seg", "sr", "sc")
    skip_workers: bool = False
    reference_roi: str = "patch"
    throughput_rounds: int = 3


# --------------------------------------------------------------------------------------------------
# inputs


def _write_mr(root: Path, copies: int) -> list[Path]:
    """Simulate the MR volume once and write it as ``copies`` series with distinct UIDs."""
    from backmice_vision.phantoms.anatomy import make_subject
    from backmice_vision.phantoms.dicom import MrAcquisition, SeriesInfo, StudyInfo, make_uid, write_mr_series
    from backmice_vision.phantoms.mr import MRProtocol, simulate_mr

    subject = make_subject(MR_SEED)
    n, rows, cols = MR_SHAPE
    protocol = MRProtocol(
        contrast="T2",
        plane="axial",
        fov_mm=(float(rows), float(cols)),
        matrix=(rows, cols),
        slice_thickness_mm=4.0,
        spacing_between_slices_mm=4.4,
        n_slices=n,
        anchor="body",
        center_z_mm=-30.0,
        tilt_deg=5.0,
        snr_fat=40.0,
        tr_ms=4000.0,
        te_ms=100.0,
        echo_train_length=16,
        flip_angle_deg=150.0,
    )
    img = simulate_mr(subject, protocol, np.random.default_rng(MR_SEED))
    acq = MrAcquisition("T2", 4000.0, 100.0, echo_train_length=16, flip_angle_deg=150.0)
    folders = []
    for c in range(copies):
        study = StudyInfo.create(f"bench_mr_{c}", MR_SEED)
        info = SeriesInfo(1, "AX T2 FSE", make_uid("bench", "mr", c))
        folder = root / f"mr_{c}"
        write_mr_series(
            folder,
            study,
            info,
            img.volume,
            img.image_position_mm,
            img.orientation,
            img.pixel_spacing_mm,
            img.slice_thickness_mm,
            acq,
        )
        folders.append(folder)
    return folders


def _write_us(root: Path) -> tuple[Path, Path]:
    """Simulate and write the cine (JPEG YBR_FULL_422) and the single image (MONOCHROME2)."""
    from backmice_vision.phantoms.anatomy import make_subject
    from backmice_vision.phantoms.dicom import SeriesInfo, StudyInfo, UsView, compose_us, write_us_series
    from backmice_vision.phantoms.ultrasound import ProbeSettings, plan_planes, simulate_bmode, simulate_cine

    subject: Any = make_subject(US_SEED)  # a SubjectLike for the simulators
    rng = np.random.default_rng(US_SEED)
    probe = ProbeSettings(frequency_mhz=15.0, depth_mm=40.0, width_mm=50.0, pixel_mm=0.08)
    (plane,) = plan_planes(subject, rng, 1, p_on_nodule=1.0, max_tilt_deg=3.0)
    study = StudyInfo.create("bench_us", US_SEED)
    text = [f"BACKMICE BENCH   L18-5   {probe.frequency_mhz:.1f} MHz", "D 4.0 cm", "MSK  LOWER BACK"]

    def views(images: Sequence[Any]) -> list[list[UsView]]:
        return [[UsView(b.image, b.labels, (float(b.pixel_mm[0]), float(b.pixel_mm[1])))] for b in images]

    cine = simulate_cine(subject, plane, probe, rng, US_CINE_FRAMES, 8.0)
    cine_dir = root / "us_cine"
    comp = compose_us(views(cine), text, US_FRAME)
    write_us_series(
        cine_dir,
        study,
        SeriesInfo(2, "B-MODE CINE"),
        comp,
        "YBR_FULL_422",
        multiframe=True,
        frame_time_ms=33.333,
    )
    single = simulate_bmode(subject, plane, probe, rng)
    single_dir = root / "us_single"
    comp = compose_us(views([single]), text, US_FRAME)
    write_us_series(single_dir, study, SeriesInfo(3, "B-MODE"), comp, "MONOCHROME2")
    return cine_dir, single_dir


def make_inputs(data_dir: Path, worker_series: int, *, log: Any = None) -> dict[str, Path]:
    """Write (or reuse) the benchmark series under ``data_dir``; returns folders by kind, plus ``batch``
    (a folder of ``worker_series`` MR series with distinct UIDs for the throughput runs)."""
    data_dir = Path(data_dir)
    marker = data_dir / "inputs.json"
    want = {"version": INPUTS_VERSION, "worker_series": worker_series}
    paths = {
        "mr": data_dir / "series" / "mr_0",
        "us_cine": data_dir / "series" / "us_cine",
        "us_single": data_dir / "series" / "us_single",
        "batch": data_dir / "batch",
    }
    try:
        if json.loads(marker.read_text()) == want and all(p.is_dir() for p in paths.values()):
            return paths
    except (OSError, ValueError):
        pass
    t0 = time.perf_counter()
    for sub in ("series", "batch"):
        shutil.rmtree(data_dir / sub, ignore_errors=True)
    (data_dir / "series").mkdir(parents=True, exist_ok=True)
    _write_mr(data_dir / "series", 1)
    _write_us(data_dir / "series")
    _write_mr(data_dir / "batch", worker_series)
    from backmice_vision.fileio import write_text_atomic

    write_text_atomic(json.dumps(want) + "\n", marker)  # last: marks the inputs complete
    if log:
        log(f"inputs simulated and written in {time.perf_counter() - t0:.1f} s under {data_dir}")
    return paths


# --------------------------------------------------------------------------------------------------
# one series, in its own process


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".dcm")


def _ours_once(
    folder: Path, detector: Any, out_dir: Path, formats: list[str]
) -> tuple[dict[str, float], Any]:
    """Our pipeline (:mod:`backmice_vision.pipeline`, as every entry point runs it) on ``folder``: seconds
    per stage plus ``total``, and the result."""
    from backmice_vision.pipeline import detect_stage, write_stage

    shutil.rmtree(out_dir, ignore_errors=True)
    outcome, result = detect_stage(folder, detector)
    outcome = write_stage(outcome, result, out_dir, formats)
    if result is None or not outcome.ok:
        raise BackmiceError(outcome.error)
    t = outcome.timings_s
    stages = {"decode": t["load"], "write": t["write"], "total": t["total"]}
    for key in ("preprocess", "model", "postprocess"):
        stages[key] = float(t.get(key, 0.0))
    stages["other"] = max(0.0, t["detect"] - sum(stages[k] for k in ("preprocess", "model", "postprocess")))
    return stages, result


def _bare_baseline(folder: Path, series: Any, bundle: Any) -> dict[str, float]:
    """pydicom decode of every file (``dcmread`` + ``pixel_array``) and the bare network forward on the
    tiles our pipeline feeds it (same batches, every inference zoom; tiles built outside the timing)."""
    import pydicom
    import torch

    from backmice_vision.model.inference import _batches, make_tiles, pad_batch

    t0 = time.perf_counter()
    for path in _series_files(folder):
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    decode = time.perf_counter() - t0
    prep = bundle.preprocessing
    batches = [
        torch.from_numpy(pad_batch([t.image for t in b], prep.multiple))
        for z in prep.zooms  # batched zoom by zoom, as predict_probabilities does
        for b in _batches(make_tiles(series, replace(prep, spacing_mm=prep.spacing_mm / z)), 8)
    ]
    net = bundle.network.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            net(x)
    return {"pydicom_decode": decode, "bare_forward": time.perf_counter() - t0}


def _patch_size(bundle: Any) -> tuple[int, int]:
    """The training patch of the bundle (the ROI a MONAI user would pass to sliding_window_inference)."""
    try:
        patch = bundle.metadata["training"]["config"]["augment"]["patch"]
        return (int(patch[0]), int(patch[1]))
    except (KeyError, TypeError, ValueError, IndexError):
        return (160, 160)


def _mr_sort_order(folder: Path) -> np.ndarray:
    """Permutation from MONAI's slice order (InstanceNumber) to the order along the slice normal, from
    the headers (what a user must add: PydicomReader sorts by InstanceNumber)."""
    import pydicom

    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in _series_files(folder)]
    heads.sort(key=lambda d: int(d.InstanceNumber))
    ori = np.asarray(heads[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    along = np.asarray([np.asarray(d.ImagePositionPatient, dtype=np.float64) @ normal for d in heads])
    return np.argsort(along, kind="stable")


def _us_region(folder: Path) -> tuple[tuple[int, int, int, int], tuple[float, float]]:
    """Box (r0, c0, r1, c1) and (row, col) spacing in mm of the first 2-D tissue region (pydicom header)."""
    import pydicom

    ds = pydicom.dcmread(_series_files(folder)[0], stop_before_pixels=True)
    for item in ds.SequenceOfUltrasoundRegions:
        if int(item.RegionSpatialFormat) == 1 and int(item.RegionDataType) == 1:
            box = (
                int(item.RegionLocationMinY0),
                int(item.RegionLocationMinX0),
                int(item.RegionLocationMaxY1) + 1,
                int(item.RegionLocationMaxX1) + 1,
            )
            return box, (float(item.PhysicalDeltaY) * 10.0, float(item.PhysicalDeltaX) * 10.0)
    raise BackmiceError("no calibrated 2-D tissue region", folder)


def reference_probabilities(folder: Path, bundle: Any, modality: str, roi_mode: str = "patch") -> np.ndarray:
    """Class probabilities ``(C, n, rows, cols)`` on the stored grid from a pipeline a MONAI user would
    write: ``LoadImage(PydicomReader)``, ``ScaleIntensityRangePercentiles`` (bundle percentiles; per frame
    for US, per volume for MR), ``Resize`` to the bundle spacing (anti-aliased when shrinking),
    ``sliding_window_inference`` (ROI = training patch, overlap 0.25, batch 8), softmax, ``Resize`` back;
    once per inference zoom of the bundle (``spacing_mm / zoom``), the probabilities averaged.

    Fixes a user needs on top of MONAI's reader: its arrays are (cols, rows, slices) for MR, (rows, frames,
    cols, RGB) for a US cine and (cols, rows) for a US image, so they are transposed to (n, rows, cols); MR
    slices come sorted by InstanceNumber and are re-sorted along the normal; colour is converted to BT.601
    luma; US is cropped to its calibrated region. MR stacks slices k-1, k, k+1 as channels (model card).
    """
    import torch
    from monai.data import PydicomReader
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, Resize, ScaleIntensityRangePercentiles

    prep = bundle.preprocessing
    lo, hi = prep.percentiles
    img = LoadImage(reader=PydicomReader(), image_only=True)(str(folder))
    arr = torch.as_tensor(np.asarray(img), dtype=torch.float32)
    vol: Any
    spacing: tuple[float, float]
    if modality == "MR":
        vol = arr.permute(2, 1, 0)[torch.from_numpy(_mr_sort_order(folder))]  # (n, rows, cols)
        col_mm, row_mm = (float(s) for s in img.meta["spacing"][:2])  # MONAI axes are (cols, rows, slices)
        spacing = (row_mm, col_mm)
        box = (0, 0, int(vol.shape[1]), int(vol.shape[2]))
        vol = ScaleIntensityRangePercentiles(lo, hi, 0.0, 1.0, clip=True)(vol)
    else:
        if arr.ndim == 4:  # colour cine: (rows, frames, cols, RGB)
            vol = arr.permute(1, 0, 2, 3) @ torch.tensor([0.299, 0.587, 0.114])
        elif arr.ndim == 2:  # grey single image: (cols, rows)
            vol = arr.T[None]
        else:
            raise BackmiceError(f"reference pipeline: unexpected array shape {tuple(arr.shape)}", folder)
        box, spacing = _us_region(folder)
        r0, c0, r1, c1 = box
        full_shape = tuple(vol.shape)
        vol = vol[:, r0:r1, c0:c1]
        vol = ScaleIntensityRangePercentiles(lo, hi, 0.0, 1.0, clip=True, channel_wise=True)(vol)
    n, h, w = (int(s) for s in vol.shape)
    net = bundle.network.eval()
    back: Any = None
    for zoom in prep.zooms:  # the bundle's inference zooms: probabilities averaged
        target_mm = prep.spacing_mm / zoom
        size = (max(1, round(h * spacing[0] / target_mm)), max(1, round(w * spacing[1] / target_mm)))
        shrink = size[0] < h or size[1] < w
        small = torch.as_tensor(Resize(size, mode="bilinear", anti_aliasing=shrink)(vol))
        if modality == "MR":
            ks = torch.arange(n)
            chans = [small[(ks + d).clamp(0, n - 1)] for d in range(-prep.context, prep.context + 1)]
            x = torch.stack(chans, dim=1)  # (n, 3, h', w')
        else:
            x = small[:, None]
        with torch.inference_mode():
            m = prep.multiple
            roi = _patch_size(bundle) if roi_mode == "patch" else (-(-size[0] // m) * m, -(-size[1] // m) * m)
            logits = sliding_window_inference(x, roi, 8, net, overlap=0.25)
            probs = torch.softmax(torch.as_tensor(logits), dim=1)
            up = Resize((h, w), mode="bilinear")
            one = torch.stack([torch.as_tensor(up(p)) for p in probs]) / len(prep.zooms)  # (n, C, h, w)
        back = one if back is None else back + one
    out_t = back.permute(1, 0, 2, 3)
    if modality == "MR":
        return np.ascontiguousarray(out_t.numpy(), dtype=np.float32)
    from backmice_vision.labels import BACKGROUND

    out = np.zeros((out_t.shape[0], *full_shape), dtype=np.float32)
    out[BACKGROUND] = 1.0
    out[:, :, r0:r1, c0:c1] = out_t.numpy()
    return out


def _match(a: list[np.ndarray], b: list[np.ndarray], tol: float) -> list[float]:
    """Greedy one-to-one matching of centres, closest pairs first; distances of the matched pairs."""
    pairs = sorted((float(np.linalg.norm(x - y)), i, j) for i, x in enumerate(a) for j, y in enumerate(b))
    used_a: set[int] = set()
    used_b: set[int] = set()
    dists = []
    for d, i, j in pairs:
        if d <= tol and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            dists.append(d)
    return dists


def _nodule_mask(probs: np.ndarray) -> np.ndarray:
    """Pixels where the nodule class wins."""
    from backmice_vision.labels import NODULE
    from backmice_vision.model.inference import class_labels

    return np.asarray(class_labels(probs) == NODULE)


def _index_spacing_mm(series: Any) -> tuple[float, float, float]:
    """Millimetres per index step ``(k, i, j)``: the MR spacing, or the first US region's (1 mm per frame);
    1 where unknown."""
    if series.spacing_mm is not None:
        return tuple(float(v) for v in series.spacing_mm)  # type: ignore[return-value]
    region = series.regions[0] if series.regions else None
    if region is not None and region.spacing_mm is not None:
        return (1.0, float(region.spacing_mm[0]), float(region.spacing_mm[1]))
    return (1.0, 1.0, 1.0)


def compare_findings(
    ours: Any,
    ref_nodules: list[Any],
    ours_probs: np.ndarray,
    ref_probs: np.ndarray,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    tol_mm: float = 2.0,
    confident: float = CONFIDENT,
    in_plane: bool = False,
) -> dict[str, Any]:
    """Agreement of two detections of one series.

    Findings match one-to-one when their centres lie within ``tol_mm`` (index ``(k, i, j)`` scaled by
    ``spacing_mm``; only ``(i, j)`` with ``in_plane``, for a cine whose key frame is any of several
    near-equal frames). 2 mm is well inside the 5 mm minimum hit radius of the evaluation.
    ``same_findings``: the findings with confidence >= ``confident`` match one-to-one (low-confidence
    fragments near the instance threshold come and go with any interpolation change, so they are
    counted but not required to agree). Also the nodule-mask Dice of the two maps (1 when both are
    empty), their pixel counts, and the mean absolute difference of the nodule probability.
    """
    from backmice_vision.labels import NODULE

    first = 1 if in_plane else 0
    scale = np.asarray(spacing_mm[first:], dtype=np.float64)

    def centres(nodules: list[Any], lo: float) -> list[np.ndarray]:
        return [np.asarray(n.center_voxel[first:]) * scale for n in nodules if n.confidence >= lo]

    all_d = _match(centres(ours, 0.0), centres(ref_nodules, 0.0), tol_mm)
    a, b = centres(ours, confident), centres(ref_nodules, confident)
    conf_d = _match(a, b, tol_mm)
    mask_a, mask_b = _nodule_mask(ours_probs), _nodule_mask(ref_probs)
    na, nb = int(mask_a.sum()), int(mask_b.sum())
    dice = 1.0 if na + nb == 0 else 2.0 * int((mask_a & mask_b).sum()) / (na + nb)
    diff = float(np.mean(np.abs(ours_probs[NODULE] - ref_probs[NODULE]), dtype=np.float64))
    return {
        "ours": len(ours),
        "reference": len(ref_nodules),
        "matched": len(all_d),
        "ours_confident": len(a),
        "reference_confident": len(b),
        "matched_confident": len(conf_d),
        "max_centre_distance_mm": max(conf_d) if conf_d else 0.0,
        "same_findings": len(a) == len(b) == len(conf_d),
        "nodule_pixels_ours": na,
        "nodule_pixels_reference": nb,
        "nodule_dice": round(dice, 4),
        "nodule_prob_mean_abs_diff": round(diff, 6),
    }


def measure_series(
    folder: Path, repeats: int, formats: list[str], threads: int, reference_roi: str = "patch"
) -> dict[str, Any]:
    """All per-series figures (run in a fresh process; see the module docstring). Seconds are medians
    over ``repeats`` runs; ``peak_rss_mb`` is taken after our pipeline, before the baseline and reference."""
    import pydicom
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from backmice_vision.findings import extract_nodules
    from backmice_vision.pipeline import DetectorSpec, get_detector

    modality = str(pydicom.dcmread(_series_files(folder)[0], stop_before_pixels=True).Modality)
    t0 = time.perf_counter()
    detector = get_detector(DetectorSpec.of(device="cpu"))  # a fresh process: built here
    bundle = detector.bundle_for(modality)
    model_load = time.perf_counter() - t0
    out_root = Path(tempfile.mkdtemp(prefix="backmice_bench_out_"))
    try:
        runs: list[dict[str, float]] = []
        result = None
        for r in range(max(1, repeats) + 1):  # run 0 warms up (lazy imports, caches) and is not counted
            result = None  # one result alive at a time: the peak is that of one run
            timing, result = _ours_once(folder, detector, out_root / f"run{r}", formats)
            runs.append(timing)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    peak = _peak_rss_mb()
    stages = {k: statistics.median(t[k] for t in runs[1:]) for k in (*STAGES, "other", "total")}
    assert result is not None
    series = result.series
    base = [_bare_baseline(folder, series, bundle) for _ in range(max(1, repeats))]
    baseline = {k: statistics.median(b[k] for b in base) for k in base[0]}
    ref_times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        ref_probs = reference_probabilities(folder, bundle, modality, reference_roi)
        ref_nodules, _ = extract_nodules(
            series, ref_probs, calibration=bundle.calibration, thresholds=detector.thresholds
        )
        ref_times.append(time.perf_counter() - t0)
    agreement = compare_findings(
        result.nodules,
        ref_nodules,
        detector.probabilities(series),
        ref_probs,
        spacing_mm=_index_spacing_mm(series),
        in_plane=series.modality == "US" and series.shape[0] > 1,
    )
    no_write = stages["total"] - stages["write"]
    return {
        "shape": list(series.shape),
        "files": len(_series_files(folder)),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "model_load_s": model_load,
        "stages_s": stages,
        "peak_rss_mb": peak,
        "baseline_s": baseline,
        "reference_s": statistics.median(ref_times),
        "reference_roi": reference_roi,
        "ours_no_write_s": no_write,
        "overhead_ratio": stages["total"] / (baseline["pydicom_decode"] + baseline["bare_forward"]),
        "reference_ratio": statistics.median(ref_times) / no_write,
        "agreement": agreement,
    }


def measure_batch(
    input_dir: Path, workers: int, formats: list[str], threads: int = 0, sequential: bool = False
) -> dict[str, Any]:
    """:func:`run_batch` on ``input_dir`` (``threads`` > 0: torch threads of a single in-process worker):
    wall seconds (start-up and model loading included) and the
    steady-state rate after the first round, ``(n - workers) / (t_n - t_workers)`` series per second from
    the completion times (the first ``workers`` completions carry process start-up and model loading).
    ``sequential``: instead of run_batch, :func:`~backmice_vision.batch.process_job` on one series after
    the other in this process (no overlap of writing and detecting: what one worker process does)."""
    from backmice_vision.batch import SeriesOutcome, plan_jobs, process_job, run_batch, run_tag
    from backmice_vision.pipeline import DetectorSpec

    if threads > 0 and workers == 1:
        import torch

        torch.set_num_threads(threads)
    done_at: list[float] = []

    def stamp(outcome: SeriesOutcome) -> None:
        done_at.append(time.perf_counter())

    out = Path(tempfile.mkdtemp(prefix="backmice_bench_batch_"))
    try:
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        if sequential:
            tag = run_tag(None, formats)
            outcomes = []
            for job in plan_jobs(input_dir).jobs:
                outcomes.append(process_job(job, str(out), formats, DetectorSpec.of(None, "cpu"), tag))
                stamp(outcomes[-1])
        else:
            outcomes = run_batch(
                input_dir,
                out,
                workers=workers,
                formats=formats,
                device="cpu",
                progress="quiet",
                on_outcome=stamp,
            ).outcomes
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = len(done_at)
    steady = (n - workers) / (done_at[-1] - done_at[workers - 1]) if n > workers else float("nan")
    done = sum(o.status == "done" for o in outcomes)
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "cores_busy": cpu / wall,
        "steady_series_per_s": steady,
        "done": done,
        "failed": sum(o.status == "failed" for o in outcomes),
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (joined) children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure_compute(passes: int) -> dict[str, Any]:
    """Fixed CPU work with one torch thread: ``passes`` forward passes of the shipped MR network on a
    fixed batch of 8 tiles of 3 x 224 x 224 (the same work in every process; see :func:`measure_ceiling`)."""
    import torch

    from backmice_vision.model.detector import Detector

    torch.set_num_threads(1)
    net = Detector.from_pretrained(device="cpu").bundle_for("MR").network.eval()
    x = torch.from_numpy(np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32))
    with torch.inference_mode():
        net(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(passes):
            net(x)
    return {"seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# orchestration (parent process: no torch import)


def _children(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run measurements in fresh interpreters at the same time; each result is its last stdout line."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(task)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for task in tasks
    ]
    outputs = [p.communicate() for p in procs]
    results = []
    for task, proc, (stdout, stderr) in zip(tasks, procs, outputs, strict=True):
        if proc.returncode != 0:
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            raise BackmiceError(f"benchmark step {task['what']} failed (exit {proc.returncode}): {tail}")
        results.append(dict(json.loads(stdout.strip().splitlines()[-1])))
    return results


def _child(task: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (see :func:`_children`)."""
    return _children([task])[0]


def measure_ceiling(passes: int, rounds: int = 3) -> dict[str, float]:
    """What two processes can gain on this machine: the same single-thread work (:func:`measure_compute`)
    in one process, then in two at once, alternated ``rounds`` times (medians: shared machines drift);
    ``ratio`` = 2 x one process's time / the pair's time (2.0 on two free cores; less where the cores share
    execution units or other load runs)."""
    task = {"what": "compute", "passes": passes}
    alone, pair = [], []
    for _ in range(max(1, rounds)):
        alone.append(_child(task)["seconds"])
        pair.append(statistics.mean(r["seconds"] for r in _children([task, task])))
    one, two = statistics.median(alone), statistics.median(pair)
    return {"one_s": one, "two_mean_s": two, "ratio": 2.0 * one / two}


def _run_child_task(task: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")  # MONAI's reader warns about nvImageCodec and missing geometry
    if task["what"] == "series":
        return measure_series(
            Path(task["folder"]),
            int(task["repeats"]),
            list(task["formats"]),
            int(task["threads"]),
            str(task["reference_roi"]),
        )
    if task["what"] == "compute":
        return measure_compute(int(task["passes"]))
    return measure_batch(
        Path(task["folder"]),
        int(task["workers"]),
        list(task["formats"]),
        int(task.get("threads", 0)),
        bool(task.get("sequential", False)),
    )


def _cli_command() -> list[str]:
    exe = Path(sys.executable).parent / "backmice"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "backmice_vision"]


def measure_cli(runs: int) -> dict[str, float]:
    """Median wall seconds of cold ``backmice --help`` (exit 0) and ``backmice --no-such-option`` (exit 2)."""
    out: dict[str, float] = {}
    for key, args, code in (("help_s", ["--help"], 0), ("bad_arg_s", ["--no-such-option"], 2)):
        times = []
        for _ in range(max(1, runs)):
            t0 = time.perf_counter()
            proc = subprocess.run([*_cli_command(), *args], capture_output=True, check=False)
            times.append(time.perf_counter() - t0)
            if proc.returncode != code:
                raise BackmiceError(f"`backmice {' '.join(args)}` exited {proc.returncode}, expected {code}")
        out[key] = statistics.median(times)
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores available to this process, load average, Python and platform."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from backmice_vision.model.inference import usable_cores

    cores = usable_cores()
    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": cores,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _check(name: str, value: float) -> dict[str, Any]:
    op, target, what = TARGETS[name]
    ok = {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
    return {"name": name, "what": what, "value": value, "op": op, "target": target, "pass": bool(ok)}


def run_benchmark(opts: BenchOptions, log: Any = None) -> dict[str, Any]:
    """Run every measurement; returns the figures (see :func:`print_report` and ``--json``)."""
    say = log or (lambda msg: None)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "options": {
            "repeats": opts.repeats,
            "worker_series": opts.worker_series,
            "cli_runs": opts.cli_runs,
            "threads": opts.threads,
            "formats": list(opts.formats),
            "reference_roi": opts.reference_roi,
        },
    }
    paths = make_inputs(opts.data_dir, opts.worker_series, log=say)
    results["series"] = {}
    for kind in SERIES_KINDS:
        say(f"measuring {kind} ...")
        task = {
            "what": "series",
            "folder": str(paths[kind]),
            "repeats": opts.repeats,
            "formats": list(opts.formats),
            "threads": opts.threads,
            "reference_roi": opts.reference_roi,
        }
        results["series"][kind] = _child(task)
    if not opts.skip_workers:
        batch: dict[str, Any] = {"series": opts.worker_series, "rounds": opts.throughput_rounds}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BATCH_LABELS}
        for r in range(opts.throughput_rounds):  # alternated rounds, medians: this VM drifts by 10-20 %
            for name, label, workers, threads, sequential in BATCH_RUNS:
                say(f"measuring batch throughput, round {r + 1}/{opts.throughput_rounds}: {label} ...")
                task = {
                    "what": "batch",
                    "folder": str(paths["batch"]),
                    "workers": workers,
                    "threads": threads,
                    "sequential": sequential,
                    "formats": list(opts.formats),
                }
                got = _child(task)
                if got["done"] != opts.worker_series:
                    raise BackmiceError(
                        f"batch run with {workers} worker(s) finished {got['done']} series "
                        f"of {opts.worker_series}"
                    )
                got["series_per_min"] = 60.0 * opts.worker_series / got["seconds"]
                got["steady_series_per_min"] = 60.0 * got["steady_series_per_s"]
                runs[name].append(got)
        for name, got_runs in runs.items():
            for key in ("seconds", "cores_busy", "series_per_min", "steady_series_per_min"):
                batch[f"{name}_{'s' if key == 'seconds' else key}"] = statistics.median(
                    g[key] for g in got_runs
                )

        def ratio(a: str, b: str, key: str = "steady_series_per_min") -> float:
            """Median over rounds of run ``a`` / run ``b`` (each round's runs measured one after another)."""
            return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))

        batch["wall_ratio"] = ratio("w2", "w1t1", "series_per_min")
        batch["ratio"] = ratio("w2", "w1t1")
        batch["ratio_vs_all_cores"] = ratio("w2", "w1")
        batch["ratio_vs_sequential"] = ratio("w2", "seq")
        # the same MR series end to end inside a batch (1 worker, all cores)
        mr_base = results["series"]["mr"]["baseline_s"]
        per_series_s = 60.0 / batch["w1_steady_series_per_min"]
        batch["mr_overhead_ratio"] = per_series_s / (mr_base["pydicom_decode"] + mr_base["bare_forward"])
        say("measuring what two processes gain on this machine ...")
        ceiling = measure_ceiling(passes=4, rounds=1) if opts.worker_series <= 4 else measure_ceiling(24)
        batch["machine_ratio"] = ceiling["ratio"]
        results["workers"] = batch
    say("measuring CLI start-up ...")
    results["cli"] = measure_cli(opts.cli_runs)
    results["figures"] = figures(results)
    results["checks"] = checks(results)
    return results


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The flat table of measured numbers (all positive and finite on success)."""
    out: dict[str, float] = {}
    for kind, r in results["series"].items():
        for stage in (*STAGES, "total"):
            out[f"{kind}.{stage}_s"] = r["stages_s"][stage]
        out[f"{kind}.model_load_s"] = r["model_load_s"]
        out[f"{kind}.peak_rss_mb"] = r["peak_rss_mb"]
        out[f"{kind}.pydicom_decode_s"] = r["baseline_s"]["pydicom_decode"]
        out[f"{kind}.bare_forward_s"] = r["baseline_s"]["bare_forward"]
        out[f"{kind}.reference_s"] = r["reference_s"]
        out[f"{kind}.overhead_ratio"] = r["overhead_ratio"]
        out[f"{kind}.reference_ratio"] = r["reference_ratio"]
    if "workers" in results:
        w = results["workers"]
        for name in BATCH_LABELS:
            for key in ("series_per_min", "steady_series_per_min", "cores_busy"):
                out[f"workers.{name}_{key}"] = w[f"{name}_{key}"]
        for key in (
            "wall_ratio",
            "ratio",
            "ratio_vs_all_cores",
            "ratio_vs_sequential",
            "mr_overhead_ratio",
            "machine_ratio",
        ):
            out[f"workers.{key}"] = w[key]
    out["cli.help_s"] = results["cli"]["help_s"]
    out["cli.bad_arg_s"] = results["cli"]["bad_arg_s"]
    return {k: round(float(v), 4) for k, v in out.items()}


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL of every target in :data:`TARGETS` (per series where it applies)."""
    out = []
    for kind, r in results["series"].items():
        out.append({**_check("overhead_ratio", r["overhead_ratio"]), "series": kind})
        ref = _check("reference_ratio", r["reference_ratio"])
        ref["same_findings"] = r["agreement"]["same_findings"]
        ref["pass"] = ref["pass"] and ref["same_findings"]
        out.append({**ref, "series": kind})
    out.append({**_check("mr_peak_rss_gb", results["series"]["mr"]["peak_rss_mb"] / 1024.0), "series": "mr"})
    if "workers" in results:
        batch_overhead = _check("overhead_ratio", results["workers"]["mr_overhead_ratio"])
        out.append({**batch_overhead, "series": "mr batch"})
        out.append({**_check("workers_ratio", results["workers"]["ratio"]), "series": "batch"})
    out.append({**_check("cli_help_s", results["cli"]["help_s"]), "series": "-"})
    out.append({**_check("cli_bad_arg_s", results["cli"]["bad_arg_s"]), "series": "-"})
    return out


def print_report(results: dict[str, Any], stream: Any = None) -> None:
    """The human-readable tables: machine, stage split per series, agreement, throughput, checks."""
    out = stream or sys.stdout
    m = results["machine"]
    first = next(iter(results["series"].values()))
    print(
        f"machine: {m['cpu']}, {m['cores']} core(s), load {m['load_avg_1m_at_start']} at start; "
        f"torch {first['torch_version']} with {first['torch_threads']} thread(s); Python {m['python']}",
        file=out,
    )
    print(
        f"\n{'series':10s} {'shape':>14s} "
        + " ".join(f"{s:>16s}" for s in (*STAGES, "total"))
        + f" {'peak RSS':>9s}",
        file=out,
    )
    for kind, r in results["series"].items():
        st = r["stages_s"]
        cells = [f"{st[s]:7.3f}s {100 * st[s] / st['total']:5.1f}%" for s in STAGES]
        print(
            f"{kind:10s} {'x'.join(map(str, r['shape'])):>14s} "
            + " ".join(f"{c:>16s}" for c in cells)
            + f" {st['total']:15.3f}s {r['peak_rss_mb']:7.0f}MB",
            file=out,
        )
    print(
        f"\n{'series':10s} {'pydicom':>8s} {'forward':>8s} {'ours':>8s} {'ours-w':>8s} {'MONAI':>8s} "
        f"{'all ours/ref':>12s} {'conf ours/ref':>13s} {'same':>5s} {'max dist':>8s} "
        f"{'nodule px ours/ref':>19s} {'dice':>6s} {'|dp|':>8s}",
        file=out,
    )
    for kind, r in results["series"].items():
        b, a = r["baseline_s"], r["agreement"]
        print(
            f"{kind:10s} {b['pydicom_decode']:7.3f}s {b['bare_forward']:7.3f}s "
            f"{r['stages_s']['total']:7.3f}s {r['ours_no_write_s']:7.3f}s {r['reference_s']:7.3f}s "
            f"{a['ours']:>8d}/{a['reference']:<3d} {a['ours_confident']:>9d}/{a['reference_confident']:<3d} "
            f"{'yes' if a['same_findings'] else 'NO':>5s} {a['max_centre_distance_mm']:6.2f}mm "
            f"{a['nodule_pixels_ours']:>11d}/{a['nodule_pixels_reference']:<7d} "
            f"{a['nodule_dice']:6.3f} {a['nodule_prob_mean_abs_diff']:8.5f}",
            file=out,
        )
    if "workers" in results:
        w = results["workers"]
        print(
            f"\nbatch of {w['series']} MR series, series/min wall ... steady (after the first per worker), "
            "and cores busy (CPU seconds / wall seconds, start-up included); "
            f"medians of {w['rounds']} round(s):",
            file=out,
        )
        for name, label in BATCH_LABELS.items():
            print(
                f"  {label:34s} {w[f'{name}_series_per_min']:6.1f} ({w[f'{name}_s']:.1f} s) ... "
                f"{w[f'{name}_steady_series_per_min']:6.1f}   {w[f'{name}_cores_busy']:.2f} cores",
                file=out,
            )
        print(
            f"  2 workers / 1 worker (1 thread each): {w['wall_ratio']:.2f} wall, {w['ratio']:.2f} steady; "
            f"2 workers / 1 worker on all cores: {w['ratio_vs_all_cores']:.2f} steady; "
            f"2 workers / one series after the other: {w['ratio_vs_sequential']:.2f} steady",
            file=out,
        )
        print(
            f"  this machine: two single-thread processes of fixed work run {w['machine_ratio']:.2f} x "
            "as fast as one (the most 2 workers can gain here)",
            file=out,
        )
        print(
            f"  MR end to end in a batch (1 worker, all cores): "
            f"{60.0 / w['w1_steady_series_per_min']:.3f} s per series = {w['mr_overhead_ratio']:.2f} x "
            "(pydicom decode + bare forward)",
            file=out,
        )
    c = results["cli"]
    print(f"CLI cold start: --help {c['help_s']:.3f} s, bad argument {c['bad_arg_s']:.3f} s", file=out)
    print(f"\n{'check':18s} {'series':10s} {'value':>9s} {'target':>9s}  result", file=out)
    for ch in results["checks"]:
        same = ch.get("same_findings")
        note = "" if same is None else f" (same findings: {'yes' if same else 'no'})"
        print(
            f"{ch['name']:18s} {ch['series']:10s} {ch['value']:9.3f} {ch['op']:>3s}{ch['target']:6.2f}  "
            f"{'PASS' if ch['pass'] else 'FAIL'}{note}",
            file=out,
        )


# --------------------------------------------------------------------------------------------------
# command line


def run_bench(ns: argparse.Namespace) -> int:
    """Run, print the tables, write ``--json``. Exit 0 even when a target fails (the table says which);
    1 when a measurement could not be taken."""
    from backmice_vision.export import check_formats

    formats = tuple(check_formats(None if ns.formats == "all" else ns.formats.split(",")))
    repeats = ns.repeats if ns.repeats is not None else (1 if ns.quick else 3)
    if repeats < 1 or ns.threads < 0:
        raise ConfigError("--repeats must be >= 1 and --threads >= 0")
    tmp = None if ns.data else Path(tempfile.mkdtemp(prefix="backmice_bench_"))
    opts = BenchOptions(
        data_dir=Path(ns.data) if ns.data else Path(str(tmp)),
        repeats=repeats,
        worker_series=4 if ns.quick else 10,
        cli_runs=3 if ns.quick else 5,
        threads=ns.threads,
        formats=formats,
        skip_workers=ns.no_workers,
        throughput_rounds=1 if ns.quick else 3,
        reference_roi=ns.reference_roi,
    )
    try:
        results = run_benchmark(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(results)
    if ns.json:
        from backmice_vision.fileio import write_text_atomic

        write_text_atomic(json.dumps(results, indent=2) + "\n", ns.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (``--child`` runs one measurement: see :func:`_children`)."""
    p = argparse.ArgumentParser(prog="benchmark.py", description="Measure speed, memory and throughput.")
    p.add_argument("--quick", action="store_true", help="1 timed run, 4-series batch, 3 CLI runs (~1 min)")
    p.add_argument("--data", type=Path, help="folder for the generated series (reused when present)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--repeats", type=int, help="timed runs per series after a warm-up (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per series run (default: torch's)")
    p.add_argument("--formats", default="all", help="outputs written in the write stage (default all)")
    p.add_argument("--no-workers", action="store_true", help="skip the 1- and 2-worker batch runs")
    p.add_argument(
        "--reference-roi",
        choices=["patch", "image"],
        default="patch",
        help="ROI of the MONAI reference's sliding window: the training patch (default) or the whole image",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/benchmark.py`` (also the child processes, with ``--child``)."""
    ns = build_parser().parse_args(argv)
    try:
        if ns.child:
            print(json.dumps(_run_child_task(json.loads(ns.child))))
            return 0
        return run_bench(ns)
    except BackmiceError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
