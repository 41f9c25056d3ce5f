"""The phantom's liver: an irregular lobed shape of a drawn volume, its vessels, and its tumours.

The liver is a smooth union of five ellipsoidal lobes (right with its inferior tip, left medial,
left lateral, caudate) with a random surface deformation, pressed against the diaphragm and the abdominal wall and carved
by its neighbours (kidneys, stomach, vena cava, aorta, gallbladder). Its size is scaled until a
coarse 4 mm evaluation has the drawn volume. Tumours are lobulated ellipsoids placed inside it or
across its surface; the liver region (labels 1 and 2) always contains every tumour voxel. Vessel
trees (portal and hepatic veins) are tapered tubes inside the liver: labelled liver, not tumour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.phantom_anatomy import Anatomy, Blob
from liverseg.data.phantom_geometry import Grid, SmoothField, Vec3, regular_grid, rotation, smooth_union
from liverseg.data.phantom_vessels import Vessel, grow_tree

COARSE_STEP = 4.0  # mm, the grid used to calibrate the volume and to place lesions


@dataclass(frozen=True)
class Lesion:
    """One tumour: a lobulated ellipsoid and how it looks."""

    blob: Blob
    diameter: float  # mm, of the sphere with the same volume as the ellipsoid
    contrast: float  # lesion / liver intensity ratio
    rim: float  # extra intensity (fraction of liver) in a ring at the lesion's edge
    necrosis: float  # intensity ratio of a central core (1 = none)
    mosaic: float  # relative amplitude of the intensity texture inside the lesion
    lobulation: SmoothField  # shapes the surface, and the texture inside

    def sdf(self, grid: Grid) -> np.ndarray:
        """Signed distance (mm) to the lesion surface."""
        return self.blob.sdf(grid) + np.float32(0.1 * self.diameter) * self.lobulation(grid)


class Liver:
    """Shape, vessels and lesions of one phantom liver (body-frame mm)."""

    def __init__(
        self,
        rng: np.random.Generator,
        anatomy: Anatomy,
        volume_ml: float,
        lesions_bright: bool = False,
        min_lesion_diameter: float = 5.0,
    ) -> None:
        u = rng.uniform
        a, b = anatomy.half_width, anatomy.half_depth
        self.anatomy = anatomy
        self._lobes_unit = [
            Blob((-u(65, 85), 0.02 * b, -0.40 * a), (u(75, 90), 0.82 * b, 0.42 * a), rotation(rng, 10)),
            Blob((-u(40, 60), -0.40 * b, 0.02 * a), (u(40, 55), 0.36 * b, 0.32 * a), rotation(rng, 15)),
            Blob((-u(30, 50), -0.36 * b, u(0.25, 0.38) * a), (u(22, 35), 0.22 * b, u(0.18, 0.30) * a), rotation(rng, 20)),
            Blob((-u(45, 65), 0.22 * b, -0.10 * a), (u(30, 45), 20.0, 22.0), rotation(rng, 15)),
            Blob((-u(120, 150), -0.05 * b, -u(0.45, 0.6) * a), (u(25, 40), 0.45 * b, 0.22 * a), rotation(rng, 20)),
        ]
        self.anchor = np.asarray(self._lobes_unit[0].center)
        lo, hi = self._box_of(self._lobes_unit, 1.3, 40.0)
        self.surface = SmoothField(rng, lo, hi, 45.0)
        self.surface_amplitude = u(3, 8)
        self.texture = SmoothField(rng, lo, hi, 10.0)
        self.gallbladder: Blob | None = None
        self.scale = 1.0
        for _ in range(3):
            coarse = regular_grid(*self._box_of(self.lobes, 1.0, 20.0), COARSE_STEP)
            volume = float(np.count_nonzero(self.sdf(coarse) < 0)) * COARSE_STEP**3 / 1000
            self.scale *= float(np.clip((volume_ml / max(volume, 1.0)) ** (1 / 3), 0.7, 1.4))
        if rng.random() < 0.8:  # the others had their gallbladder removed
            right = self.lobes[0]
            offset = np.array([-0.6, -0.55, 0.45]) * np.asarray(right.radii)
            radii = (u(25, 40), u(12, 18), u(12, 18))
            self.gallbladder = Blob(tuple(np.asarray(right.center) + offset), radii, rotation(rng, 30))
        self.coarse = regular_grid(*self.box(), COARSE_STEP)
        coarse_f = self.sdf(self.coarse)
        heights = self.coarse.z[np.any(coarse_f < 0, axis=(1, 2))]
        self._z_extent = (float(heights.max()), float(heights.min())) if len(heights) else (0.0, -150.0)
        self.vessels = self._draw_vessels(rng, coarse_f)
        self.lesions = self._draw_lesions(rng, coarse_f, lesions_bright, min_lesion_diameter)

    @property
    def lobes(self) -> list[Blob]:
        """The lobes at the calibrated size."""
        k = self.scale
        return [
            Blob(tuple(self.anchor + k * (np.asarray(lobe.center) - self.anchor)), tuple(k * r for r in lobe.radii), lobe.rot)
            for lobe in self._lobes_unit
        ]

    @staticmethod
    def _box_of(blobs: list[Blob], grow: float, margin: float) -> tuple[Vec3, Vec3]:
        boxes = [Blob(b.center, tuple(grow * r for r in b.radii), b.rot).box(margin) for b in blobs]
        return tuple(np.min([bx[0] for bx in boxes], axis=0)), tuple(np.max([bx[1] for bx in boxes], axis=0))

    def z_extent(self) -> tuple[float, float]:
        """Highest and lowest height (mm) of the liver, to place the scan."""
        return self._z_extent

    def box(self) -> tuple[Vec3, Vec3]:
        """A box (mm) that contains the liver with its lesions."""
        return self._box_of(self.lobes, 1.0, 30.0)

    def sdf(self, grid: Grid) -> np.ndarray:
        """Signed distance-like function of the liver tissue (without lesions) on ``grid``."""
        lobes = self.lobes
        f = lobes[0].sdf(grid)
        for lobe in lobes[1:]:
            f = smooth_union(f, lobe.sdf(grid), 20.0)
        f += np.float32(self.surface_amplitude) * self.surface(grid)
        an = self.anatomy
        np.maximum(f, np.float32(2.0) - an.cavity_depth(grid), out=f)
        np.maximum(f, an.below_diaphragm(grid), out=f)
        np.maximum(f, np.float32(1.0) - an.ivc.sdf(grid), out=f)
        np.maximum(f, np.float32(5.0) - an.aorta.sdf(grid), out=f)
        np.maximum(f, np.float32(6.0) - an.vertebra.sdf(grid), out=f)
        for muscle in an.paraspinal:
            np.maximum(f, np.float32(10.0) - muscle.sdf(grid), out=f)
        carved = an.kidneys + [an.stomach] + ([self.gallbladder] if self.gallbladder is not None else [])
        for blob in carved:
            found = grid.crop(*blob.box(8.0))
            if found is not None:
                sl, sub = found
                np.maximum(f[sl], np.float32(3.0) - blob.sdf(sub), out=f[sl])
        return f

    def _inside_points(self, coarse_f: np.ndarray, lo: float, hi: float) -> np.ndarray:
        idx = np.argwhere((coarse_f > lo) & (coarse_f < hi))
        g = self.coarse
        return np.stack([g.z[idx[:, 0]], g.y[idx[:, 1]], g.x[idx[:, 2]]], axis=1) if len(idx) else np.zeros((0, 3))

    def _draw_vessels(self, rng: np.random.Generator, coarse_f: np.ndarray) -> list[Vessel]:
        inside = self._inside_points(coarse_f, -np.inf, -8.0)
        if len(inside) < 10:
            return []
        right = self.lobes[0]
        proposal = np.asarray(right.center) + np.array([-0.2, 0.1, 0.55]) * np.asarray(right.radii)
        hilum = inside[np.argmin(np.sum((inside - proposal) ** 2, axis=1))]
        k = self.scale * self.anatomy.size
        vessels = grow_tree(rng, hilum, inside, [(2, 5.0 * k), (8, 3.5 * k), (18, 2.2 * k)], 7.0 * k)
        trunk_end = hilum + np.array([-35.0, 25.0, 30.0]) * k  # the portal vein outside the liver
        vessels.append(Vessel(tuple(hilum), tuple(trunk_end), 7.0 * k, 7.0 * k, intrahepatic=False))
        ivc_y, ivc_x = self.anatomy.ivc.center_yx
        top = inside[inside[:, 0] > np.max(inside[:, 0]) - 30]
        drain = np.array([np.median(top[:, 0]), ivc_y, ivc_x])
        vessels += grow_tree(rng, drain, inside, [(3, 4.5 * k), (8, 3.0 * k), (12, 2.0 * k)], 6.0 * k)
        return vessels

    def _draw_lesions(self, rng: np.random.Generator, coarse_f: np.ndarray, bright: bool, min_diameter: float) -> list[Lesion]:
        count = 0 if rng.random() < 0.12 else int(rng.choice(np.arange(1, 7), p=[0.3, 0.2, 0.15, 0.12, 0.12, 0.11]))
        lesions: list[Lesion] = []
        for i in range(count):
            diameter = max(float(np.exp(rng.uniform(np.log(5), np.log(60)))), min_diameter)
            r = diameter / 2
            touching = i > 0 and rng.random() < 0.25
            border = not touching and rng.random() < 0.3
            center = None
            if touching:
                prev = lesions[-1]
                for _ in range(8):
                    direction = rng.standard_normal(3)
                    c = np.asarray(prev.blob.center) + direction / np.linalg.norm(direction) * (prev.diameter / 2 + r) * 0.9
                    if self._value_at(coarse_f, c) < -0.3 * r:
                        center = c
                        break
            if center is None:
                lo, hi = (-0.4 * r, 0.2 * r) if border else (-np.inf, -(r + 3))
                points = self._inside_points(coarse_f, lo, hi)
                if len(points) == 0:
                    points = self._inside_points(coarse_f, -np.inf, 0.0)
                if len(points) == 0:
                    break
                center = points[rng.integers(len(points))] + rng.uniform(-2, 2, 3)
            stretch = rng.uniform(0.85, 1.15, 3)
            radii = tuple(r * stretch / np.prod(stretch) ** (1 / 3))  # keeps the drawn diameter
            contrast = rng.uniform(1.3, 1.7) if bright else rng.uniform(0.45, 0.8)
            rim = rng.uniform(0.2, 0.5) if rng.random() < 0.3 else 0.0
            necrosis = rng.uniform(0.3, 0.7) if diameter > 30 and rng.random() < 0.5 else 1.0
            mosaic = rng.uniform(0.0, 0.12)
            blob = Blob(tuple(center), radii, rotation(rng, 90))
            field = SmoothField(rng, *blob.box(10.0), max(r, 4.0))
            lesions.append(Lesion(blob, diameter, float(contrast), float(rim), float(necrosis), float(mosaic), field))
        return lesions

    def _value_at(self, coarse_f: np.ndarray, point: np.ndarray) -> float:
        g = self.coarse
        idx = [int(np.clip(np.searchsorted(ax, p), 0, len(ax) - 1)) for ax, p in zip((g.z, g.y, g.x), point)]
        return float(coarse_f[tuple(idx)])
