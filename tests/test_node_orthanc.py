"""The DICOM node with Orthanc (Debian package) as the PACS, all on loopback.

Orthanc is configured closed (RemoteAccessAllowed false, DicomAlwaysAllowStore false, DicomCheckModalityHost
true, modalities on 127.0.0.1 only, its own storage in tmp). A study is stored into Orthanc over REST,
Orthanc is asked to send it to the node, and the tests wait until results appear in the same study.

* ``test_detector_end_to_end``: the real pipeline (phantom → detector → SEG, SR, SC back into Orthanc).
* The concurrency, crash/restart and STOW-RS tests use the model-free ``passthrough-sc`` pipeline (a real
  Secondary Capture of the first frame): they test the node's plumbing, not the model.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from node_support import REPO, NodeProcess, Orthanc, free_port, mr_series, wait_for, write_node_config

from backmice_vision.node.config import parse_config
from backmice_vision.node.journal import Journal
from backmice_vision.node.service import Node
from backmice_vision.node.worker import PASSTHROUGH_VERSION, deterministic_uids

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists(),
                       reason="Orthanc is not installed"),
]  # fmt: skip

SEG, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {f"1.2.840.10008.5.1.4.1.1.88.{n}" for n in (11, 22, 33, 34)}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), modalities={})
    server.start()
    yield server
    server.stop()


def _register_node(orthanc: Orthanc, port: int) -> None:
    """Orthanc's modality entry for the node (it sends there and accepts results from there)."""
    orthanc.request(
        "PUT", "/modalities/BACKMICE",
        b'{"AET": "BACKMICE", "Host": "127.0.0.1", "Port": %d, "AllowEcho": true, "AllowStore": true}' % port,
    )  # fmt: skip


def _node_settings(tmp_path: Path, orthanc: Orthanc, port: int, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ae_title": "BACKMICE",
        "port": port,
        "spool_dir": str(tmp_path / "spool"),
        "callers": [{"ae_title": orthanc.aet, "hosts": ["127.0.0.1"], "destination": "pacs"}],
        "destinations": {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        "pipeline": "passthrough-sc",
        "series_complete": "release",
        "quiet_period_s": 30,
        "workers": 2,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 2.0,
    }
    settings.update(overrides)
    return settings


def _start_node(tmp_path: Path, orthanc: Orthanc, **overrides: Any) -> Node:
    port = free_port()
    _register_node(orthanc, port)
    node = Node(parse_config(_node_settings(tmp_path, orthanc, port, **overrides), tmp_path / "node.yaml"))
    node.start()
    return node


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _upload_study(orthanc: Orthanc, folder: Path) -> str:
    """Store every file under ``folder`` into Orthanc over REST; returns Orthanc's study id."""
    study_ids = {orthanc.upload(p)["ParentStudy"] for p in sorted(folder.rglob("*.dcm"))}
    assert len(study_ids) == 1
    return study_ids.pop()


def _send_to_node(orthanc: Orthanc, resource_id: str) -> None:
    orthanc.post("/modalities/BACKMICE/store", {"Resources": [resource_id], "Synchronous": True})


def _results(orthanc: Orthanc, study_uid: str, sop_classes: set[str]) -> list[dict[str, Any]]:
    return [t for t in orthanc.instances_of_study(study_uid) if t.get("SOPClassUID") in sop_classes]


def test_five_studies_in_parallel_each_get_their_own_results(
    tmp_path: Path, orthanc: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backmice.node")
    studies = []
    for n in range(5):
        patient = f"PAR-{n}"
        series_uid = mr_series(tmp_path / f"study{n}", patient, slices=3, seed=n)
        src = pydicom.dcmread(tmp_path / f"study{n}" / "slice_00.dcm")
        studies.append(
            (patient, str(src.StudyInstanceUID), series_uid, _upload_study(orthanc, tmp_path / f"study{n}"))
        )
    node = _start_node(tmp_path, orthanc)
    try:
        with ThreadPoolExecutor(max_workers=5) as pool:  # five REST calls → five parallel associations
            list(pool.map(lambda s: _send_to_node(orthanc, s[3]), studies))
        for patient, study_uid, series_uid, _ in studies:
            (result,) = wait_for(
                lambda s=study_uid: _results(orthanc, s, {SC}),  # type: ignore[misc]
                90,
                f"the result of {patient}",
            )
            assert result["PatientID"] == patient and result["StudyInstanceUID"] == study_uid
            assert result["SOPInstanceUID"] == deterministic_uids(series_uid, PASSTHROUGH_VERSION, "sc", 0)[1]
        assert node.journal is not None
        wait_for(lambda: node.journal.counts() == {"sent": 5}, 30, "five series journaled as sent")  # type: ignore[union-attr]
    finally:
        node.stop()
    for _, study_uid, _, _ in studies:
        assert len(_results(orthanc, study_uid, {SC})) == 1
    open_now = most_open = 0
    for record in caplog.records:
        open_now += record.getMessage().startswith("association accepted: ORTHANC")
        open_now -= record.getMessage().startswith("association released: ORTHANC")
        most_open = max(most_open, open_now)
    assert most_open >= 2  # the five sends overlapped: parallel associations


@pytest.mark.slow
def test_kill_after_acknowledge_then_restart_delivers_exactly_once(tmp_path: Path, orthanc: Orthanc) -> None:
    series_uid = mr_series(tmp_path / "study", "KILL-1", slices=4)
    study_uid = str(pydicom.dcmread(tmp_path / "study" / "slice_00.dcm").StudyInstanceUID)
    study_id = _upload_study(orthanc, tmp_path / "study")
    port = free_port()
    _register_node(orthanc, port)
    config = write_node_config(
        tmp_path / "node.yaml", **_node_settings(tmp_path, orthanc, port, processing_delay_s=3.0, workers=1)
    )
    node = NodeProcess(config, port, tmp_path / "node.log").start()
    journal_path = tmp_path / "spool" / "journal.sqlite"
    try:
        _send_to_node(orthanc, study_id)  # returns once the node acknowledged every instance

        def state() -> str:
            j = Journal(journal_path, readonly=True)
            try:
                row = j.get(series_uid)
                return "" if row is None else row.state
            finally:
                j.close()

        wait_for(lambda: state() == "processing", 30, "processing to start")
        assert node.proc is not None
        children = _children(node.proc.pid)
        assert children  # the worker process (and multiprocessing's resource tracker)
        node.kill()  # SIGKILL: acknowledged, results not sent
        assert state() == "processing"
        # The orphaned worker notices and exits instead of finishing the series behind the new node's back.
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "orphan workers to exit"
        )
        assert _results(orthanc, study_uid, {SC}) == []
        node.start()  # the same spool: the journal says what is pending
        wait_for(lambda: state() == "sent", 60, "the restarted node to deliver")
        (result,) = _results(orthanc, study_uid, {SC})
        assert result["SOPInstanceUID"] == deterministic_uids(series_uid, PASSTHROUGH_VERSION, "sc", 0)[1]
        assert "interrupted in processing are queued again" in node.log()

        # The same study sent again is processed again; the PACS sees the same UIDs, so still one result.
        _send_to_node(orthanc, study_id)
        wait_for(lambda: node.log().count(f"series …{series_uid[-12:]} sent") == 2, 60, "the second delivery")
        assert len(_results(orthanc, study_uid, {SC})) == 1
        status = node.status()
        assert f"…{series_uid[-12:]}" in status and " sent " in status and "KILL-1" not in status
    finally:
        node.stop()
    assert "KILL-1" not in node.log() and "Test^" not in node.log()  # no patient identifiers in the log


@pytest.mark.skipif(
    importlib.util.find_spec("dicomweb_client") is None, reason="dicomweb-client is not installed"
)
def test_stow_rs_delivery_to_orthanc_dicomweb(tmp_path: Path, orthanc: Orthanc) -> None:
    if not any("dicom-web" in str(p) or "DicomWeb" in str(p) for p in orthanc.get("/plugins")):
        pytest.skip("Orthanc DICOMweb plugin (orthanc-dicomweb) is not installed")
    series_uid = mr_series(tmp_path / "study", "STOW-1", slices=2)
    study_uid = str(pydicom.dcmread(tmp_path / "study" / "slice_00.dcm").StudyInstanceUID)
    study_id = _upload_study(orthanc, tmp_path / "study")
    node = _start_node(
        tmp_path,
        orthanc,
        destinations={"web": {"stow_url": f"{orthanc.url}/dicom-web"}},
        default_destination="web",
        callers=[{"ae_title": orthanc.aet, "hosts": ["127.0.0.1"]}],
    )
    try:
        _send_to_node(orthanc, study_id)
        (result,) = wait_for(lambda: _results(orthanc, study_uid, {SC}), 60, "the STOW-RS result")
        assert result["SOPInstanceUID"] == deterministic_uids(series_uid, PASSTHROUGH_VERSION, "sc", 0)[1]
        assert node.journal is not None
        row = wait_for(lambda: (r := node.journal.get(series_uid)) is not None and r.state == "sent" and r,  # type: ignore[union-attr]
                       30, "the series journaled as sent")  # fmt: skip
        assert row.destination == "web" and row.attempts == 1
    finally:
        node.stop()


def _real_pipeline_available() -> str | None:
    for module in ("backmice_vision.io", "backmice_vision.model.detector", "backmice_vision.export",
                   "backmice_vision.phantoms.cli"):  # fmt: skip
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not available"
        except ImportError:
            return f"{module} is not available"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_pipeline_available() is not None, reason=str(_real_pipeline_available()))
def test_detector_end_to_end(tmp_path: Path, orthanc: Orthanc) -> None:
    """Phantom study → Orthanc → node (real detector) → SEG, SR and SC in the same study in Orthanc."""
    subprocess.run(
        [sys.executable, "-m", "backmice_vision", "phantom", "--modality", "us", "--cases", "1",
         "--seed", "11", "--out", str(tmp_path / "phantom"), "--quiet"],
        check=True, capture_output=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    dicom_dir = tmp_path / "phantom" / "case_0000" / "dicom"
    series_folder = sorted(p for p in dicom_dir.iterdir() if p.is_dir())[0]
    source = pydicom.dcmread(sorted(series_folder.glob("*.dcm"))[0], stop_before_pixels=True)
    study_uid, series_uid = str(source.StudyInstanceUID), str(source.SeriesInstanceUID)
    ids = {orthanc.upload(p)["ParentSeries"] for p in sorted(series_folder.glob("*.dcm"))}
    node = _start_node(tmp_path, orthanc, pipeline="detector", workers=1)
    try:
        orthanc.post("/modalities/BACKMICE/store", {"Resources": sorted(ids), "Synchronous": True})
        classes = {SEG, SC} | SR_CLASSES

        def complete() -> list[dict[str, Any]] | None:
            found = _results(orthanc, study_uid, classes)
            kinds = {t["SOPClassUID"] for t in found}
            return found if SEG in kinds and SC in kinds and kinds & SR_CLASSES else None

        results = wait_for(complete, 240, "SEG, SR and SC from the detector", every=1.0)
        assert node.journal is not None
        # Orthanc holds the files a moment before the node journals the delivery as sent.
        row = wait_for(lambda: (r := node.journal.get(series_uid)) is not None and r.state == "sent" and r,  # type: ignore[union-attr]
                       30, "the series journaled as sent", every=0.5)  # fmt: skip
        first = sorted(t["SOPInstanceUID"] for t in results)
        # A repeated delivery is recognised as a duplicate: same UIDs, nothing new in the study.
        orthanc.post("/modalities/BACKMICE/store", {"Resources": sorted(ids), "Synchronous": True})
        wait_for(lambda: (r := node.journal.get(series_uid)) is not None and r.state == "sent"  # type: ignore[union-attr]
                 and r.generation > row.generation, 240, "the second delivery", every=1.0)  # fmt: skip
        assert sorted(t["SOPInstanceUID"] for t in _results(orthanc, study_uid, classes)) == first
    finally:
        node.stop()
    for tags in results:
        assert tags["StudyInstanceUID"] == study_uid and tags["PatientID"] == str(source.PatientID)
        assert tags["SeriesInstanceUID"] != series_uid
    seg_tags = next(t for t in results if t["SOPClassUID"] == SEG)
    seg = orthanc.file(seg_tags["OrthancID"])
    referenced = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    assert series_uid in referenced
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    # The writer's contract (export/seg.py): one "nodule N" segment per finding, then "fascia defect".
    assert labels[-1] == "fascia defect"
    assert all(label.startswith("nodule ") for label in labels[:-1])
