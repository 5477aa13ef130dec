"""``backmice serve --config node.yaml [--status]``: run the DICOM node, or print its journal."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TextIO

from .config import load_config
from .journal import Journal
from .scp import short_uid


def print_status(journal: Journal, stream: TextIO | None = None) -> int:
    """One line per series (no patient identifiers) and a count per state. Returns 0."""
    out = stream or sys.stdout
    rows = journal.rows()
    columns = f"{'SERIES':14s} {'MOD':4s} {'FROM':16s} {'INST':>5s} {'STATE':10s} {'TRIES':>5s}"
    header = f"{columns} {'UPDATED':19s} ERROR"
    print(header, file=out)
    for r in rows:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated))
        tries = r.attempts if r.state in ("sending", "sent") or r.attempts else r.process_attempts
        print(
            f"{short_uid(r.series_uid):14s} {r.modality[:4]:4s} {r.calling_ae[:16]:16s} {r.n_instances:5d} "
            f"{r.state:10s} {tries:5d} {updated:19s} {r.last_error[:120]}",
            file=out,
        )
    counts = journal.counts()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no series"
    print(f"{len(rows)} series: {summary}", file=out)
    return 0


def run_serve(ns: argparse.Namespace) -> int:
    config = load_config(ns.config)
    if ns.status:
        path = config.spool_dir / "journal.sqlite"
        if not path.is_file():
            print(f"no journal yet at {path}: the node has not run", file=sys.stderr)
            return 0
        journal = Journal(path, readonly=True)
        try:
            return print_status(journal)
        finally:
            journal.close()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines dump headers
    from .service import Node

    Node(config).serve_forever()
    return 0
