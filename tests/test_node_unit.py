"""DICOM node pieces without networking: config validation, journal state machine, deterministic UIDs."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from node_support import REPO, mr_series, write_node_config
from pydicom.uid import generate_uid

from backmice_vision.errors import ConfigError, InvalidDicom
from backmice_vision.node.cli import print_status
from backmice_vision.node.config import load_config, parse_config
from backmice_vision.node.journal import Journal
from backmice_vision.node.worker import (
    PipelineSettings,
    deterministic_uids,
    process_series,
    run_job,
)

MINIMAL = {
    "callers": [{"ae_title": "WS", "hosts": ["127.0.0.1"]}],
    "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
}


def test_shipped_config_loads() -> None:
    config = load_config(REPO / "configs" / "node.yaml")
    assert config.ae_title == "BACKMICE" and config.bind_address == "127.0.0.1"
    assert config.destination_for("ORTHANC").ae_title == "ORTHANC"
    assert config.destination_for("WORKSTATION").name == "pacs"
    assert config.outputs == ("seg", "sr", "sc")
    assert config.spool_dir.resolve() == (REPO / "build" / "node-spool").resolve()
    assert config.precision == "float32"


def test_node_precision_reaches_the_workers_detector(tmp_path: Path) -> None:
    from backmice_vision.node.worker import PipelineSettings, _detector_spec

    config = load_config(write_node_config(tmp_path / "node.yaml", **{**MINIMAL, "precision": "bfloat16"}))
    assert config.precision == "bfloat16"
    spec = _detector_spec(PipelineSettings(model=config.model, device="cpu", precision=config.precision))
    assert spec.precision == "bfloat16" and spec.build().precision == "bfloat16"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown setting(s): colour"),
        ({"ae_title": "A" * 17}, "ae_title: AE title must be 1-16"),
        ({"callers": []}, "at least one allowed calling AE"),
        ({"callers": [{"ae_title": "WS", "destination": "nowhere"}]}, "'nowhere' is not in destinations"),
        ({"destinations": {"pacs": {"ae_title": "PACS", "host": "h"}}}, "needs ae_title, host and port"),
        ({"outputs": ["seg", "png"]}, "outputs must be a non-empty list"),
        ({"port": 70000}, "port must be an integer"),
        ({"quiet_period_s": -1}, "quiet_period_s must be a number >= 0"),
        ({"pipeline": "rm -rf"}, "pipeline must be one of"),
        ({"series_complete": "never"}, "series_complete must be"),
        (
            {"tls": {"certificate": "missing.pem", "private_key": "missing.key"}},
            "tls.certificate: file not found",
        ),
        ({"destinations": {"web": {"stow_url": "ftp://x"}}}, "stow_url must be an http(s) URL"),
        ({"precision": "half"}, "precision must be float32 or bfloat16, not 'half'"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = write_node_config(tmp_path / "node.yaml", **{**MINIMAL, **change})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_config_not_yaml_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_backoff_is_exponential_and_capped() -> None:
    config = parse_config({**MINIMAL, "backoff_initial_s": 2, "backoff_max_s": 20})
    assert [config.backoff_s(a) for a in range(1, 7)] == [2, 4, 8, 16, 20, 20]


def test_journal_state_machine(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.sqlite")
    t0 = 1000.0
    for k in range(3):
        j.record_instance("1.2.3", "1.2", f"1.2.3.{k}", "MR", "WS", "pacs", now=t0 + k)
    j.record_instance("1.2.3", "1.2", "1.2.3.0", "MR", "WS", "pacs", now=t0 + 3)  # a re-sent instance
    row = j.get("1.2.3")
    assert row is not None and row.state == "receiving" and row.n_instances == 3 and row.generation == 4
    assert j.queue_quiet(5.0, now=t0 + 6) == []  # the last instance came 3 s ago
    assert j.queue_quiet(5.0, now=t0 + 9) == ["1.2.3"]
    (claimed,) = j.claim_queued(4)
    assert claimed.state == "processing" and claimed.process_attempts == 1
    assert j.claim_queued(4) == []
    # A new instance while processing: the old result must not be sent.
    j.record_instance("1.2.3", "1.2", "1.2.3.9", "MR", "WS", "pacs", now=t0 + 10)
    assert not j.processed("1.2.3", claimed.generation, ["results/x.dcm"])
    assert j.get("1.2.3").state == "receiving"  # type: ignore[union-attr]
    assert j.queue_now("1.2.3")
    (claimed,) = j.claim_queued(1)
    assert j.processed("1.2.3", claimed.generation, ["results/x.dcm"])
    (due,) = j.due_for_delivery()
    assert due.outputs == ["results/x.dcm"]
    j.delivery_failed("1.2.3", due.generation, "destination pacs: association rejected", time.time() + 60)
    row = j.get("1.2.3")
    assert row is not None and row.state == "sending" and row.attempts == 1 and "rejected" in row.last_error
    assert j.due_for_delivery() == []  # not before next_attempt_at
    assert j.delivered("1.2.3", due.generation)
    row = j.get("1.2.3")
    assert row is not None and row.state == "sent" and row.attempts == 2 and row.last_error == ""
    j.close()


def test_journal_recovers_processing_after_crash(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.sqlite")
    j.record_instance("1.9", "1.8", "1.9.1", "US", "WS", "pacs", now=1.0)
    j.queue_quiet(0.0)
    j.claim_queued(1)
    j.close()  # the node dies here; the row stays "processing"
    j = Journal(tmp_path / "journal.sqlite")
    assert j.counts() == {"processing": 1}
    assert j.recover() == 1
    assert j.counts() == {"queued": 1}
    j.close()


def test_status_table_has_no_patient_identifiers(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.sqlite")
    uid = generate_uid()
    j.record_instance(uid, generate_uid(), generate_uid(), "US", "WS", "pacs")
    out = io.StringIO()
    assert print_status(j, out) == 0
    text = out.getvalue()
    assert uid[-12:] in text and uid not in text
    assert "receiving" in text and "1 series: receiving 1" in text
    j.close()


def test_status_command_without_journal(tmp_path: Path) -> None:
    path = write_node_config(tmp_path / "node.yaml", **MINIMAL, spool_dir=str(tmp_path / "spool"))
    proc = subprocess.run(
        [sys.executable, "-m", "backmice_vision", "serve", "--config", str(path), "--status"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0 and "has not run" in proc.stderr


def test_serve_bad_config_exit_2(tmp_path: Path) -> None:
    path = write_node_config(tmp_path / "node.yaml", callers=[])
    proc = subprocess.run(
        [sys.executable, "-m", "backmice_vision", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(path) in proc.stderr


def test_deterministic_uids_stable_and_distinct() -> None:
    a = deterministic_uids("1.2.3.4", "model:1.0", "seg", 0)
    assert a == deterministic_uids("1.2.3.4", "model:1.0", "seg", 0)
    others = {
        deterministic_uids("1.2.3.5", "model:1.0", "seg", 0),
        deterministic_uids("1.2.3.4", "model:1.1", "seg", 0),
        deterministic_uids("1.2.3.4", "model:1.0", "sr", 0),
    }
    assert a not in others and len(others) == 3
    assert deterministic_uids("1.2.3.4", "model:1.0", "seg", 1)[0] == a[0]  # same series, other instance
    assert all(len(u) <= 64 for u in a)


def test_detector_pipeline_writes_its_results_once_under_deterministic_uids(tmp_path: Path) -> None:
    from backmice_vision.pipeline import DetectorSpec, get_detector

    series_uid = mr_series(tmp_path / "in", "PT-D", slices=3)
    settings = PipelineSettings(pipeline="detector")
    runs = [process_series(tmp_path / "in", tmp_path / name, settings) for name in ("a", "b")]
    bundle = get_detector(DetectorSpec.of(settings.model, settings.device)).bundle_for("MR")
    model = f"{bundle.model_id}:{bundle.version}"
    for paths in runs:
        by_kind = {p.name.split("_")[0].removesuffix(".dcm"): pydicom.dcmread(p) for p in paths}
        for kind in ("seg", "sr"):
            ds = by_kind[kind]
            assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == deterministic_uids(series_uid, model, kind, 0)
        evidence = by_kind["sr"].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        cited = {ref.ReferencedSOPInstanceUID for series in evidence for ref in series.ReferencedSOPSequence}
        assert by_kind["seg"].SOPInstanceUID in cited
    assert [p.name for p in runs[0]] == [p.name for p in runs[1]]


def test_passthrough_writes_secondary_capture_in_same_study(tmp_path: Path) -> None:
    series_uid = mr_series(tmp_path / "in", "PT-1", slices=3)
    settings = PipelineSettings(pipeline="passthrough-sc")
    (out,) = process_series(tmp_path / "in", tmp_path / "out", settings)
    sc = pydicom.dcmread(out)
    src = pydicom.dcmread(tmp_path / "in" / "slice_00.dcm")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.StudyInstanceUID, sc.PatientID) == (src.StudyInstanceUID, "PT-1")
    assert sc.SOPInstanceUID == deterministic_uids(series_uid, "passthrough-sc/1", "sc", 0)[1]
    assert sc.pixel_array.shape == (48, 48) and sc.pixel_array.max() == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporary folder left


def test_run_job_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.dcm").write_bytes(b"not dicom at all")
    paths, error = run_job(
        str(tmp_path / "in"), str(tmp_path / "out"), PipelineSettings(pipeline="passthrough-sc")
    )
    assert paths == [] and "unreadable" in error and "\n" not in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidDicom):
        process_series(tmp_path / "in", tmp_path / "out", PipelineSettings(pipeline="passthrough-sc"))
