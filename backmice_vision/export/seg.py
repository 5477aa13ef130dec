"""DICOM Segmentation (BINARY) of a :class:`DetectionResult`, pixel-aligned with the source frames.

Segments: one per nodule (number ``i`` = ``result.nodules[i - 1]``, label ``"nodule <id>"``, SNOMED
Lipoma, orange) followed by one ``"fascia defect"`` segment (SNOMED Lesion, sky blue) holding the
``label_map == DEFECT`` pixels. Every frame has the source's stored rows × columns: for ultrasound the
full frame, with nothing outside the analysed regions (the masks are zero there).

A result without nodules still gives a valid SEG: the defect segment alone, with empty frames when no
defect pixel was found (highdicom keeps all frames when every frame is empty).

:func:`build_segmentation` is the one SEG builder (these results and the phantoms' ground truth). Sources
with a Frame of Reference (MR, classic or Enhanced) go through ``highdicom.seg.Segmentation``. highdicom
0.28 builds a SEG without a Frame of Reference (ultrasound) for one source frame only, so for ultrasound
the SEG is built for one frame and its per-frame items are repeated for every (source frame, non-empty
segment), each citing its source instance and frame.

:func:`build_probability_seg` writes ``DetectionResult.nodule_probability`` as a FRACTIONAL SEG (type
PROBABILITY, MaximumFractionalValue 255: stored value ``round(p * 255)``) with one segment
``"nodule probability"``, on the same frames and geometry as the binary SEG. Frames whose probability rounds
to 0 everywhere are omitted; for ultrasound every pixel outside the analysed tissue regions is 0.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackmiceError
from ..fileio import save_atomic
from ..labels import DEFECT
from .dicom_common import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    algorithm_identification,
    contributing_equipment,
    model_name,
    software_version,
    source_datasets,
    source_path,
    writer_guard,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult, Nodule

# CIELab display colours of the Okabe–Ito orange (#E69F00) and sky blue (#56B4E9).
NODULE_LAB = (73.0, 20.0, 75.0)
DEFECT_LAB = (70.0, -10.0, -35.0)
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
MAX_FRACTIONAL = 255


def nodule_tracking_uid(result: DetectionResult, nodule: Nodule) -> str:
    """A tracking UID for a nodule, stable for the same series, model and nodule id (SEG and SR share it)."""
    from pydicom.uid import generate_uid

    parts = ["backmice nodule", result.series.series_instance_uid, result.model_id, result.model_version]
    return str(generate_uid(entropy_srcs=[*parts, str(nodule.id)]))


def segment_masks(result: DetectionResult) -> np.ndarray:
    """bool ``(n, rows, cols, n_nodules + 1)``: each nodule's mask at its bbox, then the defect pixels."""
    n, rows, cols = result.series.shape
    masks = np.zeros((n, rows, cols, len(result.nodules) + 1), dtype=bool)
    for s, nodule in enumerate(result.nodules):
        if nodule.mask is not None:
            k0, i0, j0, k1, i1, j1 = nodule.bbox
            masks[k0:k1, i0:i1, j0:j1, s] = nodule.mask
    masks[..., -1] = result.label_map == DEFECT
    return masks


def segment_labels(result: DetectionResult) -> np.ndarray | None:
    """The segments of :func:`segment_masks` as one label array ``(n, rows, cols)`` (uint8, or uint16 past
    254 nodules): each pixel's segment number, 0 for none; ``None`` when two segments share a pixel."""
    n_segments = len(result.nodules) + 1
    labels = np.zeros(result.series.shape, dtype=np.uint8 if n_segments <= 255 else np.uint16)
    for s, nodule in enumerate(result.nodules, start=1):
        if nodule.mask is not None:
            k0, i0, j0, k1, i1, j1 = nodule.bbox
            view = labels[k0:k1, i0:i1, j0:j1]
            if view[nodule.mask].any():
                return None
            view[nodule.mask] = s
    defect = result.label_map == DEFECT
    if labels[defect].any():
        return None
    labels[defect] = n_segments
    return labels


def _descriptions(result: DetectionResult) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = algorithm_identification(result)
    out = []
    for s, nodule in enumerate(result.nodules, start=1):
        out.append(
            hd.seg.SegmentDescription(
                segment_number=s,
                segment_label=f"nodule {nodule.id}",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lipoma,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                tracking_uid=nodule_tracking_uid(result, nodule),
                tracking_id=f"nodule {nodule.id}",
                display_color=hd.color.CIELabColor(*NODULE_LAB),
            )
        )
    out.append(
        hd.seg.SegmentDescription(
            segment_number=len(result.nodules) + 1,
            segment_label="fascia defect",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            display_color=hd.color.CIELabColor(*DEFECT_LAB),
        )
    )
    return out


def build_seg(
    result: DetectionResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    segmentation_type: str = "BINARY",
) -> Dataset:
    """The SEG dataset for ``result`` (see the module docstring); UIDs are new unless given.

    ``segmentation_type="LABELMAP"`` (Supplement 243) writes the segments as one RLE-compressed label
    image per frame instead of one bit plane per segment and frame. It needs disjoint segments and sources
    with a Frame of Reference (MR): anything else raises :class:`BackmiceError`. Few viewers read it yet
    (OHIF 3.13, Slicer and Weasis document BINARY and FRACTIONAL); BINARY stays the default.
    """
    import highdicom as hd
    from pydicom.uid import RLELossless

    kind = str(segmentation_type).upper()
    if kind not in ("BINARY", "LABELMAP"):
        raise BackmiceError(f"SEG type must be BINARY or LABELMAP, not {segmentation_type!r}")
    labels = segment_labels(result)  # highdicom checks a label array ~10x faster than stacked masks
    extra: dict[str, Any] = {}
    if kind == "LABELMAP":
        if labels is None:
            raise BackmiceError("a LABELMAP SEG needs disjoint segments; these overlap", source_path(result))
        if "FrameOfReferenceUID" not in source_datasets(result.series)[0]:
            raise BackmiceError("a LABELMAP SEG needs sources with a Frame of Reference", source_path(result))
        extra["transfer_syntax_uid"] = RLELossless
    kwargs: dict[str, Any] = {
        **extra,
        "segmentation_type": hd.seg.SegmentationTypeValues[kind],
        "segment_descriptions": _descriptions(result),
        "series_instance_uid": series_instance_uid or hd.UID(),
        "series_number": SERIES_NUMBERS["seg"],
        "sop_instance_uid": sop_instance_uid or hd.UID(),
        "content_description": "Back mouse detection",
        "series_description": SERIES_DESCRIPTIONS["seg"],
    }
    with writer_guard("DICOM SEG", source_path(result)):
        return _build(result, segment_masks(result) if labels is None else labels, kwargs)


def probability_planes(result: DetectionResult) -> np.ndarray:
    """uint8 ``(n, rows, cols, 1)``: ``round(nodule_probability * 255)``, 0 outside the US tissue regions.

    Raises :class:`BackmiceError` when the map's shape differs from the series or holds non-finite values.
    """
    prob = result.nodule_probability
    if prob.shape != result.series.shape:
        raise BackmiceError(
            f"nodule probability map has shape {prob.shape}, the series {result.series.shape}"
        )
    if not np.isfinite(prob).all():
        raise BackmiceError("nodule probability map holds non-finite values")
    out = np.empty(prob.shape, dtype=np.uint8)
    for k in range(prob.shape[0]):  # one frame at a time: no float copy of the whole volume
        out[k] = np.rint(np.clip(prob[k], 0.0, 1.0) * np.float32(MAX_FRACTIONAL))
    if result.series.modality == "US" and result.series.regions:
        inside = np.zeros(prob.shape[1:], dtype=bool)
        for region in result.series.regions:
            r0, c0, r1, c1 = region.box
            inside[r0:r1, c0:c1] = True
        out[:, ~inside] = 0
    return out[..., None]


def build_probability_seg(
    result: DetectionResult,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The FRACTIONAL (PROBABILITY, max 255) SEG of ``result.nodule_probability``; UIDs new unless given.

    One segment ``"nodule probability"`` (SNOMED Lipoma); frames and geometry as :func:`build_seg`.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="nodule probability",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lipoma,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(result),
        display_color=hd.color.CIELabColor(*NODULE_LAB),
    )
    kwargs: dict[str, Any] = {
        "segmentation_type": hd.seg.SegmentationTypeValues.FRACTIONAL,
        "fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        "max_fractional_value": MAX_FRACTIONAL,
        "segment_descriptions": [description],
        "series_instance_uid": series_instance_uid or hd.UID(),
        "series_number": SERIES_NUMBERS["segprob"],
        "sop_instance_uid": sop_instance_uid or hd.UID(),
        "content_description": "Back mouse probability",
        "series_description": SERIES_DESCRIPTIONS["segprob"],
    }
    planes = probability_planes(result)
    with writer_guard("probability SEG", source_path(result)):
        return _build(result, planes, kwargs)


def _build(result: DetectionResult, planes: np.ndarray, kwargs: dict[str, Any]) -> Dataset:
    """:func:`build_segmentation` of ``planes`` on the result's source frames, with this library's
    device attributes and Contributing Equipment."""
    kwargs = {
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": model_name(result),
        "software_versions": software_version(),
        "device_serial_number": "0",
        "content_label": "BACKMICE",
        "contributing_equipment": contributing_equipment(result),
        **kwargs,
    }
    frames = [(src.sop_instance_uid, src.frame_number) for src in result.series.sources]
    return build_segmentation(source_datasets(result.series), frames, planes, **kwargs)


def build_segmentation(
    sources: Sequence[Dataset], frames: Sequence[tuple[str, int]], planes: np.ndarray, **kwargs: Any
) -> Any:
    """A ``highdicom.seg.Segmentation`` of ``planes``, pixel-aligned with the source frames.

    The one SEG builder of the project (results here, phantom ground truth in
    :mod:`backmice_vision.phantoms.dicom`).

    Parameters
    ----------
    sources
        The source image datasets (headers suffice), one per instance.
    frames
        ``(SOP Instance UID, frame number)`` of the source frame under each plane index ``k``.
    planes
        ``(n, rows, cols, segments)`` bool masks (BINARY) or uint8 stored values ``0 … max_fractional_value``
        (FRACTIONAL), or ``(n, rows, cols)`` segment numbers (BINARY or LABELMAP, disjoint segments).
    **kwargs
        ``highdicom.seg.Segmentation`` arguments other than ``source_images``, ``pixel_array`` and
        ``omit_empty_frames`` (segment descriptions, UIDs, device, ``contributing_equipment`` ...).

    Empty frames are left out, unless all are empty (then all are kept for a source with a Frame of
    Reference, the very last plane for one without).
    """
    import highdicom as hd

    if "FrameOfReferenceUID" not in sources[0]:
        return _seg_without_frame_of_reference(sources, frames, planes, kwargs)
    pixel_array = _stored_order(sources, frames, planes)
    if pixel_array.ndim == 4 and pixel_array.dtype != bool:  # fractions: floats in [0, 1], rounded × max
        top = np.float32(kwargs.get("max_fractional_value", MAX_FRACTIONAL))
        pixel_array = pixel_array.astype(np.float32) / top
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixel_array,
        omit_empty_frames=bool(pixel_array.any()),  # all empty: highdicom keeps all, and says so on stderr
        **kwargs,
    )


def _stored_order(
    sources: Sequence[Dataset], frames: Sequence[tuple[str, int]], planes: np.ndarray
) -> np.ndarray:
    """``planes`` reordered to the sources' frames: source instance order, then stored frame number."""
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        out = np.zeros((int(sources[0].NumberOfFrames), *planes.shape[1:]), dtype=planes.dtype)
        for k, (_, frame_number) in enumerate(frames):
            out[frame_number - 1] = planes[k]
        return out
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(sources)}
    out = np.zeros((len(sources), *planes.shape[1:]), dtype=planes.dtype)
    for k, (uid, _) in enumerate(frames):
        out[index[uid]] = planes[k]
    return out


def _seg_without_frame_of_reference(
    sources: Sequence[Dataset], frames: Sequence[tuple[str, int]], planes: np.ndarray, kwargs: dict[str, Any]
) -> Any:
    """highdicom 0.28 builds a SEG without a Frame of Reference (ultrasound) for one source frame only:
    it is built for one frame with every segment, and its per-frame items are repeated for every
    (source frame, non-empty segment), each citing its source instance (and frame, for a multi-frame
    source). A label array is read one frame and segment at a time."""
    import highdicom as hd
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.pixels import pack_bits

    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    template_src = DicomDataset()  # a single-frame header copy: the caller's datasets stay untouched
    for elem in sources[0]:
        if elem.keyword not in ("PixelData", "NumberOfFrames"):
            template_src.add(copy.deepcopy(elem))
    template_src.SOPClassUID = US_IMAGE_STORAGE
    n_seg = len(kwargs["segment_descriptions"])
    labels = planes.ndim == 3
    binary = labels or planes.dtype == bool

    def plane_of(k: int, s: int) -> np.ndarray:
        return planes[k] == s + 1 if labels else planes[k, ..., s]

    first = np.ones((1, *planes.shape[1:3], n_seg), dtype=bool if binary else np.float32)
    seg = hd.seg.Segmentation(
        source_images=[template_src], pixel_array=first, omit_empty_frames=False, **kwargs
    )
    template = list(seg.PerFrameFunctionalGroupsSequence)
    items: list[DicomDataset] = []
    kept: list[np.ndarray] = []
    for k, (uid, frame_number) in enumerate(frames):
        src = by_uid[uid]
        multiframe = int(src.get("NumberOfFrames", 1) or 1) > 1
        for s in range(n_seg):
            plane = plane_of(k, s)
            if not plane.any() and (kept or k < len(frames) - 1 or s < n_seg - 1):
                continue  # an all-empty SEG keeps its very last plane: a SEG needs a frame
            item = copy.deepcopy(template[s])
            ref = item.DerivationImageSequence[0].SourceImageSequence[0]
            ref.ReferencedSOPClassUID = src.SOPClassUID
            ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            if multiframe:
                ref.ReferencedFrameNumber = frame_number
            items.append(item)
            kept.append(plane)
    refs = []
    for ds in sources:
        ref = DicomDataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        refs.append(ref)
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = refs
    seg.SourceImageSequence = copy.deepcopy(refs)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.PatientOrientation = sources[0].get("PatientOrientation", "")  # Type 2C without a frame of reference
    seg.NumberOfFrames = len(items)
    seg.PixelData = pack_bits(np.stack(kept)) if binary else np.stack(kept).tobytes()
    if binary:  # highdicom's one-frame template had every segment everywhere
        overlap = not labels and bool((planes.sum(axis=-1, dtype=np.uint16) > 1).any())
        seg.SegmentsOverlap = "YES" if overlap else "NO"
    return seg


def write_seg(
    result: DetectionResult,
    path: Path,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    segmentation_type: str = "BINARY",
) -> Path:
    """Build the SEG (:func:`build_seg`, BINARY or LABELMAP) and write it atomically to ``path``."""
    seg = build_seg(
        result,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        segmentation_type=segmentation_type,
    )
    return save_atomic(seg, path)


def write_probability_seg(
    result: DetectionResult,
    path: Path,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Build the probability SEG (:func:`build_probability_seg`) and write it atomically to ``path``."""
    seg = build_probability_seg(
        result, series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid
    )
    return save_atomic(seg, path)
