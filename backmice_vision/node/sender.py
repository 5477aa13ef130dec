"""Delivery of result files to a destination: C-STORE SCU (pynetdicom) or DICOMweb STOW-RS.

One call sends all files of one series over one association (or one STOW-RS request) and raises
:class:`DeliveryError` with a one-line reason when anything is not stored; the caller retries the whole
set later (result UIDs are deterministic, so a repeat is a duplicate at the destination).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BackmiceError
from .config import Destination

# C-STORE statuses that mean "stored": success and the warnings (coercion, elements discarded, ...).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(BackmiceError):
    """A destination did not accept the results (down, rejected the association, or a failure status)."""


def send(files: list[Path], destination: Destination, calling_ae: str) -> None:
    """Send ``files`` to ``destination``; raises :class:`DeliveryError` unless every file was stored."""
    if not files:
        return
    if destination.kind == "stow":
        stow(files, destination)
    else:
        c_store(files, destination, calling_ae)


def c_store(files: list[Path], destination: Destination, calling_ae: str) -> None:
    """C-STORE every file over one association, proposing each file's own transfer syntax."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    assert destination.host is not None and destination.port is not None and destination.ae_title
    name = destination.name
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise DeliveryError(f"result file unreadable ({type(exc).__name__})", path) from None
    wanted: dict[str, set[str]] = {}
    for ds in headers:
        ts = str(ds.file_meta.TransferSyntaxUID)
        wanted.setdefault(str(ds.SOPClassUID), set()).update(
            {ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian}
        )
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    contexts = [build_context(sop, sorted(ts)) for sop, ts in sorted(wanted.items())]
    tls_args = None
    if destination.tls is not None:
        tls_args = (destination.tls.context(), destination.tls.server_hostname or destination.host)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            contexts=contexts,
            ae_title=destination.ae_title,
            tls_args=tls_args,
        )
    except OSError as exc:
        raise DeliveryError(f"destination {name}: cannot connect ({type(exc).__name__})") from None
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "not established (unreachable, refused or aborted)"
        raise DeliveryError(f"destination {name}: association {why}")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise DeliveryError(f"destination {name}: no C-STORE response", path.name)
            if code not in _STORED:
                raise DeliveryError(f"destination {name}: C-STORE status 0x{code:04X}", path.name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DeliveryError(f"destination {name}: {type(exc).__name__} while storing") from None
    finally:
        if assoc.is_established:
            assoc.release()


def stow(files: list[Path], destination: Destination) -> None:
    """STOW-RS all files in one request to ``destination.stow_url`` (the DICOMweb service root)."""
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    assert destination.stow_url is not None
    session = requests.Session()
    if destination.tls is not None and destination.tls.ca_file is not None:
        session.verify = str(destination.tls.ca_file)
    if destination.tls is not None and destination.tls.certificate is not None:
        session.cert = (str(destination.tls.certificate), str(destination.tls.private_key))
    client = DICOMwebClient(url=destination.stow_url, session=session)
    datasets = [pydicom.dcmread(p) for p in files]
    try:
        response = client.store_instances(datasets)
    except requests.RequestException as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        why = f"HTTP {status}" if status else type(exc).__name__
        raise DeliveryError(f"destination {destination.name}: STOW-RS failed ({why})") from None
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        raise DeliveryError(f"destination {destination.name}: STOW-RS refused {len(failed)} instance(s)")
