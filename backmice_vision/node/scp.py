"""The node's listener: a pynetdicom SCP for C-ECHO and C-STORE of MR and ultrasound images.

Callers are checked at association: the calling AE title must be configured and the peer address must be
one of that caller's hosts, otherwise the association is rejected ("calling AE title not recognised").
Each received instance is written to the spool under a temporary name, fsync'ed, renamed, and recorded in
the journal *before* the C-STORE success status goes back, so an acknowledged instance survives a crash.
No processing happens here: the handler returns as soon as the instance is safe on disk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..batch import safe_name
from .config import NodeConfig
from .journal import Journal

LOG = logging.getLogger("backmice.node")

# Storage SOP classes accepted (the detector decides later whether it can analyse a series).
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (retired)",
}

# Accepted but not processed: results and annotations travel with a study a PACS sends as a whole (our own
# earlier results among them); refusing them would fail the whole transfer at the sender.
IGNORED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
}

# Uncompressed first (preferred when a sender offers several), then what scanners and PACS really send.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit): most ultrasound
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

# C-STORE failure statuses (PS3.4 B.2.3)
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


def short_uid(uid: str) -> str:
    """The last 12 characters of a UID, as shown in logs and status tables."""
    return "…" + uid[-12:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Receiver:
    """Association policy and C-ECHO / C-STORE handlers bound to a spool folder and a journal."""

    def __init__(self, config: NodeConfig, journal: Journal, incoming: Path) -> None:
        self.config = config
        self.journal = journal
        self.incoming = incoming
        self._lock = threading.Lock()
        self._series_of: dict[int, set[str]] = {}  # association id → series received on it
        self._ignored: dict[int, int] = {}  # association id → instances of IGNORED_CLASSES

    def make_ae(self) -> Any:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = sorted(self.config.callers)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = 0  # no limit on what we accept
        ae.add_supported_context(Verification)
        for sop in [*STORAGE_CLASSES, *IGNORED_CLASSES]:
            ae.add_supported_context(sop, TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[Any]:
        from pynetdicom import evt

        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    # --- association policy ----------------------------------------------------------------------

    def on_requested(self, event: Any) -> None:
        """Reject callers that are not configured or come from a host not listed for them."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        caller = self.config.callers.get(calling)
        if caller is not None and host in caller.hosts:
            return
        LOG.warning("association rejected: calling AE %r from %s is not allowed", calling, host)
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE unknown
        assoc.is_rejected = True
        assoc.kill()

    def on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        with self._lock:
            self._series_of[id(assoc)] = set()
            self._ignored[id(assoc)] = 0
        LOG.info("association accepted: %s from %s", assoc.requestor.ae_title, assoc.requestor.address)

    def on_echo(self, event: Any) -> int:
        LOG.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return 0x0000

    def on_released(self, event: Any) -> None:
        series, ignored = self._end(event.assoc)
        LOG.info(
            "association released: %s, %d series%s",
            event.assoc.requestor.ae_title,
            len(series),
            f", {ignored} non-image instance(s) ignored" if ignored else "",
        )
        if self.config.series_complete == "release":
            for uid in series:
                if self.journal.queue_now(uid):
                    LOG.info("series %s queued (association released)", short_uid(uid))

    def on_aborted(self, event: Any) -> None:
        series, _ = self._end(event.assoc)
        LOG.info("association aborted: %s, %d series", event.assoc.requestor.ae_title, len(series))

    def _end(self, assoc: Any) -> tuple[set[str], int]:
        with self._lock:
            return self._series_of.pop(id(assoc), set()), self._ignored.pop(id(assoc), 0)

    # --- storage ---------------------------------------------------------------------------------

    def on_store(self, event: Any) -> int:
        """Write the instance durably, journal it, then answer success (never runs the model)."""
        from pydicom.filebase import DicomFileLike
        from pydicom.filewriter import write_file_meta_info

        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        if str(event.request.AffectedSOPClassUID) in IGNORED_CLASSES:
            with self._lock:
                self._ignored[id(assoc)] = self._ignored.get(id(assoc), 0) + 1
            return 0x0000
        try:
            ds = event.dataset
            series_uid = str(ds.SeriesInstanceUID)
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            modality = str(ds.get("Modality", ""))[:16]
        except Exception as exc:  # pydicom raises many types on undecodable data sets
            LOG.warning("C-STORE from %s refused: data set not understood (%s)", calling, type(exc).__name__)
            return _CANNOT_UNDERSTAND
        if not series_uid or not study_uid or not sop_uid:
            LOG.warning("C-STORE from %s refused: Study/Series/SOP Instance UID missing", calling)
            return _CANNOT_UNDERSTAND
        destination = self.config.destination_for(calling).name
        folder = self.incoming / safe_name(series_uid)
        final = folder / f"{safe_name(sop_uid)}.dcm"
        tmp = folder / f".{safe_name(sop_uid)}.{threading.get_ident()}.part"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(b"\x00" * 128 + b"DICM")
                write_file_meta_info(DicomFileLike(fh), event.file_meta, enforce_standard=True)
                fh.write(event.request.DataSet.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(folder)
            self.journal.record_instance(series_uid, study_uid, sop_uid, modality, calling, destination)
        except (OSError, sqlite3.Error) as exc:
            LOG.error("C-STORE from %s refused: cannot write the spool (%s)", calling, type(exc).__name__)
            tmp.unlink(missing_ok=True)
            return _OUT_OF_RESOURCES
        with self._lock:
            self._series_of.setdefault(id(assoc), set()).add(series_uid)
        LOG.debug("stored instance of series %s from %s", short_uid(series_uid), calling)
        return 0x0000
