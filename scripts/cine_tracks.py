"""How many frames of its clip each cine finding spans, for hits and false positives.

``python scripts/cine_tracks.py [--model DIR] OUT.json DIR [DIR...]``: the detector (the shipped models, or
``--model``) on every ``us_cine`` series of the phantom case folders under ``DIR``, at its operating
thresholds but with every finding of confidence >= 0.25 kept; per finding one row in ``OUT.json``: clip
length, frames its mask covers, confidence, hit or false positive (``match_nodules``), and for a hit the
frames on which its ground-truth nodule is visible; then the medians on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import backmice_vision as bmv
from backmice_vision.evaluation import find_cases, read_ground_truth
from backmice_vision.findings import match_nodules

OPERATING_CONFIDENCE = 0.25


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: the shipped ones)")
    ap.add_argument("out", type=Path)
    ap.add_argument("data", type=Path, nargs="+")
    ns = ap.parse_args()
    detector = bmv.Detector.from_pretrained(ns.model, thresholds={"confidence_threshold": 0.0})
    rows = []
    for gt_path in find_cases(ns.data):
        for entry in read_ground_truth(gt_path)["series"]:
            if entry.get("kind") != "us_cine":
                continue
            series = bmv.load_series(gt_path.parent / entry["folder"])
            result = detector.detect(series)
            truth = entry.get("nodules", [])
            visible: dict[object, set[int]] = {}
            for t in truth:
                if t.get("visible"):
                    visible.setdefault(t.get("id"), set()).add(int(t["center_voxel"][0]))
            for m in match_nodules(result.nodules, truth, series):
                if m.pred is None or result.nodules[m.pred].confidence < OPERATING_CONFIDENCE or m.duplicate:
                    continue
                n = result.nodules[m.pred]
                covered = n.bbox[3] - n.bbox[0]
                if n.mask is not None:
                    covered = int(np.count_nonzero(n.mask.reshape(n.mask.shape[0], -1).any(axis=1)))
                rows.append(
                    {
                        "case": str(gt_path.parent),
                        "folder": entry["folder"],
                        "clip_frames": series.shape[0],
                        "frames": covered,
                        "confidence": round(float(n.confidence), 3),
                        "hit": m.truth is not None,
                        "truth_visible_frames": None
                        if m.truth is None
                        else len(visible.get(truth[m.truth].get("id"), ())),
                    }
                )
    ns.out.write_text(json.dumps(rows, indent=1))
    for label, hit in (("hits", True), ("false positives", False)):
        group = [r for r in rows if r["hit"] is hit]
        if group:
            frames = statistics.median(r["frames"] for r in group)
            share = statistics.median(r["frames"] / r["clip_frames"] for r in group)
            print(f"{label}: {len(group)}, median {frames:g} frames, median share of the clip {share:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
