"""What a series will decode into, worked out from headers alone (no pixel data)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ..errors import InconsistentSeries
from ..types import Modality, UltrasoundRegion
from .reader import Instance

T = TypeVar("T")


@dataclass
class FrameRef:
    """One output frame/slice: ``frame`` (0-based) of ``inst``, with its rescale slope and intercept."""

    inst: Instance
    frame: int = 0
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class Plan:
    """The output of :func:`~backmice_vision.io.load_series` except the pixels.

    ``frames`` are in output order (MR sorted along the slice normal, US in acquisition order).
    """

    modality: Modality
    frames: list[FrameRef]
    rows: int
    columns: int
    spacing_mm: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    regions: list[UltrasoundRegion] = field(default_factory=list)
    colour: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        """The instances used, each once, in order of first use."""
        seen: dict[int, Instance] = {}
        for f in self.frames:
            seen.setdefault(id(f.inst), f.inst)
        return list(seen.values())


def largest_consistent(
    items: Sequence[T], key: Callable[[T], Hashable], what: str, path: str
) -> tuple[list[T], list[str]]:
    """Keep the largest group of ``items`` sharing ``key`` (orientation, matrix size, ...).

    Rule: the largest group wins and the others are reported as one problem line. When two or more
    groups tie for largest the series is ambiguous and :class:`InconsistentSeries` is raised, listing
    the group sizes.
    """
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    if len(groups) == 1:
        return list(items), []
    sizes = sorted((len(g) for g in groups.values()), reverse=True)
    if sizes[0] == sizes[1]:
        raise InconsistentSeries(
            f"{len(groups)} stacks with different {what} of equal size ({', '.join(map(str, sizes))} images)",
            path,
        )
    best = max(groups.values(), key=len)
    dropped = len(items) - len(best)
    return best, [
        f"ignored {dropped} of {len(items)} images with a different {what} (localizer or other stack)"
    ]
