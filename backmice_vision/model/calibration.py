"""Probability calibration: Platt scaling, isotonic regression, histogram binning; ECE and reliability plots.

Scores are detector outputs in ``[0, 1]`` (e.g. the mean nodule probability inside a component) or raw
logits. Calibration parameters are plain JSON-serialisable dicts, stored next to the model weights::

    {"method": "platt", "input": "probability", "a": 1.7, "b": -0.4}   # p = sigmoid(a * logit(s) + b)
    {"method": "isotonic", "x": [...], "y": [...]}                     # p = interp(s, x, y), monotone
    {"method": "histogram", "edges": [...], "values": [...]}           # p = values[bin(s)]
    {"method": "identity"}                                             # p = s (clipped to [0, 1])

Only numpy is needed (no scikit-learn); the reliability diagram is drawn with Pillow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

_EPS = 1e-6
IDENTITY: dict[str, Any] = {"method": "identity"}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _as_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ConfigError(f"calibration needs one label per score, got {s.size} scores and {y.size} labels")
    if s.size == 0:
        raise ConfigError("calibration needs at least one score")
    if not np.all(np.isfinite(s)):
        raise ConfigError("calibration scores contain NaN or infinity")
    if not np.all((y == 0) | (y == 1)):
        raise ConfigError("calibration labels must be 0 or 1")
    return s, y


def fit_platt(z: np.ndarray, y: np.ndarray, *, ridge: float = 1e-3, n_iter: int = 50) -> tuple[float, float]:
    """Fit ``p = sigmoid(a * z + b)`` by Newton's method on the log-loss.

    Platt's smoothed targets (``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``) keep the fit finite on
    separable data; ``ridge`` adds a small L2 penalty on ``a`` and ``b``. Returns ``(a, b)``.
    """
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.zeros(2)
    for _ in range(n_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - t) + ridge * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[0]), float(w[1])


def _pava(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing fit of ``y`` (already sorted by score)."""
    values: list[float] = []
    sizes: list[float] = []
    counts: list[int] = []  # distinct scores pooled into each block
    for v, wt in zip(y, weights, strict=True):
        values.append(float(v))
        sizes.append(float(wt))
        counts.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            tot = sizes[-2] + sizes[-1]
            values[-2] = (values[-2] * sizes[-2] + values[-1] * sizes[-1]) / tot
            sizes[-2] = tot
            counts[-2] += counts[-1]
            del values[-1], sizes[-1], counts[-1]
    return np.repeat(values, counts)


def fit_calibration(
    scores: Any, labels: Any, method: str = "platt", *, input: str = "probability", n_bins: int = 10
) -> dict[str, Any]:
    """Fit a calibration map from detector scores to the probability of a true finding.

    Parameters
    ----------
    scores : array-like of float
        Detector scores, probabilities in ``[0, 1]`` (``input="probability"``) or logits
        (``input="logit"``).
    labels : array-like of {0, 1}
        1 where the finding was real.
    method : {"platt", "isotonic", "histogram"}
    n_bins : int
        Equal-width bins over ``[0, 1]`` for ``"histogram"``.

    Returns
    -------
    dict
        JSON-serialisable parameters for :func:`apply_calibration`, including ``n`` (samples used).
    """
    s, y = _as_arrays(scores, labels)
    if input not in ("probability", "logit"):
        raise ConfigError(f"calibration input must be 'probability' or 'logit', not {input!r}")
    if method == "platt":
        z = _logit(s) if input == "probability" else s
        a, b = fit_platt(z, y)
        return {"method": "platt", "input": input, "a": a, "b": b, "n": int(s.size)}
    if input == "logit":
        s = _sigmoid(s)
    if method == "isotonic":
        # tied scores are pooled first: one (mean label, weight) per distinct score
        xs, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=y) / counts
        ys = _pava(means, counts.astype(np.float64))
        return {"method": "isotonic", "x": xs.tolist(), "y": ys.tolist(), "n": int(s.size)}
    if method == "histogram":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        bins = np.clip(np.digitize(s, edges[1:-1], right=True), 0, n_bins - 1)
        values = []
        for b in range(n_bins):
            sel = bins == b
            # empty bins keep their centre: no evidence, no change
            values.append(float(y[sel].mean()) if sel.any() else float(0.5 * (edges[b] + edges[b + 1])))
        return {"method": "histogram", "edges": edges.tolist(), "values": values, "n": int(s.size)}
    raise ConfigError(f"unknown calibration method {method!r} (platt, isotonic, histogram)")


def apply_calibration(params: dict[str, Any] | None, scores: Any) -> np.ndarray:
    """Map scores through fitted calibration ``params`` (``None`` = identity). Returns float64 in [0, 1]."""
    s = np.asarray(scores, dtype=np.float64)
    p: dict[str, Any] = params or IDENTITY
    method = p.get("method", "identity")
    try:
        if method == "identity":
            return np.clip(s, 0.0, 1.0)
        if method == "platt":
            z = _logit(s) if p["input"] == "probability" else s
            return _sigmoid(float(p["a"]) * z + float(p["b"]))
        if method == "isotonic":
            return np.interp(s, np.asarray(p["x"], np.float64), np.asarray(p["y"], np.float64))
        if method == "histogram":
            edges = np.asarray(p["edges"], np.float64)
            values = np.asarray(p["values"], np.float64)
            bins = np.clip(np.digitize(s, edges[1:-1], right=True), 0, values.size - 1)
            return values[bins]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"calibration parameters for {method!r} are malformed ({exc})") from exc
    raise ConfigError(f"unknown calibration method {method!r}")


def _bin_stats(probs: Any, labels: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, y = _as_arrays(probs, labels)
    if np.any((p < 0) | (p > 1)):
        raise ConfigError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins (lo, hi], the first one [0, hi]
    bins = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    conf = np.bincount(bins, weights=p, minlength=n_bins)
    acc = np.bincount(bins, weights=y, minlength=n_bins)
    return count, conf, acc


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins ``(lo, hi]`` (first bin ``[0, hi]``).

    ``sum_b n_b / N * |mean(label in b) - mean(prob in b)|``.
    """
    count, conf, acc = _bin_stats(probs, labels, n_bins)
    nz = count > 0
    gap = np.abs(acc[nz] / count[nz] - conf[nz] / count[nz])
    return float(np.sum(count[nz] * gap) / count.sum())


def reliability_diagram(
    probs: Any, labels: Any, path: str | Path, n_bins: int = 10, title: str = "Reliability"
) -> Path:
    """Write a reliability diagram PNG (observed frequency against mean predicted probability per bin).

    Bars: observed fraction of positives per bin; red dots: mean predicted probability; the diagonal is
    perfect calibration. The bar shading shows how many samples each bin holds. Returns the path.
    """
    from PIL import Image, ImageDraw

    count, conf, acc = _bin_stats(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    size, margin = 400, 50
    plot = size - 2 * margin
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def xy(px: float, py: float) -> tuple[float, float]:
        return (margin + px * plot, size - margin - py * plot)

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(150, 150, 150), width=1)
    peak = max(float(count.max()), 1.0)
    for b in range(n_bins):
        if count[b] == 0:
            continue
        shade = int(220 - 150 * count[b] / peak)
        lo, hi = b / n_bins, (b + 1) / n_bins
        draw.rectangle([xy(lo, acc[b] / count[b]), xy(hi, 0)], fill=(shade, shade, 255), outline="navy")
        cx, cy = xy(conf[b] / count[b], conf[b] / count[b])
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill="red")
    for t in (0.0, 0.5, 1.0):
        draw.text((xy(t, 0)[0] - 8, size - margin + 6), f"{t:.1f}", fill="black")
        draw.text((margin - 28, xy(0, t)[1] - 6), f"{t:.1f}", fill="black")
    draw.text((margin, 12), f"{title}  ECE={ece:.3f}  n={int(count.sum())}", fill="black")
    draw.text((size // 2 - 60, size - 18), "predicted probability", fill="black")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
