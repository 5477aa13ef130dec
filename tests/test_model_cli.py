"""The model commands through ``backmice`` (exit codes and one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_factory import tiny_bundle

from backmice_vision.cli import main
from backmice_vision.model.bundle import WEIGHTS


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tiny_bundle(tmp_path / "m")
    assert (
        main(["export", "--format", "torchscript", "--model", str(bundle), "--out", str(tmp_path / "o")]) == 0
    )
    assert (tmp_path / "o" / "model.ts").is_file()
    assert "model.ts" in capsys.readouterr().out


def test_model_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tiny_bundle(tmp_path / "m")
    (bundle / WEIGHTS).write_bytes(b"not a model")
    assert main(["export", "--format", "onnx", "--model", str(bundle), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("backmice: error: ") and "sha256" in err and err.count("\n") == 1


def test_train_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "training config not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("modality: US\ndata: {train: []}\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "non-empty 'train' and 'val'" in capsys.readouterr().err
