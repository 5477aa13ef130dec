"""One Markdown table of the key figures of several ``backmice evaluate`` outputs (folders holding
``evaluation.json``), side by side: ``python scripts/summarise_evaluations.py build/evalres``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(v: object, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main(root: Path) -> None:
    rows, curves = [], []
    for path in sorted(root.glob("*/evaluation.json")):
        report = json.loads(path.read_text())
        for modality, m in report["modalities"].items():
            fr = m["froc"]
            rate = 0.25 if modality == "US" else 0.5
            sens = fr["sensitivity"][fr["fp_rates"].index(rate)]
            bands = m.get("by_size_mm", {})
            band_txt = " / ".join(
                _fmt(next((v for k, v in b.items() if k.startswith("sensitivity")), None), 2)
                for b in bands.values()
            )
            curves.append(
                [path.parent.name, " / ".join(f"{x:.2f}" for x in fr["sensitivity"])]
                + [_fmt(v, 2) for _, v in _cine_single(m)]
            )
            rows.append(
                [
                    path.parent.name,
                    modality,
                    str(m["n_target_nodules"]),
                    _fmt(sens),
                    _fmt(fr["mean_sensitivity"]),
                    band_txt,
                    _fmt(m["defect_auc"]),
                    _fmt(m["longest_diameter_rel_error"]["median"]),
                    _fmt(m["ece"]),
                    _fmt(m["fp_per_image_no_target"]),
                    _fmt(m["dice"]["mean"]),
                ]
            )
    head = [
        "run",
        "mod",
        "targets",
        "sens @ target FP (US 0.25, MR 0.5)",
        "mean FROC sens",
        "sens by size 5-10 / 10-20 / 20-30 / 30-46 mm",
        "defect AUC",
        "median rel. diameter error",
        "ECE",
        "FP/image, nodule-free series",
        "Dice",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("| run | FROC sensitivity at 0.125 / 0.25 / 0.5 / 1 / 2 FP | US single / cine / dual at 0.25 |")
    print("|---|---|---|")
    for r in curves:
        print(f"| {r[0]} | {r[1]} | {' / '.join(r[2:]) or '–'} |")


def _cine_single(m: dict) -> list[tuple[str, object]]:
    """Sensitivity at the target rate of US single images, cine clips and dual views (empty for MR)."""
    kinds = m.get("by_kind", {})
    names = ("us_single", "us_cine", "us_dual")
    return [(k, kinds[k].get("sensitivity_at_0.25")) for k in names if k in kinds]


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/evalres"))
