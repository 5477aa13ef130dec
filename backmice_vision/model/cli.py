"""Handlers of ``backmice detect``, ``train``, ``calibrate``, ``evaluate`` and ``export`` (argument
parsing is in :mod:`backmice_vision.cli`). They call the library and print a short summary; errors
propagate as :class:`~backmice_vision.errors.BackmiceError` for the top-level handler to print."""

from __future__ import annotations

import argparse
import sys


def run_detect(ns: argparse.Namespace) -> int:
    from ..export import check_formats
    from ..pipeline import DetectorSpec, detect_stage, get_detector, write_stage

    formats = None if ns.formats == "all" else [f.strip() for f in ns.formats.split(",") if f.strip()]
    check_formats(formats)  # usage errors (exit 2) before any work
    detector = get_detector(DetectorSpec.of(ns.model, ns.device, config=ns.config, precision=ns.precision))
    outcome, result = detect_stage(ns.path, detector)
    outcome = write_stage(outcome, result, ns.out, formats)
    if result is None or not outcome.ok:
        print(f"backmice: error: {outcome.error}", file=sys.stderr)
        return 1
    print(
        f"{outcome.modality} series {result.series.shape}: {len(result.nodules)} nodule(s), "
        f"series probability {result.series_probability:.3f}"
    )
    for n in result.nodules:
        d = (
            "?"
            if n.longest_diameter_mm is None
            else f"{'>' if n.truncated else ''}{n.longest_diameter_mm:.1f} mm"
        )
        depth = "?" if n.depth_mm is None else f"{n.depth_mm:.1f} mm"
        print(
            f"  nodule {n.id}: confidence {n.confidence:.2f}, longest diameter {d}, depth {depth}, "
            f"fascial defect p={n.fascia_defect.probability:.2f}"
        )
    for kind, paths in outcome.outputs.items():
        print(f"  {kind}: {', '.join(paths)}")
    return 0


def run_train(ns: argparse.Namespace) -> int:
    from .train import train

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = train(ns.config, resume=ns.resume, device=ns.device, log=log)
    print(f"model written to {out}")
    return 0


def run_calibrate(ns: argparse.Namespace) -> int:
    from .train import recalibrate

    def log(msg: str) -> None:
        print(msg, flush=True)

    zooms = tuple(ns.zooms) if ns.zooms else None
    out = recalibrate(ns.model, ns.config, ns.out, device=ns.device, zooms=zooms, log=log)
    print(f"model written to {out}")
    return 0


def run_evaluate(ns: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..evaluation import run_evaluation
    from ..findings import Thresholds

    def parse(items: list[str], option: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in items:
            name, _, value = str(item).partition("=")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"{option} expects NAME=NUMBER, got {item!r}") from None
        return Thresholds.check(out, option)  # a misspelt name is a usage error (exit 2)

    overrides = parse(getattr(ns, "threshold", []) or [], "--threshold")
    variants: dict[str, dict[str, float]] = {}
    for item in getattr(ns, "variant", []) or []:
        label, _, settings = str(item).partition(":")
        label = label.strip()
        if not label or not settings or not label.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"--variant expects NAME:NAME=VALUE[,NAME=VALUE] (NAME a folder name), got {item!r}"
            )
        if label in variants:
            raise ConfigError(f"--variant {label!r} is given twice")
        variants[label] = parse(settings.split(","), f"--variant {label}")
    report = run_evaluation(
        list(ns.data),
        ns.out,
        ns.model,
        ns.device,
        flip=ns.flip,
        precision=ns.precision,
        thresholds=overrides,
        variants=variants,
    )
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
