"""``backmice train``: train one modality's segmentation model from a YAML config and write its bundle.

Config keys (``configs/train_us.yaml`` documents each; relative paths are relative to the working folder):
``name``, ``modality`` (US | MR), ``seed``, ``num_threads``, ``work_dir`` (checkpoints, log),
``cache_dir`` (preprocessed samples), ``out`` (bundle folder), ``preprocessing``, ``network`` (optional
MONAI spec), ``data`` (``train`` / ``val`` source lists, see :mod:`backmice_vision.model.data`;
a phantom source with ``generate: {cases, seed[, config][, anatomy]}`` is generated first when its
folder has no cases; ``anatomy`` overrides that phantom config's anatomy keys; ``val`` may add one
``type: synthetic`` source: its ``samples`` fixed randomised images join the validation tiles that
choose the checkpoint, its ``calibration_samples`` randomised ultrasound images the calibration),
``augment``, ``optim``
(``lr``, ``weight_decay``, ``batch_size`` patches per step, ``epochs``, ``steps_per_epoch``, and
``ema_decay``: when set, an exponential moving average of the weights and batch-norm statistics,
updated after every step from the initial weights, is what validation scores and the bundle ships;
``tversky_beta`` and ``ce_class_weights``: see :func:`segmentation_loss`; ``precise_bn_batches``: before
every validation the batch-norm statistics of the scored weights are recomputed on that many fixed
training batches, :func:`recompute_batchnorm`; ``precision``: ``float32``, or ``bfloat16`` to run the
training forward pass under autocast (convolutions in bfloat16, weights, optimizer, loss and validation in
float32): about twice the steps per second on CPUs with AMX or AVX-512 BF16 and on recent GPUs),
``max_minutes`` (wall-time limit), ``num_workers``, ``calibrate``, ``calibration_max_series`` (how many
annotated validation series the calibration uses, 40 unless set), ``weights_dtype`` (``float32``, or
``float16`` parameters for half the file size: the validation Dice is measured before, the calibration
after rounding), ``init_from`` (optional bundle folder whose weights start the training: fine-tuning,
e.g. the shipped model on your own annotated DICOM), ``version`` and ``changelog`` (the bundle's
release: ``changelog`` maps versions to what changed, ``version`` included), ``postprocessing``
(optional inference thresholds for this network, e.g. ``nodule_grow_threshold``: stored in the bundle,
applied over ``configs/inference.yaml`` and used by the calibration), ``postprocessing_search`` (optional:
candidate overrides of ``postprocessing`` tried on the validation data before the calibration, and the
operating point chosen there; :func:`fit_detection_calibration`).

Loop: DiceCE loss (Dice without background, over the batch; :func:`segmentation_loss`) on class-balanced
patches; AdamW with cosine decay per epoch; validation after every epoch on the full validation tiles
(Dice of nodule and defect over all pixels, their mean selects the best checkpoint). The epoch's images
come from :class:`~backmice_vision.model.synthetic.MixedTrainingSet` (annotated tiles, and domain-randomised
phantoms when ``data.train`` holds a ``type: synthetic`` source). Every epoch re-seeds Python, NumPy,
torch, the MONAI transforms and the image draw from ``seed`` and the epoch, so a run resumed from
``last.pt`` (model, optimizer, scheduler, epoch, best, history) continues exactly as the uninterrupted one.
At the end the best weights become a bundle (atomic write), with calibration fitted on the validation
series (and randomised images) when ``calibrate``. :func:`recalibrate` (``backmice calibrate``) refits
the calibration of an existing bundle on a config's ``data.val`` sources, e.g. your own annotated DICOM.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackmiceError, ConfigError, ModelError
from ..fileio import write_atomic
from ..labels import DEFECT, MODEL_CLASSES, NODULE
from ..profiles import MODALITIES, PROFILES
from ..types import ImageSeries
from .inference import Preprocessing, Tile, run_network

Log = Callable[[str], None]

DEFAULT_OPTIM: dict[str, Any] = {
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "batch_size": 8,
    "epochs": 40,
    "steps_per_epoch": 100,
}


def load_config(path: str | Path, *, need_train: bool = True) -> dict[str, Any]:
    """Read and check a training YAML config; returns it with defaults filled in. ``need_train=False``
    accepts a config without ``data.train`` (for :func:`recalibrate`).

    A config may start from another: ``base: FILE`` (relative to the config's own folder) is read first
    and this file's keys are merged over it, mappings key by key, everything else (lists included)
    replaced; the base may itself have a base. So a training stage states only what it changes."""
    return check_config(_read_with_base(Path(path), ()), str(path), need_train=need_train)


def _read_with_base(p: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not p.is_file():
        raise ConfigError("training config not found", p)
    if p.resolve() in chain:
        raise ConfigError("config bases form a cycle", p)
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({type(exc).__name__})", p) from exc
    if not isinstance(cfg, dict):
        raise ConfigError("training config must be a mapping", p)
    if "base" not in cfg:
        return cfg
    base = cfg.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError("base must be the path of another training config", p)
    return _merged(_read_with_base(p.parent / base, (*chain, p.resolve())), cfg)


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base``: mappings recursively, any other value replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def check_config(cfg: dict[str, Any], where: str = "config", *, need_train: bool = True) -> dict[str, Any]:
    """Validate a training config mapping and fill defaults (raises :class:`ConfigError`)."""
    out = dict(cfg)
    modality = str(out.get("modality", "")).upper()
    if modality not in PROFILES:
        raise ConfigError(f"{where}: modality must be one of {', '.join(MODALITIES)}")
    out["modality"] = modality
    out.setdefault("name", f"backmice_{modality.lower()}")
    out.setdefault("seed", 0)
    out.setdefault("num_threads", 0)
    out.setdefault("work_dir", f"build/train/{out['name']}")
    out.setdefault("cache_dir", f"build/cache/{modality.lower()}")
    out.setdefault("out", f"models/{out['name']}")
    out.setdefault("max_minutes", None)
    out.setdefault("num_workers", 0)
    out.setdefault("calibrate", True)
    max_series = out.setdefault("calibration_max_series", 40)
    if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 0:
        raise ConfigError(f"{where}: calibration_max_series must be a non-negative integer")
    out.setdefault("weights_dtype", "float32")
    out["version"] = str(out.get("version", "0.1.0"))
    changelog = out.setdefault("changelog", None)
    if changelog is not None and (
        not isinstance(changelog, dict) or out["version"] not in {str(k) for k in changelog}
    ):
        raise ConfigError(
            f"{where}: changelog must map versions to text and include version {out['version']}"
        )
    if out["weights_dtype"] not in ("float32", "float16"):
        raise ConfigError(f"{where}: weights_dtype must be float32 or float16")
    from ..findings import Thresholds

    out["postprocessing"] = Thresholds.check(out.get("postprocessing") or {}, f"{where}: postprocessing")
    out["postprocessing_search"] = _check_search(out.get("postprocessing_search"), where)
    out.setdefault("augment", {})
    base = PROFILES[modality].default_preprocessing()
    try:
        out["preprocessing"] = Preprocessing.from_dict(
            {**base.to_dict(), **(out.get("preprocessing") or {}), "modality": modality}
        ).to_dict()
    except ModelError as exc:
        raise ConfigError(f"{where}: {exc.reason}") from None
    from .network import default_spec, downsampling_factor

    net_kwargs = out["network"].get("kwargs") if isinstance(out.get("network"), dict) else None
    channels = Preprocessing.from_dict(out["preprocessing"]).in_channels
    if isinstance(net_kwargs, dict) and net_kwargs.get("in_channels", channels) != channels:
        raise ConfigError(
            f"{where}: network.kwargs.in_channels ({net_kwargs['in_channels']}) must be {channels}, the "
            f"channels that preprocessing gives {modality} (preprocessing.context "
            f"{out['preprocessing'].get('context', 0)}: the image and that many neighbours on each side)"
        )
    factor = downsampling_factor(out.get("network") or default_spec(1))
    if out["preprocessing"]["multiple"] % factor:
        raise ConfigError(
            f"{where}: preprocessing.multiple ({out['preprocessing']['multiple']}) must be a multiple of "
            f"the network's downsampling factor ({factor})"
        )
    optim = {**DEFAULT_OPTIM, **(out.get("optim") or {})}
    optim.setdefault("precise_bn_batches", None)  # optional
    for key in ("batch_size", "epochs", "steps_per_epoch", "precise_bn_batches"):
        value = optim[key]
        if (value is not None or key != "precise_bn_batches") and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"{where}: optim.{key} must be a positive integer")
    for key, example in (("ema_decay", 0.998), ("tversky_beta", 0.7)):
        value = optim.setdefault(key, None)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1
        ):
            raise ConfigError(f"{where}: optim.{key} must be a number between 0 and 1 (e.g. {example})")
    if optim.setdefault("precision", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"{where}: optim.precision must be float32 or bfloat16")
    weights = optim.setdefault("ce_class_weights", None)
    if weights is not None and (
        not isinstance(weights, list)
        or len(weights) != len(MODEL_CLASSES)
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights)
    ):
        raise ConfigError(
            f"{where}: optim.ce_class_weights must list {len(MODEL_CLASSES)} positive numbers "
            f"({', '.join(MODEL_CLASSES)})"
        )
    out["optim"] = optim
    data = out.get("data")
    if not isinstance(data, dict) or not data.get("val") or (need_train and not data.get("train")):
        raise ConfigError(
            f"{where}: data needs non-empty 'train' and 'val' source lists"
            if need_train
            else f"{where}: data needs a non-empty 'val' source list"
        )
    data.setdefault("max_frames_per_series", 8)
    data.setdefault("max_val_samples", 120)
    return out


def _check_search(search: Any, where: str) -> dict[str, Any] | None:
    """``postprocessing_search``: ``{candidates: [overrides, ...], fp_per_image: rate[,
    nodule_free_fp_per_image: rate]}`` or None (see :func:`fit_detection_calibration`)."""
    if search is None:
        return None
    from ..findings import Thresholds

    what = f"{where}: postprocessing_search"
    given = search.get("candidates") if isinstance(search, dict) else None
    if not isinstance(given, list) or not given:
        raise ConfigError(f"{what} needs a non-empty 'candidates' list of threshold overrides")
    rate = search.get("fp_per_image", 0.25)
    free = search.get("nodule_free_fp_per_image")
    for key, value in (("fp_per_image", rate), ("nodule_free_fp_per_image", free)):
        wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
        if (key == "fp_per_image" or value is not None) and wrong:
            raise ConfigError(f"{what}.{key} must be a positive number of false positives per image")
    candidates = [Thresholds.check(c or {}, f"{what}.candidates[{i}]") for i, c in enumerate(given)]
    return {
        "candidates": candidates,
        "fp_per_image": float(rate),
        "nodule_free_fp_per_image": None if free is None else float(free),
    }


def _is_synthetic(source: Any) -> bool:
    return isinstance(source, dict) and source.get("type") == "synthetic"


def _maybe_generate(sources: list[dict[str, Any]], modality: str, log: Log) -> None:
    """Generate phantom sources that carry ``generate:`` and have no cases yet."""
    for src in sources:
        gen = src.get("generate") if src.get("type") == "phantom" else None
        if not gen:
            continue
        root = Path(src["path"])
        if root.is_dir() and any(root.glob("*/ground_truth.json")):
            continue
        from ..phantoms.cli import CONFIG_DIR, load_yaml_config
        from ..phantoms.generate import generate_cases

        cfg_path = (
            Path(gen["config"]) if gen.get("config") else CONFIG_DIR / f"phantom_{modality.lower()}.yaml"
        )
        phantom_cfg = load_yaml_config(cfg_path) if cfg_path.is_file() else {}
        if gen.get("anatomy"):  # e.g. a validation set that must show nodules
            phantom_cfg = {**phantom_cfg, "anatomy": {**phantom_cfg.get("anatomy", {}), **gen["anatomy"]}}
        if root.is_dir() and any(root.iterdir()):
            raise ConfigError("holds no phantom cases (*/ground_truth.json): remove it or use another", root)
        log(f"generating {gen['cases']} {modality} phantom cases into {root} (seed {gen.get('seed', 0)})")
        partial = root.with_name(root.name + ".partial")  # an interrupted run leaves no half set behind
        shutil.rmtree(partial, ignore_errors=True)
        generate_cases(
            "us" if modality == "US" else "mr",
            int(gen["cases"]),
            int(gen.get("seed", 0)),
            partial,
            config=phantom_cfg,
            progress=False,
            workers=int(gen.get("workers", 2)),
        )
        if root.is_dir():
            root.rmdir()
        partial.rename(root)


def initial_weights(
    bundle_dir: str | Path, modality: str, spec: dict[str, Any], prep: Preprocessing, log: Log | None = None
) -> dict[str, Any]:
    """The weights of a bundle to fine-tune from (e.g. the shipped model on a user's own data).

    The bundle must be verified (sha256) and match the config's modality, network and preprocessing:
    anything else would silently train a different model, so it raises :class:`ConfigError`. Two
    preprocessing fields may differ, and are logged: the inference ``zooms``, and ``spacing_mm`` (a
    convolutional network moved to another pixel size, as its zoom augmentation already does; the
    fine-tuning adapts it).
    """
    from .bundle import load_bundle

    try:
        bundle = load_bundle(bundle_dir, modality=modality)
    except BackmiceError as exc:
        raise ConfigError(f"init_from: {exc.reason}", bundle_dir) from None
    saved = bundle.metadata.get("network") or {}
    if (saved.get("class"), saved.get("kwargs")) != (spec.get("class"), spec.get("kwargs")):
        raise ConfigError("init_from: the bundle's network differs from the config's", bundle_dir)
    if replace(bundle.preprocessing, zooms=prep.zooms, spacing_mm=prep.spacing_mm) != prep:
        raise ConfigError("init_from: the bundle's preprocessing differs from the config's", bundle_dir)
    if log is not None and bundle.preprocessing.spacing_mm != prep.spacing_mm:
        theirs_mm = bundle.preprocessing.spacing_mm
        log(f"init_from: model spacing {prep.spacing_mm} mm (the bundle's: {theirs_mm} mm)")
    if log is not None and bundle.preprocessing.zooms != prep.zooms:
        theirs = list(bundle.preprocessing.zooms)
        log(f"init_from: inference zooms {list(prep.zooms)} (the bundle's: {theirs})")
    return {k: v.detach().cpu().clone() for k, v in bundle.network.state_dict().items()}


def _dice_counts(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per class ``(intersection, predicted, true)`` pixel counts, int64 ``(C, 3)``."""
    c = len(MODEL_CLASSES)
    out = np.zeros((c, 3), dtype=np.int64)
    for k in range(c):
        p, t = pred == k, label == k
        out[k] = (int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t)))
    return out


def validate(
    net: Any, samples: list[dict[str, np.ndarray]], device: Any, multiple: int = 16, batch_size: int = 8
) -> dict[str, float]:
    """Dice per class over all validation pixels (argmax prediction) and ``mean_dice``, the selection score.

    ``mean_dice`` averages nodule and defect Dice over the classes present in the truth; a validation set
    without nodule pixels cannot rank checkpoints and raises :class:`ConfigError`. (A class absent from both
    prediction and truth scores 1 in its own ``dice_<class>`` entry.)
    """
    tiles = [Tile(0, (0, 0, *s["image"].shape[-2:]), s["image"]) for s in samples]
    counts = np.zeros((len(MODEL_CLASSES), 3), dtype=np.int64)
    for s, p in zip(
        samples, run_network(net, tiles, device, multiple=multiple, batch_size=batch_size), strict=True
    ):
        counts += _dice_counts(np.argmax(p, axis=0), s["label"][0])
    dice = {
        f"dice_{c}": (
            2.0 * counts[k, 0] / (counts[k, 1] + counts[k, 2]) if counts[k, 1] + counts[k, 2] else 1.0
        )
        for k, c in enumerate(MODEL_CLASSES)
    }
    if counts[NODULE, 2] == 0:
        raise ConfigError(
            "the validation set has no nodule pixels: generate it with nodules "
            "(e.g. `anatomy: {no_nodule_prob: 0.2}` under the val source's `generate:`)"
        )
    scored = [k for k in (NODULE, DEFECT) if counts[k, 2] > 0]
    dice["mean_dice"] = sum(dice[f"dice_{MODEL_CLASSES[k]}"] for k in scored) / len(scored)
    return {k: float(v) for k, v in dice.items()}


def _save_checkpoint(obj: Any, path: Path) -> None:
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp), "checkpoint")


def _ema_update(ema: dict[str, Any], state: Mapping[str, Any], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * state`` for floating entries; counters are copied."""
    for key, value in state.items():
        if ema[key].is_floating_point():
            ema[key].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
        else:
            ema[key].copy_(value)


def recompute_batchnorm(net: Any, batches: list[Any], device: Any) -> None:
    """Replace the running statistics of every batch-norm layer of ``net`` by their plain average over
    ``batches`` (input tensors), computed in training mode without gradients ("precise BN").

    The running averages of training (momentum 0.1) follow the last few dozen batches, so on a mix of
    randomised and simulated images they swing from epoch to epoch and with them every score in
    evaluation mode; a fixed set of batches makes the statistics, and so validation, a function of
    the weights alone.
    """
    import torch

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = net.training
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)


def _seed_epoch(seed: int, epoch: int, transforms: Any) -> None:
    from monai.utils import set_determinism

    s = int(seed) * 1000 + int(epoch)
    set_determinism(seed=s)
    transforms.set_random_state(seed=s)


def train(
    config: dict[str, Any] | str | Path, *, resume: bool = False, device: str = "auto", log: Log = print
) -> Path:
    """Train per ``config`` (a mapping or a YAML path) and write the bundle; returns the bundle folder.

    ``num_threads`` applies to this call only: torch's thread count is restored afterwards, so a caller's
    later inference runs (and sums) as it did before."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(config, resume=resume, device=device, log=log)
    finally:
        torch.set_num_threads(threads)


def segmentation_loss(optim: dict[str, Any], device: Any = "cpu") -> Callable[[Any, Any], Any]:
    """The training loss of a checked config's ``optim``: logits (B, C, H, W), labels (B, 1, H, W).

    Soft Dice (or, with ``tversky_beta`` β, the Tversky index with α = 1 − β: β > 0.5 weighs missed
    pixels more than false ones, for recall) averaged over the foreground classes, pooled over the batch,
    plus cross-entropy over all classes, weighted per class by ``ce_class_weights`` when set (the
    overlap term is not weighted). Without either option it is MONAI's ``DiceCELoss``.
    """
    import torch
    from monai.losses import DiceLoss, TverskyLoss

    common: dict[str, Any] = dict(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    beta = optim.get("tversky_beta")
    overlap = DiceLoss(**common) if beta is None else TverskyLoss(alpha=1.0 - beta, beta=beta, **common)
    weights = optim.get("ce_class_weights")
    ce = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    )

    def overlap_ce(logits: Any, labels: Any) -> Any:
        return overlap(logits, labels) + ce(logits, labels[:, 0].long())

    return overlap_ce


def _train(config: dict[str, Any] | str | Path, *, resume: bool, device: str, log: Log) -> Path:
    import torch
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from .bundle import make_metadata, save_bundle
    from .data import build_samples, class_frequencies, collect_items
    from .inference import resolve_device
    from .network import build_network, count_parameters, default_spec
    from .synthetic import MixedTrainingSet, SyntheticSource
    from .transforms import train_transforms

    cfg = load_config(config) if isinstance(config, (str, Path)) else check_config(config)
    t_start = time.perf_counter()
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    dev = resolve_device(device if device != "auto" else str(cfg.get("device", "auto")))
    prep = Preprocessing.from_dict(cfg["preprocessing"])
    opt_cfg = cfg["optim"]
    work = Path(cfg["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg["cache_dir"]) if cfg["cache_dir"] else None
    data = cfg["data"]

    _maybe_generate(data["train"] + data["val"], cfg["modality"], log)
    synthetic_cfg = [s for s in data["train"] if isinstance(s, dict) and s.get("type") == "synthetic"]
    if len(synthetic_cfg) > 1:
        raise ConfigError("data.train may hold one synthetic source")
    pool_cache = cache / "synthetic" if cache is not None else None
    synthetic = SyntheticSource.from_config(synthetic_cfg[0], prep, pool_cache) if synthetic_cfg else None
    annotated = [s for s in data["train"] if not _is_synthetic(s)]
    val_annotated = [s for s in data["val"] if not _is_synthetic(s)]
    val_synthetic = [s for s in data["val"] if _is_synthetic(s)]
    if len(val_synthetic) > 1 or not val_annotated:
        raise ConfigError("data.val needs annotated sources and may add one synthetic source")
    train_items, val_items = collect_items(annotated), collect_items(val_annotated)
    train_samples = list(build_samples(train_items, prep, cache, int(data["max_frames_per_series"]), log))
    val_all = list(build_samples(val_items, prep, cache, int(data["max_frames_per_series"]), log))
    if (not train_samples and synthetic is None) or not val_all:
        raise ConfigError("no usable training or validation samples (see the messages above)")
    pick = (
        np.linspace(0, len(val_all) - 1, min(len(val_all), int(data["max_val_samples"]))).round().astype(int)
    )
    val_samples = [val_all[i] for i in sorted(set(pick.tolist()))]
    if val_synthetic:  # checkpoints are chosen on the randomised look too, not only on the simulator's
        val_source = SyntheticSource.from_config(val_synthetic[0], prep, pool_cache)
        val_samples += val_source.fixed_samples(int(val_synthetic[0].get("samples", 100)))
    share = float(synthetic_cfg[0].get("share", 0.5)) if synthetic_cfg else 0.0
    freq = class_frequencies(train_samples) if train_samples else np.zeros(len(MODEL_CLASSES))
    log(
        f"{len(train_samples)} training tiles from {len(train_items)} series"
        + (f" + domain-randomised phantoms ({share:.0%} of the images)" if synthetic else "")
        + f", {len(val_samples)} validation tiles; class pixel shares of the tiles "
        + ", ".join(f"{c} {f:.4f}" for c, f in zip(MODEL_CLASSES, freq, strict=True))
    )

    spec = cfg.get("network") or default_spec(prep.in_channels)
    set_determinism(seed=int(cfg["seed"]))  # reproducible initial weights
    net = build_network(spec).to(dev)
    if cfg.get("init_from") and not resume:
        net.load_state_dict(initial_weights(cfg["init_from"], cfg["modality"], spec, prep, log))
        log(f"initial weights from {cfg['init_from']} (fine-tuning)")
    aug = cfg["augment"]
    transforms = train_transforms(prep.modality, aug)
    per_image = int(aug.get("samples_per_image", 2))
    images_per_step = max(1, opt_cfg["batch_size"] // per_image)
    train_set = MixedTrainingSet(
        train_samples,
        synthetic,
        share,
        transforms,
        opt_cfg["steps_per_epoch"] * images_per_step,
        int(cfg["seed"]),
    )
    loader = DataLoader(
        train_set,
        batch_size=images_per_step,
        shuffle=False,
        num_workers=int(cfg["num_workers"]),
    )
    bn_batches: list[Any] = []
    if opt_cfg["precise_bn_batches"]:
        bn_set = MixedTrainingSet(
            train_samples,
            synthetic,
            share,
            transforms,
            opt_cfg["precise_bn_batches"] * images_per_step,
            int(cfg["seed"]) + 1,
        )
        _seed_epoch(int(cfg["seed"]) + 1, 0, transforms)
        bn_batches = [b["image"] for b in DataLoader(bn_set, batch_size=images_per_step, shuffle=False)]
    loss_fn = segmentation_loss(opt_cfg, dev)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=float(opt_cfg["lr"]), weight_decay=float(opt_cfg["weight_decay"])
    )
    epochs = opt_cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs, eta_min=0.02 * float(opt_cfg["lr"])
    )
    start_epoch, best, history, used_s = 0, -1.0, [], 0.0
    last_path, best_path = work / "last.pt", work / "best.pt"
    ema_decay = opt_cfg["ema_decay"]
    ema: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise ConfigError("--resume: no checkpoint to resume from", last_path)
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start_epoch, best, history, used_s = ck["epoch"], ck["best"], ck["history"], ck.get("train_s", 0.0)
        ema = ck.get("ema")
        log(f"resumed from epoch {start_epoch} (best mean Dice {best:.4f})")
    if ema_decay is not None:
        if ema is None:
            ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
        ema = {k: v.to(dev) for k, v in ema.items()}
        scored_net = copy.deepcopy(net)  # holds the average for validation
    else:
        scored_net = net
    log(
        f"network {spec['class']} {count_parameters(net) / 1e6:.2f} M parameters on {dev}; "
        f"{epochs} epochs x {opt_cfg['steps_per_epoch']} steps of {images_per_step * per_image} patches"
        f" in {opt_cfg['precision']}"
    )
    low_precision = opt_cfg["precision"] == "bfloat16"

    limit_s = None if cfg["max_minutes"] in (None, 0) else 60.0 * float(cfg["max_minutes"])
    timed_out = False
    epoch, run_s = start_epoch, 0.0
    for epoch in range(start_epoch, epochs):
        t_ep = time.perf_counter()
        _seed_epoch(int(cfg["seed"]), epoch, transforms)
        train_set.set_epoch(epoch)
        net.train()
        losses = []
        for batch in loader:
            x, y = batch["image"].to(dev), batch["label"].to(dev)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=low_precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            optimizer.step()
            if ema is not None:
                with torch.no_grad():
                    _ema_update(ema, net.state_dict(), float(ema_decay))
            losses.append(float(loss.detach()))
            if limit_s is not None and time.perf_counter() - t_start > limit_s:
                timed_out = True
                break
        scheduler.step()
        if ema is not None:
            scored_net.load_state_dict(ema)
        recompute_batchnorm(scored_net, bn_batches, dev)
        metrics = validate(scored_net, val_samples, dev, prep.multiple)
        ep_s = time.perf_counter() - t_ep
        used_s += ep_s
        rec = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else math.nan,
            "steps": len(losses),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": round(ep_s, 2),
            **metrics,
        }
        history.append(rec)
        improved = metrics["mean_dice"] > best
        if improved:
            best = metrics["mean_dice"]
            _save_checkpoint(
                {"model": scored_net.state_dict(), "epoch": epoch + 1, "metrics": metrics}, best_path
            )
        _save_checkpoint(
            {
                "model": net.state_dict(),
                **({"ema": ema} if ema is not None else {}),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "train_s": used_s,
            },
            last_path,
        )
        with open(work / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        run_s += ep_s
        eta_s = (epochs - epoch - 1) * run_s / (epoch + 1 - start_epoch)
        if limit_s is not None:
            eta_s = min(eta_s, max(0.0, limit_s - (time.perf_counter() - t_start)))
        log(
            f"epoch {epoch + 1}/{epochs} loss {rec['loss']:.4f} dice nodule {metrics['dice_nodule']:.3f} "
            f"defect {metrics['dice_defect']:.3f} fascia {metrics['dice_fascia']:.3f} "
            f"fat {metrics['dice_fat']:.3f}"
            f" mean {metrics['mean_dice']:.4f}{' *' if improved else ''}"
            f" ({ep_s:.0f} s, ETA {eta_s / 60:.0f} min)"
        )
        if timed_out:
            log(f"wall-time limit of {cfg['max_minutes']} min reached after epoch {epoch + 1}")
            break

    best_ck = torch.load(best_path, map_location="cpu", weights_only=False)
    weights = stored_weights(net, best_ck["model"], cfg["weights_dtype"])
    net.load_state_dict(weights)  # the calibration sees the weights the bundle stores
    net.eval()
    calibration: dict[str, Any] = {}
    cal_report: dict[str, Any] = {}
    if cfg["calibrate"]:
        calibration, cal_report = fit_detection_calibration(
            net,
            prep,
            data["val"],
            dev,
            log,
            max_series=cfg["calibration_max_series"],
            postprocessing=cfg["postprocessing"],
            search=cfg["postprocessing_search"],
        )
    chosen = cal_report.get("postprocessing_search", {}).get("chosen", {})
    postprocessing = {**cfg["postprocessing"], **chosen}
    training = {
        "config": {k: v for k, v in cfg.items() if k not in ("data",)} | {"data": data},
        "data": f"{len(train_items)} training / {len(val_items)} validation series "
        f"({len(train_samples)} / {len(val_all)} tiles) of synthetic phantoms"
        + (
            f"; {share:.0%} of the training images domain-randomised on the fly from "
            f"{synthetic.subjects} phantom subjects ({synthetic.pool} label maps)"
            if synthetic
            else ""
        ),
        "class_pixel_share": {c: round(float(f), 6) for c, f in zip(MODEL_CLASSES, freq, strict=True)},
        "epochs_run": len(history),
        "best_epoch": int(best_ck["epoch"]),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "train_time_s": round(used_s, 1),
        "stopped_by_time_limit": timed_out,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "history": history,
    }
    metrics_out = {"validation": best_ck["metrics"], **({"calibration": cal_report} if cal_report else {})}
    meta = make_metadata(
        name=cfg["name"],
        prep=prep,
        network_spec=spec,
        training=training,
        metrics=metrics_out,
        calibration=calibration,
        postprocessing=postprocessing,
        version=cfg["version"],
        changelog=None if cfg["changelog"] is None else {str(k): str(v) for k, v in cfg["changelog"].items()},
    )
    meta["network"]["parameters"] = count_parameters(net)
    out = save_bundle(cfg["out"], weights, meta, model_card(meta))
    log(
        f"best epoch {best_ck['epoch']} mean Dice {best_ck['metrics']['mean_dice']:.4f}; "
        f"bundle written to {out}"
    )
    return out


def stored_weights(net: Any, state: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The state dict of ``net`` as the bundle stores it: the parameters in ``dtype`` (``float16`` halves
    the file; loading into the float32 network casts them back), the buffers unchanged (batch-norm
    running variances reach 1e7, past float16's range)."""
    import torch

    target = getattr(torch, dtype)
    params = {name for name, _ in net.named_parameters()}
    return {k: v.to(target) if k in params and v.is_floating_point() else v for k, v in state.items()}


def _calibration_cases(
    val_sources: list[dict[str, Any]],
    prep: Preprocessing,
    thresholds: dict[str, float],
    log: Log,
    max_series: int,
) -> Iterator[tuple[ImageSeries, list[dict[str, Any]], str]]:
    """``(series, ground-truth nodules, kind)`` for the calibration (``kind`` as in a phantom's ground
    truth, e.g. ``us_cine``, else empty): the first ``max_series`` annotated
    validation series (a phantom's ``ground_truth.json``, visible nodules; for annotated DICOM / NIfTI the
    nodules of its label map, :func:`~backmice_vision.evaluation.truth_from_labels`), then the
    ``calibration_samples`` randomised images of a ``type: synthetic`` source (nodules of their label
    maps). Series that cannot be read are logged."""
    from ..evaluation import find_cases, read_ground_truth, truth_from_labels
    from ..io import load_series
    from .data import collect_items, load_item
    from .synthetic import SyntheticSource

    def annotated() -> Iterator[tuple[ImageSeries, list[dict[str, Any]], str]]:
        for src in val_sources:
            if _is_synthetic(src):
                continue
            if src.get("type") == "phantom":
                for gt in find_cases([Path(src["path"])]):
                    for entry in read_ground_truth(gt)["series"]:
                        try:
                            series = load_series(gt.parent / entry["folder"])
                        except BackmiceError as exc:
                            log(f"calibration: skipped {gt.parent.name}/{entry['folder']}: {exc.reason}")
                            continue
                        visible = [t for t in entry.get("nodules", []) if t.get("visible", True)]
                        yield series, visible, str(entry.get("kind", ""))
                continue
            for item in collect_items([src]):
                try:
                    series, labels = load_item(item, prep.modality)
                except BackmiceError as exc:
                    log(f"calibration: skipped {item.key}: {exc.reason}")
                    continue
                yield series, truth_from_labels(series, labels, thresholds), ""

    for k, case in enumerate(annotated()):
        if k >= max_series:
            break
        yield case
    for src in val_sources:
        if _is_synthetic(src) and int(src.get("calibration_samples", 0)) > 0:
            synthetic = SyntheticSource.from_config(src, prep)
            for series, labels in synthetic.calibration_series(int(src["calibration_samples"])):
                yield series, truth_from_labels(series, labels, thresholds), ""


def fit_detection_calibration(
    net: Any,
    prep: Preprocessing,
    val_sources: list[dict[str, Any]],
    device: Any,
    log: Log,
    max_series: int = 40,
    postprocessing: Mapping[str, float] | None = None,
    search: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``nodule``/``defect``/``series`` calibration (Platt) on detections in the validation series,
    found with ``configs/inference.yaml`` and the bundle's ``postprocessing`` thresholds.

    Any validation source works: phantoms (their ground truth), annotated DICOM SEG or NIfTI (nodules of
    the annotation), at most ``max_series`` of them, plus the ``calibration_samples`` randomised images of
    a ``type: synthetic`` source (see :func:`_calibration_cases`). Returns ``(calibration params,
    report)``; a key is left out when fewer than 10 labelled detections (or only one outcome) are available.

    ``search`` (``postprocessing_search`` of a config, see :func:`_check_search`) first chooses the
    post-processing on the same series, as nnU-Net chooses its post-processing on validation data: each
    candidate's overrides are applied over ``postprocessing`` to the one network output of every series,
    and the candidate with the highest lesion sensitivity (targets as in
    :mod:`backmice_vision.evaluation`) at ``fp_per_image`` false positives per image wins, the earliest on
    a tie. The calibration is fitted on the winner's detections; ``report["postprocessing_search"]`` lists
    every candidate's sensitivity and ``chosen``, the winning overrides. With ``nodule_free_fp_per_image``
    the winner's ``confidence_threshold`` (the operating point) is raised from the configured one until the
    calibrated confidences of those series pass at most that many false positives per image without any
    nodule (:func:`_operating_point`, reported as ``operating_point``).
    """
    from ..evaluation import SeriesRecord, evaluate_series, sensitivity_at_rate
    from ..findings import extract_nodules, load_thresholds, match_nodules
    from .calibration import expected_calibration_error, fit_calibration
    from .inference import predict_probabilities

    base = load_thresholds().replace(postprocessing)
    thresholds = dict(base)
    candidates: list[dict[str, float]] = [dict(c) for c in (search or {}).get("candidates", [{}])]
    scores: list[dict[str, list[tuple[float, int]]]] = [
        {"nodule": [], "defect": [], "series": []} for _ in candidates
    ]
    records: list[list[SeriesRecord]] = [[] for _ in candidates]
    n = 0
    for series, truth, kind in _calibration_cases(val_sources, prep, thresholds, log, max_series):
        try:
            probs = predict_probabilities(net, series, device, prep=prep)
            outputs = [
                extract_nodules(series, probs, calibration=None, thresholds=base.replace(more))
                for more in candidates
            ]
        except BackmiceError as exc:
            log(f"calibration: skipped a series: {exc.reason}")
            continue
        n += 1
        for (found, series_p), collected, recs in zip(outputs, scores, records, strict=True):
            for m in match_nodules(found, truth, series):
                if m.pred is None or m.duplicate:
                    continue
                collected["nodule"].append((found[m.pred].confidence, int(m.truth is not None)))
                if m.truth is not None:
                    present = bool((truth[m.truth].get("defect") or {}).get("present", False))
                    collected["defect"].append((found[m.pred].fascia_defect.probability, int(present)))
            collected["series"].append((series_p, int(bool(truth))))
            if search is not None:
                recs.append(evaluate_series(series, found, series_p, {"nodules": truth, "kind": kind}))
    report: dict[str, Any] = {"series_used": n}
    chosen = 0
    if search is not None:
        rate = float(search["fp_per_image"])
        n_images = sum(r.n_images for r in records[0])
        sens = [
            sensitivity_at_rate(
                [s for r in recs for s in r.lesion_scores],
                [s for r in recs for s in r.fp_scores],
                n_images,
                rate,
            )
            for recs in records
        ]
        ranked = [-1.0 if v is None else v for v in sens]
        chosen = ranked.index(max(ranked))
        report["postprocessing_search"] = {
            "fp_per_image": rate,
            "n_images": n_images,
            "n_target_lesions": sum(len(r.lesion_scores) for r in records[0]),
            "candidates": [{"overrides": c, "sensitivity": v} for c, v in zip(candidates, sens, strict=True)],
            "chosen": candidates[chosen],
        }
        log(f"post-processing search at {rate:g} FP/image: " + json.dumps(report["postprocessing_search"]))
    params: dict[str, Any] = {}
    for key, pairs in scores[chosen].items():
        s = np.array([p[0] for p in pairs], dtype=np.float64)
        y = np.array([p[1] for p in pairs], dtype=np.float64)
        if len(pairs) < 10 or y.min(initial=1) == y.max(initial=0):
            report[key] = {"n": len(pairs), "fitted": False}
            continue
        params[key] = fit_calibration(s, y, "platt")
        report[key] = {
            "n": len(pairs),
            "fitted": True,
            "ece_before": expected_calibration_error(s, y),
            "ece_after_in_sample": expected_calibration_error(_apply(params[key], s), y),
        }
    rate_free = (search or {}).get("nodule_free_fp_per_image")
    if rate_free is not None:  # the nodule confidences as the detector will give them (identity if unfitted)
        operating = _operating_point(records[chosen], params.get("nodule"), float(rate_free), base)
        report["postprocessing_search"]["operating_point"] = operating
        report["postprocessing_search"]["chosen"] = {
            **candidates[chosen],
            "confidence_threshold": operating["confidence_threshold"],
        }
    log(f"calibration on {n} validation series: " + json.dumps(report))
    return params, report


def _operating_point(
    records: list[Any], nodule_params: dict[str, Any] | None, rate: float, base: Mapping[str, float]
) -> dict[str, Any]:
    """The lowest confidence threshold (two decimals, at least ``base``'s) that passes at most ``rate``
    false positives per nodule-free image of ``records`` (:class:`~backmice_vision.evaluation.SeriesRecord`
    with uncalibrated scores, calibrated here with ``nodule_params``), and what it gives there."""
    empty = [r for r in records if not r.lesion_scores_all]
    n_free = sum(r.n_images for r in empty)
    fps = np.sort(_apply(nodule_params, np.array([s for r in empty for s in r.fp_scores])))[::-1]
    threshold = float(base["confidence_threshold"])
    allowed = int(np.floor(rate * n_free + 1e-9))
    if fps.size > allowed:
        above = math.ceil(float(fps[allowed]) * 100.0) / 100.0
        threshold = max(threshold, above + 0.01 if above <= fps[allowed] else above)
    lesions = _apply(nodule_params, np.array([s for r in records for s in r.lesion_scores if s is not None]))
    n_lesions = sum(len(r.lesion_scores) for r in records)
    return {
        "confidence_threshold": round(threshold, 2),
        "nodule_free_fp_per_image_target": rate,
        "nodule_free_images": n_free,
        "nodule_free_fp_per_image": float((fps >= threshold).sum() / n_free) if n_free else None,
        "sensitivity": float((lesions >= threshold).sum() / n_lesions) if n_lesions else None,
        "sensitivity_at_base_threshold": (
            float((lesions >= base["confidence_threshold"]).sum() / n_lesions) if n_lesions else None
        ),
    }


ZOOM_LINE = "- Inference zooms:"


def zoom_line(prep: Preprocessing) -> str:
    """The model card's line on :attr:`Preprocessing.zooms`."""
    sizes = ", ".join(f"{prep.spacing_mm / z:.3g}" for z in prep.zooms)
    what = "averaged over the series" if len(prep.zooms) > 1 else "of the series"
    return (
        f"{ZOOM_LINE} {', '.join(f'{z:g}' for z in prep.zooms)}: class probabilities {what} "
        f"resampled to {sizes} mm pixels (one network run per zoom)."
    )


def recalibrate(
    model: str | Path,
    config: dict[str, Any] | str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    zooms: tuple[float, ...] | None = None,
    log: Log = print,
) -> Path:
    """Refit the ``nodule`` / ``defect`` / ``series`` calibration of the bundle ``model`` on the
    ``data.val`` sources of ``config`` (a training config; ``data.train`` may be absent; at most
    ``calibration_max_series`` annotated series, plus the ``calibration_samples`` randomised images of a
    ``type: synthetic`` source) with the bundle's own preprocessing and post-processing thresholds, and
    write the bundle with the new calibration to ``out`` (atomic; the weights are copied unchanged, the
    card's calibration line is rewritten). ``zooms`` (if given) replaces the bundle's inference zooms
    (:class:`Preprocessing`) before the fit. Raises :class:`ConfigError` when nothing could be fitted."""
    import torch

    from .bundle import CARD, WEIGHTS, load_bundle, save_bundle
    from .inference import resolve_device

    where = str(config) if isinstance(config, (str, Path)) else "config"
    cfg = (
        load_config(config, need_train=False)
        if isinstance(config, (str, Path))
        else check_config(config, need_train=False)
    )
    dev = resolve_device(device)
    bundle = load_bundle(model, modality=cfg["modality"], device=dev)
    prep = bundle.preprocessing if zooms is None else replace(bundle.preprocessing, zooms=tuple(zooms))
    val = cfg["data"]["val"]
    _maybe_generate(val, cfg["modality"], log)
    params, report = fit_detection_calibration(
        bundle.network,
        prep,
        val,
        dev,
        log,
        max_series=cfg["calibration_max_series"],
        postprocessing=bundle.postprocessing,
        search=cfg["postprocessing_search"],
    )
    if not params:
        raise ConfigError(f"{where}: too few labelled detections in data.val to fit any calibration")
    meta = copy.deepcopy(bundle.metadata)  # save_bundle writes the sha256 of the copied weights
    meta["calibration"] = params
    postprocessing = {**bundle.postprocessing, **report.get("postprocessing_search", {}).get("chosen", {})}
    if postprocessing:
        meta["postprocessing"] = postprocessing
    meta.setdefault("metrics", {})["calibration"] = report
    meta["recalibration"] = {"data": val, "max_series": cfg["calibration_max_series"]}
    meta["network_data_format"]["inputs"]["image"]["preprocessing"] = prep.to_dict()
    state = torch.load(bundle.path / WEIGHTS, map_location="cpu", weights_only=True)
    card = (bundle.path / CARD).read_text() if (bundle.path / CARD).is_file() else f"# {meta['name']}\n"
    line = f"- Calibration (refitted by `backmice calibrate` on {where}): {json.dumps(report)}."
    lines = [text for text in card.splitlines() if not text.startswith(ZOOM_LINE)]
    at = [i for i, text in enumerate(lines) if text.startswith("- Calibration")]
    if at:
        lines[at[0]] = line
    else:
        lines += ["", line]
    if prep.zooms != (1.0,):
        at = [i + 1 for i, text in enumerate(lines) if text.startswith("- Input:")]
        lines.insert(at[0] if at else len(lines), zoom_line(prep))
    saved = save_bundle(out, state, meta, "\n".join(lines) + "\n")
    log(f"calibration refitted on {report['series_used']} series; bundle written to {saved}")
    return saved


def _apply(params: dict[str, Any] | None, s: np.ndarray) -> np.ndarray:
    from .calibration import apply_calibration

    return apply_calibration(params, s)


def _depth_augmented(training: dict[str, Any]) -> bool:
    aug = training["config"].get("augment") or {}
    return float(aug.get("depth_gain", 0)) > 0 or float(aug.get("depth_noise_std", 0)) > 0


def model_card(meta: dict[str, Any]) -> str:
    """The bundle's README.md: what the model is, how it was trained, what it is not for."""
    tr, val = meta["training"], meta["metrics"]["validation"]
    fmt = meta["network_data_format"]["inputs"]["image"]
    prep = Preprocessing.from_dict(fmt["preprocessing"])
    zooms = [zoom_line(prep)] if prep.zooms != (1.0,) else []
    net = meta["network"]
    stopped = ", stopped by the time limit" if tr["stopped_by_time_limit"] else ""
    threads = f"{tr['torch_threads']} thread{'' if tr['torch_threads'] == 1 else 's'}"
    lines = [
        f"# {meta['name']} {meta['version']}: back-mouse segmentation, {meta['modality']}",
        "",
        f"**Intended use:** {meta['intended_use']}. Not a medical device; outputs must not guide care.",
        "",
        "## Model",
        f"- {meta['task']}.",
        f"- Network: MONAI {net['class']} {json.dumps(net['kwargs'])}, "
        f"{net.get('parameters', '?')} parameters.",
        "- One model per modality: ultrasound and MR differ in physics, texture and geometry; a shared net",
        "  would spend capacity on the domain gap. MR is 2.5-D (adjacent slices as channels).",
        "- The networks measured against each other (parameters, step and inference time, receptive field):",
        "  `backmice_vision/model/network.py`.",
        f"- Input: {fmt['num_channels']} channel(s) float32 at {fmt['spacing_mm'][0]} mm pixels, "
        f"{fmt['normalisation']}; padded to a multiple of {fmt['preprocessing']['multiple']}.",
        *zooms,
        "- Output: softmax over "
        + ", ".join(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())
        + ", mapped back to the source pixel grid (see `backmice_vision/model/inference.py`).",
        "",
        "## Training",
        f"- Data: {tr['data']}. Class pixel shares: {json.dumps(tr['class_pixel_share'])}.",
        f"- {tr['epochs_run']} epochs (best {tr['best_epoch']}), "
        f"{tr.get('train_time_s', tr['wall_time_s']) / 60:.1f} min of training "
        f"on {tr['device']} ({threads}){stopped}.",
        "- Loss DiceCE (no background in Dice), class-balanced patch sampling, augmentation of gain, gamma,",
        "  blur, noise, zoom, rotation, left-right flip (and bias field for MR)"
        + ("; depth-dependent TGC error and noise (US)." if _depth_augmented(tr) else "."),
        *(
            [f"- Started from the weights of `{tr['config']['init_from']}` (fine-tuning)."]
            if tr["config"].get("init_from")
            else []
        ),
        *(
            [
                "- The weights are an exponential moving average (decay "
                f"{tr['config']['optim']['ema_decay']} "
                "per step) of the trained ones; checkpoints were chosen on the average."
            ]
            if (tr["config"].get("optim") or {}).get("ema_decay")
            else []
        ),
        *(
            ["- Parameters stored in float16 (loaded into float32); calibration fitted after the rounding."]
            if tr["config"].get("weights_dtype") == "float16"
            else []
        ),
        "",
        "## Validation (synthetic phantoms, held-out seeds)",
        "",
        "| class | Dice |",
        "|---|---|",
        *[f"| {c} | {val[f'dice_{c}']:.3f} |" for c in MODEL_CLASSES],
        f"| mean of nodule & defect | {val['mean_dice']:.3f} |",
        "",
        "## Evaluation",
        "Lesion FROC, Dice, fascia-defect AUC and calibration on held-out phantoms with other seeds and",
        "shifted settings (`configs/phantom_*_shifted.yaml`): `make evaluate` writes",
        "`docs/evaluation/evaluation.md` (targets with PASS/FAIL), `evaluation.json` and the plots.",
        "",
        "## Limitations",
        "- Trained only on synthetic phantoms: performance on real scans is unknown.",
        "- Uncalibrated ultrasound is analysed at an assumed pixel size (recorded in the series problems).",
        f"- Calibration: {json.dumps(meta['metrics'].get('calibration', 'none'))}.",
        "",
    ]
    return "\n".join(lines)
