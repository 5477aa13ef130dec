"""A candidate bundle whose weights are the mean of several training checkpoints (a uniform "model soup").

``python scripts/average_checkpoints.py BUNDLE OUT CHECKPOINT [CHECKPOINT ...]``: every ``CHECKPOINT`` is a
``last.pt`` or ``best.pt`` of ``backmice train`` (its weight average when the run kept one) of the network
of ``BUNDLE``; ``OUT`` gets their element-wise mean (batch-norm statistics included; integer buffers such
as ``num_batches_tracked`` from the first) with ``BUNDLE``'s metadata, card and calibration, written
atomically (``scripts/bundle_from_checkpoint.py`` is the case of one checkpoint). Averaging only makes sense
for runs fine-tuned from the same weights (Wortsman et al., ICML 2022: such runs lie in one basin, and
their mean is often more robust to a shifted distribution than any of them).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

NOT_A_CHECKPOINT = (
    AttributeError,
    EOFError,
    KeyError,
    RuntimeError,
    TypeError,
    ValueError,
    pickle.UnpicklingError,
)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    import torch

    from backmice_vision.errors import BackmiceError
    from backmice_vision.model.bundle import CARD, METADATA, load_bundle, save_bundle

    bundle, out, *checkpoints = (Path(a) for a in argv)
    try:
        source = load_bundle(bundle)
    except BackmiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    states = []
    for checkpoint in checkpoints:
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
            state = saved.get("ema") or saved["model"]
            source.network.load_state_dict(state)  # each must fit the bundle's network
        except OSError as exc:
            print(f"error: {checkpoint}: {exc.strerror or 'cannot be read'}", file=sys.stderr)
            return 2
        except NOT_A_CHECKPOINT:
            print(f"error: {checkpoint}: not a checkpoint of this bundle's network", file=sys.stderr)
            return 2
        states.append(state)
    mean = {
        key: (
            torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point()
            else value.clone()
        )
        for key, value in states[0].items()
    }
    meta = json.loads((bundle / METADATA).read_text())
    meta.pop("sha256", None)
    save_bundle(out, mean, meta, (bundle / CARD).read_text())
    print(
        f"{out}: weights of {checkpoints[0]}"
        if len(states) == 1
        else f"{out}: mean of {len(states)} checkpoints"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
