"""Class and tissue registries. Import-light (no torch) so the CLI and writers share them.

``MODEL_CLASSES`` are the channels the segmentation models predict.
``Tissue`` are the finer labels of the phantom anatomy; :data:`TISSUE_TO_CLASS`
maps them onto the model classes.
"""

from __future__ import annotations

from enum import IntEnum

MODEL_CLASSES: tuple[str, ...] = ("background", "fat", "fascia", "nodule", "defect")
BACKGROUND, FAT, FASCIA, NODULE, DEFECT = range(len(MODEL_CLASSES))


class Tissue(IntEnum):
    """Tissue labels of the phantom anatomy (uint8 label volumes)."""

    AIR = 0  # air, gel, outside the body
    SKIN = 1
    SUPERFICIAL_FAT = 2  # SAT
    SUPERFICIAL_FASCIA = 3  # membranous layer
    DEEP_FAT = 4  # DAT, lumbar / gluteal fat pad
    TLF = 5  # thoracolumbar fascia, posterior layer
    MUSCLE = 6  # paraspinal muscle (and other muscle in MR)
    BONE = 7  # iliac crest, PSIS, sacrum, spinous processes, vertebrae
    NODULE = 8  # back-mouse fat
    NODULE_CAPSULE = 9  # capsule and septa
    STALK = 10  # fat herniating through the fascial defect
    CYST = 11  # epidermoid / sebaceous cyst
    VESSEL = 12
    HAEMATOMA = 13  # haematoma / seroma
    OEDEMA = 14  # posterior subcutaneous oedema band (MR)
    VISCERA = 15  # abdominal contents, disc, marrow: the rest of the cross-section
    CSF = 16


TISSUE_TO_CLASS: dict[Tissue, int] = {
    Tissue.AIR: BACKGROUND,
    Tissue.SKIN: BACKGROUND,
    Tissue.SUPERFICIAL_FAT: FAT,
    Tissue.SUPERFICIAL_FASCIA: FAT,  # thin membranous layer inside the fat
    Tissue.DEEP_FAT: FAT,
    Tissue.TLF: FASCIA,
    Tissue.MUSCLE: BACKGROUND,
    Tissue.BONE: BACKGROUND,
    Tissue.NODULE: NODULE,
    Tissue.NODULE_CAPSULE: NODULE,
    Tissue.STALK: DEFECT,
    Tissue.CYST: BACKGROUND,
    Tissue.VESSEL: BACKGROUND,
    Tissue.HAEMATOMA: BACKGROUND,
    Tissue.OEDEMA: FAT,
    Tissue.VISCERA: BACKGROUND,
    Tissue.CSF: BACKGROUND,
}


def tissue_to_class_lut() -> list[int]:
    """A 256-entry lookup table from tissue label to model class."""
    lut = [BACKGROUND] * 256
    for tissue, cls in TISSUE_TO_CLASS.items():
        lut[int(tissue)] = cls
    return lut
