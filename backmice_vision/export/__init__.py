"""Writing a :class:`DetectionResult`: :func:`save_result` (called by ``DetectionResult.save``).

Files in ``out_dir`` (no patient identifier in any name):

* ``png``: ``overlay_k<k>.png`` per frame with a finding and ``montage.png`` (:mod:`backmice_vision.render`)
* ``json``: ``report.json``, schema ``backmice.report/1`` (:mod:`.report`)
* ``seg``: ``seg.dcm``, DICOM SEG (:mod:`.seg`)
* ``sr``: ``sr.dcm``, TID 1500 SR citing the SEG (:mod:`.sr`); asking for ``sr`` also writes ``seg.dcm``
* ``sc``: ``sc_k<k>.dcm``, Secondary Capture of each overlay (:mod:`.sc`)
* ``segprob``: ``seg_probability.dcm``, FRACTIONAL DICOM SEG of the nodule probability (:mod:`.seg`); opt-in:
  not in the default set (:data:`DEFAULT_FORMATS`), asked for by name, e.g. ``["all", "segprob"]``

Every file is written through a temporary file in ``out_dir`` and ``os.replace``
(:mod:`backmice_vision.fileio`). The DICOM objects get new Series and SOP Instance UIDs unless ``uids``
(:data:`ResultUIDs`) names them, e.g. UIDs derived from the source series so that a rerun yields the
same instances (the DICOM node does this).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..types import DetectionResult

FORMATS: tuple[str, ...] = ("png", "json", "seg", "sr", "sc", "segprob")
DEFAULT_FORMATS: tuple[str, ...] = ("png", "json", "seg", "sr", "sc")  # what ``None`` and ``"all"`` mean

ResultUIDs = Callable[[str, int], tuple[str, str]]
"""``(format, index) -> (SeriesInstanceUID, SOPInstanceUID)`` of DICOM output ``index`` (0-based, the
Secondary Captures in instance-number order) of a format (``seg``, ``sr``, ``sc``, ``segprob``). Every
index of one format must give the same series UID."""


def check_formats(formats: list[str] | None) -> list[str]:
    """The formats to write, in :data:`FORMATS` order: :data:`DEFAULT_FORMATS` when ``None``; the name
    ``"all"`` stands for :data:`DEFAULT_FORMATS` too. Unknown names raise ConfigError."""
    if formats is None:
        return list(DEFAULT_FORMATS)
    wanted = {f.strip().lower() for f in formats if f.strip()}
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(DEFAULT_FORMATS)
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        choices = ", ".join(("all", *FORMATS))
        raise ConfigError(f"unknown output format(s) {', '.join(unknown)}; choose from {choices}")
    return [f for f in FORMATS if f in wanted]


def save_result(
    result: DetectionResult,
    out_dir: Path,
    formats: list[str] | None = None,
    *,
    uids: ResultUIDs | None = None,
) -> dict[str, list[Path]]:
    """Write the requested outputs of ``result`` to ``out_dir``; returns the paths written per format.

    ``uids`` gives the Series and SOP Instance UIDs of the DICOM outputs (new random ones when ``None``);
    the SR cites the SEG under the UIDs it was given.
    """
    chosen = check_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {f: [] for f in chosen}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backmice-png") as encoder:
        pngs = []
        if "png" in chosen:
            from ..render import png_images, write_png

            # drawn here (fonts stay in one thread), encoded in the other while the DICOM objects are built
            pngs = [encoder.submit(write_png, array, out_dir / name) for name, array in png_images(result)]
        _write_dicom(result, out_dir, chosen, written, uids)
        if "png" in chosen:
            written["png"] = [f.result() for f in pngs]
    if "json" in chosen:
        from .report import write_report

        others = {k: v for k, v in written.items() if k != "json"}
        written["json"] = [write_report(result, out_dir / "report.json", others)]
    return written


def _write_dicom(
    result: DetectionResult,
    out_dir: Path,
    chosen: list[str],
    written: dict[str, list[Path]],
    uids: ResultUIDs | None,
) -> None:
    """The SEG, SR, probability SEG and Secondary Captures among ``chosen``, into ``written``."""
    from ..fileio import save_atomic

    def named(kind: str) -> dict[str, str]:
        if uids is None:
            return {}
        series_uid, sop_uid = uids(kind, 0)
        return {"series_instance_uid": series_uid, "sop_instance_uid": sop_uid}

    if "seg" in chosen or "sr" in chosen:
        from .seg import build_seg

        seg = build_seg(result, **named("seg"))
        written["seg"] = [save_atomic(seg, out_dir / "seg.dcm")]
        if "sr" in chosen:
            from .sr import build_sr

            written["sr"] = [save_atomic(build_sr(result, seg, **named("sr")), out_dir / "sr.dcm")]
    if "segprob" in chosen:
        from .seg import build_probability_seg

        segprob = build_probability_seg(result, **named("segprob"))
        written["segprob"] = [save_atomic(segprob, out_dir / "seg_probability.dcm")]
    if "sc" in chosen:
        from .sc import write_sc

        written["sc"] = write_sc(result, out_dir, uids=uids)
