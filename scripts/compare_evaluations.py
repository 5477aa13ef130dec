"""Is model B better than model A beyond chance? A paired case bootstrap on the same phantom set.

``python scripts/compare_evaluations.py A_DIR B_DIR [B2_DIR ...]``: each folder holds the
``evaluation.json`` that ``backmice evaluate`` wrote for one model on the same cases. Per modality: the
sensitivity of each at the target false-positive rate (US 0.25, MR 0.5 per image), B minus A with its
95 % interval from resampling cases (the same draw for both models), and the share of draws in which B
is not better. With 14 or 32 lesions one lesion is 3-7 points: read the interval before shipping.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backmice_vision.evaluation import TARGET_FP_RATE, case_scores, paired_bootstrap


def main(paths: list[str]) -> int:
    if len(paths) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    reports = [json.loads((Path(p) / "evaluation.json").read_text()) for p in paths]
    print("| A | B | modality | cases / lesions | sens A | sens B | B - A (95 % CI) | P(B not better) |")
    print("|---|---|---|---|---|---|---|---|")
    for path, report in zip(paths[1:], reports[1:], strict=True):
        for modality in sorted(set(reports[0]["modalities"]) & set(report["modalities"])):
            rate = TARGET_FP_RATE[modality]
            try:
                out = paired_bootstrap(
                    case_scores(reports[0]["series"], modality), case_scores(report["series"], modality), rate
                )
            except (KeyError, ValueError) as exc:
                print(f"compare: {paths[0]} vs {path} ({modality}): {exc}", file=sys.stderr)
                return 1
            lo, hi = out["ci95"]
            print(
                f"| {Path(paths[0]).name} | {Path(path).name} | {modality} | {out['n_cases']} / "
                f"{out['n_lesions']} | {out['sensitivity_a']:.3f} | {out['sensitivity_b']:.3f} | "
                f"{out['difference']:+.3f} ({lo:+.3f} to {hi:+.3f}) | {out['p_b_not_better']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
