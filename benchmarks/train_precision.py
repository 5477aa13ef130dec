"""Training and inference speed of float32 against bfloat16 autocast, side by side in one run.

``python benchmarks/train_precision.py [--model models/backmice_us] [--threads 1] [--batch 16]
[--patch 160] [--steps 3] [--rounds 3] [--json FILE]``

The shipped bundle's network (its architecture; the weights do not change the cost) trained on a fixed
random batch the size of a training step (``batch`` patches of ``patch`` x ``patch`` pixels: AdamW,
cross-entropy, forward and backward, as ``optim.precision`` runs it in :mod:`backmice_vision.model.train`),
and its forward pass on one 640 x 800 image (inference); the two precisions alternated ``rounds`` times
(medians: a shared machine drifts), each after one warm-up step. Prints seconds per step and the ratio
float32 / bfloat16 (above 1: bfloat16 is faster), with the CPU's bfloat16 support (AMX, AVX-512 BF16).
bfloat16 pays on CPUs with AMX or AVX-512 BF16 and on recent GPUs; elsewhere it may be slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PRECISIONS = ("float32", "bfloat16")


def cpu_bf16_flags() -> list[str]:
    """The CPU flags that speed up bfloat16 (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in set(flags) if f in ("amx_bf16", "amx_tile", "avx512_bf16"))


def measure(
    model: Path, *, threads: int, batch: int, patch: int, steps: int, rounds: int, device: str = "cpu"
) -> dict[str, Any]:
    """Median seconds per training step and per inference pass for each precision, and their ratios."""
    import torch

    from backmice_vision.model.bundle import load_bundle
    from backmice_vision.model.network import build_network

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(model)
    spec = bundle.metadata["network"]
    net = build_network(spec).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    channels = int(spec["kwargs"]["in_channels"])
    classes = int(spec["kwargs"]["out_channels"])
    x = torch.rand(batch, channels, patch, patch, generator=gen).to(device)
    y = torch.randint(0, classes, (batch, patch, patch), generator=gen).to(device)
    image = torch.rand(1, channels, 640, 800, generator=gen).to(device)

    def train_step(precision: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            logits = net(x)
        loss_fn(logits.float(), y).backward()
        optimizer.step()

    def forward(precision: str) -> None:
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bfloat16"),
        ):
            net(image)

    def timed(fn: Any, precision: str, n: int) -> float:
        fn(precision)  # warm-up: oneDNN picks its kernels for this shape and precision
        t0 = time.perf_counter()
        for _ in range(n):
            fn(precision)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    train_s: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    infer_s: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            net.train()
            train_s[precision].append(timed(train_step, precision, steps))
            net.eval()
            infer_s[precision].append(timed(forward, precision, steps))
    return {
        "model": str(model),
        "network": spec["class"],
        "threads": torch.get_num_threads(),
        "device": device,
        "cpu_bf16_flags": cpu_bf16_flags(),
        "batch": batch,
        "patch": patch,
        "train_step_s": {p: statistics.median(v) for p, v in train_s.items()},
        "inference_s": {p: statistics.median(v) for p, v in infer_s.items()},
        "train_ratio": statistics.median(a / b for a, b in zip(*train_s.values(), strict=True)),
        "inference_ratio": statistics.median(a / b for a, b in zip(*infer_s.values(), strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/backmice_us"), help="bundle folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=16, help="patches per training step")
    ap.add_argument("--patch", type=int, default=160, help="patch side in pixels")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ns = ap.parse_args(argv)
    if min(ns.batch, ns.patch, ns.steps, ns.rounds) < 1 or ns.threads < 0:
        print("train_precision: --batch, --patch, --steps and --rounds must be positive", file=sys.stderr)
        return 2
    from backmice_vision.errors import BackmiceError

    try:
        r = measure(
            ns.model,
            threads=ns.threads,
            batch=ns.batch,
            patch=ns.patch,
            steps=ns.steps,
            rounds=ns.rounds,
            device=ns.device,
        )
    except BackmiceError as exc:
        print(f"train_precision: {exc}", file=sys.stderr)
        return 2
    flags = ", ".join(r["cpu_bf16_flags"]) or "none"
    print(
        f"{r['network']} of {r['model']} on {r['device']}, {r['threads']} thread(s); "
        f"CPU bfloat16 support: {flags}"
    )
    print(f"{'':34s} {'float32':>9s} {'bfloat16':>9s} {'float32 / bfloat16':>19s}")
    step = f"training step, {r['batch']} x {r['patch']}^2 px"
    print(
        f"{step:34s} {r['train_step_s']['float32']:8.3f}s "
        f"{r['train_step_s']['bfloat16']:8.3f}s {r['train_ratio']:19.2f}"
    )
    print(
        f"{'inference, one 640 x 800 image':34s} {r['inference_s']['float32']:8.3f}s "
        f"{r['inference_s']['bfloat16']:8.3f}s {r['inference_ratio']:19.2f}"
    )
    if ns.json:
        ns.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
