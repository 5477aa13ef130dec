"""load_series: one MR or US series decoded into an :class:`~backmice_vision.types.ImageSeries`."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, RLELossless

from ..errors import BackmiceError, InconsistentSeries, InvalidDicom, UnsupportedSeries
from ..profiles import profile_for
from ..types import FrameSource, ImageSeries, SeriesRef
from .plan import Plan
from .reader import Instance, group_instances, guarded, read_header, scan_folder
from .us import YBR_FULL, is_colour, luma, to_rgb8, ybr_full_to_rgb8

DEFAULT_MAX_BYTES = 2 * 1024**3
# Decoder plugins tried in order ("" = every installed plugin in pydicom's order). 8-bit lossy JPEG:
# Pillow (libjpeg-turbo) first, 3.7x faster than pylibjpeg on a 30-frame 600 x 800 YBR_FULL_422 cine
# (0.08 vs 0.30 s; the IDCTs differ by at most 1 in Y, 3 in chroma); 12-bit JPEG falls through to
# pylibjpeg. RLE uses pydicom's own decoder (pylibjpeg-rle panics on some damaged data).
_PLUGINS: dict[str, tuple[str, ...]] = {
    RLELossless: ("pydicom",),
    JPEGBaseline8Bit: ("pillow", "pylibjpeg", ""),
    JPEGExtended12Bit: ("pillow", "pylibjpeg", ""),
}
_COMPRESSED_PLUGINS = ("pylibjpeg", "")
_HEADER_KEYS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "SeriesNumber",
    "BodyPartExamined", "PhotometricInterpretation", "BitsStored", "ImageType", "FrameTime",
    "MagneticFieldStrength", "ScanningSequence", "SequenceVariant", "RepetitionTime", "EchoTime",
    "InversionTime", "SliceThickness",
)  # fmt: skip

Source = SeriesRef | str | Path | Sequence[str | Path]


def _read_paths(paths: Sequence[Path]) -> list[Instance]:
    """Headers of explicitly named files: every one must be readable DICOM."""
    out = []
    for p in paths:
        inst = read_header(Path(p))
        if inst is None:
            raise InvalidDicom("not a DICOM file", p)
        out.append(inst)
    return out


def _select_series(src: Source) -> tuple[list[Instance], list[str]]:
    """The image instances of the one series ``src`` names, and problems found on the way."""
    problems: list[str] = []
    if isinstance(src, SeriesRef):
        instances, where = _read_paths(src.paths), str(src.paths[0]) if src.paths else "series"
    elif isinstance(src, str | Path) and Path(src).is_dir():
        errors: list[tuple[Path, str]] = []
        instances, where = scan_folder(src, errors, scan_only=False), str(src)
        if errors:
            problems.append(f"{len(errors)} unreadable files in the folder ignored")
    elif isinstance(src, str | Path):
        if not Path(src).exists():
            raise BackmiceError("no such file or folder", src)
        instances, where = _read_paths([Path(src)]), str(src)
    else:
        paths = [Path(p) for p in src]
        if not paths:
            raise BackmiceError("no files given")
        instances, where = _read_paths(paths), str(paths[0])
    images = [i for i in instances if i.is_image]
    if not images:
        raise UnsupportedSeries("no image instances (only SEG/SR/other objects, or nothing DICOM)", where)
    groups = group_instances(images)
    if len(groups) > 1:
        counts = ", ".join(f"{g[0].modality} ×{len(g)}" for g in groups.values())
        raise InconsistentSeries(f"{len(groups)} series found ({counts}); load one at a time", where)
    images = next(iter(groups.values()))
    modalities = Counter(i.modality for i in images)
    if len(modalities) > 1:
        counts = ", ".join(f"{m} ×{n}" for m, n in sorted(modalities.items()))
        raise InconsistentSeries(f"mixed modalities in one series ({counts})", where)
    profile_for(images[0].modality, where)  # an unknown modality is an error here, before any decoding
    # The same SOP instance in two files: keep one copy.
    unique = {i.sop_uid: i for i in reversed(images)}
    if len(unique) < len(images):
        problems.append(f"{len(images) - len(unique)} duplicate SOP instances ignored")
        images = [i for i in images if unique[i.sop_uid] is i]
    return images, problems


def plan_series(src: Source) -> Plan:
    """Headers-only plan of what :func:`load_series` returns (order, geometry, regions, problems)."""
    instances, problems = _select_series(src)
    plan = profile_for(instances[0].modality, instances[0].path).plan(instances)
    plan.problems = problems + plan.problems
    return plan


def _check_size(plan: Plan, max_bytes: int) -> None:
    """Refuse, from the headers alone, a series whose decoding would need more than ``max_bytes``."""
    per_pixel = 4 + (3 if plan.colour else 0)  # float32 pixels + uint8 rgb
    needed = len(plan.frames) * plan.rows * plan.columns * per_pixel
    needed += max(i.decoded_bytes for i in plan.instances)  # one instance decoded at a time
    if needed > max_bytes:
        raise UnsupportedSeries(
            f"decoding needs {needed / 2**20:.0f} MiB, more than the limit of {max_bytes / 2**20:.0f} MiB "
            f"({len(plan.frames)} frames of {plan.rows}×{plan.columns})",
            plan.frames[0].inst.path,
        )


def _keeps_ybr(inst: Instance) -> bool:
    return inst.photometric in YBR_FULL and inst.bits_stored <= 8


def _decode(inst: Instance) -> tuple[np.ndarray, Any]:
    """Read the whole file and decode its pixel data; returns the frames and the dataset without PixelData.

    Compressed data is tried with the plugins of ``_PLUGINS`` (8-bit lossy JPEG: Pillow, then pylibjpeg),
    else pylibjpeg, then every installed plugin. 8-bit
    YBR_FULL(_422) stays YBR (see :func:`.us.ybr_full_to_rgb8`), other YBR is converted to RGB. The array
    has a leading frame axis.
    """
    with guarded(inst.path, "cannot read DICOM file"):
        ds = dcmread(inst.path, force=True)
        ds.file_meta.TransferSyntaxUID = inst.ds.file_meta.TransferSyntaxUID
    if "PixelData" not in ds:
        raise InvalidDicom("no pixel data", inst.path)
    from pydicom.pixels import pixel_array

    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    reason = ""
    plugins = _PLUGINS.get(inst.transfer_syntax, _COMPRESSED_PLUGINS) if compressed else ("",)
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = pixel_array(ds, decoding_plugin=plugin, as_rgb=not _keeps_ybr(inst))
            break
        except BaseException as exc:  # any decoder failure on untrusted bytes; the next plugin may succeed
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            # BaseException: Rust decoders (pylibjpeg-rle) panic with pyo3's PanicException.
            # Decoder messages are about sizes and codecs, never header values: keep a short one.
            reason = f"cannot decode pixel data: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    else:
        raise InvalidDicom(reason, inst.path)
    del ds.PixelData
    expected_ndim = 3 if inst.samples == 3 else 2
    if arr.ndim == expected_ndim:
        arr = arr[None]
    if arr.shape[0] != inst.frames or arr.shape[1:3] != (inst.rows, inst.columns):
        raise InvalidDicom(f"decoded shape {arr.shape} does not match the header", inst.path)
    return arr, ds


def _jsonable(value: Any) -> Any:
    """pydicom values as plain Python (str, int, float or a list of them)."""
    if isinstance(value, str | bytes):
        return str(value)
    if hasattr(value, "__iter__"):
        return [_jsonable(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _header(ds: Any, inst: Instance, plan: Plan) -> dict[str, Any]:
    """A small dict of non-identifying acquisition attributes (JSON-friendly values)."""
    out: dict[str, Any] = {"TransferSyntaxUID": inst.transfer_syntax}
    for key in _HEADER_KEYS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = ds.get(key)
            if value is not None and value != "":
                out[key] = _jsonable(value)
        except Exception:
            continue  # an unreadable optional attribute is left out
    out["ContrastType"] = contrast_type(ds, plan.modality)
    return out


def contrast_type(ds: Any, modality: str) -> str:
    """``"B"`` for ultrasound; for MR a guess from the timing: STIR (inversion recovery, TI < 300 ms),
    T1 (TR < 1000 ms, TE < 30 ms), T2 (TR ≥ 1500 ms, TE ≥ 60 ms), else ``"unknown"``."""
    if modality == "US":
        return "B"
    try:
        tr, te, ti = (float(ds.get(k) or 0) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared and not tr:
            item = shared[0]
            timing = item.get("MRTimingAndRelatedParametersSequence")
            echo = item.get("MREchoSequence")
            modifier = item.get("MRModifierSequence")
            tr = float(timing[0].get("RepetitionTime") or 0) if timing else 0.0
            te = float(echo[0].get("EffectiveEchoTime") or 0) if echo else 0.0
            if modifier and modifier[0].get("InversionRecovery") == "YES":
                times = modifier[0].get("InversionTimes") or [0]
                ti = float(times[0])
        scanning = " ".join(str(v) for v in (ds.get("ScanningSequence") or []))
    except Exception:
        return "unknown"
    if ti and ti < 300 and ("IR" in scanning or scanning == ""):
        return "STIR"
    if tr and te and tr < 1000 and te < 30:
        return "T1"
    if tr >= 1500 and te >= 60:
        return "T2"
    return "unknown"


def load_series(src: Source, *, max_bytes: int = DEFAULT_MAX_BYTES, region: int | None = None) -> ImageSeries:
    """Decode one MR or US series into float32 pixels with its geometry.

    ``src`` is a :class:`SeriesRef` from :func:`find_series`, one file (an US image or cine, an Enhanced
    MR, a single MR slice), a folder holding one image series (non-image objects such as SEG are
    ignored; several image series raise :class:`InconsistentSeries` with their counts), or a list of
    files of one series.

    * MR: slices sorted along the slice normal, rescale applied, ``spacing_mm`` (slice, row, col) in mm,
      ``affine`` from index ``(k, i, j)`` to LPS mm, ``frame_of_reference_uid``. Splitting, duplicate
      and spacing rules: :mod:`backmice_vision.io.mr`.
    * US: frames in acquisition order, ``spacing_mm None`` (millimetres are per region),
      ``regions`` from SequenceOfUltrasoundRegions, ``rgb`` for colour sources:
      :mod:`backmice_vision.io.us`. ``region`` keeps only the region with that index.

    ``pixels`` is float32 ``(n, rows, cols)``; ``sources`` has one :class:`FrameSource` per frame in that
    order; ``datasets`` are the instances used, without PixelData. Before anything is decoded the size the
    headers claim is checked against ``max_bytes`` (:class:`UnsupportedSeries` when larger).
    Unreadable or undecodable files raise :class:`InvalidDicom`.
    """
    plan = plan_series(src)
    _check_size(plan, max_bytes)
    regions = plan.regions
    profile = profile_for(plan.modality)
    if region is not None:
        if profile.geometry != "regions" or not 0 <= region < len(regions):
            raise UnsupportedSeries(f"no ultrasound region {region}", plan.frames[0].inst.path)
        regions = [regions[region]]

    n = len(plan.frames)
    pixels = np.empty((n, plan.rows, plan.columns), dtype=np.float32)
    rgb = np.empty((n, plan.rows, plan.columns, 3), dtype=np.uint8) if plan.colour else None
    positions: dict[int, list[tuple[int, int]]] = {}  # id(instance) -> [(output k, frame)]
    for k, fr in enumerate(plan.frames):
        positions.setdefault(id(fr.inst), []).append((k, fr.frame))
    datasets = []
    for inst in plan.instances:
        arr, ds = _decode(inst)
        datasets.append(ds)
        targets = positions[id(inst)]
        if rgb is not None and _keeps_ybr(inst):
            for k, f in targets:
                pixels[k] = arr[f, ..., 0]  # Y is the BT.601 luma
                ybr_full_to_rgb8(arr[f], rgb[k])
            continue
        if rgb is not None:
            colour = to_rgb8(arr, inst) if is_colour(inst) else np.repeat(arr[..., None], 3, axis=-1)
            for k, f in targets:
                rgb[k] = colour[f]
                luma(rgb[k : k + 1], pixels[k : k + 1])
            continue
        for k, f in targets:
            pixels[k] = arr[f]
        if inst.photometric == "MONOCHROME1" and plan.modality == "US":
            # min + max of the stored range: 2**bits - 1 unsigned, -1 signed
            top = np.float32(-1 if inst.pixel_representation else 2**inst.bits_stored - 1)
            for k, _ in targets:
                np.subtract(top, pixels[k], out=pixels[k])
    for k, fr in enumerate(plan.frames):
        if fr.slope != 1.0 or fr.intercept != 0.0:
            pixels[k] *= np.float32(fr.slope)
            pixels[k] += np.float32(fr.intercept)

    first = plan.frames[0].inst
    sources = [
        FrameSource(fr.inst.sop_uid, fr.inst.sop_class, fr.frame + 1, str(fr.inst.path)) for fr in plan.frames
    ]
    with guarded(first.path, "cannot read FrameOfReferenceUID"):
        for_uid = str(datasets[0].get("FrameOfReferenceUID", "") or "") or None
    return ImageSeries(
        modality=plan.modality,
        pixels=pixels,
        spacing_mm=plan.spacing_mm,
        sources=sources,
        study_instance_uid=first.study_uid,
        series_instance_uid=first.series_uid,
        affine=plan.affine,
        regions=regions,
        frame_of_reference_uid=for_uid if profile.is_volume else None,
        rgb=rgb,
        header=_header(datasets[0], first, plan),
        datasets=datasets,
        problems=plan.problems,
    )
