"""Processing of one received series, run in the node's worker processes (never in the C-STORE handler).

:func:`process_series` is the injectable step: ``process_series(input_dir, output_dir, settings)``
reads the instances of one series from ``input_dir``, writes DICOM results to ``output_dir`` and returns
their paths. ``settings.pipeline`` chooses the implementation:

* ``"detector"`` (default): :func:`backmice_vision.io.load_series` → the shipped detector → SEG, SR and
  Secondary Capture writers.
* ``"passthrough-sc"``: model-free, for tests of networking, concurrency and durability only. It writes a
  real Secondary Capture of the first frame into the same study, so the plumbing can be tested without
  depending on model quality. It is never a substitute for the detector in clinical use.
* ``"package.module:function"``: any function with the same signature as :func:`process_series`.

Whatever the pipeline, result UIDs are derived from the input SeriesInstanceUID and the model version
(:func:`deterministic_uids`, handed to the writers: each file is written once, under its final UIDs), so
processing the same series twice yields the same SOP Instance UIDs and a PACS stores the second delivery
as a duplicate, not as a second result.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackmiceError, InvalidDicom, UnsupportedSeries
from ..pipeline import FAILURES, DetectorSpec, bound_heap, detect_stage, error_line, get_detector, write_stage

if TYPE_CHECKING:
    from ..types import Precision

PASSTHROUGH_VERSION = "passthrough-sc/1"
_DICOM_SUFFIXES = {"seg": "seg", "sr": "sr", "sc": "sc"}


@dataclass(frozen=True)
class PipelineSettings:
    """What a worker needs to process a series (picklable)."""

    pipeline: str = "detector"
    outputs: tuple[str, ...] = ("seg", "sr", "sc")
    model: str | None = None
    device: str = "cpu"
    precision: Precision = "float32"
    processing_delay_s: float = 0.0
    threads: int = 1


ProcessFn = Callable[[Path, Path, PipelineSettings], list[Path]]


def _detector_spec(settings: PipelineSettings) -> DetectorSpec:
    """The detector of this worker process: :func:`backmice_vision.pipeline.get_detector` loads it once."""
    return DetectorSpec.of(settings.model, settings.device, precision=settings.precision)


def series_files(input_dir: Path) -> list[Path]:
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix == ".dcm")
    if not files:
        raise UnsupportedSeries("no DICOM instances in the spooled series", input_dir)
    return files


def deterministic_uids(input_series_uid: str, model_version: str, kind: str, index: int) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of result ``index`` of ``kind`` for an input series and model."""
    from pydicom.uid import generate_uid

    base = ["backmice_vision", input_series_uid, model_version, kind]
    return generate_uid(entropy_srcs=[*base, "series"]), generate_uid(entropy_srcs=[*base, str(index)])


def _detector_pipeline(input_dir: Path, output_dir: Path, settings: PipelineSettings) -> list[Path]:
    """:func:`backmice_vision.pipeline.run_series`; its failure is raised as its one-line message."""
    outcome, result = detect_stage(input_dir, _detector_spec(settings))
    uids = functools.partial(deterministic_uids, str(outcome.series_instance_uid), outcome.model)
    outcome = write_stage(outcome, result, output_dir, list(settings.outputs), uids=uids)
    if not outcome.ok:
        raise BackmiceError(outcome.error)
    return sorted(Path(p) for k, v in outcome.outputs.items() if k in _DICOM_SUFFIXES for p in v)


# Patient and study attributes the test Secondary Capture copies from its source (an allow-list).
_SC_COPY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip


def _passthrough_sc(input_dir: Path, output_dir: Path, settings: PipelineSettings) -> list[Path]:
    """A Secondary Capture of the first frame of the series, in the same study (no model involved)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import apply_color_lut
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    files = series_files(input_dir)
    try:
        headers = [(pydicom.dcmread(p, stop_before_pixels=True), p) for p in files]
        headers.sort(key=lambda h: (int(h[0].get("InstanceNumber", 0) or 0), h[1].name))
        ref = pydicom.dcmread(headers[0][1])
        frame = ref.pixel_array if int(ref.get("NumberOfFrames", 1) or 1) == 1 else ref.pixel_array[0]
    except Exception as exc:  # pydicom and its decoders raise many types on damaged files
        raise InvalidDicom(f"unreadable instance or pixel data ({type(exc).__name__})", input_dir) from None
    if ref.get("PhotometricInterpretation") == "PALETTE COLOR":
        frame = apply_color_lut(frame, ref)  # YBR arrives as RGB: pydicom 3 converts by default
    frame = frame.astype(np.float32)
    lo, hi = float(frame.min()), float(frame.max())
    scale = 0.0 if hi <= lo else 255.0 / (hi - lo)
    pixels = ((frame - lo) * scale).astype(np.uint8)
    series_uid, sop_uid = deterministic_uids(str(ref.SeriesInstanceUID), PASSTHROUGH_VERSION, "sc", 0)

    sc = Dataset()
    for keyword in _SC_COPY:
        if keyword in ref:
            setattr(sc, keyword, ref[keyword].value)
    sc.SOPClassUID = SecondaryCaptureImageStorage
    sc.SOPInstanceUID = sop_uid
    sc.Modality = "OT"
    sc.SeriesInstanceUID = series_uid
    sc.SeriesNumber = 9901
    sc.SeriesDescription = "backmice passthrough (no model)"
    sc.InstanceNumber = 1
    sc.Laterality = ""
    sc.PatientOrientation = ""
    sc.ConversionType = "WSD"
    sc.Manufacturer = "backmice_vision"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.Rows, sc.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    sc.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    sc.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        sc.PlanarConfiguration = 0
    sc.BitsAllocated = sc.BitsStored = 8
    sc.HighBit = 7
    sc.PixelRepresentation = 0
    sc.PixelData = pixels.tobytes()
    sc.file_meta = FileMetaDataset()
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / "sc_0001.dcm"
    sc.save_as(out, enforce_file_format=True)
    return [out]


def resolve(pipeline: str) -> ProcessFn:
    """The processing function of a pipeline name (see the module docstring)."""
    if pipeline == "detector":
        return _detector_pipeline
    if pipeline == "passthrough-sc":
        return _passthrough_sc
    module, _, attr = pipeline.partition(":")
    fn: ProcessFn = getattr(importlib.import_module(module), attr)
    return fn


def process_series(input_dir: Path, output_dir: Path, settings: PipelineSettings) -> list[Path]:
    """Process the series spooled in ``input_dir``; returns the DICOM result files in ``output_dir``.

    Results are written to a temporary sibling folder and renamed into place, so ``output_dir`` holds
    either a complete result set or nothing. Raises :class:`BackmiceError` on bad input.
    """
    if settings.processing_delay_s > 0:
        time.sleep(settings.processing_delay_s)
    tmp = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        produced = resolve(settings.pipeline)(input_dir, tmp, settings)
        relative = [Path(p).resolve().relative_to(tmp.resolve()) for p in produced]
        for p in produced:
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [output_dir / r for r in relative]


# --- worker process side -------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Exit this worker when the node process is gone (killed): no orphan keeps writing results."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def init_worker(settings: PipelineSettings, parent_pid: int) -> None:
    """Process-pool initializer: thread budget, parent watchdog, the model loaded once."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    bound_heap()
    if settings.pipeline == "detector":
        import torch

        torch.set_num_threads(max(1, settings.threads))
        # An initializer error would break the pool: run_job reports a failed model load per series instead.
        with contextlib.suppress(ImportError, *FAILURES):
            get_detector(_detector_spec(settings))


def run_job(input_dir: str, output_dir: str, settings: PipelineSettings) -> tuple[list[str], str]:
    """Worker entry point: ``(result paths, "")`` or ``([], one-line error)``; never raises for bad input."""
    try:
        paths = process_series(Path(input_dir), Path(output_dir), settings)
        return [str(p) for p in paths], ""
    except FAILURES as exc:  # the pipeline's error policy (backmice_vision.pipeline)
        return [], error_line(exc)
    except (ImportError, AttributeError, KeyError) as exc:  # a "package.module:function" pipeline's own
        return [], error_line(exc)
