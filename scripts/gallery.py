"""Write PNGs of phantom cases with their ground-truth contours into docs/gallery/.

For each modality a few cases are generated (``backmice phantom`` code path), each series is read back
from its DICOM files with pydicom and its SEG with highdicom, and one frame (the one holding the most
nodule pixels) is drawn twice: the stored image, and the same with the SEG contours
(fat yellow, fascia cyan, nodule red, defect green) and the ground-truth nodule centres (+).

    .venv/bin/python scripts/gallery.py [--cases 2] [--seed 3] [--sizes 10 35] [--out docs/gallery]

Cases use the training settings (``configs/phantom_{us,mr}.yaml``); ``--sizes`` adds one case per size
with a single nodule of that longest diameter (MR with a sagittal series too), named ``<modality>_<size>mm``.

``randomised_{us,mr}.png``: what the shipped model (``models/backmice_{us,mr}``) trains on besides the
phantoms, domain-randomised images at its model spacing (``backmice_vision.phantoms.randomise``), two rows
of ``--randomised`` (even) draws, each above the same image with its training labels outlined (MR: the centre
slice of the stack).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from scipy import ndimage

from backmice_vision.phantoms.cli import CONFIG_DIR, load_yaml_config
from backmice_vision.phantoms.generate import generate_cases

COLOURS = {1: (250, 220, 40), 2: (40, 220, 250), 3: (250, 40, 40), 4: (60, 240, 60)}


def _read_series(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Stored frames (n, rows, cols[, 3]) in ground-truth order (MR: sorted along the normal)."""
    dss = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    if len(dss) > 1 and "ImagePositionPatient" in dss[0]:
        ori = np.asarray(dss[0].ImageOrientationPatient, float)
        normal = np.cross(ori[:3], ori[3:])
        dss.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))
    elif len(dss) > 1:
        dss.sort(key=lambda d: int(d.InstanceNumber))
    arrays = [d.pixel_array for d in dss]
    frames = np.concatenate(
        [a if int(d.get("NumberOfFrames", 1)) > 1 else a[None] for a, d in zip(arrays, dss, strict=True)]
    )
    return frames, dss


def _read_seg(path: Path, dss: list[pydicom.Dataset], n: int) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(path)
    if len(dss) == 1 and int(dss[0].get("NumberOfFrames", 1)) > 1:
        arr = seg.get_pixels_by_source_frame(
            dss[0].SOPInstanceUID, list(range(1, n + 1)), segment_numbers=[1, 2, 3, 4]
        )
    else:
        arr = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in dss], segment_numbers=[1, 2, 3, 4])
    return np.asarray(arr, bool)


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 3:
        return frame.astype(np.uint8)
    lo, hi = np.percentile(frame, [0.5, 99.5])
    grey = np.clip((frame.astype(np.float32) - lo) / max(hi - lo, 1.0) * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _outlined(rgb: np.ndarray, masks: dict[int, np.ndarray], thick: bool) -> np.ndarray:
    """A copy of ``rgb`` with the outline of each class mask in its ``COLOURS`` (1 or 3 pixels wide)."""
    over = rgb.copy()
    for c, m in masks.items():
        edge = m & ~ndimage.binary_erosion(m, iterations=1)
        over[ndimage.binary_dilation(edge, iterations=1) if thick else edge] = COLOURS[c]
    return over


def render_series(case: Path, entry: dict, out: Path) -> Path:
    frames, dss = _read_series(case / entry["folder"])
    masks = _read_seg(case / entry["seg"], dss, frames.shape[0])
    k = int(np.argmax(masks[..., 2].sum(axis=(1, 2)))) if masks[..., 2].any() else frames.shape[0] // 2
    base = _to_rgb(frames[k])
    over = _outlined(base, {s: masks[k, ..., s - 1] for s in COLOURS}, thick=True)
    img = Image.fromarray(np.concatenate([base, over], axis=1))
    draw = ImageDraw.Draw(img)
    for nod in entry["nodules"]:
        kk, i, j = nod["center_voxel"]
        if round(kk) == k:
            x, y = base.shape[1] + j, i
            draw.line([(x - 6, y), (x + 6, y)], fill=(255, 0, 255))
            draw.line([(x, y - 6), (x, y + 6)], fill=(255, 0, 255))
    scale = min(1.0, 1200 / img.width)
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    path = out / f"{case.parent.name}_{case.name}_{Path(entry['folder']).name}.png"
    img.save(path)
    return path


def render_randomised(modality: str, n: int, seed: int, out: Path) -> Path:
    """A sheet of ``n`` randomised training images of ``modality`` with their class labels outlined."""
    from backmice_vision.model.bundle import load_bundle
    from backmice_vision.model.synthetic import SyntheticSource

    prep = load_bundle(Path("models") / f"backmice_{modality}", device="cpu").preprocessing
    source = SyntheticSource(prep, subjects=50, pool=200, seed=seed, anatomy={"no_nodule_prob": 0.2})
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        sample = source.sample(rng)
        image = sample["image"][prep.context if modality == "mr" else 0]
        labels = sample["label"][0]
        base = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
        over = _outlined(base, {c: labels == c for c in COLOURS}, thick=False)
        pair = Image.fromarray(np.concatenate([base, over], axis=0))
        scale = min(240 / pair.width, 480 / pair.height)  # keep the pixel aspect
        pair = pair.resize((round(pair.width * scale), round(pair.height * scale)), Image.Resampling.BILINEAR)
        tile = Image.new("RGB", (240, 480))
        tile.paste(pair, ((240 - pair.width) // 2, (480 - pair.height) // 2))
        tiles.append(np.asarray(tile))
    half = max(1, n // 2)
    rows = [np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half : 2 * half], axis=1)]
    path = out / f"randomised_{modality}.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--modality", choices=["us", "mr", "both"], default="both")
    ap.add_argument("--sizes", type=float, nargs="*", default=[10.0, 35.0])
    ap.add_argument("--out", type=Path, default=Path("docs/gallery"))
    ap.add_argument("--randomised", type=int, default=10, help="randomised training images per modality")
    ns = ap.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    for modality in ("us", "mr") if ns.modality == "both" else (ns.modality,):
        if ns.randomised > 0:
            print(render_randomised(modality, ns.randomised, ns.seed, ns.out))
    work = Path(tempfile.mkdtemp(prefix="backmice_gallery_"))
    try:
        for modality in ("us", "mr") if ns.modality == "both" else (ns.modality,):
            base = load_yaml_config(CONFIG_DIR / f"phantom_{modality}.yaml")
            runs = [(modality, ns.cases, {"force_nodules": 2}, {})]
            for size in ns.sizes:
                one = {
                    "force_nodules": 1,
                    "nodule_long_axis_mm": [size, size],
                    "nodule_long_axis_median_mm": size,
                }
                runs.append(
                    (f"{modality}_{size:g}mm", 1, one, {"p_sagittal": 1.0} if modality == "mr" else {})
                )
            for name, n, anatomy, extra in runs:
                config = {**base, **extra, "anatomy": {**base.get("anatomy", {}), **anatomy}}
                cases = generate_cases(modality, n, ns.seed, work / name, config, progress=False)  # type: ignore[arg-type]
                for case in cases:
                    truth = json.loads((case / "ground_truth.json").read_text())
                    for entry in truth["series"]:
                        print(render_series(case, entry, ns.out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
