"""``backmice info FOLDER``: one line per series found, then the unreadable files. Headers only."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackmiceError, InvalidDicom
from ..types import SeriesRef
from .load import plan_series
from .reader import ANALYSED_MODALITIES, find_series


def _mm(values: tuple[float, ...]) -> str:
    return "×".join(f"{v:.3g}" for v in values) + " mm"


def series_line(ref: SeriesRef) -> tuple[str, bool]:
    """The summary line of one series, and whether a file of it turned out unreadable.

    Fields: modality, study and series UIDs (last 8 characters), frames×rows×cols, spacing in mm (or
    ``unknown``), ultrasound region count, problems.
    """
    problems = list(ref.problems)
    size = f"{ref.n_frames}×{ref.rows}×{ref.columns}"
    spacing, regions, unreadable = "unknown", "-", False
    if ref.modality in ANALYSED_MODALITIES and ref.n_frames:
        try:
            plan = plan_series(ref)
        except BackmiceError as exc:
            problems.append(str(exc))
            unreadable = isinstance(exc, InvalidDicom)
        else:
            problems += plan.problems
            size = f"{len(plan.frames)}×{plan.rows}×{plan.columns}"
            if plan.spacing_mm is not None:
                spacing = _mm(plan.spacing_mm)
            if plan.modality == "US":
                regions = str(len(plan.regions))
                known = [r.spacing_mm for r in plan.regions if r.spacing_mm is not None]
                spacing = ", ".join(_mm(s) for s in known) if known else "unknown"
    line = (
        f"{ref.modality:<4} study …{ref.study_instance_uid[-8:]} series …{ref.series_instance_uid[-8:]} "
        f"{size:>13} spacing {spacing} regions {regions}"
    )
    if problems:
        line += " problems: " + "; ".join(problems)
    return line, unreadable


def print_series_summary(folder: Path) -> int:
    """Print one line per series under ``folder`` (all modalities and objects), then each unreadable file
    as ``unreadable: PATH: REASON``. Returns 1 if any file was unreadable, else 0."""
    errors: list[tuple[Path, str]] = []
    try:
        refs = find_series(folder, errors, include_all=True)
    except BackmiceError as exc:
        print(f"error: {exc}")
        return 1
    failed = bool(errors)
    for ref in refs:
        line, unreadable = series_line(ref)
        failed |= unreadable
        print(line)
    if not refs:
        print(f"no DICOM series under {folder}")
    for path, reason in errors:
        print(f"unreadable: {path}: {reason}")
    return 1 if failed else 0
