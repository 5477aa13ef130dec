"""Model bundles in the MONAI bundle layout, one folder per model (``models/backmice_us``, ``_mr``)::

    configs/metadata.json    MONAI metadata (the specification's required keys) + what this library needs
    configs/inference.json   ``python -m monai.bundle run`` entry: the same outputs as ``backmice detect``
    models/model.pt          the state dict (its sha256 is in metadata.json; loading checks it)
    docs/README.md           the model card: intended use, training data, metrics, limits

``metadata.json`` keys: the MONAI ones (``version``, ``changelog``, ``monai_version``, ``pytorch_version``,
``numpy_version``, ``optional_packages_version``, ``task``, ``description``, ``authors``, ``copyright``,
``intended_use``, ``network_data_format`` with inputs.image (modality, channel_def, ``spacing_mm``,
``normalisation`` and the :class:`~backmice_vision.model.inference.Preprocessing` under ``preprocessing``)
and outputs.pred.channel_def) and ours: ``name``, ``modality``, ``network`` (MONAI class + kwargs),
``training``, ``metrics``, ``calibration`` and ``sha256`` of the weights. :func:`load_bundle` checks all
of it before building the network. Nothing here downloads anything (no schema, no weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelError
from ..labels import MODEL_CLASSES
from ..profiles import PROFILES
from ..resources import models_dir
from .inference import Preprocessing

if TYPE_CHECKING:
    import torch

INTENDED_USE = "research, not diagnosis; trained on synthetic phantoms"
MODELS_DIR = models_dir()
DEFAULT_NAMES = {m: p.bundle for m, p in PROFILES.items()}  # the shipped bundle of each modality profile
# The MONAI bundle layout, relative to the bundle folder.
METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
WEIGHTS = Path("models/model.pt")
CARD = Path("docs/README.md")
# Keys the MONAI bundle specification requires in metadata.json (checked by the tests, offline).
MONAI_REQUIRED_KEYS = (
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "optional_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
AUTHORS = ["backmice_vision developers"]
COPYRIGHT = "Copyright 2026 the backmice_vision developers; Apache-2.0"
# configs/inference.json, the same for both models: `python -m monai.bundle run --bundle_root B
# --config_file B/configs/inference.json --meta_file B/configs/metadata.json --input_path F --output_dir D`.
INFERENCE_CONFIG: dict[str, Any] = {
    "imports": [  # one name per import: MONAI's parser ignores the rest
        "$from backmice_vision.model.bundle import load_bundle",
        "$from backmice_vision.model.bundle import run_bundle",
    ],
    "bundle_root": ".",
    "input_path": None,
    "output_dir": "$@bundle_root + '/eval'",
    "device": "cpu",
    "formats": "all",
    "thresholds_config": None,
    "bundle": "$load_bundle(@bundle_root, device=@device)",
    "network": "$@bundle.network",
    "run": "$run_bundle(@bundle_root, @input_path, @output_dir, device=@device, formats=@formats, "
    "thresholds_config=@thresholds_config)",
}
RUN_SECTION = "## Running as a MONAI bundle"


@dataclass
class Bundle:
    """A loaded model: ``network`` (eval mode, on ``device``), its ``preprocessing`` and ``metadata``."""

    path: Path
    metadata: dict[str, Any]
    network: torch.nn.Module
    preprocessing: Preprocessing

    @property
    def modality(self) -> str:
        return self.preprocessing.modality

    @property
    def model_id(self) -> str:
        return str(self.metadata.get("name", self.path.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def postprocessing(self) -> dict[str, float]:
        """Threshold values chosen for this network on its validation set (``metadata.postprocessing``),
        applied over ``configs/inference.yaml``; thresholds given to a Detector override them."""
        post = self.metadata.get("postprocessing") or {}
        return dict(post) if isinstance(post, dict) else {}

    @property
    def calibration(self) -> dict[str, Any]:
        cal = self.metadata.get("calibration") or {}
        return cal if isinstance(cal, dict) else {}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_channels(prep: Preprocessing) -> dict[str, str]:
    """``channel_def`` of the model input: one B-mode channel (US), 2·context + 1 adjacent slices (MR)."""
    if prep.modality == "US":
        return {"0": "B-mode intensity (grey level of the displayed image)"}
    offsets = range(-prep.context, prep.context + 1)
    return {str(i): f"slice k{o:+d}" if o else "slice k" for i, o in enumerate(offsets)}


def monai_fields(prep: Preprocessing) -> dict[str, Any]:
    """The metadata keys the MONAI specification requires besides version, task and the data format:
    the versions of this environment, the packages the bundle's inference needs, description, authors."""
    import highdicom
    import monai
    import numpy
    import pydicom
    import torch

    from .. import __version__

    return {
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {
            "backmice_vision": __version__,
            "pydicom": pydicom.__version__,
            "highdicom": highdicom.__version__,
        },
        "description": (
            f"Finds back mice (episacroiliac lipomas) and their fascial defects in lower-back "
            f"{'ultrasound' if prep.modality == 'US' else 'MR'} DICOM series: 5-class segmentation, "
            "then measured nodules written as DICOM SEG, SR (TID 1500), Secondary Capture and JSON."
        ),
        "authors": list(AUTHORS),
        "copyright": COPYRIGHT,
    }


def make_metadata(
    *,
    name: str,
    prep: Preprocessing,
    network_spec: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    calibration: dict[str, Any] | None = None,
    postprocessing: dict[str, float] | None = None,
    version: str = "0.1.0",
    changelog: dict[str, str] | None = None,
) -> dict[str, Any]:
    """MONAI-bundle metadata for a model trained with ``prep`` (``sha256`` is added on save)."""
    norm = (
        f"per-{'tile' if prep.modality == 'US' else 'volume'} percentiles {list(prep.percentiles)} -> [0, 1]"
    )
    spatial = [f"{prep.multiple}*n", f"{prep.multiple}*n"]
    return {
        "schema": "backmice.bundle/2",
        "version": version,
        "changelog": changelog or {version: "first model trained on synthetic phantoms"},
        **monai_fields(prep),
        "name": name,
        "modality": prep.modality,
        "task": f"2-D semantic segmentation of lower-back {prep.modality} ({', '.join(MODEL_CLASSES)})",
        "intended_use": INTENDED_USE,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": prep.modality,
                    "num_channels": prep.in_channels,
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "spacing_mm": [prep.spacing_mm, prep.spacing_mm],
                    "normalisation": norm,
                    "is_patch_data": False,
                    "channel_def": input_channels(prep),
                    "preprocessing": prep.to_dict(),
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "segmentation",
                    "num_channels": len(MODEL_CLASSES),
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(MODEL_CLASSES)},
                }
            },
        },
        "network": network_spec,
        "training": training,
        "metrics": metrics,
        "calibration": calibration or {},
        **({"postprocessing": postprocessing} if postprocessing else {}),
    }


def run_section(name: str) -> str:
    """The model card's section on the bundle layout and the ``monai.bundle run`` command."""
    root = f"models/{name}"
    return "\n".join(
        [
            RUN_SECTION,
            "MONAI bundle layout: `configs/metadata.json`, `configs/inference.json`, `models/model.pt`",
            "(its sha256 is in the metadata and checked on loading), `docs/README.md` (this card).",
            "Offline, on one DICOM file or series folder, with the same outputs as `backmice detect`:",
            "",
            "```",
            f"python -m monai.bundle run --bundle_root {root} --config_file {root}/configs/inference.json \\",
            f"    --meta_file {root}/configs/metadata.json --input_path FILE --output_dir DIR",
            "```",
            "",
            "Overrides: `--device cuda`, `--formats json,seg`, `--thresholds_config configs/inference.yaml`.",
            "",
        ]
    )


def save_bundle(
    out_dir: str | Path, state_dict: dict[str, Any], metadata: dict[str, Any], readme: str
) -> Path:
    """Write a bundle atomically in the MONAI layout (weights, metadata with their sha256, inference.json,
    the model card ``readme`` with :func:`run_section` appended): a temporary sibling folder renamed over
    ``out_dir``. Returns ``out_dir``."""
    import torch

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel in (METADATA, WEIGHTS, CARD):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, tmp / WEIGHTS)
        meta = dict(metadata, sha256=sha256_of(tmp / WEIGHTS))
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / INFERENCE).write_text(json.dumps(INFERENCE_CONFIG, indent=2) + "\n")
        card = readme if RUN_SECTION in readme else readme.rstrip("\n") + "\n\n" + run_section(out.name)
        (tmp / CARD).write_text(card)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle folder, checked for the keys this library needs."""
    folder = Path(path)
    meta_path = folder / METADATA
    if not folder.is_dir():
        raise ModelError("model folder not found", folder)
    if not meta_path.is_file():
        if (folder / "metadata.json").is_file():
            raise ModelError(
                f"model folder has the old flat layout: move metadata.json to {METADATA}, "
                f"model.pt to {WEIGHTS}, README.md to {CARD}",
                folder,
            )
        raise ModelError(f"model folder has no {METADATA}", folder)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{METADATA} is not valid JSON ({type(exc).__name__})", folder) from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{METADATA} is not a JSON object", folder)
    for key in ("modality", "network", "network_data_format", "sha256"):
        if key not in meta:
            raise ModelError(f"{METADATA} lacks {key!r}", folder)
    try:
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        classes = tuple(channels[str(i)] for i in range(len(channels)))
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{METADATA} has no valid outputs.pred.channel_def", folder) from exc
    if classes != MODEL_CLASSES:
        raise ModelError(f"model classes {classes} differ from this library's {MODEL_CLASSES}", folder)
    if "postprocessing" in meta:
        from ..findings import Thresholds

        post = meta["postprocessing"]
        if not isinstance(post, dict):
            raise ModelError(f"{METADATA} postprocessing is not a mapping of thresholds", folder)
        try:
            Thresholds.check(post, f"{METADATA} postprocessing")
        except ConfigError as exc:
            raise ModelError(exc.reason, folder) from exc
    return meta


def load_bundle(
    path: str | Path, *, modality: str | None = None, device: str | torch.device = "cpu"
) -> Bundle:
    """Load and verify a bundle: metadata, classes, modality (when given), ``sha256`` of
    ``models/model.pt``, and that the weights fit the network (strict). Every failure is a one-line
    :class:`ModelError`."""
    import torch

    from .inference import resolve_device
    from .network import build_network

    folder = Path(path)
    meta = read_metadata(folder)
    if modality is not None and str(meta["modality"]).upper() != modality.upper():
        raise ModelError(f"model is for {meta['modality']}, the series is {modality}", folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"model folder has no {WEIGHTS}", folder)
    if sha256_of(weights) != meta["sha256"]:
        raise ModelError(f"{WEIGHTS} does not match the sha256 in {METADATA} (corrupt or replaced)", folder)
    try:
        prep = Preprocessing.from_dict(meta["network_data_format"]["inputs"]["image"]["preprocessing"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{METADATA} has no inputs.image.preprocessing", folder) from exc
    if prep.modality != str(meta["modality"]).upper():
        raise ModelError(f"{METADATA} modality and preprocessing disagree", folder)
    try:
        net = build_network(meta["network"])
    except ModelError as exc:
        raise ModelError(exc.reason, folder) from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)  # strict: a missing or unexpected key is an error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{WEIGHTS} does not fit the network ({first[:160]})", folder) from exc
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    net.to(dev).eval()
    if dev.type == "cpu":  # oneDNN's NHWC convolutions: the forward pass ~30 % faster on CPU, same values
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a kwarg the stubs lack
    return Bundle(folder, meta, net, prep)


def run_bundle(
    bundle_root: str | Path,
    input_path: str | Path | None,
    output_dir: str | Path,
    *,
    device: str = "cpu",
    formats: str = "all",
    thresholds_config: str | Path | None = None,
) -> None:
    """``configs/inference.json``'s ``run``: ``backmice detect input_path --out output_dir --model
    bundle_root`` through the same CLI code, so the outputs and the one-line errors are the same.
    A failure exits with the CLI's code (1 bad input or model, 2 usage) instead of a traceback."""
    from ..cli import main

    if input_path is None:
        raise SystemExit("backmice bundle: error: give the DICOM file or folder with --input_path")
    argv = ["detect", str(input_path), "--out", str(output_dir), "--model", str(bundle_root)]
    argv += ["--device", device, "--formats", formats]
    if thresholds_config is not None:
        argv += ["--config", str(thresholds_config)]
    rc = main(argv)
    if rc:
        raise SystemExit(rc)


def default_bundle_dir(modality: str) -> Path:
    """The shipped bundle of a modality: ``models/backmice_us`` or ``models/backmice_mr``."""
    name = DEFAULT_NAMES.get(modality.upper())
    if name is None:
        raise ModelError(f"no model for modality {modality!r}")
    return MODELS_DIR / name
