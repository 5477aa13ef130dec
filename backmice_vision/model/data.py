"""Training data: image series + DICOM SEG (or NIfTI) label maps → cached 2-D samples in model space.

Sources (a list under ``train:`` / ``val:`` in the training config):

* ``{type: phantom, path: DIR}``: phantom case folders (``DIR`` is one case or a parent of cases); every
  series of ``ground_truth.json`` with its ``seg/`` file.
* ``{type: dicom_seg, path: DIR, segment_map: {label: class}}``: any folder of DICOM series and DICOM SEG
  objects; each SEG is paired with the image series named in its ReferencedSeriesSequence; segments map to
  classes by (case-insensitive) SegmentLabel through ``segment_map`` (default: the class names), others
  are ignored.
* ``{type: nifti, images: DIR, labels: DIR}``: ``NAME.nii[.gz]`` images ``(x, y[, z])`` with a label file
  of the same name holding class indices; ``spacing_mm`` from the header; modality from the config.

Each series is turned into tiles with :func:`backmice_vision.model.inference.make_tiles` (the inference
code path) and labels with :func:`~backmice_vision.model.inference.labels_to_tile`, then cached as
``<cache_dir>/<sha1>.npz`` (key: source file sizes and mtimes plus the preprocessing), so epochs and reruns
do not decode DICOM again. Overlapping segments: the higher class index wins (defect > nodule > fascia > fat).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackmiceError, ConfigError, InvalidDicom
from ..fileio import write_atomic
from ..labels import MODEL_CLASSES, NODULE
from ..types import ImageSeries
from .inference import Preprocessing, labels_to_tile, make_tiles

CACHE_VERSION = "samples/2"


@dataclass
class SeriesItem:
    """One annotated series to turn into samples: how to load the image and its label map."""

    key: str  # anonymous, for messages: "<source folder name>/<relative path>"
    image: Path | list[Path]  # a file, a folder of one series, or the files of one series
    seg: Path | None = None
    nifti_label: Path | None = None
    segment_map: dict[str, int] | None = None
    series_uid: str | None = None


def _class_map(segment_map: dict[str, str] | None) -> dict[str, int]:
    names = {c: i for i, c in enumerate(MODEL_CLASSES)}
    given = segment_map or {c: c for c in MODEL_CLASSES[1:]}
    out = {}
    for label, cls in given.items():
        if str(cls).lower() not in names:
            raise ConfigError(
                f"segment_map maps {label!r} to unknown class {cls!r} (classes {MODEL_CLASSES})"
            )
        out[str(label).lower()] = names[str(cls).lower()]
    return out


def read_seg_labels(seg_path: Path, series: ImageSeries, class_of: dict[str, int]) -> np.ndarray:
    """Class label map uint8 ``(n, rows, cols)`` on the series' grid from a DICOM SEG.

    Segments map to classes by lower-case SegmentLabel through ``class_of`` (others are ignored); the
    SEG is read by :func:`backmice_vision.io.seg.read_seg` (BINARY, FRACTIONAL and LABELMAP).
    """
    from ..io.seg import read_seg

    classes = {label.lower(): cls for label, cls in class_of.items() if cls}
    out = np.zeros(series.shape, dtype=np.uint8)
    for label, mask in sorted(read_seg(seg_path, series, classes).items(), key=lambda kv: classes[kv[0]]):
        out[mask] = classes[label]  # higher class wins on overlap
    return out


def _phantom_items(root: Path) -> list[SeriesItem]:
    cases = (
        [root / "ground_truth.json"]
        if (root / "ground_truth.json").is_file()
        else sorted(root.glob("*/ground_truth.json"))
    )
    if not cases:
        raise ConfigError("no phantom case folders (ground_truth.json) found", root)
    items = []
    for gt in cases:
        try:
            truth = json.loads(gt.read_text())
            entries = truth["series"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read ground truth ({type(exc).__name__})", gt) from exc
        for e in entries:
            if not e.get("seg"):
                continue
            items.append(
                SeriesItem(
                    key=f"{gt.parent.name}/{e['folder']}",
                    image=gt.parent / e["folder"],
                    seg=gt.parent / e["seg"],
                    series_uid=e.get("series_instance_uid"),
                )
            )
    return items


def _dicom_seg_items(root: Path, segment_map: dict[str, str] | None) -> list[SeriesItem]:
    import pydicom

    from ..io import find_series

    if not root.is_dir():
        raise ConfigError("dicom_seg folder not found", root)
    segs: list[tuple[Path, str]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(
                p, stop_before_pixels=True, specific_tags=["Modality", "ReferencedSeriesSequence"]
            )
        except Exception:  # not DICOM: find_series reports image files; other files are not ours
            continue
        if str(ds.get("Modality", "")) == "SEG":
            try:
                segs.append((p, str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)))
            except (AttributeError, IndexError) as exc:
                raise InvalidDicom("SEG has no ReferencedSeriesSequence", p) from exc
    if not segs:
        raise ConfigError("no DICOM SEG objects found", root)
    refs = {r.series_instance_uid: r for r in find_series(root) if r.modality in ("MR", "US")}
    cmap = _class_map(segment_map)
    items = []
    for seg, uid in segs:
        ref = refs.get(uid)
        if ref is None:
            raise ConfigError(f"SEG {seg.name} references a series that is not in the folder", root)
        items.append(
            SeriesItem(f"{root.name}/{seg.relative_to(root)}", list(ref.paths), seg, None, cmap, uid)
        )
    return items


def _nifti_items(images: Path, labels: Path) -> list[SeriesItem]:
    files = sorted(p for p in Path(images).glob("*.nii*"))
    if not files:
        raise ConfigError("no NIfTI images found", images)
    items = []
    for f in files:
        lab = Path(labels) / f.name
        if not lab.is_file():
            raise ConfigError(f"no label file for {f.name}", labels)
        items.append(SeriesItem(f"{Path(images).name}/{f.name}", f, nifti_label=lab))
    return items


def collect_items(sources: Iterable[dict[str, Any]]) -> list[SeriesItem]:
    """Resolve config data sources (see the module docstring) into annotated series."""
    items: list[SeriesItem] = []
    for src in sources:
        if not isinstance(src, dict) or "type" not in src:
            raise ConfigError(
                f"a data source must be a mapping with 'type' (phantom, dicom_seg, nifti): {src!r}"
            )
        kind = src["type"]
        try:
            if kind == "phantom":
                items += _phantom_items(Path(src["path"]))
            elif kind == "dicom_seg":
                items += _dicom_seg_items(Path(src["path"]), src.get("segment_map"))
            elif kind == "nifti":
                items += _nifti_items(Path(src["images"]), Path(src["labels"]))
            else:
                raise ConfigError(f"unknown data source type {kind!r} (phantom, dicom_seg, nifti)")
        except KeyError as exc:
            raise ConfigError(f"data source {kind!r} lacks {exc}") from exc
    return items


def _nifti_series(item: SeriesItem, modality: str) -> tuple[ImageSeries, np.ndarray]:
    """NIfTI image + label as an ImageSeries (slices along the last axis) and uint8 labels."""
    try:
        import nibabel as nib  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ConfigError("nifti data sources need the 'nibabel' package") from exc
    from ..types import FrameSource, UltrasoundRegion

    assert isinstance(item.image, Path)
    img = nib.load(str(item.image))
    data = np.asarray(img.dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(str(item.nifti_label)).dataobj).astype(np.uint8)
    if data.ndim == 2:
        data, lab = data[..., None], lab[..., None]
    if data.shape != lab.shape or data.ndim != 3:
        raise ConfigError(f"image {data.shape} and label {lab.shape} differ or are not 2-D/3-D", item.image)
    if int(lab.max()) >= len(MODEL_CLASSES):
        raise ConfigError(f"label values must be class indices 0..{len(MODEL_CLASSES) - 1}", item.nifti_label)
    zooms = [float(z) for z in img.header.get_zooms()[:3]] + [1.0] * 3
    pixels = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))  # (x, y, z) -> (z, x, y): k, i, j
    labels = np.ascontiguousarray(np.transpose(lab, (2, 0, 1)))
    n, rows, cols = pixels.shape
    sources = [FrameSource(f"nifti:{k}", "", 1) for k in range(n)]
    if modality == "US":
        region = UltrasoundRegion(0, (0, 0, rows, cols), (zooms[0], zooms[1]))
        return ImageSeries("US", pixels, None, sources, "", "", regions=[region]), labels
    return ImageSeries("MR", pixels, (zooms[2], zooms[0], zooms[1]), sources, "", ""), labels


def load_item(item: SeriesItem, modality: str) -> tuple[ImageSeries, np.ndarray]:
    """Load the series and its label map uint8 ``(n, rows, cols)`` of one item."""
    from ..io import load_series

    if item.nifti_label is not None:
        return _nifti_series(item, modality)
    series = load_series(item.image)
    if item.series_uid is not None and series.series_instance_uid != item.series_uid:
        raise ConfigError(f"{item.key}: series UID differs from the one its SEG references")
    assert item.seg is not None
    labels = read_seg_labels(item.seg, series, item.segment_map or _class_map(None))
    return series, labels


def _spread(frames: list[int], count: int) -> list[int]:
    if count >= len(frames):
        return list(frames)
    return [frames[round(float(x))] for x in np.linspace(0, len(frames) - 1, count)] if count > 0 else []


def select_frames(labels: np.ndarray, max_frames: int) -> list[int]:
    """At most ``max_frames`` frame indices: up to half from frames showing a nodule or defect, the rest
    from the others, each part evenly spread (cine frames and MR slices are strongly correlated)."""
    n = labels.shape[0]
    if n <= max_frames:
        return list(range(n))
    positive = [k for k in range(n) if bool((labels[k] >= NODULE).any())]
    negative = [k for k in range(n) if k not in set(positive)]
    pos = _spread(positive, max(max_frames // 2, max_frames - len(negative)))
    return sorted(pos + _spread(negative, max_frames - len(pos)))


def _cache_key(item: SeriesItem, prep: Preprocessing, max_frames: int) -> str:
    tiling = {k: v for k, v in prep.to_dict().items() if k != "zooms"}  # zooms: inference only
    parts = [CACHE_VERSION, json.dumps(tiling, sort_keys=True), str(max_frames)]
    images = item.image if isinstance(item.image, list) else [item.image]
    for p in [*images, item.seg, item.nifti_label]:
        if p is None:
            continue
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        parts += [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file()]
    parts.append(json.dumps(item.segment_map, sort_keys=True))
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def series_samples(
    item: SeriesItem, prep: Preprocessing, cache_dir: Path | None, max_frames: int = 8
) -> list[dict[str, np.ndarray]]:
    """Samples ``{"image": float16 (C, h, w), "label": uint8 (1, h, w)}`` of one annotated series.

    Images are kept in float16 (values in [0, 1], steps of at most 2**-11) to halve memory and cache size;
    training casts them back to float32.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{_cache_key(item, prep, max_frames)}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    n = int(z["n"])
                    return [{"image": z[f"image_{i}"], "label": z[f"label_{i}"]} for i in range(n)]
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a broken cache entry is rebuilt
    series, labels = load_item(item, prep.modality)
    if series.modality != prep.modality:
        raise ConfigError(f"{item.key}: series is {series.modality}, the config trains {prep.modality}")
    tiles = make_tiles(series, prep, select_frames(labels, max_frames))
    samples = [
        {"image": t.image.astype(np.float16), "label": labels_to_tile(labels[t.frame], t)[None]}
        for t in tiles
    ]
    if path is not None:
        arrays: dict[str, Any] = {"n": np.array(len(samples))}
        for i, s in enumerate(samples):
            arrays[f"image_{i}"] = s["image"]
            arrays[f"label_{i}"] = s["label"]

        def savez(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez appends ".npz" to a name
                np.savez(fh, **arrays)

        write_atomic(path, savez, "tile cache")
    return samples


def build_samples(
    items: list[SeriesItem],
    prep: Preprocessing,
    cache_dir: Path | None,
    max_frames: int = 8,
    log: Any = print,
) -> Iterator[dict[str, np.ndarray]]:
    """Samples of all items; an item that fails to load is reported through ``log`` and skipped."""
    for n, item in enumerate(items, start=1):
        try:
            yield from series_samples(item, prep, cache_dir, max_frames)
        except BackmiceError as exc:
            log(f"skipped {item.key}: {exc.reason}")
        if n % 20 == 0 or n == len(items):
            log(f"prepared {n}/{len(items)} series")


def class_frequencies(samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Fraction of pixels per class over ``samples`` (float64, sums to 1)."""
    counts = np.zeros(len(MODEL_CLASSES), dtype=np.float64)
    for s in samples:
        counts += np.bincount(s["label"].ravel(), minlength=len(MODEL_CLASSES))[: len(MODEL_CLASSES)]
    return counts / max(counts.sum(), 1.0)
