"""Files shipped with the package: the model bundles and the default configs.

The repository keeps them in the top-level folders ``models/`` and ``configs/``; ``pyproject.toml`` maps
those to the packages ``backmice_vision.models`` and ``backmice_vision.configs``, so an editable install
reads them in place and a wheel carries them. Import-light (no numpy, no torch).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import BackmiceError


def _folder(package: str) -> Path:
    root = resources.files(package)
    if not isinstance(root, Path):
        raise BackmiceError(f"{package} is not a folder on disk ({root}): install backmice-vision unzipped")
    return root


def models_dir() -> Path:
    """The folder of the shipped model bundles (``models/``: one sub-folder per bundle)."""
    return _folder("backmice_vision.models")


def configs_dir() -> Path:
    """The folder of the shipped configs (``configs/``: inference thresholds, phantom settings)."""
    return _folder("backmice_vision.configs")


def config_path(name: str) -> Path:
    """One shipped config file, e.g. ``config_path("inference.yaml")``."""
    return configs_dir() / name
