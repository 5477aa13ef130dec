"""ONNX / TorchScript export: same outputs as torch on a real model input of another size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import tiny_bundle, write_mr_with_seg

from backmice_vision.errors import ConfigError, ModelError
from backmice_vision.model.bundle import load_bundle
from backmice_vision.model.export import export_model
from backmice_vision.model.inference import make_tiles, pad_batch


@pytest.fixture(scope="module")
def model_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    from backmice_vision.io import load_series

    root = tmp_path_factory.mktemp("export")
    series_dir, _, _, _ = write_mr_with_seg(root / "data")
    bundle = tiny_bundle(root / "m")
    tiles = make_tiles(load_series(series_dir), load_bundle(bundle).preprocessing, frames=[1, 2])
    x = pad_batch([t.image for t in tiles], 16)
    assert x.shape[2:] != (128, 128)  # not the tracing size: exercises the dynamic axes
    return bundle, x


def reference(bundle: Path, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return load_bundle(bundle).network(torch.from_numpy(x)).numpy()


def test_onnx_matches_torch(model_input: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    import onnxruntime as ort

    bundle, x = model_input
    path = export_model(bundle, "onnx", tmp_path / "out")
    assert path == tmp_path / "out" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"image": x})
    assert np.abs(got - reference(bundle, x)).max() < 1e-4


def test_torchscript_matches_torch(model_input: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    bundle, x = model_input
    path = export_model(bundle, "torchscript", tmp_path / "model.ts")
    net = torch.jit.load(str(path))
    with torch.inference_mode():
        got = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - reference(bundle, x)).max() < 1e-4


def test_export_errors(model_input: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx or torchscript"):
        export_model(model_input[0], "tflite", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="model folder not found"):
        export_model(tmp_path / "none", "onnx", tmp_path / "x")


@pytest.mark.parametrize("modality", ["MR", "US"])
def test_onnxruntime_backend_matches_torch(tmp_path: Path, modality: str) -> None:
    from export_factory import us

    from backmice_vision.io import load_series
    from backmice_vision.model.detector import Detector

    bundle = tiny_bundle(tmp_path / "m", modality)
    if modality == "MR":
        series = load_series(write_mr_with_seg(tmp_path / "data")[0])
    else:  # colour cine, tissue region offset inside the frame; with test-time flipping
        series = us(tmp_path / "us.dcm", 3, rows=120, cols=140)
    flip = modality == "US"
    ref = Detector(bundle, "cpu", flip=flip).probabilities(series)
    detector = Detector(bundle, backend="onnxruntime", flip=flip)
    assert detector.device.type == "cpu"
    timings: dict[str, float] = {}
    got = detector.probabilities(series, timings)
    assert got.shape == ref.shape == (5, *series.shape) and got.dtype == np.float32
    assert 0.0 < np.abs(got - ref).max() < 1e-4  # a different engine, the same probabilities
    assert ref.std() > 0.01 and timings["model"] > 0
    result = detector.detect(series)
    assert np.abs(result.nodule_probability - ref[3]).max() < 1e-4


def test_backend_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from backmice_vision.model.detector import Detector
    from backmice_vision.pipeline import DetectorSpec

    bundle = tiny_bundle(tmp_path / "m")
    with pytest.raises(ConfigError, match="backend must be torch or onnxruntime"):
        Detector(bundle, "cpu", backend="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision must be float32 or bfloat16, not 'float16'"):
        Detector(bundle, "cpu", precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="onnxruntime backend runs in float32 only"):
        Detector(bundle, backend="onnxruntime", precision="bfloat16")
    with pytest.raises(ConfigError, match="precision must be float32 or bfloat16"):
        DetectorSpec.of(bundle, "cpu", precision="half")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ModelError, match="needs the onnxruntime package"):
        Detector(bundle, "cpu", backend="onnxruntime")
