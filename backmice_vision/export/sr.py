"""TID 1500 Measurement Report (Comprehensive 3D SR) of a :class:`DetectionResult`.

One Volumetric ROI group (TID 1411) per nodule, citing its segment of the result's SEG with
``ReferencedSegment`` (``ReferencedSegmentationFrame`` fails dciodvfy) and the same tracking UID as the SEG
segment. Measurements: long axis / short axis / diameter (mm), volume (ml, MR), depth of the nodule centre
below the skin (mm), confidence (DCM "Probability", UCUM "1"); the fascia defect as a qualitative
evaluation (Present / Absent) plus its probability and width; whether the image edge cuts the nodule (Yes /
No: then its sizes are lower bounds, as report.json's ``truncated``), in the volumetric group and beside
the key-frame diameter. Millimetre measurements are left out for an
uncalibrated series. Observer: the algorithm as a device. Concepts without a standard code use the private
coding scheme ``99BACKMICE``. Document flags stay preliminary / partial / unverified (AI output).

Beside it, per nodule, a Planar ROI group (TID 1410) on its key frame (``round(center_voxel[0])``), with the
same tracking UID, for viewers that draw SR regions but not (ultrasound) SEG: the image region is the
nodule outline in that frame (SCOORD POLYLINE, closed, image pixel coordinates with 0\\0 the top-left corner
of the top-left pixel) selected from the source instance and frame; its measurement is the longest
in-plane diameter (mm, the principal-axis extent of the key-frame mask, as ``findings`` measures US),
inferred from a two-point POLYLINE drawn along that axis. OHIF merges groups with one tracking UID and
lists all their measurements on the outline.

A series-level group (TID 1501, the series probability with "Finding: Absent") is written only when no
nodule is found: OHIF 3.13 fails on a whole SR as soon as one measurement group has no image coordinates
(``coords[0].ReferencedSOPSequence`` of an empty list); the series probability is always in report.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fileio import save_atomic
from ..profiles import profile_for
from .dicom_common import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    contributing_equipment,
    model_name,
    software_version,
    source_datasets,
    source_path,
    writer_guard,
)
from .seg import nodule_tracking_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult, Nodule

PRIVATE_SCHEME = "99BACKMICE"


@dataclass(frozen=True)
class KeyFrameGeometry:
    """A nodule's drawing on its key frame ``k``: ``outline`` float ``(N, 2)`` closed polyline and ``line``
    ``(2, 2)`` along the longest in-plane principal axis, both as DICOM image coordinates (column, row)
    with 0\\0 at the top-left corner of the top-left pixel; ``longest_mm`` the line's length (None when
    the frame has no calibration)."""

    k: int
    outline: np.ndarray
    line: np.ndarray
    longest_mm: float | None


def key_frame_geometry(result: DetectionResult, nodule: Nodule) -> KeyFrameGeometry | None:
    """The outline and longest-diameter line of ``nodule`` on its key frame; None without a mask there."""
    from skimage.measure import approximate_polygon, find_contours

    from ..findings import principal_extents_mm

    if nodule.mask is None:
        return None
    k0, i0, j0, k1, _, _ = nodule.bbox
    k = min(max(round(nodule.center_voxel[0]), k0), k1 - 1)
    plane = np.asarray(nodule.mask[k - k0], dtype=bool)
    if not plane.any():
        return None
    contours = find_contours(np.pad(plane, 1).astype(np.float32), 0.5)
    contour = approximate_polygon(max(contours, key=len), tolerance=0.5)  # (row, col), closed
    outline = np.stack([contour[:, 1] + j0 - 1 + 0.5, contour[:, 0] + i0 - 1 + 0.5], axis=1)
    spacing = _frame_spacing_mm(result, nodule)
    dy, dx = spacing if spacing is not None else (1.0, 1.0)
    rows, cols = np.nonzero(plane)
    pts = np.stack([(rows + i0) * dy, (cols + j0) * dx], axis=1).astype(np.float64)
    centre = pts.mean(axis=0)
    if len(pts) > 1:
        _, vecs = np.linalg.eigh((pts - centre).T @ (pts - centre))
        axis = vecs[:, -1]  # the largest eigenvalue: the longest principal axis
    else:
        axis = np.array([0.0, 1.0])
    proj = (pts - centre) @ axis
    half_px = float(np.abs(axis * np.array([dy, dx])).sum()) / 2  # the voxel footprint, as findings adds it
    ends_mm = centre + np.outer([proj.min() - half_px, proj.max() + half_px], axis)
    line = np.stack([ends_mm[:, 1] / dx + 0.5, ends_mm[:, 0] / dy + 0.5], axis=1)
    longest = principal_extents_mm(pts, np.diag([dy, dx]))[0] if spacing is not None else None
    return KeyFrameGeometry(k, outline.astype(np.float32), line.astype(np.float32), longest)


def _frame_spacing_mm(result: DetectionResult, nodule: Nodule) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm where ``nodule`` lies: its US region's, MR's in-plane."""
    series = result.series
    if not profile_for(series.modality).is_volume:
        regions = [r for r in series.regions if r.index == nodule.region_index]
        return regions[0].spacing_mm if regions else None
    if series.spacing_mm is None:
        return None
    return float(series.spacing_mm[1]), float(series.spacing_mm[2])


def _key_frame_groups(
    result: DetectionResult, nodule: Nodule, sources: dict[str, Dataset], algorithm: Any, sites: list[Any]
) -> list[Any]:
    """The key-frame groups of ``nodule`` (see the module docstring): the TID 1410 outline and, when
    calibrated, the TID 1501 longest diameter inferred from its line; [] without a mask."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    geo = key_frame_geometry(result, nodule)
    if geo is None:
        return []
    frame = result.series.sources[geo.k]
    src = sources[frame.sop_instance_uid]
    frames = [frame.frame_number] if int(src.get("NumberOfFrames", 1) or 1) > 1 else None

    def source_image() -> Any:
        return hd.sr.SourceImageForRegion(src.SOPClassUID, src.SOPInstanceUID, frames)

    uid = nodule_tracking_uid(result, nodule)
    groups: list[Any] = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uid, identifier=f"nodule {nodule.id} outline, frame {geo.k + 1}"
            ),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=geo.outline,
                source_image=source_image(),
            ),
            finding_type=codes.SCT.Lipoma,
            algorithm_id=algorithm,
            finding_sites=sites,
        )
    ]
    if geo.longest_mm is None:
        return groups
    long_axis = hd.sr.Measurement(name=codes.SCT.LongAxis, value=geo.longest_mm, unit=codes.UCUM.Millimeter)
    line = hd.sr.ScoordContentItem(
        name=codes.DCM.ImageRegion,
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=geo.line,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    line.ContentSequence = DicomSequence([source_image()])
    long_axis[0].ContentSequence = DicomSequence([line])  # a NUM item has no children of its own
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=str(generate_uid(entropy_srcs=[uid, "longest diameter", str(geo.k)])),
                identifier=f"nodule {nodule.id} longest diameter, frame {geo.k + 1}",
            ),
            finding_type=codes.SCT.Lipoma,
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=[long_axis],
            qualitative_evaluations=[_cut_by_edge(nodule)],
        )
    )
    return groups


def _private(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


def _cut_by_edge(nodule: Nodule) -> Any:
    """The qualitative evaluation saying whether the image edge cuts ``nodule`` (its sizes: lower bounds)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.QualitativeEvaluation(
        name=_private("CUT_BY_EDGE", "Cut by image edge (sizes are lower bounds)"),
        value=codes.SCT.Yes if nodule.truncated else codes.SCT.No,
    )


def _measurements(nodule: Nodule, calibrated: bool, modality: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mm, one = codes.UCUM.Millimeter, hd.sr.CodedConcept("1", "UCUM", "no units")
    out = []

    def add(name: Any, value: float | None, unit: Any) -> None:
        if value is not None:
            out.append(hd.sr.Measurement(name=name, value=float(value), unit=unit))

    # The longest diameter, the confidence and the defect probability first: OHIF 3.13 labels an outline
    # with the first five measurements of its groups only.
    diameters = sorted(nodule.diameters_mm, reverse=True) if calibrated else []
    if diameters:
        add(codes.SCT.Diameter if len(diameters) == 1 else codes.SCT.LongAxis, diameters[0], mm)
    add(codes.DCM.Probability, nodule.confidence, one)
    add(_private("DEFECT_PROB", "Probability of fascial defect"), nodule.fascia_defect.probability, one)
    if len(diameters) > 1:
        add(codes.SCT.ShortAxis, diameters[-1], mm)
        if len(diameters) == 3:
            add(codes.SCT.Diameter, diameters[1], mm)
    if calibrated and modality == "MR":
        add(codes.SCT.Volume, nodule.volume_ml, hd.sr.CodedConcept("ml", "UCUM", "milliliter"))
    if calibrated:
        add(codes.SCT.Depth, nodule.depth_mm, mm)
        add(_private("FASCIA_DEPTH", "Depth of thoracolumbar fascia"), nodule.fascia_depth_mm, mm)
        add(_private("DEFECT_WIDTH", "Width of fascial defect"), nodule.fascia_defect.width_mm, mm)
    return out


def build_sr(
    result: DetectionResult,
    seg: Dataset,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The SR dataset; ``seg`` is the SEG of the same result (:func:`.seg.build_seg`)."""
    with writer_guard("DICOM SR", source_path(result)):
        return _build_sr(result, seg, series_instance_uid, sop_instance_uid)


def _build_sr(
    result: DetectionResult, seg: Dataset, series_instance_uid: str | None, sop_instance_uid: str | None
) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    series = result.series
    sources = source_datasets(series)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=["backmice device", result.model_id, result.model_version])),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=model_name(result),
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=MANUFACTURER, version=f"{software_version()} {result.model_id} {result.model_version}"[:64]
    )
    site_location = codes.SCT.LumbarRegion
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    groups: list[Any] = []
    for s, nodule in enumerate(result.nodules, start=1):
        side = {"left": codes.SCT.Left, "right": codes.SCT.Right}.get(nodule.side or "")
        sites = [hd.sr.FindingSite(anatomic_location=site_location, laterality=side)]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=nodule_tracking_uid(result, nodule), identifier=f"nodule {nodule.id}"
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=s,
                    source_series=hd.sr.SourceSeriesForSegmentation(series.series_instance_uid),
                ),
                finding_type=codes.SCT.Lipoma,
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=_measurements(nodule, series.calibrated, series.modality),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=_private("FASCIA_DEFECT", "Fascial defect"),
                        value=codes.SCT.Present if nodule.fascia_defect.present else codes.SCT.Absent,
                    ),
                    _cut_by_edge(nodule),
                ],
            )
        )
        groups += _key_frame_groups(result, nodule, by_uid, algorithm, sites)
    if result.nodules:
        return _document(result, context, groups, [*sources, seg], series_instance_uid, sop_instance_uid)
    # Nothing found: a series-level group (TID 1501), the series probability and "Finding: Absent".
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=str(
                    generate_uid(
                        entropy_srcs=[
                            "backmice series",
                            series.series_instance_uid,
                            result.model_id,
                            result.model_version,
                        ]
                    )
                ),
                identifier="series",
            ),
            finding_type=codes.SCT.Lipoma,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=float(result.series_probability),
                    unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                )
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=codes.SCT.Finding, value=codes.SCT.Absent)
            ],
        )
    )
    return _document(result, context, groups, [*sources, seg], series_instance_uid, sop_instance_uid)


def _document(
    result: DetectionResult,
    context: Any,
    groups: list[Any],
    evidence: list[Dataset],
    series_instance_uid: str | None,
    sop_instance_uid: str | None,
) -> Dataset:
    """The Comprehensive 3D SR holding the TID 1500 report of ``groups``."""
    import highdicom as hd

    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=SERIES_DESCRIPTIONS["sr"],
        contributing_equipment=contributing_equipment(result),
    )
    sr.ManufacturerModelName = model_name(result)
    sr.SoftwareVersions = software_version()
    return sr


def write_sr(
    result: DetectionResult,
    seg: Dataset,
    path: Path,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Build the SR (:func:`build_sr`) and write it atomically to ``path``."""
    sr = build_sr(result, seg, series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid)
    return save_atomic(sr, path)
