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
    VISCERA = 15  # unspecified abdominal contents (the finer labels below are used instead)
    CSF = 16  # cerebrospinal fluid in the dural sac
    # deep anatomy of the axial lumbar section (phantoms.deep); physics tables use TISSUE_BASE
    VERTEBRAL_BODY = 17  # marrow inside the cortex (BONE is the cortical rim)
    DISC = 18
    PEDICLE = 19
    LAMINA = 20
    SPINOUS_PROCESS = 21
    FACET = 22  # articular processes and the facet joint
    TRANSVERSE_PROCESS = 23
    SACRUM = 24
    ILIUM = 25
    MULTIFIDUS = 26
    ERECTOR_SPINAE = 27
    PSOAS = 28
    QUADRATUS_LUMBORUM = 29
    ILIACUS = 30
    GLUTEUS_MEDIUS = 31
    GLUTEUS_MAXIMUS = 32
    ABDOMINAL_WALL = 33
    BOWEL = 34
    RETROPERITONEAL_FAT = 35
    INTRAMUSCULAR_FAT = 36
    EPIDURAL_FAT = 37


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
BONES = (  # bone structures of the deep anatomy (cortex is BONE itself)
    Tissue.VERTEBRAL_BODY,
    Tissue.PEDICLE,
    Tissue.LAMINA,
    Tissue.SPINOUS_PROCESS,
    Tissue.FACET,
    Tissue.TRANSVERSE_PROCESS,
    Tissue.SACRUM,
    Tissue.ILIUM,
)
MUSCLES = (
    Tissue.MULTIFIDUS,
    Tissue.ERECTOR_SPINAE,
    Tissue.PSOAS,
    Tissue.QUADRATUS_LUMBORUM,
    Tissue.ILIACUS,
    Tissue.GLUTEUS_MEDIUS,
    Tissue.GLUTEUS_MAXIMUS,
    Tissue.ABDOMINAL_WALL,
)
DEEP_FATS = (Tissue.RETROPERITONEAL_FAT, Tissue.INTRAMUSCULAR_FAT, Tissue.EPIDURAL_FAT)
NODULE_TISSUES = (Tissue.NODULE, Tissue.NODULE_CAPSULE, Tissue.STALK)  # a back mouse: body, capsule, stalk
# The physical tissue of each fine label (the simulators' tables are per base tissue).
TISSUE_BASE: dict[Tissue, Tissue] = {
    **{t: t for t in Tissue if t <= Tissue.CSF},
    **dict.fromkeys(BONES, Tissue.BONE),
    **dict.fromkeys(MUSCLES, Tissue.MUSCLE),
    **dict.fromkeys(DEEP_FATS, Tissue.DEEP_FAT),
    Tissue.DISC: Tissue.VISCERA,
    Tissue.BOWEL: Tissue.VISCERA,
}
# Fine deep labels are not model classes: all background (the fat class is the subcutaneous fat).
TISSUE_TO_CLASS.update({t: BACKGROUND for t in Tissue if t > Tissue.CSF})


def tissue_base_lut() -> list[int]:
    """A 256-entry lookup table from tissue label to its base tissue (:data:`TISSUE_BASE`)."""
    lut = list(range(256))
    for tissue, base in TISSUE_BASE.items():
        lut[int(tissue)] = int(base)
    return lut


def tissue_to_class_lut() -> list[int]:
    """A 256-entry lookup table from tissue label to model class."""
    lut = [BACKGROUND] * 256
    for tissue, cls in TISSUE_TO_CLASS.items():
        lut[int(tissue)] = cls
    return lut
