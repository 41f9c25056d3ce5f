"""Vessel trees inside the phantom liver: tubes that a model must not mistake for tumours.

A tree grows from its root (the portal vein at the hilum, or the hepatic veins' drain into the
vena cava) in levels: each level adds branches to points spread over the liver's interior
(farthest-point sampling), each joined to the nearest existing branch with a slight bend. Cut
across by a slice, branches look like small round spots, much like small lesions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.phantom_geometry import Vec3


@dataclass(frozen=True)
class Vessel:
    """A tapered tube from ``start`` to ``end`` (mm); ``intrahepatic`` ones are clipped to the liver."""

    start: Vec3
    end: Vec3
    radius_start: float
    radius_end: float
    intrahepatic: bool = True

    def box(self) -> tuple[Vec3, Vec3]:
        """Bounding box of the tube."""
        r = max(self.radius_start, self.radius_end) + 2
        lo = tuple(min(a, b) - r for a, b in zip(self.start, self.end))
        return lo, tuple(max(a, b) + r for a, b in zip(self.start, self.end))


def farthest_points(points: np.ndarray, count: int, start: np.ndarray) -> np.ndarray:
    """``count`` of ``points`` spread as far as possible from each other and from ``start``."""
    distance = np.sum((points - start) ** 2, axis=1)
    chosen = []
    for _ in range(min(count, len(points))):
        i = int(np.argmax(distance))
        chosen.append(i)
        np.minimum(distance, np.sum((points - points[i]) ** 2, axis=1), out=distance)
    return points[chosen]


def grow_tree(
    rng: np.random.Generator, root: np.ndarray, inside: np.ndarray, levels: list[tuple[int, float]], root_radius: float
) -> list[Vessel]:
    """Branches from ``root`` to ``levels`` of (number of end points, radius mm) among ``inside`` points."""
    nodes, radii = [np.asarray(root, float)], [root_radius]
    vessels: list[Vessel] = []
    # A random subset, so the spread points differ between cases of similar shape.
    pool = inside[rng.random(len(inside)) < 0.5] if len(inside) > 50 else inside
    for count, radius in levels:
        targets = farthest_points(pool, count, np.mean(nodes, axis=0)) + rng.uniform(-3, 3, (min(count, len(pool)), 3))
        new_nodes = []
        for target in targets:
            d = np.sum((np.asarray(nodes) - target) ** 2, axis=1)
            parent = int(np.argmin(d))
            start, r0 = nodes[parent], min(radii[parent], 1.3 * radius)
            bend = 0.5 * (start + target) + rng.normal(0, 0.12 * np.sqrt(d[parent]), 3)
            r_mid = 0.5 * (r0 + radius)
            vessels.append(Vessel(tuple(start), tuple(bend), r0, r_mid))
            vessels.append(Vessel(tuple(bend), tuple(target), r_mid, radius))
            new_nodes += [bend, target]
        nodes += new_nodes
        radii += [radius * 1.2, radius] * len(targets)
    return vessels
