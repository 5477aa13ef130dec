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

import json
import pickle
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    import torch

    from backmice_vision.errors import BackmiceError
    from backmice_vision.model.bundle import CARD, METADATA, load_bundle, save_bundle

    checkpoint, bundle, out = (Path(a) for a in argv)
    try:
        source = load_bundle(bundle)
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = saved.get("ema") or saved["model"]  # a weight average is what the run scores and ships
        source.network.load_state_dict(state)  # the checkpoint must fit the bundle's network
    except BackmiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {checkpoint}: {exc.strerror or 'cannot be read'}", file=sys.stderr)
        return 2
    except (AttributeError, EOFError, KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError):
        print(f"error: {checkpoint}: not a checkpoint of this bundle's network", file=sys.stderr)
        return 2
    meta = json.loads((bundle / METADATA).read_text())
    meta.pop("sha256", None)
    save_bundle(out, state, meta, (bundle / CARD).read_text())
    print(f"{out}: weights of {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
