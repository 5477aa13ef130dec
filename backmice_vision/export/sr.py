"""TID 1500 Measurement Report (Comprehensive 3D SR) of a :class:`DetectionResult`.

One Volumetric ROI group (TID 1411) per nodule, citing its segment of the result's SEG with
``ReferencedSegment`` (``ReferencedSegmentationFrame`` fails dciodvfy) and the same tracking UID as the SEG
segment. Measurements: long axis / short axis / diameter (mm), volume (ml, MR), depth of the nodule centre
below the skin (mm), confidence (DCM "Probability", UCUM "1"); the fascia defect as a qualitative
evaluation (Present / Absent) plus its probability and width. Millimetre measurements are left out for an
uncalibrated series. Observer: the algorithm as a device. Concepts without a standard code use the private
coding scheme ``99BACKMICE``. Document flags stay preliminary / partial / unverified (AI output).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dicom_common import (
    MANUFACTURER,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    add_provenance,
    model_name,
    save_atomic,
    software_version,
    source_datasets,
)
from .seg import nodule_tracking_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..types import DetectionResult, Nodule

PRIVATE_SCHEME = "99BACKMICE"


def _private(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


def _measurements(nodule: Nodule, calibrated: bool, modality: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mm, one = codes.UCUM.Millimeter, hd.sr.CodedConcept("1", "UCUM", "no units")
    out = []

    def add(name: Any, value: float | None, unit: Any) -> None:
        if value is not None:
            out.append(hd.sr.Measurement(name=name, value=float(value), unit=unit))

    diameters = sorted(nodule.diameters_mm, reverse=True) if calibrated else []
    if len(diameters) == 1:
        add(codes.SCT.Diameter, diameters[0], mm)
    elif diameters:
        add(codes.SCT.LongAxis, diameters[0], mm)
        add(codes.SCT.ShortAxis, diameters[-1], mm)
        if len(diameters) == 3:
            add(codes.SCT.Diameter, diameters[1], mm)
    if calibrated and modality == "MR":
        add(codes.SCT.Volume, nodule.volume_ml, hd.sr.CodedConcept("ml", "UCUM", "milliliter"))
    if calibrated:
        add(codes.SCT.Depth, nodule.depth_mm, mm)
        add(_private("FASCIA_DEPTH", "Depth of thoracolumbar fascia"), nodule.fascia_depth_mm, mm)
        add(_private("DEFECT_WIDTH", "Width of fascial defect"), nodule.fascia_defect.width_mm, mm)
    add(codes.DCM.Probability, nodule.confidence, one)
    add(_private("DEFECT_PROB", "Probability of fascial defect"), nodule.fascia_defect.probability, one)
    return out


def build_sr(
    result: DetectionResult,
    seg: Dataset,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The SR dataset; ``seg`` is the SEG of the same result (:func:`.seg.build_seg`)."""
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
    groups: list[Any] = []
    for s, nodule in enumerate(result.nodules, start=1):
        side = {"left": codes.SCT.Left, "right": codes.SCT.Right}.get(nodule.side or "")
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
                finding_sites=[hd.sr.FindingSite(anatomic_location=site_location, laterality=side)],
                measurements=_measurements(nodule, series.calibrated, series.modality),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=_private("FASCIA_DEFECT", "Fascial defect"),
                        value=codes.SCT.Present if nodule.fascia_defect.present else codes.SCT.Absent,
                    )
                ],
            )
        )
    # A series-level group (TID 1501): the series probability, and "Absent" when nothing was found.
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
            qualitative_evaluations=None
            if result.nodules
            else [hd.sr.QualitativeEvaluation(name=codes.SCT.Finding, value=codes.SCT.Absent)],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=SERIES_DESCRIPTIONS["sr"],
    )
    sr.ManufacturerModelName = model_name(result)
    sr.SoftwareVersions = software_version()
    add_provenance(sr, result)
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
