"""A candidate bundle from any training checkpoint, e.g. a run's last epoch instead of its best.

``python scripts/bundle_from_checkpoint.py CHECKPOINT BUNDLE OUT``: ``CHECKPOINT`` is a ``last.pt`` or
``best.pt`` of ``backmice train`` (of a run with ``optim.ema_decay``: its weight average), ``BUNDLE``
the bundle that run wrote (its metadata, card and calibration are copied, the calibration is not
refitted: rankings, hence FROC figures, are still right), ``OUT`` the new bundle folder (written
atomically). A fine-tuning config with ``init_from: OUT`` then continues from those weights, e.g. one
step at a learning rate near zero with ``optim.precise_bn_batches`` to recompute their batch-norm
statistics and refit the calibration (``configs/train_mr_dr_fine_large_precise_bn.yaml``).
"""

from __future__ import annotations

import sys

from average_checkpoints import main as average_checkpoints


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    checkpoint, bundle, out = argv
    return average_checkpoints([bundle, out, checkpoint])  # the mean of one checkpoint is its weights


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
