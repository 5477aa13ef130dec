"""The ``backmice`` command. Parses arguments and calls the library; nothing else.

Exit codes: 0 all good, 1 some inputs failed, 2 usage or configuration error, 130 interrupted, 141 the
output was closed before the command finished (``backmice info DIR | head``: quietly, like SIGPIPE).
Heavy modules (torch, monai, highdicom) are imported inside the handlers so that
``backmice --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import BackmiceError

Handler = Callable[[argparse.Namespace], int]
EXIT_CLOSED_OUTPUT = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
FORMATS_HELP = (
    "comma-separated: png,json,seg,sr,sc,segprob (probability SEG); all = png,json,seg,sr,sc "
    "(default all; e.g. all,segprob)"
)

PRECISION_CHOICES = ("float32", "bfloat16")
PRECISION_HELP = (
    "network precision: bfloat16 runs the forward pass under autocast, about 1.6x as fast on CPUs with "
    "AMX and on recent GPUs (default float32)"
)


def _info(ns: argparse.Namespace) -> int:
    from .io.summary import print_series_summary

    return print_series_summary(ns.folder)


def _phantom(ns: argparse.Namespace) -> int:
    from .phantoms.cli import run_phantom

    return run_phantom(ns)


def _detect(ns: argparse.Namespace) -> int:
    from .model.cli import run_detect

    return run_detect(ns)


def _train(ns: argparse.Namespace) -> int:
    from .model.cli import run_train

    return run_train(ns)


def _calibrate(ns: argparse.Namespace) -> int:
    from .model.cli import run_calibrate

    return run_calibrate(ns)


def _evaluate(ns: argparse.Namespace) -> int:
    from .model.cli import run_evaluate

    return run_evaluate(ns)


def _export(ns: argparse.Namespace) -> int:
    from .model.cli import run_export

    return run_export(ns)


def _batch(ns: argparse.Namespace) -> int:
    from .batch import plan_jobs, print_summary, run_batch
    from .pipeline import bound_heap

    bound_heap()  # the in-process engine detects in this process

    if ns.dry_run:
        plan = plan_jobs(ns.input_dir)
        for job in plan.jobs:
            print(f"{job.modality:3s} {len(job.paths):4d} file(s)  {job.key}")
        for o in plan.unsupported:
            print(f"unsupported {o.key}: {o.error}")
        for path, reason in plan.unreadable:
            print(f"unreadable {path}: {reason}")
        for what, reason in [*plan.ignored, *plan.non_image]:
            print(f"ignored {what}: {reason}")
        print(f"{len(plan.jobs)} series would be processed")
        return 0
    formats = None if ns.formats == "all" else ns.formats.split(",")
    report = run_batch(
        ns.input_dir,
        ns.out,
        workers=ns.workers,
        threads=ns.threads or None,
        resume=ns.resume,
        engine=ns.engine,
        scheduler=ns.scheduler,
        formats=formats,
        model=ns.model,
        device=ns.device,
        precision=ns.precision,
        progress="jsonl" if ns.jsonl else ("quiet" if ns.quiet else "bar"),
    )
    if not ns.jsonl:
        print_summary(report)
    return report.exit_code


def _serve(ns: argparse.Namespace) -> int:
    from .node.cli import run_serve

    return run_serve(ns)


def _demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(ns.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backmice",
        description="Find back mice (episacroiliac lipomas) in ultrasound and MRI DICOM series.",
        epilog="Exit codes: 0 success, 1 some inputs failed, 2 usage or configuration error, "
        "130 interrupted, 141 output closed early (e.g. piped into head).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="list the DICOM series found in a folder, one line each")
    p.add_argument("folder", type=Path)
    p.set_defaults(handler=_info)

    p = sub.add_parser("phantom", help="generate synthetic lumbar US or MR studies with ground truth")
    p.add_argument("--modality", choices=["us", "mr"], required=True)
    p.add_argument("--cases", type=int, default=1, help="number of simulated subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--config", type=Path, help="phantom YAML config (default: configs/phantom_<modality>.yaml)"
    )
    p.add_argument(
        "--workers", type=int, default=2, help="processes generating cases at once (default 2: both cores)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_phantom)

    p = sub.add_parser("detect", help="run the detector on a series (file or folder) and write results")
    p.add_argument("path", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--formats", default="all", help=FORMATS_HELP)
    p.add_argument("--model", help="model folder (default: the shipped model for the modality)")
    p.add_argument("--config", type=Path, help="inference thresholds YAML (default configs/inference.yaml)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="float32", help=PRECISION_HELP)
    p.set_defaults(handler=_detect)

    p = sub.add_parser("batch", help="detect in every series under a folder (resumable, parallel, Dask)")
    p.add_argument("input_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model once)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per worker (default: the cores shared out; one worker: torch's default)",
    )
    p.add_argument("--resume", action="store_true", help="skip series finished with the same inputs")
    p.add_argument("--engine", choices=["local", "dask"], default="local")
    p.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster on 127.0.0.1)")
    p.add_argument("--formats", default="all", help=FORMATS_HELP)
    p.add_argument("--model", help="model folder (default: the shipped models)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="float32", help=PRECISION_HELP)
    p.add_argument("--dry-run", action="store_true", help="list what would be processed and stop")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="no progress bar")
    mode.add_argument("--jsonl", action="store_true", help="one JSON line per finished series on stdout")
    p.set_defaults(handler=_batch)

    p = sub.add_parser("train", help="train a segmentation model from a YAML config")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "calibrate", help="refit a model's confidence calibration on annotated series (a config's data.val)"
    )
    p.add_argument("--model", required=True, help="model folder whose calibration is refitted")
    p.add_argument("--config", type=Path, required=True, help="training config: its data.val sources")
    p.add_argument("--out", type=Path, required=True, help="folder for the recalibrated model")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--zooms",
        type=float,
        nargs="+",
        help="inference zooms to set before the fit, e.g. 1 1.25 (probabilities averaged over the series "
        "shown at the model spacing and 1.25 times larger)",
    )
    p.set_defaults(handler=_calibrate)

    p = sub.add_parser("evaluate", help="FROC, Dice, defect AUC and calibration on a phantom set")
    p.add_argument("--data", type=Path, required=True, nargs="+")
    p.add_argument("--out", type=Path, default=Path("build/evaluation"))
    p.add_argument("--model", help="model folder (default: the shipped ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--flip", action="store_true", help="test-time left-right flip (twice the model time)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="float32", help=PRECISION_HELP)
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an inference threshold, e.g. min_fat_context=0 (repeatable)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:NAME=VALUE[,NAME=VALUE]",
        help="also post-process the same network output with these thresholds, report in OUT/NAME, e.g. "
        "g15:nodule_grow_threshold=0.15,nodule_grow_max_mm=2 (repeatable; one network pass for all)",
    )
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("export", help="export a model to ONNX or TorchScript")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_export)

    p = sub.add_parser("serve", help="run the DICOM node: receive series, detect, send results back")
    p.add_argument("--config", type=Path, default=Path("configs/node.yaml"), help="node YAML config")
    p.add_argument("--status", action="store_true", help="print the journal's series states and exit")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("demo", help="generate the example series and run the whole job on them")
    p.add_argument("--out", type=Path, default=Path("build/demo"))
    p.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code as documented (141 when the reader closed the output early)."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # ``backmice info DIR | head``: the reader is gone. Stop quietly, as Unix tools do on SIGPIPE;
        # stdout goes to /dev/null so that the interpreter's last flush cannot complain either.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return EXIT_CLOSED_OUTPUT


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    handler: Handler = ns.handler
    try:
        code = handler(ns)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handling above, not at exit
        return code
    except BackmiceError as exc:
        print(f"backmice: error: {exc}", file=sys.stderr)
        return 2 if exc.__class__.__name__ == "ConfigError" else 1
    except KeyboardInterrupt:
        print("backmice: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
