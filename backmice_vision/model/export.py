"""Export a bundle's network to ONNX or TorchScript (input ``image`` ``(B, C, H, W)`` float32, dynamic
batch and H/W, H and W multiples of 16; output ``logits`` ``(B, 5, H, W)``: apply softmax over axis 1).

Preprocessing is not part of the exported graph: it is described in the bundle's ``metadata.json``
(``network_data_format.inputs.image``) and implemented in :mod:`backmice_vision.model.inference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import ConfigError, ModelError
from .bundle import load_bundle


def export_model(bundle_dir: str | Path, fmt: Literal["onnx", "torchscript"], out: str | Path) -> Path:
    """Write the network of ``bundle_dir`` to ``out`` (a file, or a folder that gets ``model.onnx`` /
    ``model.ts``) and return the file. The ONNX graph uses opset 17 (TorchScript-based exporter)."""
    import torch

    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"export format must be onnx or torchscript, not {fmt!r}")
    bundle = load_bundle(bundle_dir, device="cpu")
    out = Path(out)
    if out.is_dir() or not out.suffix:
        out = out / ("model.onnx" if fmt == "onnx" else "model.ts")
    out.parent.mkdir(parents=True, exist_ok=True)
    net = bundle.network.eval()
    example = torch.rand(1, bundle.preprocessing.in_channels, 128, 128)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "torchscript":
            with torch.inference_mode():
                traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
        else:
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={
                    "image": {0: "batch", 2: "height", 3: "width"},
                    "logits": {0: "batch", 2: "height", 3: "width"},
                },
                opset_version=17,
                dynamo=False,
            )
    except (RuntimeError, ValueError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"export to {fmt} failed ({str(exc).splitlines()[0][:160]})", bundle_dir) from exc
    tmp.replace(out)
    return out
