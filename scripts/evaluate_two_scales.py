"""Measure a two-scale inference before it is built into the package (issue 17).

``python scripts/evaluate_two_scales.py evaluate --data DIR [DIR ...] --model BUNDLE --out OUT``: the
``backmice evaluate`` command with every series' class probabilities replaced by the mean of the
bundle's own (at its model spacing) and those at ``1/1.25`` of that spacing, i.e. the image shown 1.25
times larger. The confidence calibration stays the bundle's (fitted at one scale), so the ECE is not
that of a calibrated two-scale model.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from backmice_vision import cli
from backmice_vision.model import inference

FINER = 1.25
_one_scale = inference.predict_probabilities


def _two_scales(model: Any, series: Any, device: Any = "auto", *, prep: Any = None, **kw: Any) -> np.ndarray:
    prep = prep if prep is not None else model.preprocessing
    net = getattr(model, "network", model)
    finer = dataclasses.replace(prep, spacing_mm=prep.spacing_mm / FINER)
    return 0.5 * (
        _one_scale(net, series, device, prep=prep, **kw) + _one_scale(net, series, device, prep=finer, **kw)
    )


if __name__ == "__main__":
    inference.predict_probabilities = _two_scales  # the detector looks it up at call time
    sys.exit(cli.main(sys.argv[1:]))
