"""Handlers of ``backmice detect``, ``train``, ``evaluate`` and ``export`` (argument parsing is in
:mod:`backmice_vision.cli`). They call the library and print a short summary; errors propagate as
:class:`~backmice_vision.errors.BackmiceError` for the top-level handler to print."""

from __future__ import annotations

import argparse
import sys


def run_detect(ns: argparse.Namespace) -> int:
    from ..io import load_series
    from .detector import Detector

    series = load_series(ns.path)
    detector = Detector.from_pretrained(ns.model, ns.device, config=ns.config)
    result = detector.detect(series)
    formats = None if ns.formats == "all" else [f.strip() for f in ns.formats.split(",") if f.strip()]
    written = result.save(ns.out, formats)
    print(
        f"{series.modality} series {series.shape}: {len(result.nodules)} nodule(s), "
        f"series probability {result.series_probability:.3f}"
    )
    for n in result.nodules:
        d = "?" if n.longest_diameter_mm is None else f"{n.longest_diameter_mm:.1f} mm"
        depth = "?" if n.depth_mm is None else f"{n.depth_mm:.1f} mm"
        print(
            f"  nodule {n.id}: confidence {n.confidence:.2f}, longest diameter {d}, depth {depth}, "
            f"fascial defect p={n.fascia_defect.probability:.2f}"
        )
    for kind, paths in written.items():
        print(f"  {kind}: {', '.join(str(p) for p in paths)}")
    return 0


def run_train(ns: argparse.Namespace) -> int:
    from .train import train

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = train(ns.config, resume=ns.resume, device=ns.device, log=log)
    print(f"model written to {out}")
    return 0


def run_evaluate(ns: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..evaluation import run_evaluation

    overrides: dict[str, float] = {}
    for item in getattr(ns, "threshold", []) or []:
        name, _, value = str(item).partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--threshold expects NAME=NUMBER, got {item!r}") from None
    report = run_evaluation(list(ns.data), ns.out, ns.model, ns.device, flip=ns.flip, thresholds=overrides)
    print(json.dumps({k: report[k] for k in ("n_cases", "n_series") if k in report}))
    for problem in report.get("problems", []):
        print(f"problem: {problem}", file=sys.stderr)
    print(f"evaluation written to {ns.out}")
    return 0


def run_export(ns: argparse.Namespace) -> int:
    from .export import export_model

    out = export_model(ns.model, ns.format, ns.out)
    print(f"{ns.format} model written to {out}")
    return 0
