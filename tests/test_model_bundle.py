"""Bundles: the MONAI layout of the shipped models, checksum and metadata checks, atomic writes, the
Detector on a real (tiny) bundle, and ``python -m monai.bundle run`` against ``backmice detect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_factory import tiny_bundle, write_mr_with_seg

from backmice_vision.errors import ModelError
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.model import bundle as bundle_mod
from backmice_vision.model.bundle import (
    CARD,
    INFERENCE,
    INFERENCE_CONFIG,
    METADATA,
    MONAI_REQUIRED_KEYS,
    RUN_SECTION,
    WEIGHTS,
    load_bundle,
    sha256_of,
)

# MONAI bundle specification: the keys of each network_data_format input and output.
IO_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data")
SHIPPED = ["backmice_us", "backmice_mr"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_layout_and_monai_metadata(name: str) -> None:
    """The shipped models are MONAI bundles: the four files, the specification's required metadata keys
    (checked here: ``monai.bundle verify_metadata`` downloads its schema), the same inference.json as the
    writer's, a model card with the sections users need, and weights that load strictly by checksum."""
    root = bundle_mod.MODELS_DIR / name
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        str(p) for p in (METADATA, INFERENCE, WEIGHTS, CARD)
    )
    meta = json.loads((root / METADATA).read_text())
    assert [k for k in MONAI_REQUIRED_KEYS if k not in meta] == []
    assert meta["authors"] and meta["copyright"] and meta["description"]
    packages = meta["optional_packages_version"]
    assert isinstance(packages, dict) and "pydicom" in packages and "backmice_vision" in packages
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    for part in (image, pred):
        assert [k for k in (*IO_KEYS, "channel_def") if k not in part] == []
        assert len(part["channel_def"]) == part["num_channels"]
    assert image["modality"] == meta["modality"] == name[-2:].upper()
    assert json.loads((root / INFERENCE).read_text()) == INFERENCE_CONFIG
    card = (root / CARD).read_text()
    for heading in ("Intended use", "## Training", "## Validation", "## Limitations", RUN_SECTION):
        assert heading in card
    b = load_bundle(root, modality=meta["modality"])
    assert sha256_of(root / WEIGHTS) == meta["sha256"] and b.model_id == name


def test_old_flat_layout_is_named(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    (path / METADATA).rename(path / "metadata.json")
    with pytest.raises(ModelError, match=r"old flat layout: move metadata\.json to configs/metadata\.json"):
        load_bundle(path)


def test_round_trip_metadata_and_checksum(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    b = load_bundle(path)
    meta = json.loads((path / METADATA).read_text())
    assert meta["sha256"] == sha256_of(path / WEIGHTS)
    assert meta["intended_use"].startswith("research, not diagnosis")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        str(i): c for i, c in enumerate(MODEL_CLASSES)
    }
    assert b.modality == "MR" and b.preprocessing.in_channels == 3
    assert not b.network.training
    card = (path / CARD).read_text()
    assert card.startswith("# tiny test model") and card.count(RUN_SECTION) == 1
    assert json.loads((path / INFERENCE).read_text()) == INFERENCE_CONFIG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_overwrite_is_atomic_and_replaces(tmp_path: Path) -> None:
    tiny_bundle(tmp_path / "m", seed=0)
    first = sha256_of(tmp_path / "m" / WEIGHTS)
    tiny_bundle(tmp_path / "m", seed=1)
    assert sha256_of(tmp_path / "m" / WEIGHTS) != first
    load_bundle(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_corrupted_weights(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    data = bytearray((path / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256") as exc:
        load_bundle(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        load_bundle(tmp_path / "nothing")
    path = tiny_bundle(tmp_path / "m")
    (path / WEIGHTS).unlink()
    with pytest.raises(ModelError, match=r"no models/model\.pt"):
        load_bundle(path)


def test_wrong_modality_and_classes(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    with pytest.raises(ModelError, match="model is for MR, the series is US"):
        load_bundle(path, modality="US")
    meta = json.loads((path / METADATA).read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "nodule"}
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model classes"):
        load_bundle(path)


def test_weights_that_do_not_fit_the_network(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    meta = json.loads((path / METADATA).read_text())
    meta["network"]["kwargs"]["channels"] = [8, 16, 32]
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not fit the network"):
        load_bundle(path)


def test_detector_on_a_bundle(tmp_path: Path) -> None:
    from backmice_vision.io import load_series
    from backmice_vision.model.detector import Detector

    series_dir, _, _, _ = write_mr_with_seg(tmp_path / "data")
    det = Detector.from_pretrained(
        tiny_bundle(tmp_path / "m"), device="cpu", thresholds={"nodule_threshold": 0.3}
    )
    series = load_series(series_dir)
    res = det.detect(series)
    assert res.label_map.shape == series.shape and res.label_map.dtype == np.uint8
    assert res.nodule_probability.shape == series.shape and res.nodule_probability.dtype == np.float32
    assert res.nodule_probability.base is None  # owns its memory: the 5-class map is freed after detect
    assert set(res.timings_s) == {"preprocess", "model", "postprocess"}
    assert res.model_id == "tiny_mr" and res.thresholds["nodule_threshold"] == 0.3
    assert 0.0 <= res.series_probability <= 1.0
    assert det.bundle_for("MR") is det.bundle_for("MR")  # loaded once


def test_instance_normalised_network_round_trips_and_detects(tmp_path: Path) -> None:
    """A network spec whose norm is a JSON list (``configs/train_mr_dr_fine_instnorm.yaml``) is stored in
    the metadata as written, rebuilt with instance norms on load, and runs the whole detection."""
    import torch

    from backmice_vision.io import load_series
    from backmice_vision.model.detector import Detector

    norm = ["instance", {"affine": True}]
    path = tiny_bundle(tmp_path / "m", norm=norm)
    assert json.loads((path / METADATA).read_text())["network"]["kwargs"]["norm"] == norm
    b = load_bundle(path)
    norms = [m for m in b.network.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine for m in norms)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.network.modules())
    series_dir, _, _, _ = write_mr_with_seg(tmp_path / "data")
    series = load_series(series_dir)
    res = Detector.from_pretrained(path, device="cpu").detect(series)
    assert res.label_map.shape == series.shape
    assert np.isfinite(res.nodule_probability).all()


def test_bundle_postprocessing_applies_over_the_config_and_under_the_callers_thresholds(
    tmp_path: Path,
) -> None:
    from backmice_vision.io import load_series
    from backmice_vision.model.detector import Detector

    series_dir, _, _, _ = write_mr_with_seg(tmp_path / "data")
    path = tiny_bundle(tmp_path / "m")
    meta = json.loads((path / METADATA).read_text())
    meta["postprocessing"] = {"nodule_grow_threshold": 0.25, "min_volume_mm3": 40}
    (path / METADATA).write_text(json.dumps(meta))
    series = load_series(series_dir)
    res = Detector.from_pretrained(path, device="cpu").detect(series)
    assert res.thresholds["nodule_grow_threshold"] == 0.25 and res.thresholds["min_volume_mm3"] == 40
    assert res.thresholds["nodule_threshold"] == 0.5  # the rest from configs/inference.yaml
    caller = Detector.from_pretrained(path, device="cpu", thresholds={"nodule_grow_threshold": 0.4})
    assert caller.thresholds_for("MR")["nodule_grow_threshold"] == 0.4
    meta["postprocessing"] = {"nodule_grow": 0.25}
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unknown threshold 'nodule_grow'"):
        load_bundle(path)


def test_cpu_bundle_runs_channels_last_with_the_same_probabilities(tmp_path: Path) -> None:
    """On the CPU the loaded network is NHWC (faster oneDNN convolutions); its probabilities equal those
    of the same weights in the default NCHW layout."""
    import copy

    import torch

    from backmice_vision.io import load_series
    from backmice_vision.model.inference import predict_probabilities

    series = load_series(write_mr_with_seg(tmp_path / "data")[0])
    b = load_bundle(tiny_bundle(tmp_path / "m", seed=3), device="cpu")
    convs = [p for p in b.network.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    nchw = copy.deepcopy(b.network).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    assert all(p.is_contiguous() for p in nchw.parameters())
    fast = predict_probabilities(b, series, "cpu")
    plain = predict_probabilities(nchw, series, "cpu", prep=b.preprocessing)
    assert fast.flags.c_contiguous and fast.dtype == np.float32
    assert np.abs(fast - plain).max() < 1e-5
    assert np.allclose(fast.sum(axis=0), 1.0, atol=1e-5)


def test_detector_default_models_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backmice_vision.model.detector import Detector

    monkeypatch.setattr(bundle_mod, "MODELS_DIR", tmp_path / "models")
    det = Detector.from_pretrained(device="cpu")  # lazy: nothing loaded yet
    with pytest.raises(ModelError, match="model folder not found"):
        det.bundle_for("US")


def _offline_prefix() -> tuple[list[str], dict[str, str]]:
    """Run a command without a network: in a new network namespace (only a loopback that is down) when
    this machine allows it, else with every proxy pointing at a closed loopback port."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], env
    dead = "http://127.0.0.1:9"
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, no_proxy="")
    return [], env


def _monai_run(root: Path, input_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m monai.bundle run`` exactly as the model card documents it, offline."""
    import torch

    prefix, env = _offline_prefix()
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # as this process: the same kernels, the same sums
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root)]
    cmd += ["--config_file", str(root / INFERENCE), "--meta_file", str(root / METADATA)]
    cmd += ["--input_path", str(input_path), "--output_dir", str(out), *extra]
    return subprocess.run(prefix + cmd, capture_output=True, text=True, env=env, timeout=300)


def _without_timings(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("timings_s", "outputs")}


PHANTOM = {
    "us": {
        "anatomy": {"force_nodules": 1, "nodule_long_axis_mm": [14.0, 20.0], "habitus": "overweight"},
        "probe": {"depth_mm": 35.0, "width_mm": 40.0, "pixel_mm": 0.1},
        "single_series": [1, 1],
        "images_per_series": [1, 1],
        "p_cine": 0.0,
        "p_dual": 0.0,
        "p_on_nodule": 1.0,
    },
    "mr": {
        "anatomy": {"force_nodules": 1, "nodule_long_axis_mm": [16.0, 24.0]},
        "protocol": {"axial_slices": [8, 8], "p_small_fov": 0.0},
        "contrasts": ["T1"],
        "p_sagittal": 0.0,
        "p_enhanced": 0.0,
    },
}


@pytest.mark.parametrize("modality", ["us", "mr"])
def test_monai_bundle_run_writes_what_backmice_detect_writes(tmp_path: Path, modality: str) -> None:
    """The documented ``monai.bundle run`` command on the shipped model, without a network, writes the
    same files as ``backmice detect`` on the same input: the same report (timings aside), the same SEG
    segments and pixels, the same SR measurements."""
    import pydicom

    from backmice_vision.cli import main
    from backmice_vision.phantoms.generate import generate_cases

    config = PHANTOM[modality]
    (case,) = generate_cases(modality, 1, 3, tmp_path / "ph", config=config, progress=False, workers=1)
    series_dirs = sorted(p for p in (case / "dicom").iterdir() if p.is_dir())
    source = sorted(series_dirs[0].glob("*.dcm"))[0] if modality == "us" else series_dirs[0]
    root = bundle_mod.MODELS_DIR / f"backmice_{modality}"
    proc = _monai_run(root, source, tmp_path / "bundle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["detect", str(source), "--out", str(tmp_path / "detect")]) == 0
    names = sorted(p.name for p in (tmp_path / "detect").iterdir())
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == names
    assert {"report.json", "seg.dcm", "sr.dcm"} <= set(names)
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("bundle", "detect")]
    assert reports[0]["model"] == reports[1]["model"]
    assert _without_timings(reports[0]) == _without_timings(reports[1])
    assert reports[0]["findings"], "the phantom nodule was not found: the comparison would be empty"
    segs = [pydicom.dcmread(tmp_path / d / "seg.dcm") for d in ("bundle", "detect")]
    assert np.array_equal(segs[0].pixel_array, segs[1].pixel_array)
    labels = [[s.SegmentLabel for s in seg.SegmentSequence] for seg in segs]
    assert labels[0] == labels[1]

    def values(path: Path) -> list[float]:
        out: list[float] = []

        def walk(items: Any) -> None:
            for item in items:
                if item.get("ValueType") == "NUM":
                    out.append(float(item.MeasuredValueSequence[0].NumericValue))
                walk(item.get("ContentSequence", []))

        walk(pydicom.dcmread(path).ContentSequence)
        return out

    # two processes: the CPU kernels may sum in another order (seen: 0.6118789487 vs 0.6118789558)
    got, want = values(tmp_path / "bundle" / "sr.dcm"), values(tmp_path / "detect" / "sr.dcm")
    assert want and got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_monai_bundle_run_bad_input_is_one_line(tmp_path: Path) -> None:
    """A file that is not DICOM: exit code 1 and the CLI's one-line error naming the file, no traceback."""
    bad = tmp_path / "notdicom.dcm"
    bad.write_bytes(b"not a DICOM file at all" * 10)
    proc = _monai_run(bundle_mod.MODELS_DIR / "backmice_us", bad, tmp_path / "out")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("backmice: error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
