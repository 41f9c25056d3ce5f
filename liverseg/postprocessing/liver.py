"""Post-processing of the whole liver: keep its largest connected piece and fill its holes.

Step 1 of the ATLAS paper's post-processing (Lambert et al. 2023, section 2.5): "only the largest
connected component for the liver is kept; a binary *fill holes* operation is performed on the
resulting mask". The whole liver is labels 1 and 2 together, so a tumour belongs to the piece of
liver it sits in and disappears with it when that piece is discarded.

Label maps are ``(z, y, x)`` with 0 background, 1 liver, 2 tumour; spacings are ``(z, y, x)`` mm.
"""
from __future__ import annotations

from typing import Sequence

import cc3d
import numpy as np

from liverseg.errors import LiversegError
from liverseg.lesion_measures import bounding_box

LIVER, TUMOUR = 1, 2
FILL_MODES = ("3d", "axial", "both", "none")
CONNECTIVITIES = (6, 18, 26)

# The background of a crop split into pieces: 6-connected in 3D; 4-connected within each axial slice.
_AXIAL_BACKGROUND = 4


def _fill_3d(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region that cannot reach the border of the array.

    Background is 6-connected: the partner of a 26-connected foreground, so that a cavity is a
    hole exactly when no face-to-face path leads out of it.
    """
    background, count = cc3d.connected_components(~mask, connectivity=6, return_N=True)
    if count == 0:
        return mask
    outside = np.zeros(count + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            outside[np.unique(np.take(background, end, axis=axis))] = True
    outside[0] = True  # id 0 is the foreground itself
    return mask | ~outside[background]


def _fill_axial(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of each axial slice filled (a hole is open in 3D but closed in-plane)."""
    filled = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        background, count = cc3d.connected_components(~mask[z], connectivity=_AXIAL_BACKGROUND, return_N=True)
        if count == 0:
            continue
        outside = np.zeros(count + 1, dtype=bool)
        for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
            outside[np.unique(edge)] = True
        outside[0] = True
        filled[z] |= ~outside[background]
    return filled


def fill_holes(mask: np.ndarray, mode: str = "3d") -> np.ndarray:
    """Fill the holes of a binary ``(z, y, x)`` mask: in 3D, in each axial slice, or both.

    A 3D fill only closes fully enclosed cavities; a vessel that enters the liver through its
    surface leaves a channel open in 3D that the axial fill closes slice by slice. ``"none"``
    returns the mask unchanged. The work is done on the mask's bounding box only.
    """
    if mode not in FILL_MODES:
        raise LiversegError(f"fill_holes mode {mode!r} is not one of {', '.join(FILL_MODES)}")
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    if box is None or mode == "none":
        return mask.copy()
    # Outside the box everything is background, so background on the box faces reaches outside.
    crop = mask[box]
    if mode in ("3d", "both"):
        crop = _fill_3d(crop)
    if mode in ("axial", "both"):
        crop = _fill_axial(crop)
    filled = mask.copy()
    filled[box] = crop
    return filled


def largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """The largest connected component of a binary mask (the first in raster order on a tie)."""
    mask = np.asarray(mask, dtype=bool)
    components, count = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    return components == (int(np.argmax(sizes[1:])) + 1)


def largest_liver_component_fill_holes(
    label: np.ndarray, spacing: Sequence[float], connectivity: int = 26, fill: str = "3d"
) -> np.ndarray:
    """Keep the largest connected piece of the whole liver (labels 1 and 2) and fill its holes.

    Removes the false-positive islands a network scatters in the spleen, heart or bowel, together
    with any tumour voxels inside them. Background in the holes of the kept piece becomes liver (1);
    whatever else lies in a hole keeps its label, so a lesion enclosed by a rim of background the
    network missed is kept. ``connectivity`` is 6, 18 or 26 (26 by default: pieces touching at a
    corner stay one liver, the lenient choice); ``fill`` is ``"3d"`` (enclosed cavities, the
    paper's choice), ``"axial"`` (holes of each slice), ``"both"`` or ``"none"``. ``spacing`` is
    unused: the step works on voxel connectivity. Returns a new uint8 label map.
    """
    if connectivity not in CONNECTIVITIES:
        raise LiversegError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity!r}")
    if fill not in FILL_MODES:
        raise LiversegError(f"fill must be one of {', '.join(FILL_MODES)}; got {fill!r}")
    label = np.asarray(label)
    whole = label > 0
    if not whole.any():
        return label.astype(np.uint8, copy=True)
    filled = fill_holes(largest_component(whole, connectivity), fill)
    out = np.where(filled, label, 0).astype(np.uint8)
    out[filled & ~whole] = LIVER
    return out
