"""Overlay rendering: source-resolution arrays, colours on the mask edges, scale bar only when calibrated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from export_factory import make_result, mr, us
from PIL import Image

from backmice_vision.errors import BackmiceError
from backmice_vision.render import (
    ORANGE,
    SKY_BLUE,
    WHITE,
    finding_frames,
    key_frames,
    png_images,
    png_scale,
    render_overlay,
)


def _has(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(img == np.asarray(colour, np.uint8), axis=-1)


def test_overlay_us_contour_on_mask_edge_and_source_resolution(tmp_path: Path) -> None:
    series = us(tmp_path / "us.dcm", 1)
    result = make_result(series, 1)
    img = render_overlay(result, 0)
    assert img.shape == (60, 80, 3) and img.dtype == np.uint8
    nodule = result.nodules[0]
    _, i0, j0, _, i1, j1 = nodule.bbox
    orange = _has(img, ORANGE)
    # every contour pixel inside the bbox lies on the mask (the contour is the mask's inner edge)
    inside = orange[i0:i1, j0:j1]
    assert inside.sum() >= 10
    assert not (inside & ~nodule.mask[0]).any()
    # pixels off the overlays keep the source colour
    assert np.array_equal(img[55:, 72:], series.rgb[0, 55:, 72:])


def test_overlay_png_has_defect_label_and_scale_bar(tmp_path: Path) -> None:
    from backmice_vision.export import save_result

    result = make_result(us(tmp_path / "us.dcm", 1), 1)
    paths = save_result(result, tmp_path / "out", ["png"])["png"]
    assert [p.name for p in paths] == ["overlay_k0000.png", "montage.png"]
    img = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert np.array_equal(img, dict(png_images(result))["overlay_k0000.png"])  # encoded in a thread, lossless
    scale = png_scale((60, 80))
    assert img.shape == (60 * scale, 80 * scale, 3)
    assert _has(img, SKY_BLUE).sum() > 10  # defect triangle
    assert _has(img, ORANGE).sum() > 100  # contour and label text
    # scale bar: a white run of exactly 2 mm at 0.1 mm/pixel (5 mm and more exceed a quarter of the width)
    runs = [int(row.sum()) for row in _has(img, WHITE)[int(img.shape[0] * 0.9) :]]
    assert max(runs) in (20 * scale, 20 * scale + 1)


def test_uncalibrated_us_says_size_na_and_has_no_scale_bar(tmp_path: Path) -> None:
    cal = render_overlay(make_result(us(tmp_path / "a.dcm", 1), 1), 0)
    result = make_result(us(tmp_path / "b.dcm", 1, calibrated=False), 1)
    img = render_overlay(result, 0)
    bottom = slice(int(img.shape[0] * 0.85), None)
    assert _has(cal[bottom], WHITE).sum() > _has(img[bottom], WHITE).sum()
    assert not result.series.calibrated


def test_mr_frames_montage_and_bad_index(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 2)
    assert finding_frames(result) == [0, 1, 2]
    assert key_frames(result) == [0, 1]
    img = render_overlay(result, 1)
    assert img.shape == (40, 36, 3)
    assert _has(img, ORANGE).any()
    assert not _has(render_overlay(result, 4), ORANGE).any()  # no nodule on the last slice
    names, arrays = zip(*png_images(result, tile=200), strict=True)
    assert names == ("overlay_k0000.png", "overlay_k0001.png", "overlay_k0002.png", "montage.png")
    assert arrays[-1].shape == (200, 2 * round(36 * 200 / 40), 3)
    with pytest.raises(BackmiceError, match="frame index 9"):
        render_overlay(result, 9)


def test_no_findings_montage_only(tmp_path: Path) -> None:
    result = make_result(mr(tmp_path / "mr"), 0)
    ((name, montage),) = png_images(result)
    assert name == "montage.png" and montage.ndim == 3 and montage.any()


def _crowded(result, gap: int = 1):
    """``result`` with its second nodule moved onto the first one's frame, ``gap`` pixels to its right."""
    import dataclasses

    first, second = result.nodules[:2]
    k0, i0, _, k1, i1, j1 = first.bbox
    w = second.bbox[5] - second.bbox[2]
    bbox = (k0, i0, j1 + gap, k1, i1, j1 + gap + w)
    mask = np.ones((k1 - k0, i1 - i0, w), bool)
    moved = dataclasses.replace(
        second, bbox=bbox, mask=mask, center_voxel=(float(k0), (i0 + i1) / 2, j1 + gap + w / 2)
    )
    return dataclasses.replace(result, nodules=[first, moved, *result.nodules[2:]])


def _assert_apart_and_inside(boxes, shape) -> None:
    height, width = shape[:2]
    for n, (kind, (x0, y0, x1, y1)) in enumerate(boxes):
        if kind == "label":
            assert 0 <= x0 < x1 < width and 0 <= y0 < y1 < height, ((x0, y0, x1, y1), shape)
        for other_kind, other in boxes[n + 1 :]:
            if "label" in (kind, other_kind):
                assert not (x0 <= other[2] and other[0] <= x1 and y0 <= other[3] and other[1] <= y1), (
                    kind,
                    other_kind,
                )


@pytest.mark.parametrize("modality", ["mr", "us"])
def test_labels_of_neighbouring_nodules_never_collide_nor_leave_the_image(
    tmp_path: Path, modality: str
) -> None:
    from backmice_vision.render import _gap, text_boxes

    series = mr(tmp_path / "mr") if modality == "mr" else us(tmp_path / "us.dcm", 1)
    result = _crowded(make_result(series, 2))
    k = result.nodules[0].bbox[0]
    scale = png_scale(series.shape[1:])
    for s in (scale, 1):  # the PNG and the source-resolution overlay (Secondary Capture)
        image = render_overlay(result, k) if s == 1 else dict(png_images(result))[f"overlay_k{k:04d}.png"]
        boxes = text_boxes(result, k, s)
        labels = [box for kind, box in boxes if kind == "label"]
        _assert_apart_and_inside(boxes, image.shape)
        if s == scale:
            assert len(labels) == 2  # both fit on the PNG, each nearer its own nodule than the other
            nodules = [
                (n.bbox[2] * s, n.bbox[1] * s, n.bbox[5] * s - 1, n.bbox[4] * s - 1) for n in result.nodules
            ]
            for own, (label, other) in enumerate(zip(labels, nodules[::-1], strict=True)):
                assert _gap(label, nodules[own]) < _gap(label, other)
        for x0, y0, x1, y1 in labels:
            # nothing else drawn over a label: only its black box and orange (antialiased) text
            patch = image[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).astype(float)
            orange = np.asarray(ORANGE, float)
            t = patch @ orange / (orange @ orange)
            assert np.abs(patch - t[:, None] * orange).max() <= 3, "a label is overdrawn"
            assert (patch.sum(axis=1) > 0).any()
