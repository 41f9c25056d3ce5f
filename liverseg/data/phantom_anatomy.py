"""Where things are in one phantom patient: body wall, diaphragm, spine, vessels and organs.

All positions are in the body frame (mm): x towards the patient's left, y posterior, z superior,
the body axis at ``x = y = 0`` and the top of the right diaphragm dome at ``z = 0``. Sizes follow
adult abdominal anatomy (a body 280-370 mm wide and 200-270 mm deep, a vertebral body about
45 x 35 mm, kidneys about 110 mm long). The liver itself is in :mod:`liverseg.data.phantom_liver`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from liverseg.data.phantom_geometry import Grid, SmoothCurve, SmoothField, Vec3, ellipse_2d, ellipsoid, rotation


@dataclass(frozen=True)
class Blob:
    """An ellipsoidal organ: centre and radii (mm, z-y-x), rotation from body to local axes."""

    center: Vec3
    radii: Vec3
    rot: np.ndarray | None = None
    bumps: SmoothField | None = None  # irregularity of the surface
    bump_mm: float = 0.0

    def sdf(self, grid: Grid) -> np.ndarray:
        """Approximate signed distance (mm) on ``grid``."""
        f = ellipsoid(grid, self.center, self.radii, self.rot)
        if self.bumps is not None:
            f += np.float32(self.bump_mm) * self.bumps(grid)
        return f

    def bumpy(self, rng: np.random.Generator, bump_mm: float, length: float) -> "Blob":
        """The same blob with a random smooth surface deformation of about ``bump_mm``."""
        return replace(self, bumps=SmoothField(rng, *self.box(20.0), length), bump_mm=bump_mm)

    def box(self, margin: float = 0.0) -> tuple[Vec3, Vec3]:
        """A box (lo, hi) that contains the blob, rotated or not, plus ``margin`` mm."""
        r = max(self.radii) if self.rot is not None else None
        half = [(r if r is not None else ri) + margin + 2.5 * self.bump_mm for ri in self.radii]
        return tuple(c - h for c, h in zip(self.center, half)), tuple(c + h for c, h in zip(self.center, half))


@dataclass(frozen=True)
class Tube2D:
    """A vertical tube (aorta, vena cava, muscle) whose elliptic cross-section is the same on every slice."""

    center_yx: tuple[float, float]
    radii_yx: tuple[float, float]

    def sdf(self, grid: Grid) -> np.ndarray:
        """Signed distance (mm) as a ``(1, y, x)`` array that broadcasts over z."""
        return ellipse_2d(grid, self.center_yx, self.radii_yx)

    def box(self, z_lo: float, z_hi: float, margin: float = 0.0) -> tuple[Vec3, Vec3]:
        """Bounding box between the heights ``z_lo`` and ``z_hi``."""
        (cy, cx), (ry, rx) = self.center_yx, self.radii_yx
        return (z_lo, cy - ry - margin, cx - rx - margin), (z_hi, cy + ry + margin, cx + rx + margin)


class Anatomy:
    """The drawn anatomy of one patient, and its shapes evaluated on any grid."""

    def __init__(self, rng: np.random.Generator, z_lo: float, z_hi: float, max_half_width: float = np.inf) -> None:
        u = rng.uniform
        self.z_lo, self.z_hi = z_lo, z_hi
        self.half_width, self.half_depth = min(u(140, 185), max_half_width), u(100, 135)
        a, b = self.half_width, self.half_depth
        self.size = float(np.sqrt(a * b / (162.0 * 118.0)))
        self.back_flatness = u(1.0, 2.5)
        self.profile = SmoothCurve(rng, z_lo, z_hi, 90.0)
        self.harmonics = [SmoothCurve(rng, z_lo, z_hi, 120.0) for _ in range(4)]
        self.harmonic_amplitude = u(0.01, 0.04)
        self.fat = (u(6, 30), u(0.0, 0.8), u(0.0, 0.6))  # base, extra laterally, extra anteriorly
        self.muscle = u(7, 13)
        # Diaphragm domes: the right one (under which the liver sits) is the higher.
        self.domes = ((0.0, -0.05 * b, -0.42 * a), (-u(8, 25), 0.0, 0.40 * a))
        self.dome_curvature = u(90, 130) * self.size

        k = self.size
        spine_y = b - u(55, 70) * k
        self.spine_y = spine_y
        self.vertebra = Tube2D((spine_y, 0.0), (u(15, 19) * k, u(19, 24) * k))
        self.canal = Tube2D((spine_y + 27 * k, 0.0), (7 * k, 8 * k))
        self.spinous = Tube2D((spine_y + 45 * k, 0.0), (14 * k, 5 * k))
        self.paraspinal = [Tube2D((spine_y + 27 * k, s * 30 * k), (17 * k, 24 * k)) for s in (-1, 1)]
        self.psoas = [Tube2D((spine_y - 4 * k, s * 34 * k), (13 * k, 14 * k)) for s in (-1, 1)]
        self.vertebra_height, self.disc_height = u(27, 32) * k, u(7, 10) * k
        self.vertebra_phase = u(0, 40)
        self.aorta = Tube2D((spine_y - 30 * k, u(10, 20) * k), (u(9, 12) * k,) * 2)
        self.ivc = Tube2D((spine_y - 32 * k, -u(20, 28) * k), (u(9, 12) * k, u(12, 16) * k))
        self.mediastinum = Tube2D((spine_y - 28 * k, -4 * k), (u(28, 38) * k, u(38, 48) * k))  # fat around them, no lung

        def organ(center: Vec3, radii: Vec3, tilt: float, bump_mm: float, bump_length: float) -> Blob:
            return Blob(center, radii, rotation(rng, tilt)).bumpy(rng, bump_mm, bump_length)

        self.kidneys = [
            organ((-u(115, 135), spine_y + 2 * k, -u(62, 75) * k), (u(50, 60) * k, 25 * k, 28 * k), 15, 2.0, 30.0),
            organ((-u(100, 120), spine_y + 2 * k, u(62, 75) * k), (u(50, 60) * k, 25 * k, 28 * k), 15, 2.0, 30.0),
        ]
        self.spleen = organ((-u(40, 65), 0.30 * b, 0.58 * a), (u(45, 60) * k, u(45, 60) * k, u(20, 28) * k), 25, 5.0, 35.0)
        self.stomach = organ((-u(35, 60), -0.15 * b, 0.28 * a), (u(40, 60) * k, u(30, 45) * k, u(35, 45) * k), 20, 8.0, 40.0)
        self.stomach_fill = u(0.3, 0.8)  # fraction of the stomach (posterior part) holding fluid
        self.heart = organ((u(45, 70), -0.25 * b, 0.15 * a), (60 * k, u(45, 60) * k, u(60, 75) * k), 20, 4.0, 40.0)
        # Ribs: bands in the muscle wall, one every rib_period mm, dropping towards the front.
        self.rib_period, self.rib_drop, self.rib_phase = u(28, 36) * k, u(50, 90), u(0, 36)
        self.costal_margin = -u(100, 140)  # lowest height a rib reaches at the back
        # The colon frames the abdomen: ascending (right), transverse (front), descending (left).
        j = lambda: u(-12, 12)  # noqa: E731
        self.colon_path = [
            (-320 + j(), 0.05 * b + j(), -0.62 * a + j()), (-160 + j(), 0.0 + j(), -0.60 * a + j()),
            (-125 + j(), -0.35 * b + j(), -0.42 * a + j()), (-150 + j(), -0.60 * b + j(), 0.0 + j()),
            (-110 + j(), -0.35 * b + j(), 0.50 * a + j()), (-95 + j(), 0.10 * b + j(), 0.66 * a + j()),
            (-320 + j(), 0.10 * b + j(), 0.62 * a + j()),
        ]
        self.colon_radius = u(17, 24) * k
        self.bowel_top = -u(60, 110)  # small bowel loops fill the cavity below this height
        self.stool = SmoothField(rng, (z_lo, -b - 20, -a - 20), (z_hi, b + 20, a + 20), 12.0)
        self.coil_gain, self.coil_depth = u(0.1, 0.5), u(50, 100)

    # --- body wall -------------------------------------------------------------------------
    def body_depth(self, grid: Grid) -> np.ndarray:
        """Depth (mm) below the skin: positive inside the body, negative in the air around it."""
        _, y, x = grid.axes()
        y2, x2 = y[0], x[0]  # (ny, 1), (1, nx)
        rho = np.sqrt(y2**2 + x2**2)
        theta = np.arctan2(y2, x2)
        c, s = np.cos(theta), np.sin(theta)
        n = 2.0 + self.back_flatness * np.maximum(s, 0)  # a flatter back, the patient lies on it
        radius = (np.abs(c / self.half_width) ** n + np.abs(s / self.half_depth) ** n) ** (-1 / n)
        basis = np.stack([np.ones_like(theta), np.cos(2 * theta), np.sin(2 * theta), np.cos(3 * theta), np.sin(3 * theta)])
        coef = np.stack([1 + 0.04 * self.profile(grid.z)] + [self.harmonic_amplitude * h(grid.z) for h in self.harmonics], axis=1)
        shape_ = np.tensordot(coef.astype(np.float32), (basis * radius).astype(np.float32), axes=(1, 0))
        return shape_ - rho.astype(np.float32)

    def wall(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Thickness (mm) of subcutaneous fat and of the muscle wall, as ``(1, y, x)`` arrays."""
        _, y, x = grid.axes()
        theta = np.arctan2(y[0], x[0])
        c, s = np.cos(theta), np.sin(theta)
        base, lateral, anterior = self.fat
        fat = base * (1 + lateral * c**2 + anterior * np.maximum(-s, 0)) * (1 - 0.4 * np.maximum(s, 0))
        muscle = self.muscle * (1 + 0.3 * c**2) * (1 - 0.3 * np.maximum(s, 0))
        return fat[None].astype(np.float32), muscle[None].astype(np.float32)

    def cavity_depth(self, grid: Grid) -> np.ndarray:
        """Depth (mm) inside the muscle wall: positive in the abdominal (and thoracic) cavity."""
        fat, muscle = self.wall(grid)
        return self.body_depth(grid) - fat - muscle

    def diaphragm(self, grid: Grid) -> np.ndarray:
        """Height (mm) of the diaphragm above each ``(y, x)`` position, as a ``(1, y, x)`` array."""
        _, y, x = grid.axes()
        heights = [top - ((y - cy) ** 2 + (x - cx) ** 2) / (2 * self.dome_curvature) for top, cy, cx in self.domes]
        return np.maximum(*heights).astype(np.float32)

    def below_diaphragm(self, grid: Grid, gap: float = 3.0) -> np.ndarray:
        """Signed distance-like value, negative more than ``gap`` mm below the diaphragm."""
        z, _, _ = grid.axes()
        return z - self.diaphragm(grid) + np.float32(gap)

    def vertebra_level(self, grid: Grid) -> np.ndarray:
        """1 inside a vertebral body, 0 in an intervertebral disc, per slice, as a ``(z, 1, 1)`` array."""
        period = self.vertebra_height + self.disc_height
        phase = np.mod(grid.z - self.vertebra_phase, period)
        ramp = np.clip((np.minimum(phase, self.vertebra_height - phase) + 1.5) / 3.0, 0, 1)
        return ramp.astype(np.float32)[:, None, None]

    def ribs(self, grid: Grid, depth: np.ndarray, fat: np.ndarray, muscle: np.ndarray) -> np.ndarray:
        """Signed distance-like function (mm) of the ribs' cross-sections in the muscle wall."""
        _, y, x = grid.axes()
        theta = np.arctan2(y[0], x[0])
        drop = (self.rib_drop * (1 - np.sin(theta)) / 2).astype(np.float32)
        height = grid.z[:, None, None] + drop  # where this rib would be at the back
        half_height, half_thickness = np.float32(5.0 * self.size), np.float32(4.0)
        along = np.mod(height - np.float32(self.rib_phase), np.float32(self.rib_period)) - np.float32(self.rib_period / 2)
        across = (depth - (fat + 0.5 * muscle + 2)) / half_thickness
        along /= half_height
        f = np.sqrt(along * along + across * across)  # an elliptic cross-section
        f -= 1
        f *= half_thickness
        np.maximum(f, np.float32(self.costal_margin) - height, out=f)
        np.maximum(f, np.float32(40.0) - np.abs(x), out=f)  # no ribs at the spine and the sternum
        return f
