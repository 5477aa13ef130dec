"""Training augmentation: the ultrasound depth transform and the composed pipelines."""

from __future__ import annotations

import numpy as np
import torch

from backmice_vision.model.transforms import RandDepthGaind, train_transforms


def test_depth_gain_leaves_the_top_row_and_grows_down_the_rows() -> None:
    t = RandDepthGaind("image", max_slope=0.2, max_noise_std=0.1, prob=1.0)
    t.set_random_state(7)
    img = torch.full((1, 200, 64), 0.5)
    label = torch.zeros((1, 200, 64), dtype=torch.uint8)
    out = t({"image": img, "label": label})
    got = out["image"][0]
    assert torch.equal(got[0], img[0, 0])  # d = 0 at the top row: no ramp, no noise
    deviation = (got - 0.5).abs().mean(dim=1)
    assert deviation[150:].mean() > 3 * deviation[1:50].mean()  # both effects scale with depth
    assert out["label"] is label  # labels are never touched
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


def test_depth_gain_is_reproducible_from_the_seed_and_off_at_prob_zero() -> None:
    img = torch.rand((1, 64, 32), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        t = RandDepthGaind("image", 0.15, 0.12, prob=1.0)
        t.set_random_state(11)
        runs.append(t({"image": img})["image"])
    assert torch.equal(runs[0], runs[1])
    off = RandDepthGaind("image", 0.15, 0.12, prob=0.0)
    assert torch.equal(off({"image": img})["image"], img)


def test_us_pipeline_adds_the_depth_transform_only_when_configured() -> None:
    def names(modality: str, aug: dict[str, float]) -> list[str]:
        return [type(op).__name__ for op in train_transforms(modality, aug).transforms]

    assert "RandDepthGaind" not in names("US", {})
    assert "RandDepthGaind" in names("US", {"depth_gain": 0.1})
    assert "RandDepthGaind" not in names("MR", {"depth_gain": 0.1})  # MR depth is not along the rows
    rng = np.random.default_rng(0)
    label = np.zeros((1, 80, 80), dtype=np.uint8)
    label[0, 30:50, 30:50] = 3
    sample = {"image": rng.random((1, 80, 80), dtype=np.float32), "label": label}
    pipeline = train_transforms("US", {"patch": [64, 64], "depth_gain": 0.1, "depth_noise_std": 0.1})
    pipeline.set_random_state(seed=1)
    patches = pipeline(sample)
    assert len(patches) == 2
    assert patches[0]["image"].shape == (1, 64, 64) and patches[0]["image"].dtype == torch.float32


def test_zoom_has_its_own_probability() -> None:
    label = np.zeros((1, 96, 96), dtype=np.uint8)
    label[0, 36:60, 36:60] = 3  # a nodule square: 576 pixels unzoomed
    sample = {"image": np.zeros((1, 96, 96), dtype=np.float32), "label": label}

    def nodule_pixels(zoom_prob: float | None) -> set[int]:
        aug = {"patch": [96, 96], "prob": 0.0, "zoom": [1.5, 1.5], "zoom_prob": zoom_prob, "rotate_deg": 0.0}
        pipeline = train_transforms("US", aug)
        pipeline.set_random_state(seed=3)
        return {int((p["label"] == 3).sum()) for p in pipeline(sample)}

    assert nodule_pixels(None) == {576}  # prob 0 switches every transform off, the zoom too
    assert nodule_pixels(1.0) == {round(576 * 1.5**2)}  # zoomed 1.5x whatever prob says
