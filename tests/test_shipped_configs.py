"""Every config in ``configs/`` is read and checked as the commands that use it would: a key misspelt in
a training stage or a phantom preset fails here, not minutes into a background run."""

from __future__ import annotations

from pathlib import Path

import pytest

from backmice_vision.model.inference import Preprocessing
from backmice_vision.model.synthetic import SyntheticSource
from backmice_vision.model.train import load_config
from backmice_vision.phantoms.cli import load_yaml_config
from backmice_vision.phantoms.generate import generate_cases

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN = sorted(CONFIGS.glob("train_*.yaml"))
PHANTOM = sorted(CONFIGS.glob("phantom_*.yaml"))


def test_the_repository_has_training_and_phantom_configs() -> None:
    assert len(TRAIN) >= 10 and len(PHANTOM) >= 6


@pytest.mark.parametrize("path", PHANTOM, ids=lambda p: p.stem)
def test_phantom_config_is_accepted_by_the_generator(path: Path, tmp_path: Path) -> None:
    cfg = load_yaml_config(path)
    modality = str(cfg["modality"]).lower()
    assert path.stem.startswith(f"phantom_{modality}")
    # zero cases: every section is checked (the generator fails early on a bad key), nothing is written
    assert generate_cases(modality, 0, 0, tmp_path / "out", cfg, progress=False) == []
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.stem)
def test_training_config_loads_with_its_sources(path: Path) -> None:
    cfg = load_config(path)
    prep = Preprocessing.from_dict(cfg["preprocessing"])
    assert prep.modality == cfg["modality"]
    sources = cfg["data"]["train"] + cfg["data"]["val"]
    for src in sources:
        if src.get("type") == "synthetic":
            SyntheticSource.from_config(src, prep)
        generate = src.get("generate") or {}
        if generate.get("config"):  # a phantom source made on first use names an existing preset
            named = CONFIGS.parent / generate["config"]
            assert named.is_file(), f"{path.name}: {generate['config']} does not exist"
            assert str(load_yaml_config(named)["modality"]).upper() == cfg["modality"]
