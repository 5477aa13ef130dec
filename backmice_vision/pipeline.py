"""One series through the stages: :func:`~backmice_vision.io.load_series` → ``Detector.detect`` →
``DetectionResult.save``, with one error policy and one detector cache.

Every caller (the Python API, ``backmice detect``, ``backmice batch``, the DICOM node's worker, ``make demo``,
``backmice evaluate`` and the benchmark) runs a series through :func:`run_series`, or through its two halves
:func:`detect_stage` and :func:`write_stage` (the batch overlaps writing series ``n`` with detecting
``n + 1``; evaluation only detects), so they fail alike::

    outcome = bmv.run_series("study/US0001.dcm", out_dir="out/")
    outcome.status, outcome.error      # "ok", "" or "failed", "<file>: <what is wrong>"

Error policy
    :class:`~backmice_vision.errors.BackmiceError` and the errors of decoding and writing damaged data
    (:data:`FAILURES`: OSError, ValueError, RuntimeError, MemoryError) become a failed :class:`Outcome`
    whose ``error`` is one line naming the file and what is wrong (:func:`error_line`); anything else is a
    bug and propagates. Every output file is written to a temporary name and renamed, so a failure
    leaves no half-written file.

Detector cache
    :func:`get_detector` keeps the detectors of this process keyed on :class:`DetectorSpec` (model, device,
    thresholds, flip, backend): a batch worker, Dask worker or node worker process loads its model once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from .errors import BackmiceError
from .types import Precision, SeriesRef

if TYPE_CHECKING:
    from .export import ResultUIDs
    from .model.detector import Detector
    from .types import DetectionResult

# Errors that bad input can cause in decoding, detecting or writing: a failed outcome, not a crash.
FAILURES: tuple[type[BaseException], ...] = (BackmiceError, OSError, ValueError, RuntimeError, MemoryError)
MAX_ERROR_CHARS = 300

SeriesSource = SeriesRef | str | Path | Sequence[str | Path]


# --------------------------------------------------------------------------- the error policy


def where_of(source: SeriesSource) -> str:
    """The file or folder a series source names (its first file for a SeriesRef or a list)."""
    if isinstance(source, SeriesRef):
        return str(source.paths[0]) if source.paths else f"series …{source.series_instance_uid[-12:]}"
    if isinstance(source, str | Path):
        return str(source)
    items = list(source)
    return str(items[0]) if items else "(no files)"


def error_line(exc: BaseException, where: str | Path | None = None) -> str:
    """The one-line message of a failure: the project's own message, or the exception type and message;
    prefixed with ``where`` when the message does not name a file already."""
    if isinstance(exc, BackmiceError):
        text = str(exc) if exc.path is not None or where is None else f"{where}: {exc}"
    else:
        text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        named = isinstance(exc, OSError) and exc.filename is not None
        if where is not None and not named:
            text = f"{where}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


# --------------------------------------------------------------------------- the detector cache


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a detector (hashable and picklable: the key of the detector cache).

    ``model``: a bundle folder, or ``None`` for the shipped models (chosen per modality). ``config``: a
    thresholds YAML (default ``configs/inference.yaml``); ``thresholds``: ``(name, value)`` overrides,
    checked when the spec is made (:meth:`of`).
    """

    model: str | None = None
    device: str = "auto"
    config: str | None = None
    thresholds: tuple[tuple[str, float], ...] = ()
    flip: bool = False
    precision: Precision = "float32"
    backend: Literal["torch", "onnxruntime"] = "torch"

    @classmethod
    def of(
        cls,
        model: str | Path | None = None,
        device: str = "auto",
        *,
        config: str | Path | None = None,
        thresholds: Mapping[str, float] | None = None,
        flip: bool = False,
        precision: Precision = "float32",
        backend: Literal["torch", "onnxruntime"] = "torch",
    ) -> DetectorSpec:
        from .findings import Thresholds
        from .model.inference import check_precision

        checked = Thresholds.check(thresholds or {}, "thresholds")
        check_precision(precision, backend)
        return cls(
            model=None if model is None else str(model),
            device=device,
            config=None if config is None else str(config),
            thresholds=tuple(sorted(checked.items())),
            flip=flip,
            precision=precision,
            backend=backend,
        )

    def build(self) -> Detector:
        from .model.detector import Detector

        return Detector.from_pretrained(
            self.model,
            self.device,
            config=self.config,
            thresholds=dict(self.thresholds) or None,
            flip=self.flip,
            precision=self.precision,
            backend=self.backend,
        )


DetectorSource = Union[DetectorSpec, "Detector", str, Path, None]

_CACHE: OrderedDict[DetectorSpec, Detector] = OrderedDict()
_CACHE_SIZE = 2  # detectors kept per process (each holds its bundles' weights)
_CACHE_LOCK = threading.Lock()


def get_detector(source: DetectorSource = None) -> Detector:
    """The detector of this process for ``source``, built once and kept (see the module docstring).

    ``source``: a :class:`DetectorSpec`; a bundle folder (``str``/``Path``, device ``"auto"``); ``None``
    for the shipped models on device ``"auto"``; or a detector, returned as it is.
    """
    if source is None or isinstance(source, str | Path):
        spec = DetectorSpec.of(source)
    elif isinstance(source, DetectorSpec):
        spec = source
    else:
        return source
    with _CACHE_LOCK:  # the batch detects in a second thread
        detector = _CACHE.get(spec)
        if detector is None:
            detector = spec.build()
            _CACHE[spec] = detector
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(spec)
        return detector


def clear_detectors() -> None:
    """Forget the cached detectors (their memory is freed once no result refers to them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def bound_heap() -> None:
    """Keep a long-running worker's memory at its largest series (glibc only; elsewhere nothing).

    glibc raises its mmap threshold each time a large block is freed, so later frame-sized arrays come
    from the heap and their freed pages stay in the process: over a long batch the resident size
    ratchets up (measured on 2000 fuzzed files: 976 MiB; with the threshold fixed at 128 KiB,
    768 MiB, at the same detection time). This fixes the threshold and trims the heap above 128 KiB.
    Called by the batch and node worker processes, not on import.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        mallopt(m_mmap_threshold, 128 * 1024)
        mallopt(m_trim_threshold, 128 * 1024)


# --------------------------------------------------------------------------- the outcome record


@dataclass
class Outcome:
    """What happened to one series (picklable, JSON-ready through :meth:`to_dict`).

    ``status`` is ``"ok"`` or ``"failed"``; ``error`` one line naming the file and what is wrong (``""``
    when ok) and ``stage`` where it failed (``"load"``, ``"detect"`` or ``"write"``). ``outputs`` maps
    each format to the paths written. ``timings_s``: ``load``, ``preprocess``, ``model``, ``postprocess``,
    ``detect`` (its whole call), ``write`` and ``total`` seconds. No header text: UIDs, modality and counts
    only, never a patient identifier.
    """

    status: Literal["ok", "failed"] = "failed"
    error: str = ""
    stage: str = ""
    modality: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    model: str = ""  # "<model id>:<version>" of the bundle that ran
    n_findings: int = 0
    series_probability: float | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def paths(self) -> list[Path]:
        """Every file written, sorted."""
        return sorted(Path(p) for paths in self.outputs.values() for p in paths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_stage(
    source: SeriesSource, detector: DetectorSource = None
) -> tuple[Outcome, DetectionResult | None]:
    """Load and detect one series: ``(outcome, result)``; on failure the outcome is failed and the result
    ``None``. The outcome stays ``"failed"`` with no error until :func:`write_stage` completes it."""
    from .io import load_series

    where = where_of(source)
    outcome = Outcome()
    start = time.perf_counter()
    outcome.stage = "load"
    try:
        series = load_series(source)
        outcome.modality = series.modality
        outcome.study_instance_uid = series.study_instance_uid
        outcome.series_instance_uid = series.series_instance_uid
        loaded = time.perf_counter()
        outcome.timings_s["load"] = round(loaded - start, 4)
        outcome.stage = "detect"
        result = get_detector(detector).detect(series)
        outcome.timings_s.update(result.timings_s)
        outcome.timings_s["detect"] = round(time.perf_counter() - loaded, 4)
    except FAILURES as exc:
        outcome.error = error_line(exc, where)
        outcome.timings_s["total"] = round(time.perf_counter() - start, 4)
        return outcome, None
    outcome.model = f"{result.model_id}:{result.model_version}"
    outcome.n_findings = len(result.nodules)
    outcome.series_probability = float(result.series_probability)
    outcome.timings_s["total"] = round(time.perf_counter() - start, 4)
    return outcome, result


def write_stage(
    outcome: Outcome,
    result: DetectionResult | None,
    out_dir: str | Path | None,
    formats: list[str] | None = None,
    *,
    uids: ResultUIDs | None = None,
) -> Outcome:
    """Write ``result``'s outputs to ``out_dir`` (nothing when ``None``) and complete ``outcome``: ``"ok"``,
    or ``"failed"`` with the writer's one-line error. A failed detection passes through unchanged.
    ``uids`` gives the DICOM outputs' Series/SOP Instance UIDs (new ones when ``None``)."""
    if result is None:
        return outcome
    start = time.perf_counter()
    outcome.stage = "write"
    try:
        if out_dir is not None:
            from .fileio import remove_stale_temporaries

            folder = Path(out_dir)
            remove_stale_temporaries(folder)  # what a killed earlier run left half-written
            written = result.save(folder, formats, uids=uids)
            outcome.outputs = {kind: [str(p) for p in paths] for kind, paths in written.items()}
    except FAILURES as exc:
        outcome.error = error_line(exc, out_dir)
        outcome.outputs = {}
    else:
        outcome.status, outcome.stage = "ok", ""
    outcome.timings_s["write"] = round(time.perf_counter() - start, 4)
    outcome.timings_s["total"] = round(outcome.timings_s.get("total", 0.0) + outcome.timings_s["write"], 4)
    return outcome


def run_series(
    source: SeriesSource,
    detector: DetectorSource = None,
    out_dir: str | Path | None = None,
    formats: list[str] | None = None,
) -> Outcome:
    """Load, detect and write one series; never raises for bad input (see the module docstring).

    Parameters
    ----------
    source : SeriesRef, path or list of paths
        What :func:`~backmice_vision.io.load_series` accepts: a SeriesRef, a file, a folder of one series,
        or the files of one series.
    detector : DetectorSpec, Detector, bundle folder or None
        Which detector (:func:`get_detector`; ``None``: the shipped models).
    out_dir : path, optional
        Where the outputs go; ``None`` detects without writing.
    formats : list of str, optional
        Output formats (:func:`backmice_vision.export.check_formats`; ``None``: the default set).

    Returns
    -------
    Outcome
        ``status`` ``"ok"`` or ``"failed"`` with a one-line ``error``, the paths written and timings.
    """
    return write_stage(*detect_stage(source, detector), out_dir, formats)
