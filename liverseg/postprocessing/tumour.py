"""Post-processing of the tumour label: outside-liver removal, closing, rim opening, size filter.

Steps 2 and 3 of the ATLAS paper's post-processing (Lambert et al. 2023, section 2.5) and the
liver-border opening of the MRI paper (Hänsch et al. 2022, "Post-processing"). Label maps are
``(z, y, x)`` with 0 background, 1 liver, 2 tumour; spacings ``(z, y, x)`` in mm; kernels are given
as ``(z, y, x)`` voxel counts, so ``(1, 3, 3)`` is an in-plane 3 x 3 square. Every step works on the
bounding box of the voxels it can change plus a margin, never on the full volume per lesion.
"""
from __future__ import annotations

import math
from typing import Sequence

import cc3d
import edt
import numpy as np
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.lesion_measures import bounding_box, label_components
from liverseg.postprocessing.liver import CONNECTIVITIES, LIVER, TUMOUR, largest_component

OUTSIDE_LIVER_MODES = ("multiclass", "dual_binary")
_RANK = {6: 1, 18: 2, 26: 3}  # connectivity -> scipy generate_binary_structure rank
# Distances in mm compare with this slack: float32 distances and decimal spacings are not exact.
_MM_TOLERANCE = 1e-4


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in CONNECTIVITIES:
        raise LiversegError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity!r}")


def _non_negative(value: float | None, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LiversegError(f"{name} must be a number >= 0; got {value!r}")


def box_kernel(size: Sequence[int], name: str = "kernel") -> np.ndarray:
    """A box structuring element of ``(z, y, x)`` odd voxel counts, e.g. ``(1, 3, 3)``."""
    if (not isinstance(size, (list, tuple)) or len(size) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 and n % 2 == 1 for n in size)):
        raise LiversegError(f"{name} must be three odd positive voxel counts (z, y, x), e.g. [1, 3, 3]; got {size!r}")
    return np.ones(tuple(size), dtype=bool)


def ball_kernel(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of the centre voxel's: an ellipsoid in voxels.

    On anisotropic grids this is flat where the slices are thick: a 1.5 mm ball on a
    3 x 1 x 1 mm grid is the in-plane 3 x 3 square, one slice high.
    """
    reach = radius_mm + _MM_TOLERANCE
    half = [int(math.floor(reach / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    squared = sum((g * float(s)) ** 2 for g, s in zip(grids, spacing))
    return squared <= reach**2


def _padded_crop(array: np.ndarray, box: tuple[slice, ...], margin: Sequence[int], mode: str = "constant"):
    """``array[box]`` grown by ``margin`` voxels per axis, padded where the array ends.

    Returns the crop, the part of ``array`` it covers, and where that part sits in the crop.
    Padding makes morphology on the crop equal to morphology on the whole array whose outside
    is background (``constant``) or continues as at its edge (``edge``).
    """
    covered, pads = [], []
    for s, m, n in zip(box, margin, array.shape):
        lo, hi = s.start - m, s.stop + m
        covered.append(slice(max(lo, 0), min(hi, n)))
        pads.append((max(0, -lo), max(0, hi - n)))
    crop = np.pad(array[tuple(covered)], pads, mode=mode)
    inner = tuple(slice(p0, p0 + c.stop - c.start) for (p0, _), c in zip(pads, covered))
    return crop, tuple(covered), inner


def _touching(components: np.ndarray, boxes: Sequence[tuple[slice, ...]], ids: np.ndarray, liver: np.ndarray,
              spacing: Sequence[float], connectivity: int, dilation_mm: float | None) -> np.ndarray:
    """For each component id (index = id; index 0 unused): does the dilated component meet the liver?

    Each lesion is dilated on its own bounding box grown by the dilation's reach, so the cost
    follows the lesions' sizes, not the volume's; only the lesions in ``ids`` are tested.
    """
    touching = np.zeros(len(boxes), dtype=bool)
    if not liver.any() or len(ids) == 0:
        return touching
    reach = _reach(spacing, dilation_mm)
    structure = ndimage.generate_binary_structure(3, _RANK[connectivity])
    anisotropy = tuple(float(s) for s in spacing)
    for i in ids:
        grown = tuple(slice(max(b.start - r, 0), min(b.stop + r, n))
                      for b, r, n in zip(boxes[i], reach, components.shape))
        lesion = components[grown] == i
        if dilation_mm is None:
            near = ndimage.binary_dilation(lesion, structure)
        else:
            near = edt.edt(~lesion, anisotropy=anisotropy) <= dilation_mm + _MM_TOLERANCE
        touching[i] = bool(np.any(near & liver[grown]))
    return touching


def _reach(spacing: Sequence[float], dilation_mm: float | None) -> list[int]:
    """Voxels per axis a dilation (one voxel, or ``dilation_mm``) can reach."""
    if dilation_mm is None:
        return [1, 1, 1]
    return [int(math.floor((dilation_mm + _MM_TOLERANCE) / s)) for s in spacing]


def remove_tumour_outside_liver(
    label: np.ndarray, spacing: Sequence[float], mode: str = "multiclass",
    dilation_mm: float | None = None, connectivity: int = 26,
) -> np.ndarray:
    """Delete tumour that lies outside the liver (ATLAS paper, step 2); returns a new label map.

    ``multiclass``: each lesion (a ``connectivity``-connected component of label 2) is dilated by
    one voxel of that connectivity, or by a ball of ``dilation_mm`` mm when given, and deleted
    (made background) if the dilation meets no liver voxel (label 1); a lesion touching the liver
    stays whole. ``dual_binary``: tumour voxels outside the whole-liver mask become background,
    the mask being the largest connected piece of labels 1 and 2, as the liver model's output is
    after step 1. Run after step 1 this mode changes nothing: the multiplication then already
    happened when step 1 discarded the other pieces with their tumours.
    """
    if mode not in OUTSIDE_LIVER_MODES:
        raise LiversegError(f"mode must be one of {', '.join(OUTSIDE_LIVER_MODES)}; got {mode!r}")
    _non_negative(dilation_mm, "dilation_mm")
    _check_connectivity(connectivity)
    label = np.asarray(label)
    out = label.astype(np.uint8, copy=True)
    tumour = label == TUMOUR
    box = bounding_box(tumour)
    if box is None:
        return out
    if mode == "dual_binary":
        out[tumour & ~largest_component(label > 0, connectivity)] = 0
        return out
    crop, covered, inner = _padded_crop(label, box, _reach(spacing, dilation_mm))
    components, count = label_components(crop, TUMOUR, connectivity)
    boxes = cc3d.statistics(components)["bounding_boxes"]
    touching = _touching(components, boxes, np.arange(1, count + 1), crop == LIVER, spacing, connectivity, dilation_mm)
    removed = (components > 0) & ~touching[components]
    out[covered][removed[inner]] = 0
    return out


def close_tumour(
    label: np.ndarray, spacing: Sequence[float], kernel: Sequence[int] = (1, 3, 3), radius_mm: float | None = None
) -> np.ndarray:
    """Binary closing of the tumour mask inside the liver, to smooth lesion borders (ATLAS step 3).

    The structuring element is the box ``kernel`` of ``(z, y, x)`` voxels (default in-plane 3 x 3,
    one slice: thick slices are not bridged), or, when ``radius_mm`` is given, a ball of that
    radius in mm on the voxel grid (:func:`ball_kernel`). Closing only adds tumour, and only on
    liver voxels: it never grows a lesion into the background. Returns a new label map.
    """
    _non_negative(radius_mm, "radius_mm")
    structure = ball_kernel(radius_mm, spacing) if radius_mm is not None else box_kernel(kernel, "kernel")
    label = np.asarray(label)
    out = label.astype(np.uint8, copy=True)
    box = bounding_box(label == TUMOUR)
    if box is None:
        return out
    crop, covered, inner = _padded_crop(label, box, [n // 2 + 1 for n in structure.shape])
    tumour = crop == TUMOUR
    if radius_mm is None:
        closed = ndimage.binary_closing(tumour, structure)
    else:  # the same closing with a ball, from distances: much faster than a large element
        anisotropy, reach = tuple(float(s) for s in spacing), radius_mm + _MM_TOLERANCE
        dilated = edt.edt(~tumour, anisotropy=anisotropy) <= reach
        closed = edt.edt(dilated, anisotropy=anisotropy, black_border=True) > reach
    added = closed & (crop == LIVER)
    out[covered][added[inner]] = TUMOUR
    return out


def open_liver_border_band(
    label: np.ndarray, spacing: Sequence[float],
    erosion_kernel: Sequence[int] = (1, 7, 7), opening_kernel: Sequence[int] = (1, 3, 3),
) -> np.ndarray:
    """Remove thin tumour false positives along the liver's rim (Hänsch et al. 2022).

    The border band is the whole liver (labels 1 and 2) minus its erosion by ``erosion_kernel``
    (in-plane 7 x 7: a band three pixels wide); within the band, tumour voxels that do not survive
    an opening with ``opening_kernel`` (in-plane 3 x 3) become liver. Thin slivers along a vessel
    next to the liver vanish, compact lesions and everything deeper than the band stay. Kernels
    are in voxels, as in the paper; the edge of the field of view does not count as liver border.
    ``spacing`` is unused. Returns a new label map.
    """
    erosion = box_kernel(erosion_kernel, "erosion_kernel")
    opening = box_kernel(opening_kernel, "opening_kernel")
    label = np.asarray(label)
    out = label.astype(np.uint8, copy=True)
    # Only tumour voxels can change, and each depends on the labels within the margin around it.
    box = bounding_box(label == TUMOUR)
    if box is None:
        return out
    # An opening looks twice its half-width away (erosion, then dilation).
    margin = [max(e // 2, 2 * (o // 2)) + 1 for e, o in zip(erosion.shape, opening.shape)]
    crop, covered, inner = _padded_crop(label, box, margin, mode="edge")
    whole = crop > 0
    band = whole & ~ndimage.binary_erosion(whole, erosion, border_value=1)
    tumour = crop == TUMOUR
    thin = band & tumour & ~ndimage.binary_opening(tumour, opening, border_value=1)
    out[covered][thin[inner]] = LIVER
    return out


def remove_small_lesions(
    label: np.ndarray, spacing: Sequence[float], min_volume_ml: float = 0.1, connectivity: int = 26
) -> np.ndarray:
    """Delete lesions smaller than ``min_volume_ml`` millilitres (1 ml = 1000 mm^3).

    A lesion is a ``connectivity``-connected component of label 2. A deleted lesion that touches
    the liver (one voxel of that connectivity) becomes liver, since it was drawn on liver tissue;
    one that does not becomes background. The default 0.1 ml is a cube of about 4.6 mm, below
    what a reader can confirm on 3 mm slices. Returns a new label map.
    """
    _non_negative(min_volume_ml, "min_volume_ml", allow_none=False)
    _check_connectivity(connectivity)
    label = np.asarray(label)
    out = label.astype(np.uint8, copy=True)
    box = bounding_box(label == TUMOUR)
    if box is None or min_volume_ml == 0:
        return out
    crop, covered, inner = _padded_crop(label, box, [1, 1, 1])
    components, count = label_components(crop, TUMOUR, connectivity)
    stats = cc3d.statistics(components)
    small = stats["voxel_counts"] * (float(np.prod(spacing)) / 1000.0) < min_volume_ml
    small[0] = False
    if not small.any():
        return out
    touching = _touching(components, stats["bounding_boxes"], np.flatnonzero(small), crop == LIVER, spacing,
                         connectivity, None)
    new_value = np.where(touching, LIVER, 0).astype(np.uint8)
    removed = small[components]
    region = out[covered]
    region[removed[inner]] = new_value[components[inner][removed[inner]]]
    return out
