"""Speed and memory benchmark of the detection pipeline (same as ``backmice bench``).

    .venv/bin/python scripts/benchmark.py [--quick] [--data build/bench] [--json build/bench.json]

See :mod:`backmice_vision.benchmark` for what is measured and the targets.
"""

from __future__ import annotations

import sys

from backmice_vision.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
