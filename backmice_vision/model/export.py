"""Export a bundle's network to ONNX or TorchScript (input ``image`` ``(B, C, H, W)`` float32, dynamic
batch and H/W, H and W multiples of 16; output ``logits`` ``(B, 5, H, W)``: apply softmax over axis 1).

Preprocessing is not part of the exported graph: it is described in the bundle's ``metadata.json``
(``network_data_format.inputs.image``) and implemented in :mod:`backmice_vision.model.inference`.

:class:`OnnxNetwork` runs a bundle's network with onnxruntime on the CPU (the optional ``onnxruntime``
backend of :class:`~backmice_vision.model.detector.Detector`): the graph is exported on first use into a
private temporary folder, loaded into memory and the folder removed; nothing is downloaded.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import ConfigError, ModelError
from ..fileio import temporary_path
from .bundle import load_bundle

if TYPE_CHECKING:
    import torch

    from .bundle import Bundle


def _export_onnx(net: torch.nn.Module, in_channels: int, target: str) -> None:
    """ONNX opset 17 of ``net`` (TorchScript-based exporter) with dynamic batch, height and width."""
    import torch

    torch.onnx.export(
        net.eval(),
        (torch.rand(1, in_channels, 128, 128),),
        target,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={
            "image": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"},
        },
        opset_version=17,
        dynamo=False,
    )


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
    tmp = temporary_path(out)
    try:
        if fmt == "torchscript":
            example = torch.rand(1, bundle.preprocessing.in_channels, 128, 128)
            with torch.inference_mode():
                traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
        else:
            _export_onnx(net, bundle.preprocessing.in_channels, str(tmp))
    except (RuntimeError, ValueError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"export to {fmt} failed ({str(exc).splitlines()[0][:160]})", bundle_dir) from exc
    tmp.replace(out)
    return out


class OnnxNetwork:
    """A bundle's network run by onnxruntime (CPU): called like the torch network, float32 tensor
    ``(B, C, H, W)`` → logits tensor ``(B, 5, H, W)``. ``threads``: intra-op threads (default: torch's)."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import torch

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(
                "backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)", bundle.path
            ) from exc
        try:
            with tempfile.TemporaryDirectory(prefix="backmice_onnx_") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes; parity with torch is tested
                path = Path(tmp) / "model.onnx"
                _export_onnx(bundle.network, bundle.preprocessing.in_channels, str(path))
                graph = path.read_bytes()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ModelError(f"onnxruntime backend failed ({reason})", bundle.path) from exc

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        image: Any = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(["logits"], {"image": image})
        return torch.from_numpy(logits)
