"""Model input and output: :class:`ImageSeries` ⇄ normalised 2-D tiles at a fixed model spacing.

One code path for training and inference: :func:`make_tiles` builds the network input,
:func:`labels_to_tile` puts a label map into the same space, :func:`tile_to_source` maps probabilities
back. Conventions: :mod:`backmice_vision.types` (voxel ``(k, i, j)`` on the stored grid, spacing in mm).

Ultrasound
    Each 2-D tissue region ``box = (r0, c0, r1, c1)`` of each frame, ``pixels[k, r0:r1, c0:c1]``, is
    resampled (bilinear, antialiased) to ``spacing_mm`` per pixel in both directions, then scaled per
    tile so that its ``percentiles`` map to 0 and 1 (clipped). A region without calibration (or a series
    without regions, then the whole frame is one box) is assumed to have ``nominal_us_spacing_mm``; this is
    recorded in ``series.problems``. Pixels outside every region get background probability 1.
MR
    Every slice is resampled in-plane to ``spacing_mm``; the volume is scaled by its ``percentiles``; the
    input of slice ``k`` stacks slices ``k - context … k + context`` (edges repeated) as channels (2.5-D).

Tiles are padded at the bottom and right to a multiple of ``multiple`` with zeros for the network and the
output cropped back. Probabilities return to the source box by bilinear interpolation (a convex combination
of softmax vectors, so they still sum to 1).

Zooms
    :func:`predict_probabilities` runs the network once per entry of ``zooms``, the series resampled to
    ``spacing_mm / zoom`` (zoom 1.25: the image shown 1.25 times larger), and averages the probabilities
    on the source grid. Training and :func:`make_tiles` use ``spacing_mm`` alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from ..errors import ConfigError, ModelError
from ..labels import BACKGROUND, MODEL_CLASSES
from ..profiles import PROFILES, profile_for
from ..types import ImageSeries, Precision

if TYPE_CHECKING:
    import torch

    from .export import OnnxNetwork

N_CLASSES = len(MODEL_CLASSES)


@dataclass(frozen=True)
class Preprocessing:
    """How a series becomes model input (stored in the bundle's ``network_data_format``).

    ``spacing_mm``: model pixel size in mm (both directions). ``nominal_us_spacing_mm``: assumed pixel size
    of uncalibrated ultrasound. ``context``: MR slices on each side (channels = 2 * context + 1).
    ``percentiles``: intensity percentiles mapped to 0 and 1. ``zooms``: magnifications whose
    probabilities :func:`predict_probabilities` averages (inference only; see the module docstring).
    """

    modality: str
    spacing_mm: float
    nominal_us_spacing_mm: float = 0.1
    context: int = 1
    percentiles: tuple[float, float] = (1.0, 99.0)
    multiple: int = 16
    zooms: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.zooms or not all(0.25 <= z <= 4.0 for z in self.zooms):
            given = list(self.zooms)
            raise ModelError(f"preprocessing zooms must be one or more numbers in 0.25..4, not {given}")

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1 if profile_for(self.modality).is_volume else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["zooms"] = list(self.zooms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        try:
            modality = str(d["modality"]).upper()
            if modality not in PROFILES:
                raise ValueError(f"modality {modality!r}")
            return cls(
                modality=modality,
                spacing_mm=float(d["spacing_mm"]),
                nominal_us_spacing_mm=float(d.get("nominal_us_spacing_mm", 0.1)),
                context=int(d.get("context", 1)),
                percentiles=(
                    float(d.get("percentiles", (1, 99))[0]),
                    float(d.get("percentiles", (1, 99))[1]),
                ),
                multiple=int(d.get("multiple", 16)),
                zooms=tuple(float(z) for z in d.get("zooms", (1.0,))),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"invalid preprocessing description ({exc})") from exc


DEFAULT_US = PROFILES["US"].default_preprocessing()  # spacing 0.2 mm, percentiles 1 and 99
DEFAULT_MR = PROFILES["MR"].default_preprocessing()  # spacing 0.9 mm, percentiles 0.5 and 99.5


@dataclass
class Tile:
    """One 2-D network input: ``image`` float32 ``(C, h, w)`` at model spacing (unpadded), taken from
    frame/slice ``frame``, source box ``box = (r0, c0, r1, c1)`` (exclusive ends) of the stored grid."""

    frame: int
    box: tuple[int, int, int, int]
    image: np.ndarray
    region_index: int | None = None
    assumed_spacing: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available")
    return dev


def _model_shape(shape: tuple[int, int], spacing: tuple[float, float], target: float) -> tuple[int, int]:
    return (max(1, round(shape[0] * spacing[0] / target)), max(1, round(shape[1] * spacing[1] / target)))


def _resize(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of float32 ``(n, c, h, w)`` to ``size``."""
    import torch
    import torch.nn.functional as F

    if tuple(stack.shape[-2:]) == tuple(size):  # a copy: callers scale it in place
        return np.array(stack, dtype=np.float32, order="C", copy=True)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    shrink = size[0] < stack.shape[-2] or size[1] < stack.shape[-1]
    with torch.inference_mode():
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.numpy()


def _scale(arr: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """In place: map the percentiles of ``arr`` (sampled on at most ~1e6 values) to 0 and 1, clipped."""
    flat = arr.reshape(-1)
    step = max(1, flat.size // 1_000_000)
    lo, hi = np.percentile(flat[::step], percentiles)
    arr -= np.float32(lo)
    arr *= np.float32(1.0 / max(float(hi - lo), 1e-6))
    np.clip(arr, 0.0, 1.0, out=arr)
    return arr


BoxInfo = tuple[int | None, tuple[int, int, int, int], tuple[float, float], bool]


def us_boxes(series: ImageSeries, prep: Preprocessing) -> list[BoxInfo]:
    """``(region index, box, (row, col) spacing mm, assumed)`` of every 2-D tissue region to analyse."""
    if series.regions:
        out: list[BoxInfo] = []
        for r in series.regions:
            assumed = r.spacing_mm is None
            sp = (prep.nominal_us_spacing_mm,) * 2 if r.spacing_mm is None else r.spacing_mm
            out.append((r.index, r.box, (float(sp[0]), float(sp[1])), assumed))
        return out
    _, rows, cols = series.shape
    return [(None, (0, 0, rows, cols), (prep.nominal_us_spacing_mm,) * 2, True)]


def make_tiles(series: ImageSeries, prep: Preprocessing, frames: list[int] | None = None) -> list[Tile]:
    """Network inputs of ``series`` (all frames/slices, or those in ``frames``), see the module docstring."""
    if series.modality != prep.modality:
        raise ModelError(f"model expects {prep.modality} input, the series is {series.modality}")
    n = series.shape[0]
    ks = list(range(n)) if frames is None else [k for k in frames if 0 <= k < n]
    if profile_for(series.modality).is_volume:
        return _mr_tiles(series, prep, ks)
    return _us_tiles(series, prep, ks)


def _us_tiles(series: ImageSeries, prep: Preprocessing, ks: list[int]) -> list[Tile]:
    tiles: list[Tile] = []
    for index, box, spacing, assumed in us_boxes(series, prep):
        if assumed:
            where = "frame" if index is None else f"region {index}"
            note = (
                f"model input: ultrasound {where} has no calibration; "
                f"assumed {prep.nominal_us_spacing_mm:g} mm per pixel"
            )
            if note not in series.problems:
                series.problems.append(note)
        r0, c0, r1, c1 = box
        size = _model_shape((r1 - r0, c1 - c0), spacing, prep.spacing_mm)
        for k in ks:  # one frame at a time keeps memory flat for long cines
            img = _resize(series.pixels[k, r0:r1, c0:c1][None, None], size)[0]
            tiles.append(Tile(k, box, _scale(img, prep.percentiles), index, assumed))
    return tiles


def _mr_tiles(series: ImageSeries, prep: Preprocessing, ks: list[int]) -> list[Tile]:
    if series.spacing_mm is None:
        raise ModelError("MR series has no pixel spacing; cannot resample to the model spacing")
    n, rows, cols = series.shape
    size = _model_shape((rows, cols), (series.spacing_mm[1], series.spacing_mm[2]), prep.spacing_mm)
    need = sorted({min(max(k + d, 0), n - 1) for k in ks for d in range(-prep.context, prep.context + 1)})
    vol = _resize(series.pixels[need][:, None], size)[:, 0]
    _scale(vol, prep.percentiles)
    pos = {k: p for p, k in enumerate(need)}
    tiles = []
    for k in ks:
        chans = [pos[min(max(k + d, 0), n - 1)] for d in range(-prep.context, prep.context + 1)]
        tiles.append(Tile(k, (0, 0, rows, cols), np.ascontiguousarray(vol[chans]), None, False))
    return tiles


def labels_to_tile(labels: np.ndarray, tile: Tile) -> np.ndarray:
    """Class labels uint8 ``(rows, cols)`` of the tile's frame → uint8 ``(h, w)`` in the tile's space.

    One-hot, resampled like the image (bilinear, antialiased), then argmax: each model pixel takes the
    class covering most of its footprint, consistent with what the image pixel averages.
    """
    r0, c0, r1, c1 = tile.box
    crop = labels[r0:r1, c0:c1]
    onehot = (crop[None] == np.arange(N_CLASSES, dtype=crop.dtype)[:, None, None]).astype(np.float32)
    res = _resize(onehot[None], tuple(tile.image.shape[-2:]))[0]
    return np.argmax(res, axis=0).astype(np.uint8)


def tile_to_source(probs: np.ndarray, tile: Tile) -> np.ndarray:
    """Probabilities float32 ``(C, h, w)`` of a tile → ``(C, r1 - r0, c1 - c0)`` on its source box."""
    r0, c0, r1, c1 = tile.box
    return _resize(probs[None], (r1 - r0, c1 - c0))[0]


def pad_batch(images: list[np.ndarray], multiple: int) -> np.ndarray:
    """Stack ``(C, h, w)`` arrays into ``(B, C, H, W)`` zero-padded at bottom/right to a common multiple."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    out = np.zeros((len(images), images[0].shape[0], h, w), dtype=np.float32)
    for b, img in enumerate(images):
        out[b, :, : img.shape[1], : img.shape[2]] = img
    return out


MAX_BATCH_PIXELS = 2**19  # per network call: two 512 x 512 tiles (8 such tiles held ~0.6 GB of activations)


def _batches(tiles: list[Tile], size: int, max_pixels: int = MAX_BATCH_PIXELS) -> Iterator[list[Tile]]:
    """At most ``size`` tiles and ``max_pixels`` padded pixels per batch (at least one tile), tiles of one
    shape together (less padding)."""
    order = sorted(range(len(tiles)), key=lambda t: tiles[t].image.shape)
    batch: list[Tile] = []
    rows = cols = 0
    for t in order:
        h, w = tiles[t].image.shape[-2:]
        grown = (len(batch) + 1) * max(rows, h) * max(cols, w)
        if batch and (len(batch) == size or grown > max_pixels):
            yield batch
            batch, rows, cols = [], 0, 0
        batch.append(tiles[t])
        rows, cols = max(rows, h), max(cols, w)
    if batch:
        yield batch


PRECISIONS: tuple[str, ...] = get_args(Precision)
"""Inference precisions: ``bfloat16`` runs the network's forward pass under ``torch.autocast`` (about
1.6 times as fast on CPUs with AMX or AVX-512 BF16 and on recent GPUs; probabilities differ from
float32's by about 1e-2, ``benchmarks/train_precision.py`` and docs/evaluation measure both)."""


def check_precision(precision: str, backend: str = "torch") -> None:
    """:class:`ConfigError` for an unknown precision, or a low one on a backend other than torch."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}, not {precision!r}")
    if precision != "float32" and backend != "torch":
        raise ConfigError(f"the {backend} backend runs in float32 only")


def run_network(
    net: torch.nn.Module | OnnxNetwork,
    tiles: list[Tile],
    device: torch.device,
    *,
    multiple: int = 16,
    batch_size: int = 8,
    flip: bool = False,
    precision: Precision = "float32",
) -> list[np.ndarray]:
    """Softmax probabilities float32 ``(C, h, w)`` per tile (same order). ``flip`` averages with the
    left-right mirrored input (test-time augmentation). ``precision`` ``"bfloat16"`` runs a torch network
    under autocast (convolutions in bfloat16, the softmax in float32; see :data:`PRECISIONS`)."""
    import torch

    is_torch = isinstance(net, torch.nn.Module)
    check_precision(precision, "torch" if is_torch else "onnxruntime")
    low = precision == "bfloat16"

    out: dict[int, np.ndarray] = {}
    index = {id(t): n for n, t in enumerate(tiles)}
    if isinstance(net, torch.nn.Module):
        net.eval()
    with torch.inference_mode():
        for batch in _batches(tiles, batch_size):
            x = torch.from_numpy(pad_batch([t.image for t in batch], multiple)).to(device)
            # contiguous first: a softmax over the channels of NHWC logits (channels_last) is ~10x slower
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
                logits = net(x)
                mirrored = net(torch.flip(x, dims=[3])) if flip else None
            p = torch.softmax(logits.contiguous().float(), dim=1)
            if mirrored is not None:
                p = 0.5 * (p + torch.softmax(mirrored.contiguous().float(), dim=1).flip(dims=[3]))
            pn = p.float().cpu().numpy()
            for b, t in enumerate(batch):
                out[index[id(t)]] = np.ascontiguousarray(pn[b, :, : t.image.shape[1], : t.image.shape[2]])
    return [out[n] for n in range(len(tiles))]


def predict_probabilities(
    model: Any,
    series: ImageSeries,
    device: str | torch.device = "auto",
    *,
    prep: Preprocessing | None = None,
    batch_size: int = 8,
    flip: bool = False,
    precision: Precision = "float32",
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Class probabilities float32 ``(C, n, rows, cols)`` (classes ``MODEL_CLASSES``) on the source grid.

    ``model`` is a :class:`~backmice_vision.model.bundle.Bundle` (its own preprocessing) or a network
    (torch, or an :class:`~backmice_vision.model.export.OnnxNetwork` on the CPU) with ``prep`` given.
    Ultrasound pixels outside every analysed region are background with probability 1. With several
    ``prep.zooms`` the result is the mean over them. ``precision``: see :func:`run_network`.
    ``timings`` (if given) receives ``preprocess`` and ``model`` seconds.
    """
    import time

    import torch

    from .export import OnnxNetwork

    net = getattr(model, "network", model)
    prep = prep if prep is not None else getattr(model, "preprocessing", None)
    if prep is None or not isinstance(net, torch.nn.Module | OnnxNetwork):
        raise ModelError("predict_probabilities needs a Bundle, or a network and its Preprocessing")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if isinstance(net, OnnxNetwork) and dev.type != "cpu":
        raise ModelError(f"the onnxruntime backend runs on the CPU, not on {dev.type}")
    if isinstance(net, torch.nn.Module) and next(net.parameters()).device != dev:
        net.to(dev)
    runs: list[tuple[list[Tile], list[np.ndarray]]] = []  # per zoom: tiles, probabilities at model pixels
    for zoom in prep.zooms:
        t0 = time.perf_counter()
        tiles = make_tiles(series, replace(prep, spacing_mm=prep.spacing_mm / zoom, zooms=(1.0,)))
        t1 = time.perf_counter()
        runs.append(
            (
                tiles,
                run_network(
                    net,
                    tiles,
                    dev,
                    multiple=prep.multiple,
                    batch_size=batch_size,
                    flip=flip,
                    precision=precision,
                ),
            )
        )
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0)
            timings["model"] = timings.get("model", 0.0) + (time.perf_counter() - t1)
    t2 = time.perf_counter()
    n, rows, cols = series.shape
    out = np.zeros((N_CLASSES, n, rows, cols), dtype=np.float32)
    out[BACKGROUND] = 1.0
    for i, tile in enumerate(runs[0][0]):  # every zoom has the same tiles (frame, box) in the same order
        src = tile_to_source(runs[0][1][i], tile)
        for tiles, probs_t in runs[1:]:
            src += tile_to_source(probs_t[i], tiles[i])
        if len(runs) > 1:
            src *= np.float32(1.0 / len(runs))
        r0, c0, r1, c1 = tile.box
        out[:, tile.frame, r0:r1, c0:c1] = src
    if timings is not None:
        timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - t2)
    return out


def class_labels(probs: np.ndarray) -> np.ndarray:
    """``argmax`` over the class axis of ``(C, ...)`` probabilities as uint8 (first class wins ties).

    One float32 running maximum instead of NumPy's int64 argmax temporary: a quarter of the memory.
    """
    best = probs[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, probs.shape[0]):
        wins = probs[c] > best
        labels[wins] = c
        np.maximum(best, probs[c], out=best)
    return labels


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a Slurm or container cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
