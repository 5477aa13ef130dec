"""Reading DICOM headers and finding the series in a folder.

Headers only: nothing here decodes pixel data. Every parse of untrusted bytes is guarded, and any
failure becomes :class:`~backmice_vision.errors.InvalidDicom` whose message names the file and the
stage that failed, never a header value (which could identify a patient).
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ..errors import BackmiceError, InvalidDicom
from ..profiles import MODALITIES
from ..types import SeriesRef

ANALYSED_MODALITIES = MODALITIES  # those with a profile (backmice_vision.profiles)
_CS_RE = re.compile(r"[A-Z0-9_ ]{1,16}")
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV")
MAX_INFLATED_BYTES = 256 * 2**20  # no image stored deflated is larger; a bomb would inflate without end
_ITEM_TAG = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_NON_IMAGE_MODALITIES = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "RWV", "DOC"}
_NON_IMAGE_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, SEG, fiducials
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)
# Tags find_series needs (read with ``specific_tags`` for speed).
_SCAN_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "SeriesDescription", "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation",
]  # fmt: skip


@dataclass
class Instance:
    """The header of one DICOM file, with the attributes every stage needs already validated."""

    path: Path
    ds: Dataset  # header only: no PixelData
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    transfer_syntax: str
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    photometric: str = ""
    instance_number: int = 0

    @property
    def is_image(self) -> bool:
        """True for pixel-bearing image objects; False for SEG, SR, presentation states and the like."""
        if self.rows <= 0 or self.columns <= 0 or self.modality in _NON_IMAGE_MODALITIES:
            return False
        return not self.sop_class.startswith(_NON_IMAGE_CLASS_PREFIXES)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded pixel data as the header claims them (before any decoding)."""
        return self.rows * self.columns * self.frames * self.samples * max(1, (self.bits_allocated + 7) // 8)


@contextmanager
def guarded(path: str | Path, stage: str) -> Iterator[None]:
    """Turn any parser failure inside the block into a one-line :class:`InvalidDicom`.

    The reason names ``stage`` and the exception type only: parser messages can quote header values.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except (BackmiceError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # includes pyo3 PanicException raised by Rust-backed plugins
        raise InvalidDicom(f"{stage} ({type(exc).__name__})", path) from None


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A file without preamble whose first tag is in group 0002 or 0008 (either byte order)."""
    if len(head) < 8:
        return False
    return int.from_bytes(head[:2], "little") in (2, 8) or int.from_bytes(head[:2], "big") in (2, 8)


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return int(value)


def _code_string(value: object) -> str:
    """A header code string (VR CS: A-Z, 0-9, space, underscore, at most 16) in upper case, or ``"?"``:
    modality values reach messages and reports, so anything else (free text, escape codes) is dropped."""
    text = str(value or "").strip().upper()
    return text if _CS_RE.fullmatch(text) else "?"


def read_header(path: Path, *, scan_only: bool = False) -> Instance | None:
    """Read one file's header (``stop_before_pixels``).

    Returns ``None`` for files that are not DICOM (ignored by callers) and for DICOMDIR files; raises
    :class:`InvalidDicom` for files that look like DICOM but cannot be read. ``scan_only`` reads just the
    tags :func:`find_series` needs. A file without the 128-byte preamble is read when it starts with a
    plausible group 0002/0008 tag; its transfer syntax is then taken from the encoding pydicom detects.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132 + 4096)
    except OSError as exc:
        raise InvalidDicom(f"cannot open ({type(exc).__name__})", path) from None
    part10 = head[128:132] == b"DICM"
    if not part10 and not _looks_like_raw_dataset(head):
        return None
    inflated = _inflated_size(path) if part10 and DeflatedExplicitVRLittleEndian.encode() in head else None
    tags = _SCAN_TAGS if scan_only else None
    with guarded(path, "cannot parse DICOM header"), open(path, "rb") as fh:
        try:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=tags, force=not part10)
        except InvalidDicomError:
            if part10:
                raise
            return None
        pixel_offset = fh.tell()  # where pydicom stopped: the Pixel Data element, or the end
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
            return None
        if "DirectoryRecordSequence" in ds:
            return None
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not ts:
            if part10:
                raise InvalidDicom("file meta has no TransferSyntaxUID", path)
            implicit, little = ds.original_encoding
            ts = (
                ImplicitVRLittleEndian
                if implicit
                else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            )
            if meta is None:
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = UID(ts)
        if not UID(ts).is_transfer_syntax:
            raise InvalidDicom("unknown transfer syntax", path)
        identity = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        several = [k for k in identity if isinstance(ds.get(k), MultiValue)]
        if several:  # results could cite none of the values
            raise InvalidDicom(f"several values in {', '.join(several)}", path)
        uids = {k: str(ds.get(k, "") or "").strip() for k in identity}
        missing = [k for k, v in uids.items() if not v]
        if missing:
            if not part10 and len(missing) == 3:
                return None  # parsed as bytes, but not an object with identity: not DICOM
            raise InvalidDicom(f"missing {', '.join(missing)}", path)
        inst = Instance(
            path=path,
            ds=ds,
            study_uid=uids["StudyInstanceUID"],
            series_uid=uids["SeriesInstanceUID"],
            sop_uid=uids["SOPInstanceUID"],
            sop_class=str(ds.get("SOPClassUID", "") or ""),
            modality=_code_string(ds.get("Modality", "")),
            transfer_syntax=ts,
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            frames=_int(ds, "NumberOfFrames", 1),
            samples=_int(ds, "SamplesPerPixel", 1),
            bits_allocated=_int(ds, "BitsAllocated"),
            bits_stored=_int(ds, "BitsStored"),
            pixel_representation=_int(ds, "PixelRepresentation"),
            photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
            instance_number=_int(ds, "InstanceNumber"),
        )
        if inst.is_image:
            if inst.frames < 1:
                raise InvalidDicom(f"NumberOfFrames is {inst.frames}", path)
            if inst.bits_allocated not in (1, 8, 16, 32, 64):
                raise InvalidDicom(f"unsupported BitsAllocated {inst.bits_allocated}", path)
            if inst.samples not in (1, 3):
                raise InvalidDicom(f"unsupported SamplesPerPixel {inst.samples}", path)
            if not inst.bits_stored:
                inst.bits_stored = inst.bits_allocated
            if ts != DeflatedExplicitVRLittleEndian:  # a deflated stream's offsets are not the file's
                _check_pixel_bytes(inst, fh, pixel_offset, ds.original_encoding)
            elif inflated is not None and native_pixel_bytes(inst) > inflated:
                raise InvalidDicom(
                    f"header claims {native_pixel_bytes(inst)} bytes of pixel data but the deflated data "
                    f"set inflates to {inflated} bytes",
                    path,
                )
    return inst


def _inflated_size(path: Path) -> int | None:
    """Bytes the data set of a Deflated Explicit VR Little Endian file inflates to, counted in 1 MiB
    steps without keeping them (pydicom inflates the whole stream in memory before parsing it), or
    ``None`` when the file meta names another transfer syntax. More than :data:`MAX_INFLATED_BYTES`
    (a deflate bomb: deflate reaches about 1000:1) is :class:`InvalidDicom`."""
    from pydicom.filereader import _read_file_meta_info

    with guarded(path, "cannot parse DICOM file meta"), open(path, "rb") as fh:
        fh.seek(132)
        meta = _read_file_meta_info(fh)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := fh.read(2**16):
            while chunk:
                total += len(inflater.decompress(chunk, 2**20))
                chunk = inflater.unconsumed_tail
                if total > MAX_INFLATED_BYTES:
                    raise InvalidDicom(
                        f"deflated data set inflates past {MAX_INFLATED_BYTES // 2**20} MiB", path
                    )
        return total + len(inflater.flush())


def native_pixel_bytes(inst: Instance) -> int:
    """Bytes the header claims for uncompressed Pixel Data (1-bit packed, native YBR_FULL_422 2 per pixel)."""
    n = inst.rows * inst.columns * inst.samples * inst.frames
    if inst.bits_allocated == 1:
        return (n + 7) // 8
    n *= inst.bits_allocated // 8
    return n // 3 * 2 if inst.photometric == "YBR_FULL_422" else n


def _check_pixel_bytes(
    inst: Instance, fh: BinaryIO, offset: int, encoding: tuple[bool | None, bool | None]
) -> None:
    """Refuse a header that claims more pixel data than the file holds, reading element headers only.

    Uncompressed: the Pixel Data value (cut at the end of the file) must hold :func:`native_pixel_bytes`.
    Encapsulated: each frame needs at least one fragment, so the fragments are counted (by seeking past
    them, at most NumberOfFrames + 1 items) and must number at least NumberOfFrames. Nothing here grows
    with the claimed sizes, so a header claiming 2**31 frames costs as little as an honest one.
    """
    size = os.fstat(fh.fileno()).st_size
    implicit, little = encoding
    order = "<" if little is not False else ">"
    fh.seek(offset)
    head = fh.read(8)
    if len(head) < 8:
        return  # no Pixel Data: load_series says so when it decodes
    group, element = struct.unpack(order + "HH", head[:4])
    if (group, element) != (0x7FE0, 0x0010):
        return  # Float / Double Float Pixel Data: refused when decoded
    if implicit:
        (length,) = struct.unpack(order + "I", head[4:8])
    elif head[4:6] in _LONG_VRS:
        tail = fh.read(4)
        if len(tail) < 4:
            raise InvalidDicom("truncated Pixel Data element", inst.path)
        (length,) = struct.unpack(order + "I", tail)
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
    start = fh.tell()
    if length != 0xFFFFFFFF:
        present = min(length, size - start)
        needed = native_pixel_bytes(inst)
        if present < needed:
            raise InvalidDicom(
                f"header claims {inst.frames} frame(s) of {inst.rows}×{inst.columns} ({needed} bytes) "
                f"but the file holds {present} bytes of pixel data",
                inst.path,
            )
        return
    items, pos = 0, start  # the first item is the Basic Offset Table, then one or more per frame
    while items <= inst.frames and pos + 8 <= size:
        fh.seek(pos)
        tag, item_length = struct.unpack("<II", fh.read(8))
        if tag != _ITEM_TAG or item_length == 0xFFFFFFFF:
            break  # sequence delimiter, or not an item: the fragments end here
        items += 1
        pos += 8 + item_length
    if items - 1 < inst.frames:
        raise InvalidDicom(
            f"header claims {inst.frames} frame(s) but the encapsulated pixel data holds "
            f"{max(items - 1, 0)} fragment(s)",
            inst.path,
        )


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (recursively, sorted, symlinked folders not followed)."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file():
                yield p


def group_instances(instances: list[Instance]) -> dict[tuple[str, str], list[Instance]]:
    """Instances keyed by (StudyInstanceUID, SeriesInstanceUID), in first-seen order."""
    groups: dict[tuple[str, str], list[Instance]] = {}
    for inst in instances:
        groups.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
    return groups


def series_ref(instances: list[Instance]) -> SeriesRef:
    """A :class:`SeriesRef` summarising the headers of one series (most common modality and matrix)."""
    first = instances[0]
    images = [i for i in instances if i.is_image]
    modalities = Counter(i.modality for i in instances)
    modality = modalities.most_common(1)[0][0]
    problems: list[str] = []
    if len(modalities) > 1:
        problems.append("mixed modalities: " + ", ".join(f"{m} ×{n}" for m, n in sorted(modalities.items())))
    sizes = Counter((i.rows, i.columns) for i in images)
    rows, cols = sizes.most_common(1)[0][0] if sizes else (first.rows, first.columns)
    if len(sizes) > 1:
        problems.append(f"{len(sizes)} matrix sizes")
    if not images:
        problems.append(f"not an image series ({modality})")
    elif modality not in ANALYSED_MODALITIES:
        problems.append(f"modality {modality} is not analysed")
    description = ""
    try:
        description = str(first.ds.get("SeriesDescription", "") or "")
    except Exception:
        problems.append("unreadable SeriesDescription")
    return SeriesRef(
        study_instance_uid=first.study_uid,
        series_instance_uid=first.series_uid,
        modality=modality,
        paths=sorted(i.path for i in instances),
        n_instances=len(instances),
        n_frames=sum(i.frames for i in images),
        rows=rows,
        columns=cols,
        description=description,
        problems=problems,
    )


def scan_folder(
    folder: str | Path,
    errors: list[tuple[Path, str]] | None = None,
    *,
    scan_only: bool = True,
    ignored: list[Path] | None = None,
) -> list[Instance]:
    """Headers of every DICOM file under ``folder``; unreadable ones are appended to ``errors``, files
    that are not DICOM (and DICOMDIR files) to ``ignored``."""
    root = Path(folder)
    if not root.exists():
        raise BackmiceError("no such file or folder", root)
    found: list[Instance] = []
    for path in iter_files(root):
        try:
            inst = read_header(path, scan_only=scan_only)
        except InvalidDicom as exc:
            if errors is not None:
                errors.append((path, exc.reason))
            continue
        if inst is not None:
            found.append(inst)
        elif ignored is not None:
            ignored.append(path)
    return found


def find_series(
    folder: str | Path,
    errors: list[tuple[Path, str]] | None = None,
    *,
    include_all: bool = False,
    ignored: list[Path] | None = None,
) -> list[SeriesRef]:
    """Find the image series under ``folder`` (searched recursively; a single file is accepted too).

    Reads headers only. Files are grouped by (StudyInstanceUID, SeriesInstanceUID). Files that are not
    DICOM, and DICOMDIR files, are skipped (and appended to ``ignored`` when it is a list). Files that
    look like DICOM but cannot be read are skipped and, when ``errors`` is a list, appended to it as
    ``(path, reason)``; the scan never stops on them.

    By default only MR and US image series are returned (what :func:`load_series` analyses).
    ``include_all=True`` also returns other modalities and non-image objects (SEG, SR, ...), each with
    its modality and a note in ``problems`` (for example ``"not an image series (SEG)"``).
    Sorted by study, then series UID.
    """
    groups = group_instances(scan_folder(folder, errors, ignored=ignored))
    refs = [series_ref(insts) for insts in groups.values()]
    if not include_all:
        refs = [r for r in refs if r.modality in ANALYSED_MODALITIES and r.n_frames > 0]
    refs.sort(key=lambda r: (r.study_instance_uid, r.series_instance_uid))
    return refs
