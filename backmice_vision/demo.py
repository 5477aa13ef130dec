"""`make demo`: generate the example series deterministically and run the whole job on them.

The example data are phantoms made by :mod:`backmice_vision.phantoms` with fixed seeds (nothing is
downloaded); the detector uses the weights shipped in ``models/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

DEMO_CASES: tuple[tuple[Literal["us", "mr"], int], ...] = (("us", 11), ("mr", 12))
DEMO_ANATOMY = {"force_nodules": 1}  # each example subject has one back mouse to show


def run_demo(out_dir: Path) -> int:
    """Write example phantoms under ``out_dir/data`` and every output under ``out_dir/results``.

    Returns 0 when every series was processed, 1 otherwise.
    """
    from .io import find_series
    from .phantoms.generate import generate_cases
    from .pipeline import detect_stage, write_stage

    data_dir = out_dir / "data"
    for modality, seed in DEMO_CASES:
        target = data_dir / modality
        if not (target / "case_0000" / "ground_truth.json").exists():
            generate_cases(modality, 1, seed, target, config={"anatomy": DEMO_ANATOMY}, progress=False)

    failures = 0
    refs = find_series(data_dir)
    for ref in refs:
        name = f"{ref.modality}_{ref.series_instance_uid[-8:]}"
        outcome, result = detect_stage(ref)  # the shipped models, loaded once (the pipeline's cache)
        outcome = write_stage(outcome, result, out_dir / "results" / name)
        if result is None or not outcome.ok:
            failures += 1
            print(f"{name}: error: {outcome.error}", file=sys.stderr)
            continue
        found = ", ".join(
            f"#{n.id} {n.confidence:.0%} {'>' if n.truncated else ''}{n.longest_diameter_mm or 0:.1f} mm"
            for n in result.nodules
        )
        print(f"{name}: {len(result.nodules)} finding(s) {found} -> {len(outcome.paths)} files")
    print(f"results in {out_dir / 'results'}")
    return 1 if failures else 0
