"""Building blocks of the phantom: a voxel grid in millimetres, smooth random fields, shapes.

Shapes are implicit functions ``f`` evaluated at voxel centres, in millimetres of the *body
frame* (axes point like the canonical LPS array: z superior, y posterior, x patient's left;
``f < 0`` inside, ``|f|`` roughly the distance to the surface). Evaluating shapes in millimetres
rather than voxels keeps them the same whatever the spacing, so thick slices cut them as a real
scanner would. Every function works on a :class:`Grid`, which may be a crop of the whole volume,
so a small structure is only ever computed inside its bounding box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (body-frame mm) along z, y and x of a volume or a crop of it."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (len(self.z), len(self.y), len(self.x))

    @property
    def step(self) -> Vec3:
        """Voxel size in body-frame mm along ``(z, y, x)``."""
        return tuple(float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in (self.z, self.y, self.x))

    @property
    def edge_width(self) -> float:
        """Width (mm) of the partial-volume ramp at a surface: the in-plane voxel size."""
        return 0.5 * (self.step[1] + self.step[2])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coordinate vectors shaped to broadcast to a ``(z, y, x)`` array."""
        return self.z[:, None, None], self.y[None, :, None], self.x[None, None, :]

    def crop(self, lo: Vec3, hi: Vec3) -> tuple[tuple[slice, slice, slice], "Grid"] | None:
        """The index slices and sub-grid of the voxels inside the box ``[lo, hi]`` (None if empty)."""
        slices = []
        for axis, a, b in zip((self.z, self.y, self.x), lo, hi):
            i0, i1 = np.searchsorted(axis, a), np.searchsorted(axis, b, side="right")
            if i1 <= i0:
                return None
            slices.append(slice(int(i0), int(i1)))
        sz, sy, sx = slices
        return (sz, sy, sx), Grid(self.z[sz], self.y[sy], self.x[sx])


def regular_grid(lo: Vec3, hi: Vec3, step: float) -> Grid:
    """A grid with the same ``step`` (mm) on all axes covering the box ``[lo, hi]``."""
    return Grid(*(np.arange(a, b + step, step, dtype=np.float32) for a, b in zip(lo, hi)))


def _cubic_bspline(u: np.ndarray) -> np.ndarray:
    u = np.abs(u)
    return np.where(u < 1, 2 / 3 - u**2 + 0.5 * u**3, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))


class SmoothField:
    """A smooth random scalar field: random cubic B-spline coefficients on a coarse lattice.

    Its values are defined in the body frame, so any crop of a grid sees the same field. It is
    evaluated separably (one small matrix product per axis), which costs a few operations per
    voxel and no full-resolution filtering. Values have roughly unit standard deviation.
    """

    def __init__(self, rng: np.random.Generator, lo: Vec3, hi: Vec3, length: float | Vec3) -> None:
        lengths = (length,) * 3 if np.isscalar(length) else tuple(length)
        self.start = tuple(a - 2 * s for a, s in zip(lo, lengths))
        self.length = lengths
        counts = tuple(int(np.ceil((b - a) / s)) + 5 for a, b, s in zip(lo, hi, lengths))
        self.coefficients = rng.standard_normal(counts).astype(np.float32)
        # A sum of B-spline weights squared is about 0.48 per axis: undo it to get unit variance.
        self.coefficients /= np.float32(0.479 ** 1.5)

    def _basis(self, axis: int, coords: np.ndarray) -> tuple[slice, np.ndarray]:
        """The lattice points that touch ``coords`` and their weights ``(len(coords), points)``."""
        t = (coords.astype(np.float64) - self.start[axis]) / self.length[axis]
        n = self.coefficients.shape[axis]
        k0 = int(np.clip(np.floor(t.min()) - 1, 0, n - 1))
        k1 = int(np.clip(np.ceil(t.max()) + 2, k0 + 1, n))
        k = np.arange(k0, k1)
        return slice(k0, k1), _cubic_bspline(t[:, None] - k[None, :]).astype(np.float32)

    def __call__(self, grid: Grid) -> np.ndarray:
        """The field on ``grid`` as a float32 ``(z, y, x)`` array."""
        (sz, wz), (sy, wy), (sx, wx) = (self._basis(i, c) for i, c in enumerate((grid.z, grid.y, grid.x)))
        out = self.coefficients[sz, sy, sx] @ wx.T  # (cz, cy, nx)
        out = np.matmul(wy, out)  # (cz, ny, nx)
        cz, ny, nx = out.shape
        return (wz @ out.reshape(cz, ny * nx)).reshape(len(grid.z), ny, nx)


def rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A random rotation matrix (body frame, z-y-x order) of at most ``max_degrees`` about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid(grid: Grid, center: Vec3, radii: Vec3, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid, optionally rotated (``rot`` maps body to local)."""
    z, y, x = grid.axes()
    dz, dy, dx = (z - np.float32(center[0])), (y - np.float32(center[1])), (x - np.float32(center[2]))
    if rot is not None:
        r = rot.astype(np.float32)
        dz, dy, dx = (r[i, 0] * dz + r[i, 1] * dy + r[i, 2] * dx for i in range(3))
    rz, ry, rx = (np.float32(r) for r in radii)
    k0 = np.sqrt((dz / rz) ** 2 + (dy / ry) ** 2 + (dx / rx) ** 2)
    k1 = np.sqrt((dz / rz**2) ** 2 + (dy / ry**2) ** 2 + (dx / rx**2) ** 2)
    # k0 (k0 - 1) / k1 is exact on the surface and a good distance estimate near it.
    return k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))


def ellipse_2d(grid: Grid, center_yx: tuple[float, float], radii_yx: tuple[float, float]) -> np.ndarray:
    """Signed distance (mm) to an elliptic cylinder along z, as a ``(1, y, x)`` array (broadcasts over z)."""
    _, y, x = grid.axes()
    dy, dx = (y - np.float32(center_yx[0])) / radii_yx[0], (x - np.float32(center_yx[1])) / radii_yx[1]
    k0 = np.sqrt(dy**2 + dx**2)
    k1 = np.sqrt((dy / radii_yx[0]) ** 2 + (dx / radii_yx[1]) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))


def capsule(grid: Grid, a: Vec3, b: Vec3, radius_a: float, radius_b: float) -> np.ndarray:
    """Signed distance (mm) to a tapered tube from point ``a`` to point ``b`` (a vessel segment)."""
    z, y, x = grid.axes()
    a_, d = np.asarray(a, np.float32), np.asarray(b, np.float32) - np.asarray(a, np.float32)
    pz, py, px = z - a_[0], y - a_[1], x - a_[2]
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / np.float32(max(float(d @ d), 1e-6)), 0, 1)
    dist = np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2)
    return dist - (np.float32(radius_a) + t * np.float32(radius_b - radius_a))


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two shapes with a fillet of about ``k`` mm where they meet."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def occupancy(f: np.ndarray, width: float) -> np.ndarray:
    """Fraction of each voxel inside the shape ``f < 0``: a linear partial-volume ramp ``width`` mm wide."""
    return np.clip(np.float32(0.5) - f / np.float32(width), 0, 1)


def slab_occupancy(f: np.ndarray, grid: Grid) -> np.ndarray:
    """Like :func:`occupancy`, but a surface that a thick slice cuts obliquely gets a wider ramp.

    A voxel is a box as tall as the slice spacing: where the surface runs nearly parallel to the
    slices (the liver's dome), the voxels that straddle it are partly filled over a whole slice.
    """
    w, dz = grid.edge_width, grid.step[0]
    if f.shape[0] < 2 or dz <= w:
        return occupancy(f, w)
    slope = np.abs(np.gradient(f, dz, axis=0))
    np.clip(slope, 0, 1, out=slope)
    width = slope * np.float32(dz - w)
    width += np.float32(w)
    return np.clip(np.float32(0.5) - f / width, 0, 1)


def paint(image: np.ndarray, slices: tuple[slice, ...], occ: np.ndarray, value: float | np.ndarray) -> None:
    """Blend ``value`` into ``image[slices]`` in proportion to the occupancy ``occ`` (in place)."""
    region = image[slices]
    region += occ * (value - region)


class SmoothCurve:
    """A smooth random function of one coordinate (unit standard deviation), e.g. a profile along z."""

    def __init__(self, rng: np.random.Generator, lo: float, hi: float, length: float) -> None:
        self.start, self.length = lo - 2 * length, length
        self.coefficients = rng.standard_normal(int(np.ceil((hi - lo) / length)) + 5) / np.sqrt(0.479)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """The curve's values at the coordinates ``t`` (float32, same shape)."""
        u = (np.asarray(t, np.float64) - self.start) / self.length
        k = np.arange(len(self.coefficients))
        w = _cubic_bspline(u[..., None] - k)
        return (w @ self.coefficients).astype(np.float32)
