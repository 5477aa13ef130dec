"""Finding and loading DICOM series: :func:`find_series` (headers only) and :func:`load_series`.

Conventions (voxel index, LPS millimetres, affine, ultrasound regions) are those of
:mod:`backmice_vision.types`. MR rules: :mod:`backmice_vision.io.mr`; ultrasound calibration and colour:
:mod:`backmice_vision.io.us`.
"""

from __future__ import annotations

from .load import DEFAULT_MAX_BYTES, load_series, plan_series
from .reader import find_series

__all__ = ["DEFAULT_MAX_BYTES", "find_series", "load_series", "plan_series"]
