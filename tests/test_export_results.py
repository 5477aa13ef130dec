"""save_result end to end: JSON report, SR (TID 1500) and Secondary Capture, all dciodvfy-clean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from export_factory import make_result, mr, us
from test_export_seg import dciodvfy_errors

from backmice_vision.errors import ConfigError
from backmice_vision.export import save_result
from backmice_vision.export.report import REPORT_SCHEMA, SCHEMA_ID
from backmice_vision.render import render_overlay


def _check_schema(report: dict) -> None:
    """The schema's required keys and the finding keys (jsonschema is not a dependency)."""
    assert set(REPORT_SCHEMA["required"]) <= set(report)
    finding_keys = set(REPORT_SCHEMA["properties"]["findings"]["items"]["properties"])
    for finding in report["findings"]:
        assert set(finding) == finding_keys


@pytest.mark.parametrize("kind", ["mr", "us_cine"])
def test_save_all_formats(tmp_path: Path, kind: str) -> None:
    series = mr(tmp_path / "in") if kind == "mr" else us(tmp_path / "in.dcm", 3)
    result = make_result(series, 2)
    written = result.save(tmp_path / "out")
    assert set(written) == {"png", "json", "seg", "sr", "sc"}
    assert [p.name for p in written["png"]][-1] == "montage.png"
    # MR: every slice with a finding; a cine clip: only each nodule's key frame
    assert len(written["sc"]) == len(written["png"]) - 1 == (3 if kind == "mr" else 2)
    assert not list((tmp_path / "out").glob(".*tmp"))

    report = json.loads(written["json"][0].read_text())
    _check_schema(report)
    assert report["schema"] == SCHEMA_ID and report["modality"] == series.modality
    assert report["series_instance_uid"] == series.series_instance_uid
    assert [f["id"] for f in report["findings"]] == [1, 2]
    f1 = report["findings"][0]
    assert f1["longest_diameter_mm"] == 18.4 and f1["fascia_defect"]["present"] is True
    assert f1["bbox_voxel"] == list(result.nodules[0].bbox)
    assert report["outputs"]["seg"] == ["seg.dcm"]

    for kind_ in ("seg", "sr", "sc"):
        for path in written[kind_]:
            assert dciodvfy_errors(path) == [], path
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == series.study_instance_uid
            assert ds.PatientID == series.datasets[0].PatientID
            # once, through highdicom's contributing_equipment (highdicom's own item stays last)
            ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "backmice_vision"]
            assert len(ours) == 1 and ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
            assert ds.ContributingEquipmentSequence[-1].ManufacturerModelName == "highdicom"

    # SC pixels are the overlay at source resolution; Laterality from the findings' side
    sc = pydicom.dcmread(written["sc"][0])
    assert (sc.Rows, sc.Columns) == series.shape[1:]
    assert np.array_equal(sc.pixel_array, render_overlay(result, 0))
    assert sc.Laterality == "L"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == series.sources[0].sop_instance_uid

    import highdicom as hd

    sr = hd.sr.srread(written["sr"][0])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    seg = pydicom.dcmread(written["seg"][0])
    first = groups[0]
    ref = first.referenced_segment
    assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID and ref.referenced_segment_numbers == [1]
    assert str(first.tracking_uid) == seg.SegmentSequence[0].TrackingUID
    values = {m.name.meaning: (m.value, m.unit.value) for m in first.get_measurements()}
    assert values["Long axis"] == (18.4, "mm") and values["Short axis"] == (11.2, "mm")
    assert values["Probability"] == (pytest.approx(0.87), "1")
    assert ("Volume" in values) == (kind == "mr")
    qual = first.get_qualitative_evaluations()
    assert qual[0].value.meaning == "Present"


def test_no_findings_and_format_subset(tmp_path: Path) -> None:
    result = make_result(us(tmp_path / "in.dcm", 1), 0, side=None)
    written = save_result(result, tmp_path / "out", ["json", "sr"])
    assert set(written) == {"json", "sr", "seg"}
    report = json.loads(written["json"][0].read_text())
    assert report["findings"] == [] and report["series_probability"] == 0.05
    _check_schema(report)
    for path in (*written["sr"], *written["seg"]):
        assert dciodvfy_errors(path) == [], path
    # Without findings the SC still shows the analysed (middle) frame, so viewers show the series was read.
    sc_paths = save_result(result, tmp_path / "sc", ["sc"])["sc"]
    assert [p.name for p in sc_paths] == [f"sc_k{result.series.shape[0] // 2:04d}.dcm"]
    assert dciodvfy_errors(sc_paths[0]) == []
    with pytest.raises(ConfigError, match="unknown output format"):
        save_result(result, tmp_path / "x", ["pdf"])


def test_given_uids_are_written_once_and_cited(tmp_path: Path) -> None:
    """``uids`` names every DICOM output (the node's deterministic UIDs): no rewrite after writing."""
    from pydicom.uid import generate_uid

    def uids(kind: str, index: int) -> tuple[str, str]:
        return (
            str(generate_uid(entropy_srcs=["t", kind, "series"])),
            str(generate_uid(entropy_srcs=["t", kind, str(index)])),
        )

    result = make_result(mr(tmp_path / "in"), 2)
    written = save_result(result, tmp_path / "out", ["seg", "sr", "sc", "segprob"], uids=uids)
    for kind in ("seg", "sr", "segprob"):
        ds = pydicom.dcmread(written[kind][0])
        assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == uids(kind, 0)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    scs = sorted((pydicom.dcmread(p) for p in written["sc"]), key=lambda ds: int(ds.InstanceNumber))
    assert [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in scs] == [uids("sc", i) for i in range(3)]
    sr = pydicom.dcmread(written["sr"][0])
    cited = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert uids("seg", 0)[1] in cited
    assert dciodvfy_errors(written["sr"][0]) == []
    again = save_result(result, tmp_path / "again", ["seg"], uids=uids)
    assert pydicom.dcmread(again["seg"][0]).SOPInstanceUID == uids("seg", 0)[1]  # a rerun: the same instance
