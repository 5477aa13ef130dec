"""Phantom cases on disk: DICOM series, ground-truth SEG and ``ground_truth.json`` (see architecture.md).

A case is one simulated subject (:func:`anatomy.make_subject`) scanned like a clinic would:

* ultrasound: a few single-image series (one probe preset each), one cine sweep, sometimes a dual-view
  export (two planes side by side), each in one of the photometric variants MONOCHROME2, RGB or
  YBR_FULL_422 (JPEG baseline);
* MR: axial T1, T2 and STIR (wide or small field of view), sometimes a sagittal series, sometimes one
  series as Enhanced MR; some axial stacks oblique or with flipped orientation.

Everything is deterministic per ``(seed, case index)``. Per-series nodule ``center_voxel`` is
``(k, i, j)`` in that series' stored grid: for US ``k`` is the stored frame and ``(i, j)`` the B-mode
pixel plus the region's offset in the stored frame; for MR ``k`` is the slice rank along the slice
normal (the order :func:`backmice_vision.io.load_series` sorts into).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import BackmiceError, ConfigError
from .dicom import (
    PHOTOMETRICS,
    MrAcquisition,
    SeriesInfo,
    StudyInfo,
    UsView,
    compose_us,
    ds_value,
    write_mr_series,
    write_seg,
    write_us_series,
)

SCHEMA = "backmice.phantom/1"

# Built-in defaults; configs/phantom_{us,mr}.yaml document every key with its source.
DEFAULTS: dict[str, dict[str, Any]] = {
    "us": {
        "anatomy": {},
        "probe": {},
        "single_series": [1, 2],
        "images_per_series": [2, 4],
        "p_on_nodule": 0.7,
        "max_tilt_deg": 5.0,
        "p_cine": 1.0,
        "cine_frames": [10, 30],
        "cine_sweep_mm": [6.0, 14.0],
        "cine_frame_time_ms": [25.0, 50.0],
        "p_dual": 0.4,
        "photometric_probs": {"MONOCHROME2": 0.4, "RGB": 0.2, "YBR_FULL_422": 0.4},
        "frame_shape": [600, 800],
        "jpeg_quality": [90, 90],
    },
    "mr": {
        "anatomy": {},
        "protocol": {},
        "contrasts": ["T1", "T2", "STIR"],
        "p_sagittal": 0.4,
        "p_enhanced": 0.3,
        "p_rescale": 0.3,
    },
}


def load_config(modality: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults for ``modality`` updated with ``config``; unknown keys raise :class:`ConfigError`."""
    if modality not in DEFAULTS:
        raise ConfigError(f"unknown phantom modality {modality!r} (us or mr)")
    merged = copy.deepcopy(DEFAULTS[modality])
    cfg = dict(config or {})
    if str(cfg.pop("modality", modality)).lower() != modality:
        raise ConfigError(f"phantom config is for another modality than {modality!r}")
    unknown = sorted(set(cfg) - set(merged))
    if unknown:
        raise ConfigError(f"phantom {modality} config: unknown key(s) {', '.join(map(str, unknown))}")
    merged.update(cfg)
    if modality == "us":
        probs = merged["photometric_probs"]
        if not isinstance(probs, Mapping) or set(probs) - set(PHOTOMETRICS) or sum(probs.values()) <= 0:
            raise ConfigError(f"phantom us config: photometric_probs must map {PHOTOMETRICS} to weights")
    return merged


def _range(rng: np.random.Generator, value: Any, integer: bool = False) -> Any:
    """A number drawn from ``[low, high]`` (or the number itself)."""
    try:
        pair: tuple[Any, Any] = (value, value) if np.isscalar(value) else (value[0], value[1])
        lo, hi = pair
        if integer:
            return int(rng.integers(int(lo), int(hi) + 1))
        return float(rng.uniform(float(lo), float(hi)))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"phantom config: expected a number or [low, high], got {value!r}") from None


def case_seed(seed: int, index: int) -> int:
    """The subject seed of case ``index`` of a run started with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------------
# ultrasound


def _nodules_us(frame: int, region: int, box: tuple[int, int, int, int], found: list[dict]) -> Iterator[dict]:
    r0, c0 = box[0], box[1]
    for d in found:
        ci, cj = d["center_pixel"]
        yield {
            "id": int(d["id"]),
            "visible": bool(d["visible"]),
            "center_voxel": [frame, round(ci + r0, 3), round(cj + c0, 3)],
            "center_patient_mm": None,
            "diameters_mm": [round(float(v), 3) for v in d["diameters_mm"]],
            "area_mm2": round(float(d["area_mm2"]), 3),
            "truncated": bool(d["truncated"]),
            "depth_mm": round(float(d["depth_mm"]), 3),
            "fascia_depth_mm": None
            if d["fascia_depth_mm"] is None
            else round(float(d["fascia_depth_mm"]), 3),
            "side": d["side"],
            "variant": d["variant"],
            "region_index": region,
            "defect": {
                "present": bool(d["defect_present"]),
                "in_plane": bool(d["defect_in_plane"]),
                "width_mm": None if d["defect_width_mm"] is None else round(float(d["defect_width_mm"]), 3),
            },
        }


def _us_text(probe: Any, extra: str) -> list[str]:
    return [
        f"BACKMICE PHANTOM   L18-5   {probe.frequency_mhz:.1f} MHz",
        f"D {probe.depth_mm / 10:.1f} cm   G {probe.gain_db:+.0f} dB   DR {probe.dynamic_range_db:.0f}",
        f"MSK  LOWER BACK  {extra}",
    ]


def _us_case(
    subject: Any, rng: np.random.Generator, cfg: dict[str, Any], study: StudyInfo, root: Path
) -> tuple[list[dict], int]:
    from .ultrasound import plan_planes, random_probe, simulate_bmode, simulate_cine

    probs = cfg["photometric_probs"]
    names = list(probs)
    weights = np.asarray([float(probs[n]) for n in names])
    frame_shape = (int(cfg["frame_shape"][0]), int(cfg["frame_shape"][1]))

    def photometric() -> str:
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]

    jobs: list[tuple[str, int]] = [("us_single", i) for i in range(_range(rng, cfg["single_series"], True))]
    if rng.random() < float(cfg["p_cine"]):
        jobs.append(("us_cine", 0))
    if rng.random() < float(cfg["p_dual"]):
        jobs.append(("us_dual", 0))
    series_out: list[dict] = []
    n_images = 0
    for number, (kind, idx) in enumerate(jobs, start=1):
        probe = random_probe(rng, cfg["probe"])
        phot = photometric()
        frame_time = 0.0
        if kind == "us_single":
            n = _range(rng, cfg["images_per_series"], True)
            planes = plan_planes(subject, rng, n, float(cfg["p_on_nodule"]), float(cfg["max_tilt_deg"]))
            frames = [[simulate_bmode(subject, p, probe, rng)] for p in planes]
            folder = f"US_single_{idx + 1:02d}"
            text = _us_text(probe, "TRANS")
        elif kind == "us_dual":
            planes = plan_planes(subject, rng, 2, float(cfg["p_on_nodule"]), float(cfg["max_tilt_deg"]))
            frames = [[simulate_bmode(subject, p, probe, rng) for p in planes]]
            folder = "US_dual_01"
            text = _us_text(probe, "DUAL")
        else:
            n = _range(rng, cfg["cine_frames"], True)
            (plane,) = plan_planes(subject, rng, 1, float(cfg["p_on_nodule"]), float(cfg["max_tilt_deg"]))
            sweep = _range(rng, cfg["cine_sweep_mm"])
            frames = [[b] for b in simulate_cine(subject, plane, probe, rng, n, sweep)]
            frame_time = _range(rng, cfg["cine_frame_time_ms"])
            folder = "US_cine_01"
            text = _us_text(probe, f"CINE  FR {1000 / frame_time:.0f} Hz")
        views = [
            [UsView(b.image, b.labels, (float(b.pixel_mm[0]), float(b.pixel_mm[1]))) for b in f]
            for f in frames
        ]
        comp = compose_us(views, text, frame_shape)
        series = SeriesInfo(
            number, {"us_single": "B-MODE", "us_dual": "B-MODE DUAL", "us_cine": "B-MODE CINE"}[kind]
        )
        dss = write_us_series(
            root / "dicom" / folder,
            study,
            series,
            comp,
            phot,
            multiframe=kind == "us_cine",
            frame_time_ms=frame_time or 40.0,
            transducer_mhz=probe.frequency_mhz,
            jpeg_quality=_range(rng, cfg["jpeg_quality"], True),
        )
        seg_rel = f"seg/{folder}.dcm"
        write_seg(root / seg_rel, study, dss, comp.labels, 100 + number)
        nodules = [
            nod
            for k, frame in enumerate(frames)
            for r, b in enumerate(frame)
            for nod in _nodules_us(k, r, comp.regions[r].box, b.nodules)
        ]
        series_out.append(
            {
                "series_instance_uid": dss[0].SeriesInstanceUID,
                "folder": f"dicom/{folder}",
                "seg": seg_rel,
                "kind": kind,
                "contrast": "B",
                "photometric": phot,
                "n_frames": len(frames),
                "regions": [
                    {"box": list(reg.box), "spacing_mm": [round(s, 6) for s in reg.spacing_mm or ()]}
                    for reg in comp.regions
                ],
                "probe": {
                    "frequency_mhz": round(probe.frequency_mhz, 3),
                    "depth_mm": round(probe.depth_mm, 3),
                    "pixel_mm": round(probe.pixel_mm, 6),
                },
                "nodules": nodules,
            }
        )
        n_images += len(frames) * len(frames[0])
    return series_out, n_images


# --------------------------------------------------------------------------------------------------
# MR


def _mr_acquisition(protocol: Any, contrast: str) -> MrAcquisition:
    """DICOM acquisition attributes from the simulator's protocol (attributes looked up by name)."""

    def get(name: str, default: float) -> float:
        value = getattr(protocol, name, None)
        return default if value is None else float(value)

    defaults = {
        "T1": (550.0, 12.0, None, 3),
        "T2": (4000.0, 100.0, None, 16),
        "STIR": (4500.0, 60.0, 150.0, 12),
    }
    tr, te, ti, etl = defaults[contrast]
    return MrAcquisition(
        contrast=contrast,  # type: ignore[arg-type]
        repetition_time_ms=get("tr_ms", tr),
        echo_time_ms=get("te_ms", te),
        inversion_time_ms=(get("ti_ms", ti) if ti is not None else None),
        echo_train_length=int(get("echo_train_length", etl)),
        flip_angle_deg=get("flip_angle_deg", 90.0 if contrast == "T1" else 150.0),
        field_strength_t=get("field_strength_t", 1.5),
    )


def _sorted_k(positions: np.ndarray, orientation: np.ndarray) -> tuple[bool, int]:
    """Whether the simulator's slice order runs against the normal (then ``k -> n-1-k``) and n."""
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    steps = np.diff(along)
    if steps.size and not (np.all(steps > 0) or np.all(steps < 0)):
        raise BackmiceError("MR simulator returned a slice stack that is not monotonic along its normal")
    return bool(steps.size and steps[0] < 0), len(along)


def _mr_case(
    subject: Any, rng: np.random.Generator, cfg: dict[str, Any], study: StudyInfo, root: Path
) -> tuple[list[dict], int]:
    from .mr import random_protocol, simulate_mr

    plans: list[tuple[str, str]] = [("axial", str(c)) for c in cfg["contrasts"]]
    if rng.random() < float(cfg["p_sagittal"]):
        plans.append(("sagittal", "T2"))
    enhanced_index = int(rng.integers(len(plans))) if rng.random() < float(cfg["p_enhanced"]) else -1
    series_out: list[dict] = []
    n_images = 0
    for number, (plane, contrast) in enumerate(plans, start=1):
        protocol = random_protocol(rng, cfg["protocol"], f"{plane}_{contrast.lower()}")
        img = simulate_mr(subject, protocol, rng)
        enhanced = number - 1 == enhanced_index
        ori = np.asarray(img.orientation, np.float64)
        pos = np.asarray(img.image_position_mm, np.float64)
        reverse, n = _sorted_k(pos, ori)
        rescale = (
            (round(float(rng.uniform(0.5, 2.0)), 3), 0.0) if rng.random() < float(cfg["p_rescale"]) else None
        )
        short = "AX" if plane == "axial" else "SAG"
        folder = f"MR_{short}_{contrast}" + ("_enhanced" if enhanced else "")
        desc = f"{short} {contrast} {'STIR' if contrast == 'STIR' else 'FSE'}".replace("STIR STIR", "STIR")
        dss = write_mr_series(
            root / "dicom" / folder,
            study,
            SeriesInfo(number, desc),
            img.volume,
            pos,
            ori,
            (float(img.pixel_spacing_mm[0]), float(img.pixel_spacing_mm[1])),
            float(img.slice_thickness_mm),
            _mr_acquisition(protocol, contrast),
            enhanced=enhanced,
            rescale=None if enhanced else rescale,
        )
        labels = img.labels[::-1] if reverse else img.labels
        seg_rel = f"seg/{folder}.dcm"
        write_seg(root / seg_rel, study, dss, labels, 100 + number)
        nodules = []
        for d in img.nodules:
            entry = {k: v for k, v in d.items() if k not in ("center_voxel", "center_patient_mm")}
            k, i, j = (float(v) for v in d["center_voxel"])
            entry["center_voxel"] = [round(n - 1 - k if reverse else k, 3), round(i, 3), round(j, 3)]
            cp = d.get("center_patient_mm")
            entry["center_patient_mm"] = None if cp is None else [round(float(v), 3) for v in cp]
            nodules.append(_jsonable(entry))
        series_out.append(
            {
                "series_instance_uid": dss[0].SeriesInstanceUID,
                "folder": f"dicom/{folder}",
                "seg": seg_rel,
                "kind": "mr_enhanced" if enhanced else f"mr_{plane}",
                "plane": plane,
                "contrast": contrast,
                "n_frames": n,
                "orientation": [round(float(v), 6) for v in ori],
                "pixel_spacing_mm": [ds_value(v) for v in img.pixel_spacing_mm],
                "slice_thickness_mm": ds_value(img.slice_thickness_mm),
                "rescale": None if enhanced or rescale is None else list(rescale),
                "nodules": nodules,
            }
        )
        n_images += n
    return series_out, n_images


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class _Job:
    modality: str
    index: int
    seed: int
    out_dir: Path
    config: dict[str, Any]


def _generate_one(job: _Job) -> tuple[Path, int]:
    """Write case ``job.index``; returns its folder and the number of images (frames) written."""
    from .anatomy import AnatomyConfig, make_subject

    name = f"case_{job.index:04d}"
    root = job.out_dir / name
    sub_seed = case_seed(job.seed, job.index)
    subject = make_subject(sub_seed, AnatomyConfig.from_dict(job.config["anatomy"]))
    rng = np.random.default_rng(np.random.SeedSequence([sub_seed, 0x5CA7]))
    study = StudyInfo.create(name, sub_seed, job.modality.upper())
    if job.modality == "us":
        series, n_images = _us_case(subject, rng, job.config, study, root)
    else:
        series, n_images = _mr_case(subject, rng, job.config, study, root)
    truth = subject.ground_truth()
    doc = {
        "schema": SCHEMA,
        "case": name,
        "seed": sub_seed,
        "run_seed": job.seed,
        "modality": job.modality.upper(),
        "study_instance_uid": study.study_instance_uid,
        **{k: v for k, v in truth.items() if k != "seed"},
        "series": series,
    }
    from ..fileio import write_text_atomic

    write_text_atomic(json.dumps(_jsonable(doc), indent=1) + "\n", root / "ground_truth.json")
    return root, n_images


class _Progress:
    """One stderr line: done/total cases, cases/min, images/min, ETA."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, images: int, final: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-6)
        per_min = 60.0 * done / elapsed
        eta = (self.total - done) * elapsed / done if done else float("nan")
        eta_txt = f"{eta:5.0f}s" if math.isfinite(eta) else "    ?"
        line = (
            f"{self.label}: {done}/{self.total} cases  {per_min:6.1f} cases/min  "
            f"{60.0 * images / elapsed:7.0f} images/min  ETA {eta_txt}"
        )
        if final and not self.tty:
            return  # the last update already printed this line
        print(
            ("\r" if self.tty else "") + line,
            end="\n" if final or not self.tty else "",
            file=sys.stderr,
            flush=True,
        )


def generate_cases(
    modality: Literal["us", "mr"],
    n_cases: int,
    seed: int,
    out_dir: Path,
    config: dict | None = None,
    progress: bool = True,
    workers: int = 2,
) -> list[Path]:
    """Generate ``n_cases`` phantom cases under ``out_dir`` (``case_0000`` …); returns their folders.

    ``config`` overrides :data:`DEFAULTS` (keys as in ``configs/phantom_<modality>.yaml``). Case ``i``
    depends only on ``(seed, i)`` and the config. Cases run in a process pool of ``workers`` when
    ``n_cases > 1``; a stderr progress line is printed unless ``progress=False``.
    """
    if n_cases < 0:
        raise ConfigError(f"number of cases must be >= 0, got {n_cases}")
    cfg = load_config(modality, config)
    from .anatomy import AnatomyConfig

    AnatomyConfig.from_dict(cfg["anatomy"])  # fail early on bad sections, before any worker starts
    if modality == "us":
        from .ultrasound import random_probe

        random_probe(np.random.default_rng(0), cfg["probe"])
    else:
        from .mr import MRConfig

        MRConfig.from_dict(cfg["protocol"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [_Job(modality, i, int(seed), out_dir, cfg) for i in range(n_cases)]
    bar = _Progress(n_cases, f"phantom {modality}", progress)
    results: list[tuple[Path, int]] = []
    if n_cases > 1 and workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, n_cases)) as pool:
            for res in pool.map(_generate_one, jobs):
                results.append(res)
                bar.update(len(results), sum(r[1] for r in results))
    else:
        for job in jobs:
            results.append(_generate_one(job))
            bar.update(len(results), sum(r[1] for r in results))
    bar.update(len(results), sum(r[1] for r in results), final=True)
    return [r[0] for r in results]
