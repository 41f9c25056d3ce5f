"""One synthetic abdominal MRI case: scan geometry, anatomy, rendering, as a :class:`PhantomCase`.

A case depends only on ``(seed, index)``: its random streams are children of
``SeedSequence([seed, index])`` (anatomy, scan geometry, noise), so the same case comes out
whatever the number of cases or worker processes, and the sizes share one patient.

Sizes: ``full`` scans look like real ones (256-512 voxels in-plane over a 350-450 mm field of
view, 40-100 slices, the whole liver covered). ``small`` (about 128 x 128 x 32) and ``tiny``
(about 48 x 48 x 16) shrink the patient so that the same anatomy fits the smaller matrix: body-frame
millimetres become world millimetres by one fixed factor per size and axis (:data:`BODY_SCALE`),
so within a dataset every patient has its natural size, as in a real cohort. The scan's field of
view and matrix vary from case to case, and the voxel spacing follows from them (field of view
over matrix), staying inside the ATLAS ranges. (Scaling the patient with a randomly drawn spacing
instead would make the same liver twice as large in one case as in another after resampling, a
variation no real cohort has.) Lesion diameters are at least three in-plane voxels so every drawn
lesion is visible. ``lesion_diameters_mm`` are in world mm.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from liverseg.data.phantom_anatomy import Anatomy
from liverseg.data.phantom_appearance import add_rician_noise, bias_field, draw_tissues, to_scanner_units
from liverseg.data.phantom_geometry import Grid, SmoothField
from liverseg.data.phantom_liver import Liver
from liverseg.data.phantom_render import render_body, render_liver, render_organs
from liverseg.errors import LiversegError

try:  # a dependency of scikit-learn, itself one of batchgenerators; only speed depends on it
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

SIZES = ("tiny", "small", "full")
INPLANE_SPACING = (0.68, 1.4)  # mm, the ATLAS ranges
SLICE_SPACING = (2.0, 4.6)
FULL_MATRICES = (256, 288, 320, 384, 432, 448, 512)
STORED_ORIENTATIONS = ("RAS", "RPS", "LAS", "LPI")  # flipped storage of 20 % of the cases
BODY_Z_RANGE = (-400.0, 250.0)  # body-frame heights any scan may cover
# World mm per body mm (z, y, x) of the shrunken sizes; with their matrices and the 350-450 mm
# (in-plane) and 210-300 mm (z) body fields of view, spacings come out inside the ATLAS ranges.
BODY_SCALE = {"small": (0.375, 0.32, 0.32), "tiny": (0.19, 0.12, 0.12)}


@dataclass
class PhantomCase:
    """A generated case: canonical (LPS, ``(z, y, x)``) arrays and how the case is stored on disk."""

    image: np.ndarray  # float32 (z, y, x), integer-valued scanner units
    label: np.ndarray  # uint8 (z, y, x): 0 background, 1 liver, 2 tumour
    spacing: tuple[float, float, float]  # (z, y, x) mm
    direction: tuple[float, ...]  # 9-tuple the case is stored with on disk (SimpleITK order)
    lesion_diameters_mm: list[float]  # equivalent-sphere diameters of the drawn lesions, world mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world (x, y, z) of voxel 0 of the canonical array
    orientation: str = "LPS"  # orientation code of the stored file
    phase: str = "portal"  # contrast phase of the scan


@dataclass(frozen=True)
class _Scan:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # world mm, (z, y, x)
    fov: tuple[float, float, float]  # body mm covered, (z, y, x)
    shift_yx: tuple[float, float]  # body-frame position of the field of view's centre
    top_fraction: float  # share of the spare height placed above the liver
    origin: tuple[float, float, float]
    orientation: str

    @property
    def scale(self) -> tuple[float, float, float]:
        """World mm per body mm along (z, y, x)."""
        return tuple(n * s / f for n, s, f in zip(self.shape, self.spacing, self.fov))

    def grid(self, liver_top: float, liver_bottom: float) -> Grid:
        """Body-frame voxel centres, the scan placed in z to cover the liver (with some margin)."""
        height = self.fov[0]
        steps = [f / n for f, n in zip(self.fov, self.shape)]
        spare = height - (liver_top - liver_bottom)
        if spare >= 0:  # some lung above the dome, at least a slice and a half when there is room
            top = liver_top + float(np.clip(spare * self.top_fraction, min(1.5 * steps[0], spare / 2), 60.0))
        else:
            top = liver_top + spare / 2
        z = top - height + (np.arange(self.shape[0]) + 0.5) * steps[0]
        y = self.shift_yx[0] + (np.arange(self.shape[1]) - (self.shape[1] - 1) / 2) * steps[1]
        x = self.shift_yx[1] + (np.arange(self.shape[2]) - (self.shape[2] - 1) / 2) * steps[2]
        return Grid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32))


def _draw_scan(rng: np.random.Generator, size: str) -> _Scan:
    """Matrix, spacing and field of view; every size makes the same draws so cases stay aligned."""
    u = rng.uniform
    fov_xy, fov_z = u(350, 450), u(210, 300)
    u(*INPLANE_SPACING)  # no longer used (spacing follows the field of view); drawn so every later draw stays as it was
    slices = u(*SLICE_SPACING)
    matrix_pick, small_pick = rng.random(), rng.integers(0, 1 << 30, 3)
    shift = (u(-20, 10), u(-15, 15))
    top_fraction = u(0.1, 0.6)
    origin_z = u(-400, 0)
    orientation = STORED_ORIENTATIONS[int(rng.integers(len(STORED_ORIENTATIONS)))] if rng.random() < 0.2 else "LPS"
    if size == "full":
        valid = [n for n in FULL_MATRICES if INPLANE_SPACING[0] <= fov_xy / n <= INPLANE_SPACING[1]]
        n = valid[int(matrix_pick * len(valid))]
        nz = int(np.clip(round(fov_z / slices), 40, 100))
        shape, spacing = (nz, n, n), (slices, fov_xy / n, fov_xy / n)
        fov = (nz * slices, fov_xy, fov_xy)
    else:
        base = {"small": (32, 128), "tiny": (16, 48)}[size]
        nz = base[0] + int(small_pick[0] % 5) - 2
        ny = base[1] + 4 * (int(small_pick[1] % 5) - 2)
        nx = base[1] + 4 * (int(small_pick[2] % 5) - 2)
        scale_z, scale_y, scale_x = BODY_SCALE[size]
        pixel = fov_xy * scale_y / ((ny + nx) / 2)  # square pixels; the matrix's aspect sets the field's
        shape, spacing = (nz, ny, nx), (fov_z * scale_z / nz, pixel, pixel)
        fov = (fov_z, ny * pixel / scale_y, nx * pixel / scale_x)
    origin = (-(shape[2] - 1) / 2 * spacing[2], -(shape[1] - 1) / 2 * spacing[1], origin_z)
    return _Scan(shape, tuple(round(s, 4) for s in spacing), fov, shift, top_fraction, origin, orientation)


def orientation_direction(code: str) -> tuple[float, ...]:
    """SimpleITK direction of an axis-aligned orientation code such as ``LPS`` or ``RAS``."""
    signs = [1.0 if c in "LPS" else -1.0 for c in code]
    return tuple(float(v) for v in np.diag(signs).ravel())


def generate_case(index: int, seed: int = 0, size: str = "tiny") -> PhantomCase:
    """Generate case ``index`` of the phantom set ``seed`` at ``size`` (tiny, small or full).

    The same ``(seed, index)`` always gives the same case, so datasets can be regenerated and
    extended, and tests can ask for one case without building a whole set.
    """
    if size not in SIZES:
        raise LiversegError(f"unknown phantom size '{size}'; use one of {', '.join(SIZES)}")
    # The smooth fields are small matrix products: BLAS threads only fight the worker processes.
    with threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext():
        return _generate(index, seed, size)


def _generate(index: int, seed: int, size: str) -> PhantomCase:
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(3)]
    body_rng, scan_rng, noise_rng = streams
    scan = _draw_scan(scan_rng, size)
    tissues = draw_tissues(body_rng)
    anatomy = Anatomy(body_rng, *BODY_Z_RANGE, max_half_width=scan.fov[2] / 2 - 8)
    scale = scan.scale
    inplane_body = scan.spacing[2] / scale[2]
    liver = Liver(body_rng, anatomy, body_rng.uniform(1200, 2000), tissues.lesions_bright, min_lesion_diameter=3 * inplane_body)
    grid = scan.grid(*liver.z_extent())

    image = np.zeros(grid.shape, np.float32)
    label = np.zeros(grid.shape, np.uint8)
    bowel = SmoothField(body_rng, (BODY_Z_RANGE[0], -250, -250), (BODY_Z_RANGE[1], 250, 250), 25.0)
    render_body(image, grid, anatomy, tissues, bowel)
    render_organs(image, grid, anatomy, tissues)
    render_liver(image, label, grid, liver, tissues)
    lo = (float(grid.z[0]), float(grid.y[0]), float(grid.x[0]))
    hi = (float(grid.z[-1]), float(grid.y[-1]), float(grid.x[-1]))
    image *= bias_field(noise_rng, grid, lo, hi)
    image = add_rician_noise(noise_rng, image, tissues.liver / noise_rng.uniform(12, 35))
    image = to_scanner_units(noise_rng, image)
    world = float(np.prod(scale)) ** (1 / 3)
    return PhantomCase(
        image=image,
        label=label,
        spacing=scan.spacing,
        direction=orientation_direction(scan.orientation),
        lesion_diameters_mm=[round(lesion.diameter * world, 2) for lesion in liver.lesions],
        origin=scan.origin,
        orientation=scan.orientation,
        phase=tissues.phase,
    )
