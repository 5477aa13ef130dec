"""Bundles: checksum and metadata checks, atomic writes, and the Detector on a real (tiny) bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_factory import tiny_bundle, write_mr_with_seg

from backmice_vision.errors import ModelError
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.model import bundle as bundle_mod
from backmice_vision.model.bundle import load_bundle, sha256_of


def test_round_trip_metadata_and_checksum(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    b = load_bundle(path)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["sha256"] == sha256_of(path / "model.pt")
    assert meta["intended_use"].startswith("research, not diagnosis")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        str(i): c for i, c in enumerate(MODEL_CLASSES)
    }
    assert b.modality == "MR" and b.preprocessing.in_channels == 3
    assert not b.network.training
    assert (path / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_overwrite_is_atomic_and_replaces(tmp_path: Path) -> None:
    tiny_bundle(tmp_path / "m", seed=0)
    first = sha256_of(tmp_path / "m" / "model.pt")
    tiny_bundle(tmp_path / "m", seed=1)
    assert sha256_of(tmp_path / "m" / "model.pt") != first
    load_bundle(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_corrupted_weights(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    data = bytearray((path / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256") as exc:
        load_bundle(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model folder not found"):
        load_bundle(tmp_path / "nothing")
    path = tiny_bundle(tmp_path / "m")
    (path / "model.pt").unlink()
    with pytest.raises(ModelError, match=r"no model\.pt"):
        load_bundle(path)


def test_wrong_modality_and_classes(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    with pytest.raises(ModelError, match="model is for MR, the series is US"):
        load_bundle(path, modality="US")
    meta = json.loads((path / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "nodule"}
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model classes"):
        load_bundle(path)


def test_weights_that_do_not_fit_the_network(tmp_path: Path) -> None:
    path = tiny_bundle(tmp_path / "m")
    meta = json.loads((path / "metadata.json").read_text())
    meta["network"]["kwargs"]["channels"] = [8, 16, 32]
    (path / "metadata.json").write_text(json.dumps(meta))
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
