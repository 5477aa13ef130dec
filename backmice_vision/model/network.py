"""Network factory: one 2-D MONAI segmentation net per modality, described by a JSON-able spec.

A spec is ``{"class": "UNet", "kwargs": {...}}`` (MONAI ``monai.networks.nets`` class name and its keyword
arguments); it is stored in the bundle's ``metadata.json`` so a bundle rebuilds its own network.

Default (measured on this 2-core CPU machine, 1 thread, batch 8 of 192² patches, 5 classes):

==========================================  =======  ==========  ====================
network                                     params   train step  inference 304×256
==========================================  =======  ==========  ====================
UNet (16,32,64,128,256) res 2               1.63 M   0.36 s      29 ms
UNet (16,32,64,128,256) res 1 (default)     0.84 M   0.27 s      20 ms
UNet (16,32,64,128) res 1                   0.21 M   0.24 s      18 ms
UNet (8,16,32,64) res 1                     0.05 M   0.13 s      11 ms
==========================================  =======  ==========  ====================

The default keeps the five resolution levels at half the parameters and three quarters of the step time
of the two-residual-unit net. Its receptive field is 94 px (measured): 19 mm at 0.2 mm pixels, too small
for nodules of 20 mm and more, 38 mm at the 0.4 mm of the domain-randomised configs. The shipped US
0.2.0 and 0.3.0 are six-level UNets (16-256-256 channels, two residual units, 3.74 M parameters): a
training step costs 1.27 times the default's (0.38 s against 0.30 s, measured side by side, batch 16
of 160² patches).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..labels import MODEL_CLASSES

if TYPE_CHECKING:
    import torch

_ALLOWED = ("UNet", "BasicUNet", "FlexibleUNet", "SegResNet", "AttentionUnet")


def default_spec(in_channels: int) -> dict[str, Any]:
    """The default network spec for ``in_channels`` input channels (1 for US, 3 for 2.5-D MR)."""
    return {
        "class": "UNet",
        "kwargs": {
            "spatial_dims": 2,
            "in_channels": in_channels,
            "out_channels": len(MODEL_CLASSES),
            "channels": [16, 32, 64, 128, 256],
            "strides": [2, 2, 2, 2],
            "num_res_units": 1,
            "norm": "batch",
        },
    }


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the MONAI network of ``spec``; raises :class:`ModelError` on an unusable spec."""
    from monai.networks import nets

    name = spec.get("class") if isinstance(spec, dict) else None
    kwargs = copy.deepcopy(spec.get("kwargs", {})) if isinstance(spec, dict) else None
    if name not in _ALLOWED or not isinstance(kwargs, dict):
        raise ModelError(f"network spec must name one of {', '.join(_ALLOWED)} with a kwargs mapping")
    if kwargs.get("out_channels") != len(MODEL_CLASSES):
        raise ModelError(f"network must have out_channels={len(MODEL_CLASSES)} (classes {MODEL_CLASSES})")
    for key in ("channels", "strides", "features"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        net: torch.nn.Module = getattr(nets, name)(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build {name} from its spec ({exc})") from exc
    return net


def downsampling_factor(spec: dict[str, Any]) -> int:
    """How many input pixels one pixel of the network's coarsest level spans: tile sides must be a
    multiple of it. UNet and AttentionUnet: the product of their ``strides``; SegResNet: 2 per level
    after the first; BasicUNet: four poolings (16; FlexibleUNet pads its input itself)."""
    kwargs = spec.get("kwargs", {}) if isinstance(spec, dict) else {}
    if isinstance(kwargs.get("strides"), list | tuple):
        return int(np.prod(kwargs["strides"]))
    if spec.get("class") == "SegResNet":
        return 2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1)
    return 16


def count_parameters(net: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(int(p.numel()) for p in net.parameters() if p.requires_grad)
