"""Training data sources: DICOM SEG pairing and class mapping, the sample cache, phantom case folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from model_factory import SEGMENT_MAP, write_mr_with_seg

from backmice_vision.errors import ConfigError, InvalidDicom
from backmice_vision.labels import MODEL_CLASSES
from backmice_vision.model.data import collect_items, load_item, read_seg_labels, series_samples
from backmice_vision.model.inference import DEFAULT_MR, DEFAULT_US


def test_dicom_seg_source_pairs_and_maps_segments(tmp_path: Path) -> None:
    _, _, _, lab = write_mr_with_seg(tmp_path / "a", seed=0)
    write_mr_with_seg(tmp_path / "b", seed=1)
    items = collect_items([{"type": "dicom_seg", "path": str(tmp_path), "segment_map": SEGMENT_MAP}])
    assert len(items) == 2
    series, labels = load_item(next(i for i in items if "a/" in i.key), "MR")
    assert labels.dtype == np.uint8 and labels.shape == series.shape
    np.testing.assert_array_equal(labels, lab)  # all four classes, including the 5-px defect


def test_unmapped_segments_are_background(tmp_path: Path) -> None:
    write_mr_with_seg(tmp_path, seed=0)
    (item,) = collect_items(
        [{"type": "dicom_seg", "path": str(tmp_path), "segment_map": {"Lipoma": "nodule"}}]
    )
    _, labels = load_item(item, "MR")
    assert set(np.unique(labels).tolist()) == {0, 3}


def test_cache_hit_returns_equal_samples_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backmice_vision.model import data

    write_mr_with_seg(tmp_path / "d", seed=0)
    (item,) = collect_items([{"type": "dicom_seg", "path": str(tmp_path / "d"), "segment_map": SEGMENT_MAP}])
    first = series_samples(item, DEFAULT_MR, tmp_path / "cache")
    assert len(first) == 5 and first[2]["image"].shape[0] == 3 and first[2]["label"].max() == 4
    (cached,) = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached.stem) == 40  # a hash: no identifiers in file names

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(data, "load_item", no_decoding)
    again = series_samples(item, DEFAULT_MR, tmp_path / "cache")
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_source_errors(tmp_path: Path) -> None:
    series_dir, seg, _, _ = write_mr_with_seg(tmp_path / "d", seed=0)
    with pytest.raises(ConfigError, match="unknown data source type"):
        collect_items([{"type": "zip", "path": str(tmp_path)}])
    with pytest.raises(ConfigError, match="lacks 'path'"):
        collect_items([{"type": "dicom_seg"}])
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(seg, other / "seg.dcm")
    with pytest.raises(ConfigError, match="references a series that is not in the folder"):
        collect_items([{"type": "dicom_seg", "path": str(other)}])
    from backmice_vision.io import load_series

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(seg.read_bytes()[:2000])
    with pytest.raises(InvalidDicom, match=r"broken\.dcm: cannot read the SEG"):
        read_seg_labels(broken, load_series(series_dir), {c: i for i, c in enumerate(MODEL_CLASSES)})


@pytest.mark.slow
def test_phantom_source_end_to_end(tmp_path: Path) -> None:
    """One generated ultrasound case: every series pairs with its SEG and gives labelled tiles."""
    from backmice_vision.phantoms.generate import generate_cases

    generate_cases("us", 1, 5, tmp_path / "ph", progress=False, workers=1)
    items = collect_items([{"type": "phantom", "path": str(tmp_path / "ph")}])
    assert items and all(i.seg is not None and i.seg.is_file() for i in items)
    shares = np.zeros(len(MODEL_CLASSES))
    for item in items:
        for s in series_samples(item, DEFAULT_US, tmp_path / "cache", max_frames=3):
            assert s["image"].shape[1:] == s["label"].shape[1:]
            shares += np.bincount(s["label"].ravel(), minlength=len(MODEL_CLASSES))
    assert shares[1] > 0 and shares[2] > 0  # every US phantom shows fat and fascia


def test_frame_selection_prefers_nodule_frames() -> None:
    from backmice_vision.model.data import select_frames

    labels = np.zeros((30, 4, 4), np.uint8)
    labels[12:15, 1, 1] = 3  # nodule on frames 12-14
    labels[20, 2, 2] = 4  # defect on frame 20
    chosen = select_frames(labels, 8)
    assert len(chosen) == 8 and chosen == sorted(set(chosen))
    assert {12, 13, 14, 20} <= set(chosen)
    assert select_frames(labels[:5], 8) == [0, 1, 2, 3, 4]
    assert len(select_frames(np.zeros((30, 2, 2), np.uint8), 8)) == 8
