"""Calibration maps, ECE and the reliability diagram against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from backmice_vision.errors import ConfigError
from backmice_vision.model.calibration import (
    apply_calibration,
    expected_calibration_error,
    fit_calibration,
    reliability_diagram,
)


def test_ece_hand_computed():
    probs = [0.05, 0.15, 0.95, 0.85, 0.9]
    labels = [0, 1, 1, 0, 1]
    # bins (10): 0.05 -> b0 gap .05; 0.15 -> b1 gap .85; 0.85 and 0.9 -> b8 (0.9 is its upper edge),
    # conf .875 acc .5; 0.95 -> b9 gap .05
    expected = (0.05 + 0.85 + 2 * 0.375 + 0.05) / 5
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert expected_calibration_error([0.5, 0.5], [0, 1], n_bins=2) == 0.0


def test_platt_recovers_a_known_logistic_map():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.01, 0.99, 20000)
    z = np.log(s / (1 - s))
    true_p = 1 / (1 + np.exp(-(2.0 * z - 1.0)))
    y = (rng.random(s.size) < true_p).astype(int)
    params = fit_calibration(s, y, "platt")
    assert params["a"] == pytest.approx(2.0, abs=0.1)
    assert params["b"] == pytest.approx(-1.0, abs=0.1)
    json.dumps(params)
    cal = apply_calibration(params, s)
    assert expected_calibration_error(cal, y) < expected_calibration_error(s, y)
    assert expected_calibration_error(cal, y) < 0.02


def test_platt_on_separable_data_stays_finite():
    params = fit_calibration([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], "platt")
    assert math.isfinite(params["a"]) and params["a"] > 0
    p = apply_calibration(params, [0.1, 0.9])
    assert p[0] < 0.5 < p[1]


def test_isotonic_pools_violators():
    params = fit_calibration([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], "isotonic")
    assert params["x"] == [0.1, 0.2, 0.3, 0.4]
    assert params["y"] == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert apply_calibration(params, [0.25]) == pytest.approx([0.5])
    tied = fit_calibration([0.3, 0.3, 0.6], [0, 1, 1], "isotonic")
    assert tied["x"] == [0.3, 0.6] and tied["y"] == pytest.approx([0.5, 1.0])


def test_histogram_binning_and_identity():
    params = fit_calibration([0.1, 0.15, 0.9], [1, 0, 1], "histogram", n_bins=2)
    assert params["values"] == pytest.approx([0.5, 1.0])
    assert apply_calibration(params, [0.2, 0.7]) == pytest.approx([0.5, 1.0])
    assert apply_calibration(None, [1.2, 0.3]) == pytest.approx([1.0, 0.3])


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="one label per score"):
        fit_calibration([0.1, 0.2], [1])
    with pytest.raises(ConfigError, match="0 or 1"):
        fit_calibration([0.1], [2])
    with pytest.raises(ConfigError, match="unknown calibration method"):
        fit_calibration([0.1], [1], "magic")
    with pytest.raises(ConfigError, match="malformed"):
        apply_calibration({"method": "platt"}, [0.5])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    out = reliability_diagram(p, y, tmp_path / "plots" / "rel.png")
    with Image.open(out) as img:
        assert img.size == (400, 400)
        px = np.asarray(img.convert("RGB"))
    assert (px[..., 0] > 200).sum() > 0 and (
        (px[..., 2] > 200) & (px[..., 0] < 220)
    ).sum() > 100  # bars drawn
