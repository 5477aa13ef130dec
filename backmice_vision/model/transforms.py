"""MONAI training augmentation covering the domain shift between phantoms, scanners and protocols.

Samples are dicts ``{"image": float32 (C, h, w) in [0, 1], "label": uint8 (1, h, w)}`` in model space
(:mod:`backmice_vision.model.inference`). Axis 1 is rows (depth for US), axis 2 columns (left-right).

* patch sampling: pad to ``patch``, then ``RandCropByLabelClassesd`` with per-class centre ratios
  (nodule and defect over-sampled against their tiny pixel share);
* geometry: left-right flip, rotation ±``rotate_deg``, zoom ``zoom`` (scanner pixel size / habitus);
* intensity: gain (scale, shift), dynamic range (gamma = ``RandAdjustContrastd``), speckle size /
  resolution (Gaussian blur), noise, and for MR a multiplicative bias field.
"""

from __future__ import annotations

from typing import Any

from ..labels import MODEL_CLASSES

DEFAULT_AUG: dict[str, Any] = {
    "patch": [192, 192],
    "samples_per_image": 2,
    "class_ratios": [1.0, 1.0, 1.0, 3.0, 2.0],  # background, fat, fascia, nodule, defect
    "rotate_deg": 10.0,
    "zoom": [0.85, 1.15],
    "prob": 0.3,  # probability of each geometric and intensity transform
    "scale": 0.2,  # gain: intensity x (1 +- scale)
    "shift": 0.1,  # offset +- shift
    "gamma": [0.7, 1.5],  # dynamic range
    "blur_sigma": [0.3, 1.2],  # speckle size / resolution, model pixels
    "noise_std": 0.04,  # additive Gaussian noise
}


def train_transforms(modality: str, aug: dict[str, Any] | None = None) -> Any:
    """The MONAI ``Compose`` of training transforms (random) for ``modality`` ``"US"`` or ``"MR"``."""
    import math

    import numpy as np
    from monai import transforms as T

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
            prob=p,
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
    ops += [
        T.CastToTyped(keys=["image", "label"], dtype=[np.float32, np.int64]),
        T.ToTensord(keys=["image", "label"], track_meta=False),
    ]
    return T.Compose(ops)
