"""backmice_vision: find back mice in lower-back ultrasound and MRI DICOM series.

The public API is small and lazily imported (``import backmice_vision as bmv`` does
not import torch)::

    series = bmv.load_series("study/US0001.dcm")
    detector = bmv.Detector.from_pretrained()
    result = detector.detect(series)
    result.save("out/")

or, with one error policy and the detector loaded once per process (what ``backmice batch``, ``backmice
detect`` and the DICOM node run)::

    outcome = bmv.run_series("study/US0001.dcm", out_dir="out/")   # status "ok" or "failed", error, paths
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    BackmiceError,
    ConfigError,
    InconsistentSeries,
    InvalidDicom,
    ModelError,
    UnsupportedSeries,
)
from .types import DetectionResult, FasciaDefect, ImageSeries, NeedleTarget, Nodule, SeriesRef

if TYPE_CHECKING:
    from .io import find_series, load_series
    from .model.detector import Detector, detect
    from .pipeline import run_series

_LAZY = {
    "find_series": ("io", "find_series"),
    "load_series": ("io", "load_series"),
    "Detector": ("model.detector", "Detector"),
    "detect": ("model.detector", "detect"),
    "run_series": ("pipeline", "run_series"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'backmice_vision' has no attribute {name!r}")


__all__ = [
    "BackmiceError",
    "ConfigError",
    "DetectionResult",
    "Detector",
    "FasciaDefect",
    "ImageSeries",
    "InconsistentSeries",
    "InvalidDicom",
    "ModelError",
    "NeedleTarget",
    "Nodule",
    "SeriesRef",
    "UnsupportedSeries",
    "__version__",
    "detect",
    "find_series",
    "load_series",
    "run_series",
]
