"""Reading a DICOM Segmentation onto the pixel grid of an :class:`~backmice_vision.types.ImageSeries`.

:func:`read_seg` is the one SEG reader of the project (ground truth for evaluation and training, a user's
annotations). A SEG frame lands on series frame ``k`` when its Derivation Image → Source Image item names
``series.sources[k]`` (SOP Instance UID, and Referenced Frame Number for a multi-frame source; one SEG
frame may name several source frames). The SEG's own frame order, its geometry and its Frame of Reference
are not used, so a SEG fits any series holding the instances it was derived from, in whatever order.

Segmentation types:

* ``BINARY``: a pixel belongs to the frame's segment when its stored value is non-zero.
* ``FRACTIONAL``: when its stored value is above half of MaximumFractionalValue.
* ``LABELMAP`` (Supplement 243): a frame holds every segment; a pixel belongs to the segment whose number
  it stores.

Any mismatch (unreadable file, not a SEG, frames of another size, a frame naming no segment or an image
outside the series) is a one-line :class:`~backmice_vision.errors.InvalidDicom` naming the SEG file.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidDicom

if TYPE_CHECKING:
    from ..types import ImageSeries

SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")


def read_seg(
    path: str | Path, series: ImageSeries, labels: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """The segments of the DICOM SEG at ``path`` as bool masks ``(n, rows, cols)`` on ``series``' grid.

    Parameters
    ----------
    path
        The SEG file.
    series
        The image series the SEG was derived from; its ``sources`` say where each frame goes.
    labels
        Segment labels to read (case-insensitive); ``None`` reads every segment.

    Returns
    -------
    dict
        Lower-case SegmentLabel → bool mask of ``series.shape``. Segments sharing a label are merged; a
        wanted label the SEG lacks is absent; a segment without frames gives an all-False mask.

    Raises
    ------
    InvalidDicom
        On any mismatch between the file and the series (see the module docstring).
    """
    import pydicom
    from pydicom.pixels import iter_pixels

    wanted = None if labels is None else {str(x).lower() for x in labels}
    try:
        ds = pydicom.dcmread(path)
        modality, kind = str(ds.get("Modality", "")), str(ds.get("SegmentationType", "")).upper()
        if modality == "SEG" and kind in SEGMENTATION_TYPES:
            label_of = {int(s.SegmentNumber): str(s.SegmentLabel).lower() for s in ds.SegmentSequence}
            groups = list(ds.PerFrameFunctionalGroupsSequence)
            shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
            n_frames, rows, cols = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
            top = float(ds.get("MaximumFractionalValue", 255)) if kind == "FRACTIONAL" else 0.0
    except Exception as exc:  # pydicom raises many types on bad files
        raise InvalidDicom(f"cannot read the SEG ({type(exc).__name__})", path) from exc
    if modality == "SEG" and not kind:
        raise InvalidDicom("cannot read the SEG: no SegmentationType (a truncated file?)", path)
    if modality != "SEG" or kind not in SEGMENTATION_TYPES:
        raise InvalidDicom(
            f"not a BINARY, FRACTIONAL or LABELMAP DICOM SEG (Modality {modality[:16]!r})", path
        )
    if (rows, cols) != tuple(series.shape[1:]):
        raise InvalidDicom(f"SEG frames are {(rows, cols)}, the series {tuple(series.shape[1:])}", path)
    if len(groups) != n_frames:
        raise InvalidDicom(f"SEG has {n_frames} frames but {len(groups)} per-frame items", path)
    numbers = {n for n, label in label_of.items() if wanted is None or label in wanted}
    masks = {label_of[n]: np.zeros(series.shape, dtype=bool) for n in sorted(numbers)}
    where = {(s.sop_instance_uid, int(s.frame_number)): k for k, s in enumerate(series.sources)}
    placements = [_placement(f, fg, shared, kind, where, path) for f, fg in enumerate(groups)]
    if not numbers:
        return masks
    try:
        for (segment, targets), frame in zip(placements, iter_pixels(ds), strict=True):
            if kind == "LABELMAP":
                planes = {label_of[n]: frame == n for n in numbers}
            elif segment in numbers:
                planes = {label_of[segment]: frame > (0.5 * top if kind == "FRACTIONAL" else 0)}
            else:
                continue
            for label, plane in planes.items():
                for k in targets:
                    masks[label][k] |= plane
    except Exception as exc:  # a decoder failure or pixel data shorter than the frames
        raise InvalidDicom(f"cannot decode the SEG frames ({type(exc).__name__})", path) from exc
    return masks


def _placement(
    f: int, fg: Any, shared: Any, kind: str, where: dict[tuple[str, int], int], path: str | Path
) -> tuple[int, list[int]]:
    """(segment number or 0 for LABELMAP, series frame indices) of SEG frame ``f``."""
    from pydicom.multival import MultiValue

    def item(keyword: str) -> Any:
        for groups in (fg, shared):
            if groups is not None and keyword in groups:
                return groups[keyword].value[0]
        raise KeyError(keyword)

    try:
        segment = (
            0 if kind == "LABELMAP" else int(item("SegmentIdentificationSequence").ReferencedSegmentNumber)
        )
        src = item("DerivationImageSequence").SourceImageSequence[0]
        uid = str(src.ReferencedSOPInstanceUID)
        value = src.get("ReferencedFrameNumber", 1)
        frame_numbers = [int(x) for x in (value if isinstance(value, (list, MultiValue)) else [value])]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise InvalidDicom(f"SEG frame {f + 1} names no segment or source image", path) from exc
    targets = [where.get((uid, n)) for n in frame_numbers]
    if None in targets:
        raise InvalidDicom(f"SEG frame {f + 1} references an image outside the series", path)
    return segment, [k for k in targets if k is not None]
