"""How one phantom scan looks: tissue intensities for a contrast phase, bias field, noise, scale.

Intensities are relative to subcutaneous fat (1.0 without fat suppression) and follow
contrast-enhanced T1-weighted liver MRI: fat bright, muscle dark, vessels bright in the arterial
and portal phases and dark in the hepatobiliary phase, where the liver itself is brightest. Some
scans are fat suppressed. Tumours are brighter than liver in the arterial phase and darker
otherwise. The scanner's multiplicative bias field, Rician noise and arbitrary intensity scale
and offset come last, so a model has to learn the anatomy, not the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.phantom_geometry import Grid, SmoothField

PHASES = ("arterial", "portal", "hepatobiliary")


@dataclass(frozen=True)
class Tissues:
    """Intensity of each tissue in one scan, before bias, noise and scaling."""

    phase: str
    fat: float
    muscle: float
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    aorta: float
    liver_vessels: float
    marrow: float
    disc: float
    csf: float
    lung: float
    bowel_wall: float
    bowel_content: float
    stomach_fluid: float
    gallbladder: float
    liver_texture: float
    lesions_bright: bool


def draw_tissues(rng: np.random.Generator) -> Tissues:
    """Draw the contrast phase and the tissue intensities of one scan."""
    u = rng.uniform
    phase = PHASES[int(rng.choice(3, p=[0.3, 0.45, 0.25]))]
    fat = u(0.25, 0.4) if rng.random() < 0.3 else u(0.85, 1.0)
    liver = u(0.7, 0.85) if phase == "hepatobiliary" else u(0.45, 0.62)
    vessels = {"arterial": u(0.9, 1.2), "portal": u(1.3, 1.7), "hepatobiliary": u(0.45, 0.7)}[phase] * liver
    aorta = {"arterial": u(1.1, 1.4), "portal": u(0.9, 1.2), "hepatobiliary": u(0.35, 0.6)}[phase]
    kidney = u(0.6, 0.9)
    return Tissues(
        phase=phase,
        fat=fat,
        muscle=u(0.22, 0.32),
        liver=liver,
        spleen=liver * u(0.7, 0.9),
        kidney_cortex=kidney,
        kidney_medulla=kidney * u(0.45, 0.75),
        aorta=aorta,
        liver_vessels=vessels,
        marrow=u(0.55, 0.8) * (0.6 if fat < 0.5 else 1.0),
        disc=u(0.2, 0.3),
        csf=u(0.08, 0.15),
        lung=u(0.01, 0.04),
        bowel_wall=u(0.35, 0.55),
        bowel_content=u(0.1, 0.6),
        stomach_fluid=u(0.08, 0.2),
        gallbladder=u(0.7, 0.95) if rng.random() < 0.2 else u(0.08, 0.2),
        liver_texture=u(0.02, 0.06),
        lesions_bright=phase == "arterial" and rng.random() < 0.85,
    )


def bias_field(rng: np.random.Generator, grid: Grid, lo: tuple, hi: tuple) -> np.ndarray:
    """A smooth multiplicative field around 1 (coil sensitivity), 10-30 % peak to peak."""
    field = SmoothField(rng, lo, hi, rng.uniform(120, 200))
    return np.exp(np.float32(rng.uniform(0.05, 0.12)) * field(grid))


def add_rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma`` (in place)."""
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    image += noise
    np.square(image, out=image)
    rng.standard_normal(out=noise, dtype=np.float32)
    noise *= np.float32(sigma)
    np.square(noise, out=noise)
    image += noise
    return np.sqrt(image, out=image)


def to_scanner_units(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Apply an arbitrary per-scan scale and offset and round to integers, as a scanner stores them (in place)."""
    image *= np.float32(rng.uniform(300, 2500))
    image += np.float32(rng.uniform(0, 100))
    np.clip(image, 0, 32767, out=image)
    return np.rint(image, out=image)
