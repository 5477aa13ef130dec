"""Ultrasound B-mode simulation on planes through a phantom :class:`Subject`.

Geometry
--------
A :class:`ScanPlane` is a linear probe on the skin. ``center_mm`` is the contact point (LPS mm),
``beam_dir`` points into the body (``-y`` for a probe held perpendicular to a flat back) and
``lateral_dir`` runs along the array (``+x``, the patient's left, for a transverse image). Image pixel
``(i, j)`` (row, column) has its centre at depth ``(i + 0.5) * pixel_mm[0]`` below the transducer face
and lateral offset ``(j + 0.5 - cols / 2) * pixel_mm[1]`` from the contact point: row 0 is the
transducer face, columns grow along ``lateral_dir``.

Physics (numbers from ``domain.md`` §3 and its phantom parameter table)
------------------------------------------------------------------------
Complex (IQ) baseband simulation: complex Gaussian scatterers, fixed in the tissue, scaled by a
tissue-dependent backscatter amplitude (dB relative to fat), are convolved with a separable Gaussian
point-spread function (axial FWHM = half the pulse length, lateral FWHM 0.3-0.5 mm at 15 MHz scaled
by 1/f, elevational FWHM about 1 mm). Demodulating a Gaussian-modulated sinusoid at its centre frequency
leaves its Gaussian envelope, so ``|IQ|`` is the envelope the Hilbert transform of the RF would give.
Round-trip frequency-dependent attenuation ``2 * alpha * f * z`` accumulates along each beam, electronic
noise is added, and a TGC compensates only part (``tgc_fraction``) of the loss of a typical column, with
a residual error, and never amplifies the electronic noise above ``noise_ceiling_db`` (scanners limit
gain where the echo is not above the noise, domain.md §3 [39]): the deep field fades to a dark, uniform
noise floor instead of brightening. The envelope is then log-compressed into the dynamic range.

* Focus: the lateral FWHM is smallest at ``focus_mm`` and grows as ``sqrt(1 + ((z - focus) / dof)^2)``
  (a Gaussian beam with depth of field ``depth_of_field_mm``), applied in 1.5 mm depth bands.
* Specular fascia: the thoracolumbar fascia's echo has a specular part that falls off with the angle
  between the beam and the fascia normal (``exp(-(theta / specular_width_deg)^2)``; it dims when the
  beam is a few degrees off perpendicular, domain.md §3 [36]). The normal is measured on the subject
  (the fascia's top in the plane and in two planes +-0.5 mm in elevation).
* Reverberation: the near field between the transducer and the fascia repeats once below it
  (``reverb_db`` below the original), plus near-field clutter in the top 1-3 mm [43].
* Contact: the probe flattens the skin (each column's points shift along the beam so the skin starts at
  the transducer face), as a probe pressed on gel does; the labels and measurements use the same points.

The physics grid is twice as fine as the output axially.
Not modelled: refraction, speed-of-sound depth errors, frequency downshift, elevational focusing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from ..labels import NODULE_TISSUES, Tissue, tissue_base_lut

Vec3 = tuple[float, float, float]
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# E[20 log10 |Z|] for a unit-power complex Gaussian Z: the mean log level of fully developed speckle.
_RAYLEIGH_LOG_MEAN_DB = -10.0 * np.euler_gamma / math.log(10.0)
_BASE_LUT = np.asarray(tissue_base_lut(), np.uint8)


class SubjectLike(Protocol):
    """What the simulator needs from ``phantoms.anatomy.Subject``."""

    @property
    def nodules(self) -> Sequence[Any]: ...

    def labels_at(self, points_mm: np.ndarray) -> np.ndarray: ...

    def skin_y(self, x: Any, z: Any) -> Any: ...


# ---------------------------------------------------------------------------------------------
# probe


@dataclass(frozen=True)
class ProbeSettings:
    """A linear probe and the scanner's display settings.

    ``pixel_mm`` is the (square) output pixel; ``speed_of_sound_m_s`` is the scanner's assumed speed,
    used for the wavelength. ``noise_db`` is the electronic noise power relative to fat backscatter at
    the transducer face, before TGC. The TGC follows the round-trip loss of a typical column (as a
    sonographer sets its sliders), ``tgc_fraction`` is the share of it applied (1 = full compensation)
    and ``tgc_error_db`` a residual error reached at the full depth; ``noise_ceiling_db`` caps the total
    TGC gain so that the electronic noise never rises above that level (dB vs fat at the face).
    ``focus_mm`` / ``depth_of_field_mm`` shape the lateral beam width with depth;
    ``specular_width_deg`` is the fascia's specular lobe; ``reverb_db`` the reverberation level.
    """

    frequency_mhz: float = 15.0
    depth_mm: float = 40.0
    width_mm: float = 40.0
    dynamic_range_db: float = 60.0
    gain_db: float = 0.0
    tgc_error_db: float = 0.0
    pixel_mm: float = 0.08
    speed_of_sound_m_s: float = 1540.0
    pulse_cycles: float = 2.5
    lateral_fwhm_mm_at_15mhz: float = 0.4
    elevation_fwhm_mm: float = 1.0
    noise_db: float = -100.0
    tgc_fraction: float = 0.9
    noise_ceiling_db: float = -14.0
    focus_mm: float = 20.0
    depth_of_field_mm: float = 12.0
    specular_width_deg: float = 5.0
    reverb_db: float = -28.0

    def __post_init__(self) -> None:
        checks = {
            "frequency_mhz": (1.0, 60.0),
            "depth_mm": (5.0, 200.0),
            "width_mm": (5.0, 120.0),
            "dynamic_range_db": (20.0, 120.0),
            "pixel_mm": (0.01, 1.0),
            "speed_of_sound_m_s": (1000.0, 2000.0),
            "pulse_cycles": (0.5, 10.0),
            "lateral_fwhm_mm_at_15mhz": (0.05, 5.0),
            "elevation_fwhm_mm": (0.1, 10.0),
            "tgc_fraction": (0.0, 1.2),
            "noise_ceiling_db": (-80.0, 20.0),
            "focus_mm": (1.0, 200.0),
            "depth_of_field_mm": (1.0, 200.0),
            "specular_width_deg": (0.5, 90.0),
            "reverb_db": (-200.0, 0.0),
        }
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ConfigError(f"probe setting {name}={value} outside [{lo}, {hi}]")
        rows, cols = self.shape
        if rows * cols > 4_000_000:
            raise ConfigError(f"probe image {rows}x{cols} pixels is too large (pixel_mm={self.pixel_mm})")

    @property
    def wavelength_mm(self) -> float:
        return self.speed_of_sound_m_s / 1000.0 / self.frequency_mhz

    @property
    def axial_fwhm_mm(self) -> float:
        """Axial resolution: half the spatial pulse length (0.1-0.15 mm at 15 MHz)."""
        return self.pulse_cycles * self.wavelength_mm / 2.0

    @property
    def lateral_fwhm_mm(self) -> float:
        """Lateral resolution at the focus, scaling with 1/f from its value at 15 MHz."""
        return self.lateral_fwhm_mm_at_15mhz * 15.0 / self.frequency_mhz

    def lateral_fwhm_at(self, depth_mm: np.ndarray) -> np.ndarray:
        """Lateral FWHM (mm) at ``depth_mm``: a Gaussian beam narrowest at ``focus_mm``."""
        grow = (np.asarray(depth_mm, np.float64) - self.focus_mm) / self.depth_of_field_mm
        return self.lateral_fwhm_mm * np.sqrt(1.0 + grow**2)

    @property
    def shape(self) -> tuple[int, int]:
        """Output image (rows, cols)."""
        return (max(1, round(self.depth_mm / self.pixel_mm)), max(1, round(self.width_mm / self.pixel_mm)))


# Ranges of random_probe (phantom parameter table: linear 12-18 MHz, depth 3-6 cm, width 38-50 mm,
# pixel 0.05-0.1 mm, log compression 50-70 dB; focus at the fascia, 1-3 cm, anatomy.md §3; fascia
# anisotropy within ~5 degrees [36]; reverberation [43]; pulse, beam widths, noise, TGC share and
# its gain limit [E]).
PROBE_RANGES: dict[str, tuple[float, float]] = {
    "frequency_mhz": (12.0, 18.0),
    "depth_mm": (30.0, 60.0),
    "width_mm": (38.0, 50.0),
    "dynamic_range_db": (50.0, 70.0),
    "gain_db": (-6.0, 6.0),
    "tgc_error_db": (-4.0, 4.0),
    "pixel_mm": (0.05, 0.1),
    "speed_of_sound_m_s": (1540.0, 1540.0),
    "pulse_cycles": (2.0, 3.0),
    "lateral_fwhm_mm_at_15mhz": (0.3, 0.5),
    "elevation_fwhm_mm": (0.8, 1.5),
    "noise_db": (-110.0, -95.0),
    "tgc_fraction": (0.85, 1.0),
    "noise_ceiling_db": (-18.0, -8.0),
    "focus_mm": (10.0, 30.0),
    "depth_of_field_mm": (8.0, 20.0),
    "specular_width_deg": (3.0, 7.0),
    "reverb_db": (-35.0, -20.0),
}
MAX_RANDOM_ROWS = 900  # random_probe coarsens the pixel so that an image has at most this many rows


def _draw(
    rng: np.random.Generator, ranges: Mapping[str, Any], config: Mapping[str, Any] | None, what: str
) -> dict[str, float]:
    merged: dict[str, Any] = dict(ranges)
    for key, value in (config or {}).items():
        if key not in ranges:
            raise ConfigError(f"unknown {what} setting {key!r}")
        merged[key] = value
    out: dict[str, float] = {}
    for key, value in merged.items():
        try:
            pair = (value, value) if isinstance(value, (int, float)) else (value[0], value[1])
            lo, hi = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise ConfigError(
                f"{what} setting {key!r} must be a number or [low, high], got {value!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            raise ConfigError(f"{what} setting {key!r} has an invalid range [{lo}, {hi}]")
        out[key] = float(rng.uniform(lo, hi)) if hi > lo else lo
    return out


def random_probe(rng: np.random.Generator, config: Mapping[str, Any] | None = None) -> ProbeSettings:
    """Draw probe and display settings; ``config`` maps a setting name to a number or ``[low, high]``."""
    values = _draw(rng, PROBE_RANGES, config, "probe")
    # a deeper preset uses a lower frequency: at most ~600 / depth MHz (40 mm: 15 MHz, 60 mm: 10 MHz),
    # kept inside the configured frequency range (anatomy.md §3 "Depth and focus") [E]
    f_range = (config or {}).get("frequency_mhz", PROBE_RANGES["frequency_mhz"])
    f_low = float(f_range) if isinstance(f_range, (int, float)) else float(f_range[0])
    values["frequency_mhz"] = max(f_low, min(values["frequency_mhz"], 600.0 / values["depth_mm"]))
    values["pixel_mm"] = min(max(values["pixel_mm"], values["depth_mm"] / MAX_RANDOM_ROWS), 1.0)
    return ProbeSettings(**values)


# ---------------------------------------------------------------------------------------------
# tissue echo model


@dataclass(frozen=True)
class TissueEcho:
    """Backscatter (dB relative to fat) and attenuation (dB/cm/MHz) per tissue, plus textures.

    Drawn once per image (or per cine) by :func:`random_echo`. Nodule echogenicity is drawn per
    nodule from ``nodule_db`` or, for the oedematous variant, ``oedematous_nodule_db``.
    """

    backscatter_db: dict[int, float]
    attenuation: dict[int, float]
    nodule_db: tuple[float, float] = (0.0, 3.0)
    oedematous_nodule_db: tuple[float, float] = (-6.0, -3.0)
    tlf_dark_db: float = 10.0  # dark (loose) TLF sublayers are this much below the bright ones
    tlf_sublayer_mm: float = 0.35
    muscle_striation_db: float = 8.0
    muscle_striation_mm: float = 1.2  # spacing of the perimysium lines
    fat_septa_db: float = 8.0
    fat_lobule_mm: float = 6.0
    fat_septa_mm: float = 0.2
    muscle_pennation_deg: float = 15.0  # striations tilted this much from the skin (pennate fibres)
    tlf_specular_db: float = 10.0  # part of the TLF echo lost when the beam is far off its normal
    clutter_db: float = -10.0  # near-field clutter at the face (dB vs fat), decaying over clutter_mm
    clutter_mm: float = 1.2


# Backscatter relative to fat [phantom parameter table]: skin +10..+20, superficial fascia +12..+18,
# TLF +15..+25, muscle -3..+3, bone +30, capsule/rim +8..+12; cyst, vessel, haematoma, oedema [E].
ECHO_RANGES: dict[str, tuple[float, float]] = {
    "skin_db": (10.0, 20.0),
    "superficial_fascia_db": (12.0, 18.0),
    "deep_fat_db": (-1.0, 1.0),
    "tlf_db": (15.0, 25.0),
    "muscle_db": (-3.0, 3.0),
    "bone_db": (30.0, 30.0),
    "capsule_db": (8.0, 12.0),
    "cyst_db": (-25.0, -15.0),
    "vessel_db": (-45.0, -40.0),
    "haematoma_db": (-15.0, -8.0),
    "oedema_db": (3.0, 8.0),
    "viscera_db": (-5.0, 5.0),
    # Attenuation, dB/cm/MHz [S22]: fat 0.6-0.8, muscle 1.0-1.4, skin 0.35, connective tissue 1.57;
    # fluids and bone [E] (fluid ~0.2 gives posterior enhancement, bone 20 gives the acoustic shadow).
    # The nodule capsule and septa are thin fibrous strands in fat: fat attenuation [E].
    "fat_alpha": (0.6, 0.8),
    "muscle_alpha": (1.0, 1.4),
    "fluid_alpha": (0.1, 0.3),
    "bone_alpha": (20.0, 20.0),
    "tlf_dark_db": (8.0, 12.0),
    "tlf_sublayer_mm": (0.25, 0.45),
    "muscle_striation_db": (8.0, 12.0),
    "muscle_striation_mm": (0.8, 1.6),
    "fat_septa_db": (6.0, 10.0),
    "fat_lobule_mm": (4.0, 9.0),
    # pennation of erector spinae / multifidus fascicles, 5-25 degrees [E]; the specular share of the
    # fascia echo (it dims by ~10 dB a few degrees off perpendicular [36]) [E]; near-field clutter [43] [E]
    "muscle_pennation_deg": (5.0, 25.0),
    "tlf_specular_db": (8.0, 14.0),
    "clutter_db": (-15.0, -5.0),
    "clutter_mm": (0.7, 2.0),
}


def random_echo(rng: np.random.Generator, config: Mapping[str, Any] | None = None) -> TissueEcho:
    """Draw a :class:`TissueEcho`; ``config`` maps an :data:`ECHO_RANGES` key to a number or range."""
    v = _draw(rng, ECHO_RANGES, config, "echo")
    t = Tissue
    fat_alpha, fluid_alpha = v["fat_alpha"], v["fluid_alpha"]
    backscatter = {
        t.SKIN: v["skin_db"],
        t.SUPERFICIAL_FAT: 0.0,
        t.SUPERFICIAL_FASCIA: v["superficial_fascia_db"],
        t.DEEP_FAT: v["deep_fat_db"],
        t.TLF: v["tlf_db"],
        t.MUSCLE: v["muscle_db"],
        t.BONE: v["bone_db"],
        t.NODULE: 0.0,
        t.NODULE_CAPSULE: v["capsule_db"],
        t.STALK: 0.0,
        t.CYST: v["cyst_db"],
        t.VESSEL: v["vessel_db"],
        t.HAEMATOMA: v["haematoma_db"],
        t.OEDEMA: v["oedema_db"],
        t.VISCERA: v["viscera_db"],
        t.CSF: v["vessel_db"],
    }
    attenuation = {
        t.AIR: 0.0,
        t.SKIN: 0.35,
        t.SUPERFICIAL_FAT: fat_alpha,
        t.SUPERFICIAL_FASCIA: 1.57,
        t.DEEP_FAT: fat_alpha,
        t.TLF: 1.57,
        t.MUSCLE: v["muscle_alpha"],
        t.BONE: v["bone_alpha"],
        t.NODULE: fat_alpha,
        t.NODULE_CAPSULE: fat_alpha,
        t.STALK: fat_alpha,
        t.CYST: fluid_alpha,
        t.VESSEL: fluid_alpha,
        t.HAEMATOMA: fluid_alpha + 0.1,
        t.OEDEMA: fat_alpha,
        t.VISCERA: 1.0,
        t.CSF: fluid_alpha,
    }
    return TissueEcho(
        backscatter_db={int(k): float(x) for k, x in backscatter.items()},
        attenuation={int(k): float(x) for k, x in attenuation.items()},
        tlf_dark_db=v["tlf_dark_db"],
        tlf_sublayer_mm=v["tlf_sublayer_mm"],
        muscle_striation_db=v["muscle_striation_db"],
        muscle_striation_mm=v["muscle_striation_mm"],
        fat_septa_db=v["fat_septa_db"],
        fat_lobule_mm=v["fat_lobule_mm"],
        muscle_pennation_deg=v["muscle_pennation_deg"],
        tlf_specular_db=v["tlf_specular_db"],
        clutter_db=v["clutter_db"],
        clutter_mm=v["clutter_mm"],
    )


# ---------------------------------------------------------------------------------------------
# planes


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if not math.isfinite(n) or n < 1e-9:
        raise ConfigError(f"scan plane direction {tuple(v)} is not a valid vector")
    return a / n


@dataclass(frozen=True)
class ScanPlane:
    """A probe position: contact point on the skin and array / beam directions (LPS unit vectors)."""

    center_mm: Vec3
    lateral_dir: Vec3 = (1.0, 0.0, 0.0)
    beam_dir: Vec3 = (0.0, -1.0, 0.0)
    target_nodule: int | None = None  # the nodule the plane was planned over; None for a negative plane

    def __post_init__(self) -> None:
        u, w = _unit(self.lateral_dir), _unit(self.beam_dir)
        if abs(float(u @ w)) > 1e-3:
            raise ConfigError("scan plane lateral_dir and beam_dir are not perpendicular")
        object.__setattr__(self, "lateral_dir", tuple(float(x) for x in u))
        object.__setattr__(self, "beam_dir", tuple(float(x) for x in w))
        object.__setattr__(self, "center_mm", tuple(float(x) for x in self.center_mm))

    @property
    def normal(self) -> np.ndarray:
        """Elevation direction, ``lateral_dir x beam_dir``."""
        return np.cross(np.asarray(self.lateral_dir), np.asarray(self.beam_dir))

    def points(self, rows: int, cols: int, pixel_mm: tuple[float, float]) -> np.ndarray:
        """LPS mm of the pixel centres, float32 ``(rows, cols, 3)``."""
        depth = ((np.arange(rows) + 0.5) * pixel_mm[0]).astype(np.float32)
        lateral = ((np.arange(cols) + 0.5 - cols / 2.0) * pixel_mm[1]).astype(np.float32)
        c = np.asarray(self.center_mm, dtype=np.float32)
        u = np.asarray(self.lateral_dir, dtype=np.float32)
        w = np.asarray(self.beam_dir, dtype=np.float32)
        return c + depth[:, None, None] * w + lateral[None, :, None] * u

    def pixel_to_patient(
        self, i: float, j: float, rows_cols: tuple[int, int], pixel_mm: tuple[float, float]
    ) -> Vec3:
        """LPS mm of fractional pixel ``(i, j)`` (pixel centres at integers) of a ``rows_cols`` image."""
        depth = (i + 0.5) * pixel_mm[0]
        lateral = (j + 0.5 - rows_cols[1] / 2.0) * pixel_mm[1]
        p = (
            np.asarray(self.center_mm)
            + depth * np.asarray(self.beam_dir)
            + lateral * np.asarray(self.lateral_dir)
        )
        return (float(p[0]), float(p[1]), float(p[2]))


def _orientation(
    subject: SubjectLike, x: float, z: float, tilt_deg: float, longitudinal: bool = False
) -> tuple[Vec3, Vec3]:
    """(lateral, beam) at skin point (x, z): beam along the inward skin normal averaged over the probe
    footprint (slopes over +-15 mm along the array, +-5 mm across it), tilted heel-toe. The array runs
    along +x (transverse image) or, ``longitudinal``, along +z (head at the right of the image)."""
    hx, hz = (5.0, 15.0) if longitudinal else (15.0, 5.0)
    dydx = (float(subject.skin_y(x + hx, z)) - float(subject.skin_y(x - hx, z))) / (2 * hx)
    dydz = (float(subject.skin_y(x, z + hz)) - float(subject.skin_y(x, z - hz))) / (2 * hz)
    beam = -_unit((-dydx, 1.0, -dydz))
    axis = np.array([0.0, 0.0, 1.0]) if longitudinal else np.array([1.0, 0.0, 0.0])
    lateral = _unit(axis - float(beam @ axis) * beam)
    if tilt_deg:  # rotate the beam about the array axis (Rodrigues; beam is perpendicular to lateral)
        a = math.radians(tilt_deg)
        beam = beam * math.cos(a) + np.cross(lateral, beam) * math.sin(a)
    lat = (float(lateral[0]), float(lateral[1]), float(lateral[2]))
    return lat, (float(beam[0]), float(beam[1]), float(beam[2]))


def plan_planes(
    subject: SubjectLike,
    rng: np.random.Generator,
    n: int,
    p_on_nodule: float = 0.7,
    max_tilt_deg: float = 5.0,
    p_longitudinal: float = 0.0,
    jitter_mm: float = 6.0,
) -> list[ScanPlane]:
    """Scan planes with the contact point on the skin, transverse or (``p_longitudinal``) longitudinal.

    With probability ``p_on_nodule`` (when the subject has nodules) a plane is centred over a random
    nodule: an offset along the array up to ``jitter_mm`` either way (the nodule off the image centre, at
    its edge when ``jitter_mm`` reaches half the image width) and across it within 60 % of the nodule's
    semi-axis, so the plane cuts it. Otherwise the plane is placed anywhere over the lumbosacral back
    (``|x|`` 10-100 mm, ``z`` -60..+30 mm), which may or may not contain a nodule (the labels tell).
    The beam follows the skin normal, tilted heel-toe by up to ``max_tilt_deg``.
    """
    if n < 0 or not 0.0 <= p_on_nodule <= 1.0 or not 0.0 <= p_longitudinal <= 1.0 or jitter_mm < 0:
        raise ConfigError(
            f"plan_planes needs n >= 0, probabilities in [0, 1] and jitter_mm >= 0, got {n}, {p_on_nodule}, "
            f"{p_longitudinal}, {jitter_mm}"
        )
    nodules = list(subject.nodules)
    planes = []
    for _ in range(n):
        tilt = float(rng.uniform(-max_tilt_deg, max_tilt_deg))
        longitudinal = bool(p_longitudinal > 0 and rng.random() < p_longitudinal)
        if nodules and rng.random() < p_on_nodule:
            nod = nodules[int(rng.integers(len(nodules)))]
            cx, _, cz = (float(v) for v in nod.center_mm)
            if longitudinal:
                x = cx + float(rng.uniform(-0.6, 0.6)) * float(nod.semi_axes_mm[0])
                z0 = cz + float(rng.uniform(-jitter_mm, jitter_mm))
            else:
                x = cx + float(rng.uniform(-jitter_mm, jitter_mm))
                z0 = cz + float(rng.uniform(-0.6, 0.6)) * float(nod.semi_axes_mm[2])
            target = np.array([x, float(nod.center_mm[1]), z0])
            lateral, beam = _orientation(subject, x, z0, tilt, longitudinal)
            normal = np.cross(lateral, beam)
            across = 0 if longitudinal else 2  # the coordinate the plane normal mostly moves
            pos = [x, 0.0, z0]
            for _ in range(4):  # slide the contact point along the skin until the plane cuts the target
                contact = np.array([pos[0], float(subject.skin_y(pos[0], pos[2])), pos[2]])
                pos[across] += float((target - contact) @ normal) / normal[across]
            px_, pz_ = pos[0], pos[2]
            planes.append(ScanPlane((px_, float(subject.skin_y(px_, pz_)), pz_), lateral, beam, int(nod.id)))
        else:
            x = float(rng.uniform(10.0, 100.0)) * (1.0 if rng.random() < 0.5 else -1.0)
            z = float(rng.uniform(-60.0, 30.0))
            lateral, beam = _orientation(subject, x, z, tilt, longitudinal)
            planes.append(ScanPlane((x, float(subject.skin_y(x, z)), z), lateral, beam, None))
    return planes


# ---------------------------------------------------------------------------------------------
# image record


@dataclass(eq=False)
class BModeImage:
    """One simulated B-mode frame with its ground truth.

    ``image`` uint8 (rows, cols) log-compressed display; ``labels`` uint8 Tissue label at each pixel
    centre; ``nodule_ids`` uint8 id of the nodule each NODULE / NODULE_CAPSULE / STALK pixel belongs to
    (0 elsewhere); ``envelope`` float32 detected amplitude after TGC, before gain and log compression
    (unit = fat rms at the transducer face). ``pixel_mm`` is (row, col) spacing. ``nodules`` has one dict
    per nodule with pixels in the image: ``id``, ``center_pixel`` (i, j) label centroid,
    ``diameters_mm`` (2 in-plane, longest first, from second moments), ``area_mm2``, ``visible``
    (area >= 2 mm²), ``truncated`` (touches the image border), ``depth_mm`` (skin to the nearest nodule
    edge), ``fascia_depth_mm`` (skin to the top of the TLF under it, None if no TLF there), ``side``,
    ``variant``, ``defect_present`` (in 3-D), ``defect_in_plane`` and ``defect_width_mm`` (stalk width
    in this image, None when not in plane), ``echo_db`` (its backscatter vs fat).
    """

    image: np.ndarray
    labels: np.ndarray
    nodule_ids: np.ndarray
    envelope: np.ndarray
    pixel_mm: tuple[float, float]
    plane: ScanPlane
    probe: ProbeSettings
    nodules: list[dict[str, Any]] = field(default_factory=list)


VISIBLE_AREA_MM2 = 2.0


# ---------------------------------------------------------------------------------------------
# simulation


@dataclass
class _Scene:
    """Randomness shared by the frames of one acquisition (so a cine stays coherent)."""

    echo: TissueEcho
    nodule_db: dict[int, float]
    fat_waves: tuple[np.ndarray, np.ndarray]  # wave vectors (K, 3) in cycles/mm, phases (K,)
    muscle_waves: tuple[np.ndarray, np.ndarray]


def _make_scene(subject: SubjectLike, rng: np.random.Generator, echo: TissueEcho) -> _Scene:
    nodule_db = {}
    for nod in subject.nodules:
        lo, hi = echo.oedematous_nodule_db if getattr(nod, "variant", "") == "oedematous" else echo.nodule_db
        nodule_db[int(nod.id)] = float(rng.uniform(lo, hi))
    # Fat lobules: the zero set of a sum of random plane waves (wavelength ~ lobule size) draws a
    # network of thin curved septa. Both textures are functions of body coordinates, fixed in the tissue.
    kdir = rng.normal(size=(6, 3))
    kdir /= np.linalg.norm(kdir, axis=1, keepdims=True)
    fat_k = kdir / (echo.fat_lobule_mm * rng.uniform(0.7, 1.3, size=(6, 1)))
    # fascicles run cranio-caudally (z), pennate towards the depth: the texture is constant along the fibre
    # axis, so a transverse plane shows dots ("starry sky") and a longitudinal one oblique stripes
    pen = math.radians(echo.muscle_pennation_deg) * (1.0 if rng.random() < 0.5 else -1.0)
    fibre = np.array([0.0, math.sin(pen), math.cos(pen)])
    e1 = np.array([1.0, 0.0, 0.0])
    e2 = np.cross(fibre, e1)
    theta = rng.uniform(0, np.pi, 10)
    mdir = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2
    muscle_k = mdir / (echo.muscle_striation_mm * rng.uniform(0.85, 1.15, size=(10, 1)))
    return _Scene(
        echo, nodule_db, (fat_k, rng.uniform(0, 2 * np.pi, 6)), (muscle_k, rng.uniform(0, 2 * np.pi, 10))
    )


def _waves(points: np.ndarray, waves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Unit-variance sum of cosines at ``points`` (float32, shape of points[..., 0])."""
    k, phase = waves
    out = np.zeros(points.shape[:-1], dtype=np.float32)
    for kv, ph in zip(k.astype(np.float32), phase, strict=True):
        out += np.cos(2 * np.pi * (points @ kv) + np.float32(ph))
    out *= np.float32(math.sqrt(2.0 / len(phase)))
    return out


def _labels_and_ids(subject: SubjectLike, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels and nodule ids (uint8, 0 = none) at ``points``.

    Uses ``subject.labels_and_ids_at`` when the subject has it; otherwise each NODULE /
    NODULE_CAPSULE / STALK point goes to the nearest nodule by normalised ellipsoid distance.
    """
    both = getattr(subject, "labels_and_ids_at", None)
    if both is not None:
        lab, nid = both(points)
        return np.asarray(lab, dtype=np.uint8), np.asarray(nid, dtype=np.uint8)
    labels = np.asarray(subject.labels_at(points), dtype=np.uint8)
    ids = np.zeros(labels.shape, dtype=np.uint8)
    mask = np.isin(labels, [int(t) for t in NODULE_TISSUES])
    nodules = subject.nodules
    if not mask.any() or not nodules:
        return labels, ids
    p = points[mask].astype(np.float64)
    best = np.full(len(p), np.inf)
    best_id = np.zeros(len(p), dtype=np.uint8)
    for nod in nodules:
        q = (p - np.asarray(nod.center_mm)) / np.asarray(nod.semi_axes_mm)  # axis-aligned ellipsoids
        d = np.einsum("ij,ij->i", q, q)
        closer = d < best
        best[closer] = d[closer]
        best_id[closer] = int(nod.id)
    ids[mask] = best_id
    return labels, ids


def _echo_db(
    labels: np.ndarray, points: np.ndarray, ids: np.ndarray, scene: _Scene, pixel_row_mm: float
) -> np.ndarray:
    """Mean backscatter (dB vs fat) per pixel, with the tissue textures; float32 (rows, cols)."""
    echo = scene.echo
    lut = np.zeros(256, dtype=np.float32)
    for tissue, db in echo.backscatter_db.items():
        lut[tissue] = db
    db_map = lut[labels]
    # TLF: alternating bright (dense) and dark (loose) sublayers, counted from the top of the fascia
    tlf = labels == Tissue.TLF
    if tlf.any():
        index = np.cumsum(tlf, axis=0, dtype=np.int32) * pixel_row_mm / echo.tlf_sublayer_mm
        dark = tlf & (np.floor(index).astype(np.int32) % 2 == 1)
        db_map[dark] -= echo.tlf_dark_db
    fat = np.isin(labels, [int(Tissue.SUPERFICIAL_FAT), int(Tissue.DEEP_FAT)])
    if fat.any() and echo.fat_septa_db:
        f = _waves(points[fat], scene.fat_waves)
        # near a zero crossing f ~ |grad f| * s with |grad f| ~ 2*pi/lobule: septa of width fat_septa_mm
        half = echo.fat_septa_mm / 2.0 * 2.0 * np.pi / echo.fat_lobule_mm
        db_map[fat] += echo.fat_septa_db * np.exp(-((f / half) ** 2))
    muscle = labels == Tissue.MUSCLE
    if muscle.any() and echo.muscle_striation_db:
        s = _waves(points[muscle], scene.muscle_waves)
        db_map[muscle] += echo.muscle_striation_db * np.clip(s / 1.5, 0.0, 1.0)  # septa over half the area
    # nodules: per-nodule echogenicity (0..+3 dB, oedematous -3..-6 dB); the capsule and the septa
    # parallel to the skin are NODULE_CAPSULE labels of the anatomy (+8..+12 dB)
    body = (labels == Tissue.NODULE) | (labels == Tissue.STALK)
    for nid, db in scene.nodule_db.items():
        db_map[body & (ids == nid)] = db
    return db_map


def _kernel(sigma_px: float) -> np.ndarray:
    """Gaussian PSF taps with unit energy (sum of squares 1), so speckle power is preserved."""
    half = max(1, math.ceil(3.0 * sigma_px))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma_px, 1e-3)) ** 2)
    return (k / np.sqrt(np.sum(k**2))).astype(np.float32)


def _complex_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-power circular complex Gaussian field, complex64."""
    z = rng.standard_normal((*shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    z *= np.float32(1.0 / math.sqrt(2.0))
    return z


def conformed_points(
    subject: SubjectLike, plane: ScanPlane, rows: int, cols: int, pixel_mm: float
) -> np.ndarray:
    """LPS mm of the pixel centres (float32 ``(rows, cols, 3)``) with the skin flattened onto the face.

    Each column slides along the beam by the gap between the contact line and the skin below it, as
    tissue pressed by a probe on gel does; a column whose ray never meets the skin (off the body) stays.
    """
    pts = plane.points(rows, cols, (pixel_mm, pixel_mm))
    w = np.asarray(plane.beam_dir, np.float32)
    top = pts[0]
    down = -float(w[1])
    if down < 0.2:  # a beam this oblique to the back is no contact scan: keep the plain geometry
        return pts
    gap = (top[:, 1] - np.asarray(subject.skin_y(top[:, 0], top[:, 2]), np.float32)) / np.float32(down)
    gap = np.clip(gap - 0.5 * pixel_mm, 0.0, rows * pixel_mm).astype(np.float32)
    return pts + gap[None, :, None] * w[None, None, :]


def _fascia_angle_deg(
    subject: SubjectLike, plane: ScanPlane, points: np.ndarray, labels: np.ndarray, pixel_mm: float
) -> np.ndarray:
    """Angle (degrees) between the beam and the fascia normal per column (NaN without fascia).

    The fascia's top is found along each beam in the plane and in two planes +-0.5 mm in elevation
    (labels queried only in a window around it); its slopes give the normal.
    """
    rows, cols = labels.shape
    tlf = labels == Tissue.TLF
    has = tlf.any(axis=0)
    out = np.full(cols, np.nan, np.float32)
    if not has.any():
        return out
    top = np.argmax(tlf, axis=0)
    nrm = plane.normal.astype(np.float32)
    half = min(rows, round(3.0 / pixel_mm))
    jj = np.nonzero(has)[0]
    offs = np.arange(-half, half + 1)
    win = np.clip(top[jj][None, :] + offs[:, None], 0, rows - 1)  # (window, n)
    base = points[win, jj[None, :]]  # (window, n, 3)
    depth_top = top.astype(np.float32) * pixel_mm
    slopes_e = []
    for e in (-0.5, 0.5):
        lab = np.asarray(subject.labels_at(base + np.float32(e) * nrm), np.uint8)
        hit = lab == Tissue.TLF
        first = np.where(hit.any(axis=0), np.argmax(hit, axis=0), half)
        slopes_e.append((win[first, np.arange(len(jj))]).astype(np.float32) * pixel_mm)
    d_elev = (slopes_e[1] - slopes_e[0]) / 1.0
    smooth = ndimage.uniform_filter1d(depth_top[jj], size=max(3, round(1.0 / pixel_mm)), mode="nearest")
    d_lat = np.gradient(smooth) / pixel_mm if len(jj) > 1 else np.zeros(len(jj), np.float32)
    out[jj] = np.degrees(np.arctan(np.sqrt(d_lat**2 + d_elev**2)))
    return out


def _lateral_psf(iq: np.ndarray, probe: ProbeSettings, pixel_mm: float) -> np.ndarray:
    """Lateral PSF whose width follows the beam (narrowest at the focus), in 1.5 mm depth bands."""
    rows = iq.shape[0]
    band = max(1, round(1.5 / pixel_mm))
    out = np.empty_like(iq)
    for r0 in range(0, rows, band):
        r1 = min(rows, r0 + band)
        fwhm = float(probe.lateral_fwhm_at(np.array([(r0 + r1) / 2 * pixel_mm]))[0])
        out[r0:r1] = ndimage.correlate1d(
            iq[r0:r1], _kernel(fwhm * _FWHM_TO_SIGMA / pixel_mm), axis=1, mode="nearest"
        )
    return out


def reverberation(rx: np.ndarray, reflector: np.ndarray, att_db: np.ndarray, level_db: float) -> np.ndarray:
    """The near field repeated once below a strong reflector [43]: the echo field ``rx`` (rows are
    depth) shifted down, per column, to the first row of ``reflector`` (bool, same shape), attenuated
    again by the round-trip loss ``att_db`` at its new depth and scaled by ``level_db``; added to ``rx``
    by the caller. Columns without the reflector get nothing."""
    rows = rx.shape[0]
    top = np.where(reflector.any(axis=0), np.argmax(reflector, axis=0), rows)
    src = np.arange(rows)[:, None] - top[None, :]
    rev = np.take_along_axis(rx, np.clip(src, 0, rows - 1), axis=0) * (src >= 0)
    loss = np.power(np.float32(10.0), -att_db / np.float32(20.0))
    return rev * loss * np.float32(10.0 ** (level_db / 20.0))


def near_field_clutter(depth_mm: np.ndarray, level_db: float, decay_mm: float) -> np.ndarray:
    """Amplitude float32 per row of the near-field clutter [43]: ``level_db`` (vs fat) at the transducer
    face, decaying exponentially over ``decay_mm`` of depth; it multiplies unit-power noise."""
    return np.float32(10.0 ** (level_db / 20.0)) * np.exp(-depth_mm / np.float32(decay_mm))


def _render(
    subject: SubjectLike,
    plane: ScanPlane,
    probe: ProbeSettings,
    scene: _Scene,
    scatterers: np.ndarray,
    noise: np.ndarray,
) -> BModeImage:
    """Image one plane. ``scatterers`` is the unit-power complex field on the physics grid
    (2*rows, cols); ``noise`` unit-power noise (2*rows, cols): electronic noise in the first ``rows``,
    near-field clutter in the others."""
    rows, cols = probe.shape
    px = (probe.pixel_mm, probe.pixel_mm)
    points = conformed_points(subject, plane, rows, cols, px[0])
    labels, ids = _labels_and_ids(subject, points)
    labels_fine = labels
    labels = _BASE_LUT[labels]  # the physics is per base tissue (multifidus is muscle, sacrum is bone)
    db_map = _echo_db(labels, points, ids, scene, px[0])
    angle = _fascia_angle_deg(subject, plane, points, labels, px[0])
    tlf = labels == Tissue.TLF
    if tlf.any():  # the specular share of the fascia echo fades off perpendicular incidence
        lobe = np.exp(-((np.nan_to_num(angle, nan=0.0) / probe.specular_width_deg) ** 2))
        spec_db = np.float32(scene.echo.tlf_specular_db) * (1.0 - lobe.astype(np.float32))
        db_map -= np.where(tlf, spec_db[None, :], np.float32(0.0))
    amp = np.power(np.float32(10.0), db_map / np.float32(20.0))
    amp[labels == Tissue.AIR] = 0.0
    # scatterers x amplitude on the physics grid (axial spacing px/2), PSF axially, sample the output
    # rows (physics rows 1, 3, 5 ... are the output pixel centres), then PSF laterally (focused beam)
    field_ = scatterers * np.repeat(amp, 2, axis=0)
    dr = px[0] / 2.0
    iq = ndimage.correlate1d(
        field_, _kernel(probe.axial_fwhm_mm * _FWHM_TO_SIGMA / dr), axis=0, mode="constant"
    )[1::2]
    iq = _lateral_psf(iq, probe, px[1])
    # round-trip attenuation 2*alpha*f*z accumulated along the beam (alpha dB/cm/MHz, z in cm)
    alut = np.zeros(256, dtype=np.float32)
    for tissue, a in scene.echo.attenuation.items():
        alut[tissue] = a
    alpha = alut[labels]
    step_db = np.float32(2.0 * probe.frequency_mhz * px[0] / 10.0) * alpha
    att_db = np.cumsum(step_db, axis=0) - 0.5 * step_db
    rx = iq * np.power(np.float32(10.0), -att_db / np.float32(20.0))
    if tlf.any() and probe.reverb_db > -150.0:
        rx += reverberation(rx, tlf, att_db, probe.reverb_db)
    depth_mm = ((np.arange(rows) + 0.5) * px[0]).astype(np.float32)
    echo = scene.echo
    rx += noise[rows:] * near_field_clutter(depth_mm, echo.clutter_db, echo.clutter_mm)[:, None]
    rx += noise[:rows] * np.float32(10.0 ** (probe.noise_db / 20.0))
    # the sonographer's TGC sliders follow the soft-tissue loss of a typical column (median over the
    # columns, bone counted as connective tissue so shadows are not compensated, smoothed over 3 mm);
    # the scanner applies tgc_fraction of it plus the residual error
    soft = np.minimum(step_db, np.float32(2.0 * probe.frequency_mhz * px[0] / 10.0 * 1.6))
    typical = np.median(np.cumsum(soft, axis=0) - 0.5 * soft, axis=1)
    typical = ndimage.uniform_filter1d(typical, size=max(1, round(3.0 / px[0])))
    tgc_db = probe.tgc_fraction * typical + probe.tgc_error_db * depth_mm / probe.depth_mm
    tgc_db = np.minimum(tgc_db, probe.noise_ceiling_db - probe.noise_db).astype(np.float32)
    envelope = np.abs(rx) * np.power(np.float32(10.0), tgc_db / np.float32(20.0))[:, None]
    # log compression: fat speckle (mean log level) sits at 35 % of the dynamic range at 0 dB gain
    dr_db = probe.dynamic_range_db
    floor_db = _RAYLEIGH_LOG_MEAN_DB - 0.35 * dr_db
    level = np.float32(20.0) * np.log10(np.maximum(envelope, np.float32(1e-12)))
    scaled = (level + np.float32(probe.gain_db - floor_db)) * np.float32(255.0 / dr_db)
    image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    bimg = BModeImage(
        image=image,
        labels=labels_fine,
        nodule_ids=ids,
        envelope=envelope.astype(np.float32),
        pixel_mm=px,
        plane=plane,
        probe=probe,
    )
    bimg.nodules = _measure_nodules(bimg, subject, scene)
    return bimg


def _measure_nodules(img: BModeImage, subject: SubjectLike, scene: _Scene) -> list[dict[str, Any]]:
    labels, ids = img.labels, img.nodule_ids
    pr, pc = img.pixel_mm
    rows, cols = labels.shape
    body = labels != Tissue.AIR
    skin_row = np.where(body.any(axis=0), np.argmax(body, axis=0), 0)
    tlf = labels == Tissue.TLF
    tlf_row = np.where(tlf.any(axis=0), np.argmax(tlf, axis=0), -1)
    out = []
    for nod in subject.nodules:
        nid = int(nod.id)
        mine = ids == nid
        core = mine & (labels != Tissue.STALK)
        if not core.any():
            continue
        ii, jj = np.nonzero(core)
        yy, xx = ii * pr, jj * pc
        cov = np.cov(np.vstack([yy, xx])) if len(ii) > 1 else np.zeros((2, 2))
        eig = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
        # a filled ellipse of semi-axis a has variance a^2/4 along it: diameter = 4 sqrt(variance)
        # (pixels counted as areas: + pixel^2/12)
        diam = tuple(float(4.0 * math.sqrt(e + pr * pc / 12.0)) for e in eig)
        span = np.unique(jj)
        fascia = tlf_row[span]
        ok = fascia >= 0
        fascia_depth = float(np.median((fascia[ok] - skin_row[span][ok]) * pr)) if ok.any() else None
        stalk = mine & (labels == Tissue.STALK)
        width = None
        if stalk.any():
            counts = stalk.sum(axis=1)
            width = float(np.median(counts[counts > 0]) * pc)
        area = float(len(ii) * pr * pc)
        out.append(
            {
                "id": nid,
                "center_pixel": (float(ii.mean()), float(jj.mean())),
                "diameters_mm": diam,
                "area_mm2": area,
                "visible": area >= VISIBLE_AREA_MM2,
                "truncated": bool(
                    ii.min() == 0 or jj.min() == 0 or ii.max() == rows - 1 or jj.max() == cols - 1
                ),
                "depth_mm": float(np.min((ii - skin_row[jj]) * pr)),
                "fascia_depth_mm": fascia_depth,
                "side": getattr(nod, "side", None),
                "variant": getattr(nod, "variant", None),
                "defect_present": bool(getattr(nod, "defect_present", False)),
                "defect_in_plane": bool(stalk.any()),
                "defect_width_mm": width,
                "echo_db": scene.nodule_db.get(nid, 0.0),
            }
        )
    return out


def simulate_bmode(
    subject: SubjectLike,
    plane: ScanPlane,
    probe: ProbeSettings,
    rng: np.random.Generator,
    echo: TissueEcho | None = None,
) -> BModeImage:
    """Simulate one B-mode frame of ``plane``; deterministic for a given ``rng`` state.

    ``echo`` fixes the tissue echo model (default: :func:`random_echo` drawn from ``rng``).
    """
    echo = random_echo(rng) if echo is None else echo
    scene = _make_scene(subject, rng, echo)
    rows, cols = probe.shape
    # a single scatterer layer: the elevational sum of complex Gaussian scatterers is again one
    return _render(
        subject,
        plane,
        probe,
        scene,
        _complex_noise(rng, (2 * rows, cols)),
        _complex_noise(rng, (2 * rows, cols)),
    )


class _BodyScatterers:
    """Complex Gaussian scatterers on a lattice fixed in the body, aligned with a plane's axes.

    Lattice spacing is the physics grid (axial px/2, lateral px) in-plane and ``dn`` in elevation.
    A translated plane sees the same scatterers shifted by whole lattice cells (the residual sub-cell
    offset, at most half a cell, is far below the resolution; a common carrier phase does not change
    the envelope) and weighted by the elevational beam profile, so frames decorrelate as the probe
    slides out of plane and shift coherently in plane.
    """

    def __init__(
        self,
        seed: int,
        shape: tuple[int, int],
        row_range: tuple[int, int],
        col_range: tuple[int, int],
        sigma_e_mm: float,
    ) -> None:
        self.seed, self.sigma_e = seed, sigma_e_mm
        self.dn = sigma_e_mm / 2.0
        self.shape = shape
        self.r0, self.c0 = row_range[0], col_range[0]
        self.full = (shape[0] + row_range[1] - row_range[0], shape[1] + col_range[1] - col_range[0])
        self.layers: dict[int, np.ndarray] = {}

    def _layer(self, m: int) -> np.ndarray:
        if m not in self.layers:
            rng = np.random.default_rng([self.seed, m + (1 << 30)])
            self.layers[m] = _complex_noise(rng, self.full)
        return self.layers[m]

    def field(self, row_shift: int, col_shift: int, elev_mm: float) -> np.ndarray:
        lo = math.floor((elev_mm - 3.0 * self.sigma_e) / self.dn)
        hi = math.ceil((elev_mm + 3.0 * self.sigma_e) / self.dn)
        for m in [m for m in self.layers if m < lo]:  # the sweep only moves on: free passed layers
            del self.layers[m]
        r, c = row_shift - self.r0, col_shift - self.c0
        out = np.zeros(self.shape, dtype=np.complex64)
        weights = []
        for m in range(lo, hi + 1):
            g = math.exp(-0.5 * ((m * self.dn - elev_mm) / self.sigma_e) ** 2)
            weights.append(g)
            out += np.float32(g) * self._layer(m)[r : r + self.shape[0], c : c + self.shape[1]]
        out *= np.float32(1.0 / math.sqrt(sum(w * w for w in weights)))
        return out


def simulate_cine(
    subject: SubjectLike,
    plane: ScanPlane,
    probe: ProbeSettings,
    rng: np.random.Generator,
    n_frames: int = 20,
    sweep_mm: float = 8.0,
    direction: Literal["elevation", "lateral"] = "elevation",
    echo: TissueEcho | None = None,
) -> list[BModeImage]:
    """A sweep of ``n_frames`` frames, the probe sliding ``sweep_mm`` centred on ``plane``.

    ``direction="elevation"`` slides along the plane normal (cranio-caudally for a transverse plane),
    ``"lateral"`` along the array. The contact point follows the skin (its ``y`` is re-snapped with
    ``skin_y``) and the probe keeps its orientation. Scatterers and textures are fixed in the body, so
    speckle moves coherently and decorrelates with elevational motion over about the slice thickness.
    """
    if n_frames < 1 or not math.isfinite(sweep_mm):
        raise ConfigError(f"simulate_cine needs n_frames >= 1 and a finite sweep, got {n_frames}, {sweep_mm}")
    if direction not in ("elevation", "lateral"):
        raise ConfigError(f"unknown cine direction {direction!r}")
    echo = random_echo(rng) if echo is None else echo
    scene = _make_scene(subject, rng, echo)
    u, w = np.asarray(plane.lateral_dir), np.asarray(plane.beam_dir)
    nrm = plane.normal
    move = nrm if direction == "elevation" else u
    c0 = np.asarray(plane.center_mm)
    offsets = np.linspace(-sweep_mm / 2.0, sweep_mm / 2.0, n_frames) if n_frames > 1 else np.zeros(1)
    rows, cols = probe.shape
    dr, dc = probe.pixel_mm / 2.0, probe.pixel_mm
    frames_geo = []
    for s in offsets:
        c = c0 + s * move
        c[1] = float(subject.skin_y(float(c[0]), float(c[2])))
        d = c - c0
        frames_geo.append((c, round(float(d @ w) / dr), round(float(d @ u) / dc), float(d @ nrm)))
    rs = [g[1] for g in frames_geo]
    cs = [g[2] for g in frames_geo]
    lattice = _BodyScatterers(
        int(rng.integers(2**31)),
        (2 * rows, cols),
        (min(rs), max(rs)),
        (min(cs), max(cs)),
        probe.elevation_fwhm_mm * _FWHM_TO_SIGMA,
    )
    frames = []
    for c, r_shift, c_shift, elev in frames_geo:
        fplane = ScanPlane(
            (float(c[0]), float(c[1]), float(c[2])), plane.lateral_dir, plane.beam_dir, plane.target_nodule
        )
        scat = lattice.field(r_shift, c_shift, elev)
        frames.append(_render(subject, fplane, probe, scene, scat, _complex_noise(rng, (2 * rows, cols))))
    return frames
