"""Modality profiles: what each analysed modality means to every stage, in one registry.

A :class:`ModalityProfile` names, for one DICOM Modality value, the header planner of
:mod:`backmice_vision.io` (order, geometry, regions), its geometry kind, the model's default preprocessing
and the shipped bundle.
Stages dispatch on :func:`profile_for`; a modality without a profile (CT, PT, ...) raises
:class:`~backmice_vision.errors.UnsupportedSeries` with a one-line message, never falls through to the
ultrasound path.

Geometry kinds
    ``"volume"``: a stack with an affine from voxel index ``(k, i, j)`` to LPS mm and one spacing (MR).
    ``"regions"``: 2-D frames whose millimetres come from calibrated regions, no patient coordinates (US).

This module imports neither torch nor pydicom: the CLI and :mod:`backmice_vision.batch` use it to plan.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import UnsupportedSeries

if TYPE_CHECKING:
    from .io.plan import Plan
    from .io.reader import Instance
    from .model.inference import Preprocessing

Geometry = Literal["volume", "regions"]


@dataclass(frozen=True)
class ModalityProfile:
    """Everything that differs between analysed modalities (see the module docstring).

    ``planner`` is ``"module:function"`` (imported on first use) taking the instances of one series and
    returning its :class:`~backmice_vision.io.plan.Plan`. ``preprocessing`` holds the arguments of the
    default :class:`~backmice_vision.model.inference.Preprocessing` (what training starts from); a bundle
    stores its own. ``bundle`` is the folder name of the shipped model under ``models/``.
    """

    modality: str
    geometry: Geometry
    planner: str
    bundle: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def is_volume(self) -> bool:
        """A stack with an affine (patient coordinates), not 2-D calibrated regions."""
        return self.geometry == "volume"

    def plan(self, instances: list[Instance]) -> Plan:
        """The headers-only plan of one series of this modality."""
        module, _, name = self.planner.partition(":")
        fn: Callable[[list[Instance]], Plan] = getattr(importlib.import_module(module), name)
        return fn(instances)

    def default_preprocessing(self) -> Preprocessing:
        from .model.inference import Preprocessing

        return Preprocessing(modality=self.modality, **self.preprocessing)


PROFILES: dict[str, ModalityProfile] = {
    p.modality: p
    for p in (
        ModalityProfile(
            modality="MR",
            geometry="volume",
            planner="backmice_vision.io.mr:plan_mr",
            bundle="backmice_mr",
            preprocessing={"spacing_mm": 0.9, "percentiles": (0.5, 99.5)},
            description="MR: a slice stack with an affine (2.5-D model input)",
        ),
        ModalityProfile(
            modality="US",
            geometry="regions",
            planner="backmice_vision.io.us:plan_us",
            bundle="backmice_us",
            preprocessing={"spacing_mm": 0.2, "percentiles": (1.0, 99.0)},
            description="B-mode ultrasound: frames or cine clips, calibrated 2-D regions",
        ),
    )
}
MODALITIES: tuple[str, ...] = tuple(PROFILES)  # the analysed modalities, "MR" and "US"


def profile_for(modality: str, where: str | Path | None = None) -> ModalityProfile:
    """The profile of ``modality`` (case-insensitive); :class:`UnsupportedSeries` for any other.

    ``where`` (a file or folder) is named in the error message.
    """
    profile = PROFILES.get(str(modality).strip().upper())
    if profile is None:
        raise UnsupportedSeries(
            f"modality {modality or '(none)'} is not analysed ({' and '.join(MODALITIES)} only)", where
        )
    return profile
