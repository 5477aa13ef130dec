"""Batch detection over folders of DICOM: local worker processes or a Dask cluster, with resume.

Layout of ``OUT_DIR``::

    OUT_DIR/<StudyInstanceUID>/<SeriesInstanceUID>/   outputs of one series (report.json, PNG, SEG, SR, SC)
    OUT_DIR/manifest.jsonl                            one line per finished series (inputs hash, outputs)
    OUT_DIR/summary.csv                               one row per series and finding, failure, ignored file
    OUT_DIR/index.html                                review page: sortable, filterable, no server needed

Folder names are the UIDs when they are well-formed UIDs, otherwise a hash of them: header values
never become paths. Every output is written to a temporary name and renamed, and a series enters the
manifest only after all its outputs exist, so a killed run leaves nothing that ``--resume`` would trust.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackmiceError, ConfigError

if TYPE_CHECKING:
    from .pipeline import DetectorSpec
    from .types import Precision

MANIFEST = "manifest.jsonl"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class SeriesJob:
    """One unit of work: the files of one series (paths only, so it pickles cheaply)."""

    key: str  # "<study folder>/<series folder>", unique and path-safe
    paths: list[str]
    modality: str
    description: str = ""


@dataclass
class SeriesOutcome:
    """What happened to one series. ``status`` is "done", "skipped" (resume) or "failed"."""

    key: str
    status: str
    modality: str = ""
    input_hash: str = ""
    error: str = ""
    seconds: float = 0.0
    series_probability: float | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # relative to OUT_DIR
    key_image: str | None = None
    # the review page's label (no patient identifier): full UIDs (the key holds folder names), Series
    # Number and Description, Study Date (YYYYMMDD, "" when absent)
    study_uid: str = ""
    series_uid: str = ""
    series_number: int | None = None
    description: str = ""
    study_date: str = ""


@dataclass
class BatchPlan:
    """What a batch finds under its input folder (:func:`plan_jobs`)."""

    jobs: list[SeriesJob]  # the MR and US image series, to be detected
    unsupported: list[SeriesOutcome]  # image series of other modalities: failed, with the reason
    unreadable: list[tuple[str, str]]  # (path, reason) of files that look like DICOM but cannot be read
    ignored: list[tuple[str, str]]  # (path, reason) of files that are not DICOM (or DICOMDIR files)
    non_image: list[tuple[str, str]]  # (series key, reason) of objects without pixels: SEG, SR, ...


@dataclass
class BatchReport:
    outcomes: list[SeriesOutcome]
    unreadable: list[tuple[str, str]]  # (path, reason) of files find_series could not read
    seconds: float
    ignored: list[tuple[str, str]] = field(default_factory=list)  # see BatchPlan
    non_image: list[tuple[str, str]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # the run's settings, shown on the review page

    @property
    def ignored_rows(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of everything ignored, for reports: files by name only (folder names in
        exports often hold patient names), non-image series by their key."""
        return [(Path(p).name, r) for p, r in self.ignored] + self.non_image

    @property
    def failed(self) -> list[SeriesOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.unreadable else 0


def safe_name(uid: str) -> str:
    """A folder name for a UID: the UID itself when well-formed, else a short hash (never a header string)."""
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:16]


def plan_jobs(input_dir: Path) -> BatchPlan:
    """Every series under ``input_dir``: MR and US image series become jobs; image series of other
    modalities fail with the reason; non-image objects (SEG, SR, ...) and files that are not DICOM are
    ignored, each with the reason; unreadable DICOM files are listed with theirs."""
    from .io import find_series
    from .io.reader import ANALYSED_MODALITIES

    errors: list[tuple[Path, str]] = []
    not_dicom: list[Path] = []
    refs = find_series(input_dir, errors=errors, include_all=True, ignored=not_dicom)
    plan = BatchPlan(
        jobs=[],
        unsupported=[],
        unreadable=[(str(p), reason) for p, reason in errors],
        ignored=[(str(p), "not a DICOM file (or a DICOMDIR)") for p in not_dicom],
        non_image=[],
    )
    for r in refs:
        key = f"{safe_name(r.study_instance_uid)}/{safe_name(r.series_instance_uid)}"
        if r.n_frames == 0:
            plan.non_image.append((key, f"not an image series ({r.modality})"))
        elif r.modality not in ANALYSED_MODALITIES:
            reason = f"unsupported series: modality {r.modality} is not analysed (MR and US only)"
            plan.unsupported.append(
                SeriesOutcome(
                    key=key, status="failed", modality=r.modality, error=reason, description=r.description
                )
            )
        else:
            paths = sorted(str(p) for p in r.paths)
            plan.jobs.append(SeriesJob(key=key, paths=paths, modality=r.modality, description=r.description))
    plan.jobs.sort(key=lambda j: j.key)
    return plan


def inputs_hash(paths: Iterable[str], model_tag: str) -> str:
    """sha256 over the model tag and every input file's bytes, in sorted path order."""
    h = hashlib.sha256(model_tag.encode())
    for p in sorted(paths):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --- worker side -----------------------------------------------------------------------------------


def init_worker(spec: DetectorSpec, threads: int) -> None:
    """Process-pool initializer: share the cores between workers and load the model once (into the
    process's detector cache, :func:`backmice_vision.pipeline.get_detector`)."""
    import torch

    from .pipeline import FAILURES, bound_heap, get_detector

    bound_heap()
    torch.set_num_threads(max(1, threads))
    # an initializer error would break the pool: each series reports the failed load instead
    with contextlib.suppress(*FAILURES):
        get_detector(spec)


def model_tag(model: str | None) -> str:
    """Identifies the weights that produce the results (part of :func:`run_tag`): their checksums."""
    from .model.bundle import METADATA, MODELS_DIR

    root = Path(model) if model else MODELS_DIR
    parts = []
    for meta in sorted(root.glob(str(METADATA))) + sorted(root.glob(f"*/{METADATA}")):
        info = json.loads(meta.read_text())
        parts.append(f"{meta.parents[1].name}:{info.get('version', '')}:{info.get('sha256', '')}")
    return "|".join(parts) or "no-model"


def run_tag(model: str | None, formats: list[str] | None, precision: Precision = "float32") -> str:
    """Everything besides the input files that decides a series' outputs (part of the resume hash): the
    weights (:func:`model_tag`), the inference thresholds, the output formats, the network precision
    (named only when not float32, so that runs from before it existed stay resumable) and the library
    version.
    Changing any of them makes ``--resume`` redo the series."""
    from . import __version__
    from .export import check_formats
    from .findings import load_thresholds

    thresholds = json.dumps(dict(load_thresholds()), sort_keys=True)
    return "|".join(
        [
            model_tag(model),
            "thresholds:" + hashlib.sha256(thresholds.encode()).hexdigest()[:16],
            "formats:" + ",".join(check_formats(formats)),
            *([f"precision:{precision}"] if precision != "float32" else []),
            f"backmice_vision:{__version__}",
        ]
    )


def process_job(
    job: SeriesJob,
    out_dir: str,
    formats: list[str] | None,
    spec: DetectorSpec,
    tag: str,
) -> SeriesOutcome:
    """Detect one series and write its outputs; never raises for bad input."""
    return write_stage(*detect_stage(job, spec, tag), out_dir, formats)


Staged = tuple[SeriesOutcome, Any, Any, float]  # (outcome, result or None, pipeline Outcome, start time)


def detect_stage(job: SeriesJob, spec: DetectorSpec, tag: str) -> Staged:
    """Hash the inputs, then :func:`backmice_vision.pipeline.detect_stage` (decode and detect)."""
    from .pipeline import Outcome, error_line
    from .pipeline import detect_stage as detect_series

    start = time.perf_counter()
    outcome = SeriesOutcome(key=job.key, status="failed", modality=job.modality, description=job.description)
    try:
        outcome.input_hash = inputs_hash(job.paths, tag)
    except OSError as exc:
        run = Outcome(error=error_line(exc, job.paths[0] if job.paths else job.key), stage="load")
        return outcome, None, run, start
    run, result = detect_series(job.paths, spec)
    outcome.study_uid, outcome.series_uid = run.study_instance_uid, run.series_instance_uid
    if result is not None:
        _label(outcome, result.series)
    return outcome, result, run, start


def write_stage(
    outcome: SeriesOutcome, result: Any, run: Any, start: float, out_dir: str, formats: list[str] | None
) -> SeriesOutcome:
    """:func:`backmice_vision.pipeline.write_stage` into ``out_dir/<key>``, then complete the outcome."""
    from .pipeline import write_stage as write_series

    run = write_series(run, result, Path(out_dir) / outcome.key, formats)
    outcome.error = run.error
    if run.ok:
        outcome.outputs = sorted(str(p.relative_to(out_dir)) for p in run.paths)
        montage = [p for p in outcome.outputs if p.endswith("montage.png")]
        outcome.key_image = montage[0] if montage else None
        outcome.series_probability = run.series_probability
        outcome.findings = [_finding_row(n) for n in result.nodules]
        outcome.status = "done"
    outcome.seconds = time.perf_counter() - start
    return outcome


def _label(outcome: SeriesOutcome, series: Any) -> None:
    """Fill the outcome's label fields from the loaded series (header values that identify no patient)."""
    outcome.study_uid, outcome.series_uid = series.study_instance_uid, series.series_instance_uid
    number = series.header.get("SeriesNumber")
    outcome.series_number = number if isinstance(number, int) else None
    outcome.description = str(series.header.get("SeriesDescription", outcome.description))[:64]
    date = str(series.datasets[0].get("StudyDate", "") or "") if series.datasets else ""
    outcome.study_date = date if re.fullmatch(r"[0-9]{8}", date) else ""


def _finding_row(n: Any) -> dict[str, Any]:
    return {
        "id": n.id,
        "confidence": round(float(n.confidence), 4),
        "longest_diameter_mm": None if n.longest_diameter_mm is None else round(n.longest_diameter_mm, 2),
        "truncated": bool(n.truncated),  # cut by the edge of the image: the size is a lower bound
        "depth_mm": None if n.depth_mm is None else round(float(n.depth_mm), 2),
        "side": n.side or "",
        "fascia_defect_probability": round(float(n.fascia_defect.probability), 4),
        "fascia_defect_present": bool(n.fascia_defect.present),
        "frame": round(n.center_voxel[0]),  # k of the nodule's key frame (its overlay)
    }


# --- manifest ------------------------------------------------------------------------------------


def read_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished series by key. Unparsable lines (a run killed mid-write) are ignored."""
    entries: dict[str, dict[str, Any]] = {}
    path = out_dir / MANIFEST
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "key" in entry:
            entries[entry["key"]] = entry
    return entries


def _manifest_trusts(entry: dict[str, Any] | None, job: SeriesJob, digest: str, out_dir: Path) -> bool:
    if not entry or entry.get("input_hash") != digest or entry.get("status") != "done":
        return False
    return all((out_dir / p).is_file() for p in entry.get("outputs", []))


def _append_manifest(out_dir: Path, outcome: SeriesOutcome) -> None:
    with open(out_dir / MANIFEST, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(outcome)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# --- engines -------------------------------------------------------------------------------------


def _run_local(
    jobs: list[SeriesJob],
    out_dir: Path,
    formats: list[str] | None,
    spec: DetectorSpec,
    tag: str,
    workers: int,
    threads: int | None = None,
) -> Iterator[SeriesOutcome]:
    """``workers`` processes with ``threads`` torch threads each (default: the cores shared out), or with
    one worker, this process (``threads`` given: set for torch during the run; the default keeps torch's
    own), overlapping writing with detecting on a GPU or when torch leaves a core free."""
    from .model.inference import usable_cores

    cores = usable_cores()
    if workers <= 1:
        import torch

        from .model.inference import resolve_device

        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            # a GPU, or a core torch leaves free, does series n + 1 while this thread writes series n
            if resolve_device(spec.device).type == "cuda" or torch.get_num_threads() < cores:
                yield from _pipelined(jobs, str(out_dir), formats, spec, tag)
            else:  # writing beside an all-cores forward pass slows it more than the overlap gains
                for job in jobs:
                    yield process_job(job, str(out_dir), formats, spec, tag)
        finally:
            torch.set_num_threads(before)  # the caller's process keeps its own setting
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads or max(1, cores // workers)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=init_worker,
        initargs=(spec, threads),
    ) as pool:
        futures = [pool.submit(process_job, j, str(out_dir), formats, spec, tag) for j in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def _pipelined(
    jobs: list[SeriesJob],
    out_dir: str,
    formats: list[str] | None,
    spec: DetectorSpec,
    tag: str,
) -> Iterator[SeriesOutcome]:
    """In this process: series ``n + 1`` is decoded and detected in a thread while series ``n`` is written.

    Writing (highdicom, PNG encoding), decoding and post-processing are mostly single-threaded; the
    overlap fills a core the forward pass leaves idle (used on a GPU, and when torch runs on fewer CPU
    threads than there are cores; measured on 2 cores, 20-slice MR: 1 torch thread 70 -> 78-85
    series/min, while with 2 threads series after series gave 103 and overlapped 93, medians of 4 runs).
    Each outcome is yielded as soon as its outputs are written (so it enters the manifest at once); at
    most two results are alive at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backmice-detect") as ahead:
        upcoming = ahead.submit(detect_stage, jobs[0], spec, tag)
        for following in [*jobs[1:], None]:
            staged = upcoming.result()
            if following is not None:
                upcoming = ahead.submit(detect_stage, following, spec, tag)
            yield write_stage(*staged, out_dir, formats)
            del staged


def _run_dask(
    jobs: list[SeriesJob],
    out_dir: Path,
    formats: list[str] | None,
    spec: DetectorSpec,
    tag: str,
    workers: int,
    scheduler: str | None,
    threads: int | None = None,
) -> Iterator[SeriesOutcome]:
    """One task per series. A LocalCluster gets ``workers`` processes of one task at a time and
    ``threads`` torch threads each (default: the cores shared out); on a given scheduler, torch threads
    are set only when ``threads`` is given (every worker, also those that join later)."""
    try:
        from dask.distributed import Client, LocalCluster, WorkerPlugin, as_completed
    except ImportError as exc:
        raise BackmiceError("the Dask engine needs `pip install 'backmice-vision[dask]'`") from exc
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        from .model.inference import usable_cores

        threads = threads or max(1, usable_cores() // workers)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)

    class TorchThreads(WorkerPlugin):  # sent by value (cloudpickle): run on every worker as it starts
        def __init__(self, n: int) -> None:
            self.threads = n

        def setup(self, worker: Any) -> None:
            import torch

            torch.set_num_threads(self.threads)

    try:
        if threads:
            client.register_plugin(TorchThreads(threads), name="backmice-torch-threads")
        futures = [client.submit(process_job, j, str(out_dir), formats, spec, tag, pure=False) for j in jobs]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """A one-line live progress bar on stderr (``bar``), nothing (``quiet``) or JSON lines on stdout."""

    def __init__(self, total: int, mode: str) -> None:
        self.total, self.mode = total, mode
        self.done = self.failed = 0
        self.start = time.perf_counter()

    def update(self, outcome: SeriesOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        if self.mode == "jsonl":
            print(json.dumps(asdict(outcome)), flush=True)
        elif self.mode == "bar":
            # no rate until a second has passed: an instant first failure would read as millions a minute
            elapsed = max(time.perf_counter() - self.start, 1.0)
            rate = self.done / elapsed * 60
            eta = (self.total - self.done) * elapsed / self.done
            width = 24
            filled = int(width * self.done / max(1, self.total))
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} series  "
                f"{rate:.1f}/min  ETA {eta:4.0f}s  failures {self.failed}  "
            )
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


# --- the batch -----------------------------------------------------------------------------------


def run_batch(
    input_dir: Path,
    out_dir: Path,
    *,
    workers: int = 1,
    threads: int | None = None,
    resume: bool = False,
    engine: str = "local",
    scheduler: str | None = None,
    formats: list[str] | None = None,
    model: str | None = None,
    device: str = "auto",
    precision: Precision = "float32",
    progress: str = "bar",
    on_outcome: Callable[[SeriesOutcome], None] | None = None,
) -> BatchReport:
    """Run detection on every series under ``input_dir``; see the module docstring for the layout.

    Local engine: ``workers`` processes with ``threads`` torch threads each (default: the usable cores
    shared out); one worker runs in this process and overlaps writing with detecting on a GPU or when
    torch leaves a core free (see :func:`_pipelined`). Dask engine: one task per series, one thread per
    Dask worker. ``precision``: the network's, as ``Detector(precision=...)``.
    """
    from .pipeline import DetectorSpec

    spec = DetectorSpec.of(model, device, precision=precision)  # checks the precision before any work
    if workers < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"workers and threads must be at least 1 (got {workers} and {threads})")
    start = time.perf_counter()
    plan = plan_jobs(input_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from .fileio import remove_stale_temporaries

    remove_stale_temporaries(out_dir)  # of summary.csv and index.html, if a run was killed writing them
    tag = run_tag(model, formats, precision)
    finished = read_manifest(out_dir) if resume else {}
    outcomes: list[SeriesOutcome] = []
    todo: list[SeriesJob] = []
    for job in plan.jobs:
        entry = finished.get(job.key)
        if entry is not None:
            try:
                digest = inputs_hash(job.paths, tag)
            except OSError:
                digest = ""
            if _manifest_trusts(entry, job, digest, out_dir):
                kept = SeriesOutcome(
                    **{k: v for k, v in entry.items() if k in SeriesOutcome.__dataclass_fields__}
                )
                kept.status = "skipped"
                outcomes.append(kept)
                continue
        todo.append(job)
    bar = Progress(len(plan.unsupported) + len(todo), progress)
    if engine == "local":
        stream = _run_local(todo, out_dir, formats, spec, tag, workers, threads)
    elif engine == "dask":
        stream = _run_dask(todo, out_dir, formats, spec, tag, workers, scheduler, threads)
    else:
        raise BackmiceError(f"unknown engine {engine!r} (local or dask)")
    for outcome in itertools.chain(plan.unsupported, stream):  # unsupported: failed, reported like the rest
        if outcome.status == "done":
            _append_manifest(out_dir, outcome)
        outcomes.append(outcome)
        bar.update(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    outcomes.sort(key=lambda o: o.key)
    report = BatchReport(outcomes, plan.unreadable, time.perf_counter() - start, plan.ignored, plan.non_image)
    report.settings = run_settings(model, formats, engine, workers, device)
    write_summary_csv(report, out_dir / "summary.csv")
    write_index_html(report, out_dir / "index.html")
    return report


SUMMARY_COLUMNS = (
    "series",
    "modality",
    "status",
    "series_probability",
    "finding",
    "confidence",
    "longest_diameter_mm",
    "truncated",
    "depth_mm",
    "side",
    "fascia_defect_present",
    "fascia_defect_probability",
    "seconds",
    "error",
)


def write_summary_csv(report: BatchReport, path: Path) -> None:
    """One row per series and finding (a series without findings gets one row with empty finding cells)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SUMMARY_COLUMNS)
    for o in report.outcomes:
        base = [
            o.key,
            o.modality,
            o.status,
            "" if o.series_probability is None else f"{o.series_probability:.4f}",
        ]
        tail = [f"{o.seconds:.2f}", o.error]
        if not o.findings:
            writer.writerow([*base, *[""] * 8, *tail])
        for f in o.findings:
            writer.writerow(
                [
                    *base,
                    f["id"],
                    f["confidence"],
                    f["longest_diameter_mm"],
                    bool(f.get("truncated", False)),
                    f["depth_mm"],
                    f["side"],
                    f["fascia_defect_present"],
                    f["fascia_defect_probability"],
                    *tail,
                ]
            )
    for p, reason in report.unreadable:
        writer.writerow([Path(p).name, "", "failed", *[""] * 10, reason])
    for name, reason in report.ignored_rows:
        writer.writerow([name, "", "ignored", *[""] * 10, reason])
    from .fileio import write_text_atomic

    write_text_atomic(buf.getvalue(), path)


def run_settings(
    model: str | None, formats: list[str] | None, engine: str, workers: int, device: str
) -> dict[str, str]:
    """The settings of a run as ``{name: text}`` for the review page: models (version, checksum), inference
    thresholds, output formats, engine and library version."""
    from . import __version__
    from .export import check_formats
    from .findings import load_thresholds

    models = []
    for part in model_tag(model).split("|"):
        name, _, rest = part.partition(":")
        version, _, digest = rest.partition(":")
        models.append(f"{name} {version}" + (f" (sha256 {digest[:12]})" if digest else ""))
    return {
        "models": ", ".join(models),
        "thresholds": ", ".join(f"{k} {v:g}" for k, v in load_thresholds().items()),
        "formats": ", ".join(check_formats(formats)),
        "engine": f"{engine}, {workers} worker(s), device {device}",
        "backmice_vision": __version__,
    }


def write_index_html(report: BatchReport, path: Path) -> None:
    """The review page (:mod:`backmice_vision.export.review`), written atomically."""
    from .export.review import review_page
    from .fileio import write_text_atomic

    write_text_atomic(review_page(report, path.parent), path)


MAX_IGNORED_LINES = 20  # an archive can hold thousands of thumbnails and notes


def print_summary(report: BatchReport, stream: Any = None) -> None:
    """The end-of-run table: one line per series, every failure with its reason, then what was ignored
    (not DICOM, not an image series) with the reason, at most :data:`MAX_IGNORED_LINES` lines."""
    out = stream or sys.stderr
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(
        f"{len(report.outcomes)} series in {report.seconds:.1f} s: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
        file=out,
    )
    for o in report.outcomes:
        if o.status != "failed":
            prob = "" if o.series_probability is None else f"P={o.series_probability:.2f}"
            print(
                f"  {o.status:7s} {o.modality:3s} {o.key[-40:]:40s} {len(o.findings)} finding(s) {prob}",
                file=out,
            )
    for o in report.failed:
        print(f"  failed  {o.modality:3s} {o.key[-40:]:40s} {o.error}", file=out)
    for p, reason in report.unreadable:
        print(f"  failed  unreadable file {p}: {reason}", file=out)
    everything = [*report.ignored, *report.non_image]
    for what, reason in everything[:MAX_IGNORED_LINES]:
        print(f"  ignored {what}: {reason}", file=out)
    if len(everything) > MAX_IGNORED_LINES:
        more = len(everything) - MAX_IGNORED_LINES
        print(f"  ignored {more} more (all of them in summary.csv)", file=out)
