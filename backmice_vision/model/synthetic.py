"""Training samples drawn on the fly: domain-randomised phantoms mixed with the annotated tiles.

A ``type: synthetic`` entry under ``data.train`` of a training config adds
:class:`SyntheticSource` (label maps from phantom subjects, a new appearance for every draw,
:mod:`backmice_vision.phantoms.randomise`) beside the annotated sources (physics phantoms or a user's
own DICOM SEG / NIfTI, :mod:`.data`)::

    - type: synthetic
      share: 0.6            # fraction of the training images drawn from it
      subjects: 400         # phantom subjects (seed, seed + 1, ...)
      pool: 3000            # label maps kept (each is re-drawn with a new look every time)
      seed: 7
      anatomy: {...}        # AnatomyConfig overrides (e.g. nodule sizes 5-45 mm)

The label maps are the slow part of a draw (about 0.8 s for an MR stack, against 0.1 s for its look), so
with a ``cache_dir`` each is also kept on disk, keyed by the source's settings and the phantom generator's
code: a resumed run or a later session reads the pool instead of rebuilding it.

Under ``data.val`` the same entry adds ``samples`` fixed randomised tiles to the checkpoint selection and
(ultrasound) ``calibration_samples`` randomised images to the confidence calibration.

:class:`MixedTrainingSet` is the epoch's list of images: item ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)``, so a run resumed from its checkpoint draws the same images as an uninterrupted one.
Samples are ``{"image": float32 (C, h, w) in [0, 1], "label": uint8 (1, h, w)}`` in model space, as the
tiles of :func:`~backmice_vision.model.data.series_samples` (before the training transforms).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .. import labels as labels_module
from ..errors import ConfigError
from ..fileio import write_atomic
from ..labels import tissue_to_class_lut
from ..phantoms import anatomy, deep, labelmaps, mr, randomise, ultrasound
from ..phantoms.labelmaps import MRLabelStack
from ..types import FrameSource, ImageSeries, UltrasoundRegion
from .inference import Preprocessing, _scale

# The phantom modules are imported here, with this module, not where they are used: a DataLoader worker
# forked in a later epoch then runs the code the training started with, not a file edited since.

_CLASS_LUT = np.asarray(tissue_to_class_lut(), np.uint8)
POOL_FORMAT = "label-map/1"  # the on-disk layout of a cached label map (_write_map)
SYNTHETIC_KEYS = frozenset(
    {"type", "share", "subjects", "pool", "seed", "anatomy", "samples", "calibration_samples"}
    | {"fat_mimic_prob", "fascia_dimming_prob", "nodule_offset_fraction"}
)


@dataclass
class SyntheticSource:
    """Domain-randomised samples of one modality at the model spacing of ``prep``.

    Label map ``p`` of the pool comes from subject ``p % subjects`` with a generator seeded by
    ``(seed, p)``; it is built on first use and kept (a few tens of kB each), and with ``cache_dir`` also
    written there (``<cache_dir>/<key>/<p>.npz``) for later runs. ``fat_mimic_prob``: the
    share of ultrasound images given fat lobules outlined by partial septa (hard negatives, see
    :func:`~backmice_vision.phantoms.randomise.randomise_us`); ``fascia_dimming_prob`` the share given
    the fascia's specular dimming and dropouts (hard negatives for a fascia gap);
    ``nodule_offset_fraction`` how far an ultrasound plane over a nodule may move it off the image
    centre, as a fraction of the image width (:func:`~backmice_vision.phantoms.labelmaps.us_label_map`).
    """

    prep: Preprocessing
    subjects: int = 400
    pool: int = 3000
    seed: int = 0
    anatomy: dict[str, Any] = field(default_factory=dict)
    fat_mimic_prob: float = 0.0
    fascia_dimming_prob: float = 0.0
    nodule_offset_fraction: float = 0.0
    cache_dir: Path | None = None
    _maps: dict[int, np.ndarray | MRLabelStack] = field(default_factory=dict, repr=False)
    _subjects: dict[int, Any] = field(default_factory=dict, repr=False)
    _pool: Path | None = field(default=None, repr=False)  # _pool_dir(), hashed once

    @classmethod
    def from_config(
        cls, entry: dict[str, Any], prep: Preprocessing, cache_dir: Path | None = None
    ) -> SyntheticSource:
        unknown = sorted(set(entry) - SYNTHETIC_KEYS)
        if unknown:
            raise ConfigError(f"synthetic source: unknown key(s) {', '.join(unknown)}")
        try:
            src = cls(
                prep=prep,
                subjects=int(entry.get("subjects", 400)),
                pool=int(entry.get("pool", 3000)),
                seed=int(entry.get("seed", 0)),
                anatomy=dict(entry.get("anatomy") or {}),
                fat_mimic_prob=float(entry.get("fat_mimic_prob", 0.0)),
                fascia_dimming_prob=float(entry.get("fascia_dimming_prob", 0.0)),
                nodule_offset_fraction=float(entry.get("nodule_offset_fraction", 0.0)),
                cache_dir=cache_dir,
            )
        except (TypeError, ValueError):
            raise ConfigError(
                "synthetic source: subjects, pool and seed must be integers, fat_mimic_prob, "
                "fascia_dimming_prob and nodule_offset_fraction numbers"
            ) from None
        for key, prob in (
            ("fat_mimic_prob", src.fat_mimic_prob),
            ("fascia_dimming_prob", src.fascia_dimming_prob),
            ("nodule_offset_fraction", src.nodule_offset_fraction),
        ):
            if not 0.0 <= prob <= 1.0:
                raise ConfigError(f"synthetic source: {key} must be between 0 and 1")
            if prob and prep.modality != "US":
                raise ConfigError(f"synthetic source: {key} is for ultrasound only")
        if src.subjects < 1 or src.pool < 1:
            raise ConfigError("synthetic source: subjects and pool must be >= 1")
        for key in ("samples", "calibration_samples"):
            if key in entry and (not isinstance(entry[key], int) or entry[key] < 0):
                raise ConfigError(f"synthetic source: {key} must be an integer >= 0")
        if entry.get("calibration_samples") and prep.modality != "US":
            raise ConfigError("synthetic source: calibration_samples is for ultrasound only")
        anatomy.AnatomyConfig.from_dict(src.anatomy)  # fail at start, not in the middle of an epoch
        return src

    def _subject(self, index: int) -> Any:
        if index not in self._subjects:
            self._subjects[index] = anatomy.make_subject(
                self.seed * 100_003 + index, anatomy.AnatomyConfig.from_dict(self.anatomy)
            )
        return self._subjects[index]

    def label_map(self, p: int) -> np.ndarray | MRLabelStack:
        """Tissue labels of pool entry ``p``: uint8 ``(rows, cols)`` (US) or an :class:`MRLabelStack`
        of ``C`` neighbouring slices (MR)."""
        if p not in self._maps:
            path = self._pool_dir() / f"{p:05d}.npz" if self.cache_dir is not None else None
            cached = _read_map(path) if path is not None and path.is_file() else None
            self._maps[p] = cached if cached is not None else self._build_map(p)
            if path is not None and cached is None:
                _write_map(path, self._maps[p])
        return self._maps[p]

    def _build_map(self, p: int) -> np.ndarray | MRLabelStack:
        rng = np.random.default_rng([self.seed, p, 0x5EED])
        subject = self._subject(p % self.subjects)
        if self.prep.modality == "US":
            return labelmaps.us_label_map(
                subject, rng, self.prep.spacing_mm, offset_fraction=self.nodule_offset_fraction
            )
        return labelmaps.mr_label_stack(subject, rng, self.prep.spacing_mm, self.prep.context)

    def _pool_dir(self) -> Path:
        """``cache_dir/<sha1>``: the key holds what a map depends on (the source's subjects, seed and
        anatomy, the model spacing and context, the plane placement) and the code that builds it: the
        modality's map builder and the modules it uses, not the appearance code (:mod:`.randomise`)."""
        if self._pool is not None:
            return self._pool
        assert self.cache_dir is not None
        settings = {
            "format": POOL_FORMAT,
            "modality": self.prep.modality,
            "spacing_mm": self.prep.spacing_mm,
            "context": self.prep.context,
            "seed": self.seed,
            "subjects": self.subjects,
            "anatomy": self.anatomy,
            "nodule_offset_fraction": self.nodule_offset_fraction,
        }
        us = self.prep.modality == "US"
        builder = labelmaps.us_label_map if us else labelmaps.mr_label_stack
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
        digest.update(inspect.getsource(builder).encode())
        for module in (labels_module, anatomy, deep, ultrasound if us else mr):  # what the builder uses
            digest.update(Path(module.__file__ or "").read_bytes())
        self._pool = self.cache_dir / digest.hexdigest()
        return self._pool

    def fixed_samples(self, n: int) -> list[dict[str, np.ndarray]]:
        """``n`` samples drawn once from ``seed`` (a validation set of the randomised look: the same
        images for every epoch and every run with this source)."""
        rng = np.random.default_rng([self.seed, n, 0x7A1])
        return [self.sample(rng) for _ in range(n)]

    def calibration_series(self, n: int) -> Iterator[tuple[ImageSeries, np.ndarray]]:
        """``n`` randomised ultrasound images drawn once from ``seed`` (not those of
        :meth:`fixed_samples`) as calibrated single-frame series at the model spacing, with their class
        labels uint8 ``(1, rows, cols)``: detections on them calibrate the confidence for looks other
        than the physics simulator's. Ultrasound only (a randomised MR stack has no slice geometry)."""
        if self.prep.modality != "US":
            raise ConfigError("synthetic source: calibration_samples is for ultrasound only")
        rng = np.random.default_rng([self.seed, n, 0xCA1])
        sp = float(self.prep.spacing_mm)
        for k in range(n):
            labels = self.label_map(int(rng.integers(self.pool)))
            assert isinstance(labels, np.ndarray)  # an ultrasound map
            image = randomise.randomise_us(labels, rng, sp, self.fat_mimic_prob, self.fascia_dimming_prob)[
                None
            ]
            image = np.ascontiguousarray(image, np.float32)
            rows, cols = labels.shape
            region = UltrasoundRegion(0, (0, 0, rows, cols), (sp, sp))
            frames = [FrameSource(f"synthetic:{self.seed}:{k}", "", 1)]
            yield ImageSeries("US", image, None, frames, "", "", regions=[region]), _CLASS_LUT[labels][None]

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sample with a new appearance for a pool label map chosen by ``rng``."""
        labels = self.label_map(int(rng.integers(self.pool)))
        if isinstance(labels, np.ndarray):  # ultrasound
            image = randomise.randomise_us(
                labels, rng, self.prep.spacing_mm, self.fat_mimic_prob, self.fascia_dimming_prob
            )[None]
            centre = labels
        else:
            image, shown = randomise.randomise_mr(labels, rng, self.prep.spacing_mm)
            centre = shown[self.prep.context]
        image = _scale(np.ascontiguousarray(image, np.float32), self.prep.percentiles)
        return {"image": image, "label": _CLASS_LUT[centre][None]}


def _read_map(path: Path) -> np.ndarray | MRLabelStack | None:
    """A label map written by :func:`_write_map`, or None when the file is unreadable (then rebuilt)."""

    try:
        with np.load(path) as z:
            if "slices" not in z:
                return np.asarray(z["labels"])
            refined = tuple((z[f"index_{c}"], z[f"tissues_{c}"]) for c in range(int(z["slices"])))
            return MRLabelStack(np.asarray(z["labels"]), refined)
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_map(path: Path, labels: np.ndarray | MRLabelStack) -> None:
    """Write a pool label map atomically (compressed: label maps are mostly long runs of one tissue)."""
    if isinstance(labels, np.ndarray):
        arrays: dict[str, Any] = {"labels": labels}
    else:
        arrays = {"labels": labels.labels, "slices": np.array(len(labels.refined))}
        for c, (index, tissues) in enumerate(labels.refined):
            arrays[f"index_{c}"], arrays[f"tissues_{c}"] = index, tissues

    def savez(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez appends ".npz" to a name
            np.savez_compressed(fh, **arrays)

    write_atomic(path, savez, "label-map cache")


class MixedTrainingSet(Dataset[Any]):
    """The images of one epoch (a map-style dataset of ``length`` items, transforms applied).

    Item ``i`` is drawn from the synthetic source with probability ``share``, otherwise it is one of
    ``tiles`` (annotated tiles, chosen uniformly); the choice and the synthetic appearance are seeded by
    ``(seed, epoch, i)``. :meth:`set_epoch` moves to the next epoch.
    """

    def __init__(
        self,
        tiles: list[dict[str, np.ndarray]],
        synthetic: SyntheticSource | None,
        share: float,
        transforms: Any,
        length: int,
        seed: int,
    ) -> None:
        if not tiles and synthetic is None:
            raise ConfigError("no training samples: add an annotated source or a synthetic one")
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"synthetic share must be in [0, 1], got {share}")
        self.tiles, self.synthetic, self.transforms = tiles, synthetic, transforms
        self.share = 0.0 if synthetic is None else share if tiles else 1.0
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """Item ``i`` of the current epoch before the transforms."""
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        if self.synthetic is not None and rng.random() < self.share:
            return self.synthetic.sample(rng)
        return self.tiles[int(rng.integers(len(self.tiles)))]

    def __getitem__(self, i: int) -> Any:
        return self.transforms(self.raw(i))
