"""Is model B better than model A beyond chance? A paired case bootstrap on the same phantom sets.

``python scripts/compare_evaluations.py A_DIR[,A_DIR2...] B_DIR[,B_DIR2...] [C_DIR...]``: each folder
holds the ``evaluation.json`` that ``backmice evaluate`` wrote for one model on one set; a comma joins a
model's folders on several sets (the same sets in the same order for every model) into one pool. Per
modality: the sensitivity of each at the target false-positive rate (US 0.25, MR 0.5 per image), B minus
A with its 95 % interval from resampling cases (the same draw for both models), and the share of draws in
which B is not better. With 14 or 32 lesions one lesion is 3-7 points: read the interval before shipping.
Then the fascia-defect AUC of each on the lesions that both found (a model that finds more, harder nodules
is not penalised for their defects), where the reports list ``defect_pairs``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from backmice_vision.evaluation import TARGET_FP_RATE, CaseScores, auc, case_scores, paired_bootstrap


def _pool(arg: str) -> list[dict[str, Any]]:
    """The reports of one model's folders; ``ValueError`` naming the file that is missing or unreadable."""
    reports = []
    for folder in arg.split(","):
        path = Path(folder) / "evaluation.json"
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
            raise ValueError(f"{path}: {reason}") from None
    return reports


def _cases(reports: list[dict[str, Any]], modality: str) -> dict[str, CaseScores]:
    return {
        f"{i}/{case}": scores
        for i, report in enumerate(reports)
        for case, scores in case_scores(report["series"], modality).items()
    }


def _defects(reports: list[dict[str, Any]], modality: str) -> dict[tuple[Any, ...], tuple[float, bool]]:
    """``(set, case, folder, lesion) -> (defect probability, present)`` of every hit lesion."""
    return {
        (i, s["case"], s["folder"], int(d[0])): (float(d[1]), bool(d[2]))
        for i, report in enumerate(reports)
        for s in report["series"]
        if s["modality"] == modality
        for d in s.get("defect_pairs", [])
    }


def _defect_rows(args: list[str], pools: list[list[dict[str, Any]]]) -> list[str]:
    rows = []
    for arg, pool in zip(args[1:], pools[1:], strict=True):
        for modality in sorted(set(pools[0][0]["modalities"]) & set(pool[0]["modalities"])):
            a, b = _defects(pools[0], modality), _defects(pool, modality)
            both = sorted(set(a) & set(b))
            if not both:
                continue
            truth = [a[k][1] for k in both]
            aucs = (auc([a[k][0] for k in both], truth), auc([b[k][0] for k in both], truth))
            shown = " | ".join("–" if v is None else f"{v:.3f}" for v in aucs)
            rows.append(f"| {args[0]} | {arg} | {modality} | {len(both)} | {shown} |")
    return rows


def main(args: list[str]) -> int:
    if len(args) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        pools = [_pool(a) for a in args]
    except ValueError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    if len({len(p) for p in pools}) != 1:
        print("compare: every model needs the same number of evaluation folders", file=sys.stderr)
        return 2
    print("| A | B | modality | cases / lesions | sens A | sens B | B - A (95 % CI) | P(B not better) |")
    print("|---|---|---|---|---|---|---|---|")
    for arg, pool in zip(args[1:], pools[1:], strict=True):
        for modality in sorted(set(pools[0][0]["modalities"]) & set(pool[0]["modalities"])):
            try:
                out = paired_bootstrap(
                    _cases(pools[0], modality), _cases(pool, modality), TARGET_FP_RATE[modality]
                )
            except (KeyError, ValueError) as exc:
                print(f"compare: {args[0]} vs {arg} ({modality}): {exc}", file=sys.stderr)
                return 1
            lo, hi = out["ci95"]
            print(
                f"| {args[0]} | {arg} | {modality} | {out['n_cases']} / {out['n_lesions']} | "
                f"{out['sensitivity_a']:.3f} | {out['sensitivity_b']:.3f} | "
                f"{out['difference']:+.3f} ({lo:+.3f} to {hi:+.3f}) | {out['p_b_not_better']:.2f} |"
            )
    rows = _defect_rows(args, pools)
    if rows:
        print("\n| A | B | modality | lesions both found | defect AUC A | defect AUC B |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
