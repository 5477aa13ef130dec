"""Model input/output geometry: tiles at the model spacing and probabilities back on the source grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import write_mr_with_seg

from backmice_vision.errors import ModelError
from backmice_vision.labels import BACKGROUND, NODULE
from backmice_vision.model.inference import (
    DEFAULT_MR,
    DEFAULT_US,
    MAX_BATCH_PIXELS,
    Preprocessing,
    Tile,
    _resize,
    labels_to_tile,
    make_tiles,
    predict_probabilities,
    run_network,
    tile_to_source,
)
from backmice_vision.types import FrameSource, ImageSeries, UltrasoundRegion

BOX = (40, 50, 280, 350)  # r0, c0, r1, c1


class Bright(torch.nn.Module):
    """Logits: nodule = 40 * (channel ``c`` - 0.5), other classes 0 (probability follows the intensity)."""

    def __init__(self, channel: int = 0) -> None:
        super().__init__()
        self.channel = channel
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 5, *x.shape[2:])
        out[:, NODULE] = 40.0 * (x[:, self.channel] - 0.5)
        return out


def us_series(spacing: tuple[float, float] | None = (0.07, 0.08)) -> ImageSeries:
    rng = np.random.default_rng(0)
    pix = np.full((2, 320, 400), 250.0, np.float32)  # bright annotation area outside the region
    r0, c0, r1, c1 = BOX
    pix[:, r0:r1, c0:c1] = rng.uniform(10, 60, (2, r1 - r0, c1 - c0))
    yy, xx = np.mgrid[:320, :400]
    for frame, (r, c) in enumerate([(220, 120), (150, 200)]):  # a 3 mm radius disc per frame
        pix[frame][((yy - r) * 0.07) ** 2 + ((xx - c) * 0.08) ** 2 <= 3.0**2] = 200.0
    sources = [FrameSource("1.2.3", "1.2.840.10008.5.1.4.1.1.3.1", f + 1) for f in range(2)]
    return ImageSeries("US", pix, None, sources, "1", "2", regions=[UltrasoundRegion(0, BOX, spacing)])


def test_us_tiles_at_model_spacing() -> None:
    s = us_series()
    tiles = make_tiles(s, DEFAULT_US)
    assert len(tiles) == 2 and all(t.box == BOX for t in tiles)
    assert tiles[0].image.shape == (1, round(240 * 0.07 / 0.2), round(300 * 0.08 / 0.2))
    assert tiles[0].image.dtype == np.float32 and tiles[0].image.min() >= 0.0 and tiles[0].image.max() <= 1.0
    assert not s.problems


def test_us_probabilities_land_in_the_region_at_the_right_place() -> None:
    s = us_series()
    probs = predict_probabilities(Bright(), s, "cpu", prep=DEFAULT_US)
    assert probs.shape == (5, *s.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    outside = np.ones(s.shape[1:], bool)
    outside[BOX[0] : BOX[2], BOX[1] : BOX[3]] = False
    assert np.all(probs[BACKGROUND][:, outside] == 1.0) and np.all(probs[NODULE][:, outside] == 0.0)
    for frame, (r, c) in enumerate([(220, 120), (150, 200)]):
        rows, cols = np.nonzero(probs[NODULE, frame] > 0.5)
        assert abs(rows.mean() - r) < 1.0 and abs(cols.mean() - c) < 1.0
        area_mm2 = rows.size * 0.07 * 0.08
        assert abs(area_mm2 - np.pi * 9.0) / (np.pi * 9.0) < 0.1


def test_zooms_average_the_probabilities_of_each_scale() -> None:
    s = us_series()
    finer = replace(DEFAULT_US, spacing_mm=DEFAULT_US.spacing_mm / 1.5)
    at_1, at_15 = (predict_probabilities(Bright(), s, "cpu", prep=p) for p in (DEFAULT_US, finer))
    assert np.abs(at_1 - at_15).max() > 0.05  # the scales differ at the edges of the discs
    both = predict_probabilities(Bright(), s, "cpu", prep=replace(DEFAULT_US, zooms=(1.0, 1.5)))
    np.testing.assert_allclose(both, 0.5 * (at_1 + at_15), atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=0), 1.0, atol=1e-5)
    outside = np.ones(s.shape[1:], bool)
    outside[BOX[0] : BOX[2], BOX[1] : BOX[3]] = False
    assert np.all(both[BACKGROUND][:, outside] == 1.0)
    timings: dict[str, float] = {}
    only_finer = replace(DEFAULT_US, zooms=(1.5,))
    np.testing.assert_array_equal(
        predict_probabilities(Bright(), s, "cpu", prep=only_finer, timings=timings), at_15
    )
    assert set(timings) == {"preprocess", "model"}


def test_zooms_keep_overlapping_regions_and_the_pixels_intact() -> None:
    s = us_series(spacing=None)  # uncalibrated: 0.1 mm assumed, the model grid at zoom 2
    s.regions.append(s.regions[0])  # some exports list a region twice
    before = s.pixels.copy()
    probs = predict_probabilities(Bright(), s, "cpu", prep=replace(DEFAULT_US, zooms=(1.0, 2.0)))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(s.pixels, before)  # the tile at the source size is a copy


def test_zooms_round_trip_and_bad_zooms_are_refused() -> None:
    prep = replace(DEFAULT_US, zooms=(1.0, 1.25))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    old = {k: v for k, v in DEFAULT_US.to_dict().items() if k != "zooms"}  # bundles before zooms existed
    assert Preprocessing.from_dict(old).zooms == (1.0,)
    for bad in ([], [1.0, 0.0], [5.0]):
        with pytest.raises(ModelError, match=r"zooms must be one or more numbers in 0\.25\.\.4"):
            Preprocessing.from_dict({**old, "zooms": bad})


def test_smooth_map_survives_the_round_trip() -> None:
    s = us_series()
    tile = make_tiles(s, DEFAULT_US, frames=[0])[0]
    r0, c0, r1, c1 = BOX
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    p = np.stack([0.5 + 0.4 * np.sin(yy / 40.0) * np.cos(xx / 55.0)] * 2)  # smooth, 2 channels
    in_model = _resize(p[None], tile.image.shape[-2:])[0]
    back = tile_to_source(in_model, tile)
    assert back.shape == p.shape
    assert np.abs(back - p)[:, 3:-3, 3:-3].max() < 0.02


def test_uncalibrated_region_uses_the_nominal_spacing_and_says_so() -> None:
    s = us_series(spacing=None)
    tiles = make_tiles(s, DEFAULT_US)
    assert tiles[0].assumed_spacing
    assert tiles[0].image.shape[1:] == (round(240 * 0.1 / 0.2), round(300 * 0.1 / 0.2))
    assert any("no calibration" in p and "0.1 mm" in p for p in s.problems)
    make_tiles(s, DEFAULT_US)
    assert sum("no calibration" in p for p in s.problems) == 1


def test_mr_two_and_a_half_d_and_back(tmp_path: Path) -> None:
    from backmice_vision.io import load_series

    series_dir, _, _, lab = write_mr_with_seg(tmp_path)
    s = load_series(series_dir)
    tiles = make_tiles(s, DEFAULT_MR)
    assert len(tiles) == 5 and tiles[0].image.shape == (3, round(48 * 1.5 / 0.9), round(56 * 1.5 / 0.9))
    np.testing.assert_array_equal(tiles[0].image[0], tiles[0].image[1])  # edge slice repeated
    np.testing.assert_array_equal(tiles[2].image[0], tiles[1].image[1])  # neighbour as channel
    probs = predict_probabilities(Bright(channel=1), s, "cpu", prep=DEFAULT_MR)
    # brightest tissue (nodule, defect, fat) ends up above 0.5 where the labels say so
    hit = probs[NODULE] > 0.5
    bright = np.isin(lab, (1, 3, 4))
    agree = (hit == bright).mean()
    assert agree > 0.97


def test_labels_follow_the_tile() -> None:
    s = us_series()
    lab = np.zeros(s.shape, np.uint8)
    lab[1, 120:180, 170:230] = NODULE
    tile = make_tiles(s, DEFAULT_US, frames=[1])[0]
    lt = labels_to_tile(lab[1], tile)
    assert lt.shape == tile.image.shape[1:]
    rows, cols = np.nonzero(lt == NODULE)
    # source centre (149.5, 199.5) → tile ((149.5 - 40 + 0.5) * 0.35 - 0.5, (199.5 - 50 + 0.5) * 0.4 - 0.5)
    assert abs(rows.mean() - 38.0) < 0.6 and abs(cols.mean() - 59.5) < 0.6


def test_modality_mismatch() -> None:
    with pytest.raises(ModelError, match="expects MR input"):
        make_tiles(us_series(), DEFAULT_MR)


def test_class_labels_is_argmax_with_first_class_on_ties():
    from backmice_vision.model.inference import class_labels

    p = np.random.default_rng(0).random((5, 3, 40, 50)).astype(np.float32)
    p[3, 0] = p[1, 0] = 2.0  # a tie for the top class: the first one wins, as with argmax
    labels = class_labels(p)
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, np.argmax(p, axis=0))
    assert (labels[0] == 1).all()


def test_network_batches_stay_within_the_pixel_budget_and_match_single_tiles() -> None:
    """Large tiles go through the network a few at a time (memory), small ones eight at a time, and
    batching changes no probability."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 5, 3, padding=1)
    rng = np.random.default_rng(0)
    shapes = [(512, 512)] * 5 + [(96, 128)] * 11 + [(600, 520)]
    tiles = [
        Tile(n, (0, 0, h, w), rng.random((1, h, w), dtype=np.float32)) for n, (h, w) in enumerate(shapes)
    ]
    seen: list[tuple[int, ...]] = []
    net.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    probs = run_network(net, tiles, torch.device("cpu"), batch_size=8)
    assert sum(b for b, *_ in seen) == len(tiles)
    assert max(b for b, *_ in seen) == 8  # the small tiles
    for b, _c, h, w in seen:
        assert b == 1 or b * h * w <= MAX_BATCH_PIXELS
    for tile, p in zip(tiles, probs, strict=True):
        alone = run_network(net, [tile], torch.device("cpu"))[0]
        assert p.shape == (5, *tile.image.shape[1:])
        np.testing.assert_allclose(p, alone, atol=1e-5)
