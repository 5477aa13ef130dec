"""The DICOM node against dcmtk on loopback: echoscu/storescu as the workstation, storescp as the PACS.

The node runs in this process (its worker processes are real) with the model-free ``passthrough-sc``
pipeline: these tests are about networking, transfer syntaxes, caller policy, retries and TLS, not about the
detector (see test_node_orthanc.py for the detector end to end).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from node_support import enhanced_mr, free_port, us_cine_jpeg, wait_for
from pydicom.data import get_testdata_file

from backmice_vision.node.config import Destination, TlsClient, parse_config
from backmice_vision.node.sender import DeliveryError, c_store
from backmice_vision.node.service import Node
from backmice_vision.node.worker import PASSTHROUGH_VERSION, deterministic_uids

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]


class StoreSCP:
    """dcmtk storescp as the results destination (accepts every transfer syntax, writes to ``out``)."""

    def __init__(self, out: Path, port: int | None = None) -> None:
        self.out, self.port = out, port or free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(self.out), "+xa", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: subprocess.run(_echo("WS", self.port, "PACS")).returncode == 0, 10, "storescp")
        return self

    def files(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.out.iterdir()) if p.is_file()]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _storescu(port: int, *files: str | Path, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    command = ["storescu", *flags, "-aet", "WS", "-aec", "BACKMICE", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _echo(aet: str, port: int, aec: str = "BACKMICE", *extra: str) -> list[str]:
    return ["echoscu", *extra, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]


def _node(tmp_path: Path, dest_port: int, **overrides: Any) -> Node:
    settings: dict[str, Any] = {
        "port": 0,
        "spool_dir": str(tmp_path / "spool"),
        "callers": [{"ae_title": "WS", "hosts": ["127.0.0.1"]}],
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": dest_port}},
        "pipeline": "passthrough-sc",
        "series_complete": "release",
        "quiet_period_s": 30,
        "backoff_initial_s": 0.3,
        "backoff_max_s": 1.0,
    }
    settings.update(overrides)
    node = Node(parse_config(settings, tmp_path / "node.yaml"))
    node.start()
    return node


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs").start()
    yield scp
    scp.stop()


def _state(node: Node, series_uid: str) -> str:
    assert node.journal is not None
    row = node.journal.get(series_uid)
    return "" if row is None else row.state


def test_echo_and_unknown_callers_rejected(tmp_path: Path) -> None:
    node = _node(tmp_path, free_port())
    try:
        ok = subprocess.run(_echo("WS", node.port), capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run(_echo("INTRUDER", node.port), capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "Calling AE Title Not Recognized" in bad.stderr
        # A known AE title from a host that is not listed for it is rejected too.
        from pynetdicom import AE

        ae = AE(ae_title="WS")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="BACKMICE", bind_address=("127.0.0.2", 0))
        assert assoc.is_rejected and not assoc.is_established
    finally:
        node.stop()


def test_storescu_jpeg_us_cine_and_enhanced_mr(tmp_path: Path, pacs: StoreSCP) -> None:
    us = us_cine_jpeg(tmp_path / "us.dcm", patient_id="P-US")
    mr = enhanced_mr(tmp_path / "emr.dcm", patient_id="P-MR")
    node = _node(tmp_path, pacs.port)
    try:
        # Without -xy storescu proposes only uncompressed syntaxes and cannot send JPEG baseline at all.
        plain = _storescu(node.port, tmp_path / "us.dcm")
        assert plain.returncode != 0
        sent = _storescu(node.port, tmp_path / "us.dcm", tmp_path / "emr.dcm", flags=("-xy",))
        assert sent.returncode == 0, sent.stderr
        for uid in (str(us.SeriesInstanceUID), str(mr.SeriesInstanceUID)):
            wait_for(lambda uid=uid: _state(node, uid) == "sent", 60, "results sent")  # type: ignore[misc]
    finally:
        node.stop()
    spooled = {
        str(d.SeriesInstanceUID): d
        for d in (pydicom.dcmread(p) for p in (tmp_path / "spool" / "incoming").glob("*/*.dcm"))
    }
    assert spooled[us.SeriesInstanceUID].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert spooled[us.SeriesInstanceUID].PixelData == pydicom.dcmread(tmp_path / "us.dcm").PixelData
    assert spooled[mr.SeriesInstanceUID].SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
    results = {str(r.SOPInstanceUID): r for r in pacs.files()}
    assert len(results) == 2
    for src, rows_cols in ((us, (96, 128, 3)), (mr, (64, 64))):
        sop = deterministic_uids(str(src.SeriesInstanceUID), PASSTHROUGH_VERSION, "sc", 0)[1]
        result = results[sop]
        assert (result.StudyInstanceUID, result.PatientID) == (src.StudyInstanceUID, src.PatientID)
        assert result.pixel_array.shape == rows_cols


@pytest.mark.parametrize(
    ("name", "flag", "syntax"),
    [
        ("MR_small_RLE.dcm", "-xr", "1.2.840.10008.1.2.5"),
        ("MR_small_jp2klossless.dcm", "-xv", "1.2.840.10008.1.2.4.90"),
        ("MR_small_jpeg_ls_lossless.dcm", "-xt", "1.2.840.10008.1.2.4.80"),
        ("MR_small_bigendian.dcm", "-xb", "1.2.840.10008.1.2.2"),
        ("MR_small_implicit.dcm", "-xi", "1.2.840.10008.1.2"),
    ],
)
def test_transfer_syntaxes_received_as_sent(tmp_path: Path, name: str, flag: str, syntax: str) -> None:
    source = get_testdata_file(name)
    assert isinstance(source, str)
    node = _node(tmp_path, free_port(), series_complete="quiet")
    try:
        sent = _storescu(node.port, source, flags=(flag,))
        assert sent.returncode == 0, sent.stderr
    finally:
        node.stop()
    (spooled,) = (tmp_path / "spool" / "incoming").glob("*/*.dcm")
    got, original = pydicom.dcmread(spooled), pydicom.dcmread(source)
    assert got.file_meta.TransferSyntaxUID == syntax
    assert got.PixelData == original.PixelData and got.SOPInstanceUID == original.SOPInstanceUID


def test_jpeg_lossless_sv1_from_dcmcjpeg(tmp_path: Path) -> None:
    compressed = tmp_path / "mr_jpegll.dcm"
    source = get_testdata_file("MR_small.dcm")
    assert isinstance(source, str)
    subprocess.run(["dcmcjpeg", "+e1", source, str(compressed)], check=True, timeout=30)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    node = _node(tmp_path, free_port(), series_complete="quiet")
    try:
        sent = _storescu(node.port, compressed, flags=("-xs",))
        assert sent.returncode == 0, sent.stderr
    finally:
        node.stop()
    (spooled,) = (tmp_path / "spool" / "incoming").glob("*/*.dcm")
    assert pydicom.dcmread(spooled).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"


def test_delivery_retries_until_destination_is_up(tmp_path: Path) -> None:
    dest = StoreSCP(tmp_path / "pacs")  # not started: the destination is down
    mr = enhanced_mr(tmp_path / "emr.dcm", patient_id="P-RETRY")
    node = _node(tmp_path, dest.port, backoff_initial_s=0.5, backoff_max_s=1.0, max_delivery_attempts=100)
    try:
        sent = _storescu(node.port, tmp_path / "emr.dcm")
        assert sent.returncode == 0, sent.stderr
        assert node.journal is not None
        row = wait_for(
            lambda: (r := node.journal.get(mr.SeriesInstanceUID)) is not None and r.attempts >= 2 and r,  # type: ignore[union-attr]
            30,
            "two failed delivery attempts",
        )
        assert row.state == "sending" and "not established" in row.last_error
        dest.start()
        wait_for(lambda: _state(node, mr.SeriesInstanceUID) == "sent", 30, "delivery after the PACS came up")
        final = node.journal.get(mr.SeriesInstanceUID)
        assert final is not None and final.attempts >= 3 and final.last_error == ""
    finally:
        node.stop()
        dest.stop()
    (result,) = dest.files()
    assert result.StudyInstanceUID == mr.StudyInstanceUID


def test_delivery_gives_up_after_max_attempts(tmp_path: Path) -> None:
    mr = enhanced_mr(tmp_path / "emr.dcm")
    node = _node(tmp_path, free_port(), max_delivery_attempts=2, backoff_initial_s=0.1)
    try:
        assert _storescu(node.port, tmp_path / "emr.dcm").returncode == 0
        wait_for(lambda: _state(node, mr.SeriesInstanceUID) == "failed", 30, "the series to fail")
        assert node.journal is not None
        row = node.journal.get(mr.SeriesInstanceUID)
        assert row is not None and row.attempts == 2 and "destination pacs" in row.last_error
    finally:
        node.stop()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "node.key", folder / "node.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_listener_and_sender(tmp_path: Path, pacs: StoreSCP) -> None:
    key, cert = _self_signed(tmp_path)
    node = _node(tmp_path, pacs.port, tls={"certificate": str(cert), "private_key": str(key)})
    try:
        tls_echo = subprocess.run(
            _echo("WS", node.port, "BACKMICE", "+tla", "+cf", str(cert)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert tls_echo.returncode == 0, tls_echo.stderr
        plain = subprocess.run(_echo("WS", node.port), capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0
        # The node's own sender, with TLS towards a TLS listener (here: the node itself).
        mr = enhanced_mr(tmp_path / "emr.dcm", patient_id="P-TLS")
        secure = Destination(name="self", ae_title="BACKMICE", host="127.0.0.1", port=node.port,
                             tls=TlsClient(ca_file=cert, server_hostname="localhost"))  # fmt: skip
        c_store([tmp_path / "emr.dcm"], secure, "WS")
        untrusted = Destination(
            name="self", ae_title="BACKMICE", host="127.0.0.1", port=node.port, tls=TlsClient()
        )
        with pytest.raises(DeliveryError):
            c_store([tmp_path / "emr.dcm"], untrusted, "WS")  # the system CAs do not know our certificate
        wait_for(
            lambda: _state(node, mr.SeriesInstanceUID) == "sent", 60, "results of the TLS-received series"
        )
    finally:
        node.stop()
    (result,) = pacs.files()
    assert result.PatientID == "P-TLS"


def test_worker_death_is_retried_then_failed(tmp_path: Path) -> None:
    mr = enhanced_mr(tmp_path / "emr.dcm")
    node = _node(
        tmp_path, free_port(), pipeline="node_support:crashing_pipeline", series_complete="quiet",
        quiet_period_s=0.5, max_process_attempts=2,
    )  # fmt: skip
    try:
        assert _storescu(node.port, tmp_path / "emr.dcm").returncode == 0
        wait_for(lambda: _state(node, mr.SeriesInstanceUID) == "failed", 60, "the series to fail")
        assert node.journal is not None
        row = node.journal.get(mr.SeriesInstanceUID)
        assert row is not None and row.process_attempts == 2 and row.last_error == "worker process died"
        # The node keeps working after its pool broke: an echo still answers.
        assert subprocess.run(_echo("WS", node.port), capture_output=True, timeout=30).returncode == 0
    finally:
        node.stop()
