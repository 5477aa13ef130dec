"""MONAI training augmentation covering the domain shift between phantoms, scanners and protocols.

Samples are dicts ``{"image": float32 (C, h, w) in [0, 1], "label": uint8 (1, h, w)}`` in model space
(:mod:`backmice_vision.model.inference`). Axis 1 is rows (depth for US), axis 2 columns (left-right).

* patch sampling: pad to ``patch``, then ``RandCropByLabelClassesd`` with per-class centre ratios
  (nodule and defect over-sampled against their tiny pixel share);
* geometry: left-right flip, rotation ±``rotate_deg``, zoom ``zoom`` (scanner pixel size / habitus);
* intensity: gain (scale, shift), dynamic range (gamma = ``RandAdjustContrastd``), speckle size /
  resolution (Gaussian blur), noise, and for MR a multiplicative bias field;
* ultrasound depth (``depth_gain``, ``depth_noise_std``, off by default): a residual TGC error, a linear
  ramp of display level down the rows (log compression turns a dB-per-cm gain error into a ramp), and
  electronic noise that grows with depth as the TGC amplifies it (:class:`RandDepthGaind`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from monai.transforms import MapTransform, RandomizableTransform

from ..labels import MODEL_CLASSES

DEFAULT_AUG: dict[str, Any] = {
    "patch": [192, 192],
    "samples_per_image": 2,
    "class_ratios": [1.0, 1.0, 1.0, 3.0, 2.0],  # background, fat, fascia, nodule, defect
    "rotate_deg": 10.0,
    "zoom": [0.85, 1.15],
    "prob": 0.3,  # probability of each geometric and intensity transform
    "zoom_prob": None,  # probability of the zoom alone (None: prob)
    "scale": 0.2,  # gain: intensity x (1 +- scale)
    "shift": 0.1,  # offset +- shift
    "gamma": [0.7, 1.5],  # dynamic range
    "blur_sigma": [0.3, 1.2],  # speckle size / resolution, model pixels
    "noise_std": 0.04,  # additive Gaussian noise
    "depth_gain": 0.0,  # US: display-level ramp down the patch, +- this at the bottom row
    "depth_noise_std": 0.0,  # US: Gaussian noise whose std rises from 0 (top row) to this (bottom)
}


class RandDepthGaind(RandomizableTransform, MapTransform):
    """Ultrasound TGC error and depth-amplified noise on ``(C, rows, cols)`` images in [0, 1].

    Rows are depth. With probability ``prob``: ``image + d * (slope + noise)`` where
    ``d = row / (rows - 1)`` runs 0 -> 1 down the patch, ``slope ~ U(-max_slope, max_slope)`` and
    ``noise ~ N(0, s^2)`` per pixel with ``s ~ U(0, max_noise_std)``; the result is clipped to [0, 1].
    """

    def __init__(self, keys: Any, max_slope: float, max_noise_std: float, prob: float) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.max_slope, self.max_noise_std = float(max_slope), float(max_noise_std)
        self._slope, self._noise_std = 0.0, 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._slope = float(self.R.uniform(-self.max_slope, self.max_slope))
        self._noise_std = float(self.R.uniform(0.0, self.max_noise_std))

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            rows = img.shape[-2]
            ramp = torch.linspace(0.0, 1.0, rows, dtype=img.dtype).reshape(rows, 1)
            noise = torch.from_numpy(self.R.standard_normal(tuple(img.shape)).astype(np.float32))
            d[key] = (img + ramp * (self._slope + self._noise_std * noise.to(img.dtype))).clamp_(0.0, 1.0)
        return d


def train_transforms(modality: str, aug: dict[str, Any] | None = None) -> Any:
    """The MONAI ``Compose`` of training transforms (random) for ``modality`` ``"US"`` or ``"MR"``."""
    a = {**DEFAULT_AUG, **(aug or {})}
    patch = tuple(int(x) for x in a["patch"])
    p = float(a["prob"])
    rot = math.radians(float(a["rotate_deg"]))
    blur = (float(a["blur_sigma"][0]), float(a["blur_sigma"][1]))
    gamma = (float(a["gamma"][0]), float(a["gamma"][1]))
    ops: list[Any] = [
        T.CastToTyped(keys="image", dtype=np.float32),
        T.SpatialPadd(keys=["image", "label"], spatial_size=patch, mode="constant"),
        T.RandCropByLabelClassesd(
            keys=["image", "label"],
            label_key="label",
            spatial_size=patch,
            ratios=[float(r) for r in a["class_ratios"]],
            num_classes=len(MODEL_CLASSES),
            num_samples=int(a["samples_per_image"]),
            warn=False,
        ),
        T.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        T.RandRotated(
            keys=["image", "label"], range_x=rot, prob=p, mode=["bilinear", "nearest"], padding_mode="zeros"
        ),
        T.RandZoomd(
            keys=["image", "label"],
            min_zoom=float(a["zoom"][0]),
            max_zoom=float(a["zoom"][1]),
            prob=p if a["zoom_prob"] is None else float(a["zoom_prob"]),
            mode=["bilinear", "nearest"],
            padding_mode="constant",
            keep_size=True,
        ),
        T.RandScaleIntensityd(keys="image", factors=float(a["scale"]), prob=p),
        T.RandShiftIntensityd(keys="image", offsets=float(a["shift"]), prob=p),
        T.RandAdjustContrastd(keys="image", gamma=gamma, prob=p),
        T.RandGaussianSmoothd(keys="image", sigma_x=blur, sigma_y=blur, prob=p),
        T.RandGaussianNoised(keys="image", std=float(a["noise_std"]), prob=p),
    ]
    if modality == "MR":
        ops.append(T.RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=p))
    elif float(a["depth_gain"]) > 0 or float(a["depth_noise_std"]) > 0:
        ops.append(RandDepthGaind("image", float(a["depth_gain"]), float(a["depth_noise_std"]), p))
    ops += [
        T.CastToTyped(keys=["image", "label"], dtype=[np.float32, np.int64]),
        T.ToTensord(keys=["image", "label"], track_meta=False),
    ]
    return T.Compose(ops)
