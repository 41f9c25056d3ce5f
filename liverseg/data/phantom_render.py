"""Paint a phantom patient into an image and a label map, structure by structure.

Each structure is blended into the image with its partial-volume occupancy, back to front: body
wall and abdominal contents over the whole volume, then lungs, heart, spine, great vessels,
kidneys, spleen, stomach and finally the liver with its vessels, gallbladder and tumours, each
only inside its bounding box. Only the liver paints the label map.
"""
from __future__ import annotations

from typing import Callable

import cc3d
import numpy as np

from liverseg.data.phantom_anatomy import Anatomy, Blob, Tube2D
from liverseg.data.phantom_appearance import Tissues
from liverseg.data.phantom_geometry import Grid, SmoothField, capsule, occupancy, paint, slab_occupancy
from liverseg.data.phantom_liver import Liver

LABEL_LIVER, LABEL_TUMOUR = 1, 2


def render_body(image: np.ndarray, grid: Grid, anatomy: Anatomy, tissues: Tissues, bowel: SmoothField) -> None:
    """Body outline, subcutaneous fat, muscle wall, ribs, bowel and visceral fat, lungs (whole volume)."""
    w = grid.edge_width
    depth = anatomy.body_depth(grid)
    fat, muscle = anatomy.wall(grid)
    cavity = _abdominal_contents(grid, anatomy, tissues, bowel)
    image += np.float32(tissues.fat) * occupancy(-depth, w)
    ribs = anatomy.ribs(grid, depth, fat, muscle)
    depth -= fat
    image += np.float32(tissues.muscle - tissues.fat) * occupancy(-depth, w)
    paint(image, (slice(None),) * 3, occupancy(ribs, w), tissues.disc * 0.5)
    paint(image, (slice(None),) * 3, occupancy(ribs + 1.5, w), tissues.marrow * 0.8)
    del ribs
    depth -= muscle
    in_cavity = occupancy(-depth, w)
    cavity -= image
    cavity *= in_cavity
    image += cavity
    del cavity
    _render_colon(image, grid, anatomy, tissues, in_cavity)
    _render_lungs(image, grid, anatomy, tissues, in_cavity)
    # Surface coils: the signal is stronger near the skin.
    depth += fat + muscle
    np.maximum(depth, 0, out=depth)
    depth *= np.float32(-1 / anatomy.coil_depth)
    image *= 1 + np.float32(anatomy.coil_gain) * np.exp(depth, out=depth)


def _render_colon(image: np.ndarray, grid: Grid, anatomy: Anatomy, tissues: Tissues, in_cavity: np.ndarray) -> None:
    """A tube along the colon's path: a wall, and stool mottled with gas inside."""
    path, radius = anatomy.colon_path, anatomy.colon_radius
    lo, hi = np.min(path, axis=0) - radius - 5, np.max(path, axis=0) + radius + 5
    found = grid.crop(tuple(lo), tuple(hi))
    if found is None:
        return
    sl, sub = found
    f = np.full(sub.shape, np.inf, np.float32)
    for a, b in zip(path[:-1], path[1:]):
        got = sub.crop(tuple(np.minimum(a, b) - radius - 3), tuple(np.maximum(a, b) + radius + 3))
        if got is not None:
            cs, csub = got
            np.minimum(f[cs], capsule(csub, a, b, radius, radius), out=f[cs])
    np.maximum(f, anatomy.below_diaphragm(sub, gap=10.0), out=f)
    inside = in_cavity[sl]
    paint(image, sl, occupancy(f, grid.edge_width) * inside, tissues.bowel_wall)
    gas = np.clip(2.0 * anatomy.stool(sub) + 0.3, 0, 1)
    content = np.float32(tissues.bowel_content) + np.float32(tissues.lung - tissues.bowel_content) * gas
    paint(image, sl, occupancy(f + 3, grid.edge_width) * inside, content)


def _abdominal_contents(grid: Grid, anatomy: Anatomy, tissues: Tissues, bowel: SmoothField) -> np.ndarray:
    """Visceral fat with small-bowel loops: walls along the zero sheets of a smooth field, content inside."""
    t = np.abs(bowel(grid))
    z, _, _ = grid.axes()
    t += np.clip((z - np.float32(anatomy.bowel_top)) / np.float32(40.0), 0, 1)  # loops thin out and stop upwards
    cavity = np.full(grid.shape, tissues.fat, np.float32)
    cavity += np.float32(tissues.bowel_wall - tissues.fat) * np.clip((0.8 - t) / 0.15, 0, 1)
    cavity += np.float32(tissues.bowel_content - tissues.bowel_wall) * np.clip((0.55 - t) / 0.15, 0, 1)
    return cavity


def _render_lungs(image: np.ndarray, grid: Grid, anatomy: Anatomy, tissues: Tissues, in_cavity: np.ndarray) -> None:
    lowest = float(np.min(anatomy.diaphragm(grid))) - 2 * grid.step[0]
    found = grid.crop((lowest, -np.inf, -np.inf), (np.inf, np.inf, np.inf))
    if found is None:
        return
    sl, sub = found
    # The lungs fill the cavity above the diaphragm; a thick slice through the dome is partly lung.
    above = np.clip(np.float32(0.5) + anatomy.below_diaphragm(sub, gap=0.0) / np.float32(grid.step[0]), 0, 1)
    above *= in_cavity[sl]
    above *= 1 - occupancy(anatomy.mediastinum.sdf(sub), grid.edge_width)
    paint(image, sl, above, tissues.lung)
    heart = anatomy.heart
    found = grid.crop(*heart.box(5.0))
    if found is not None:
        sl, sub = found
        f = np.maximum(heart.sdf(sub), -anatomy.below_diaphragm(sub, gap=-3.0))
        paint(image, sl, occupancy(f, grid.edge_width), tissues.muscle * 1.3)
        paint(image, sl, occupancy(f + 9, grid.edge_width), tissues.aorta)


def _paint_blob(
    image: np.ndarray,
    grid: Grid,
    blob: Blob,
    value: float,
    shell: float = 0.0,
    extra: Callable[[Grid], np.ndarray] | None = None,
) -> None:
    """Paint ``blob`` grown by ``shell`` mm, intersected with the shape ``extra`` if given."""
    found = grid.crop(*blob.box(5.0 + shell))
    if found is None:
        return
    sl, sub = found
    f = blob.sdf(sub)
    if extra is not None:
        f = np.maximum(f, extra(sub))
    paint(image, sl, occupancy(f - shell, grid.edge_width), value)


def render_organs(image: np.ndarray, grid: Grid, anatomy: Anatomy, tissues: Tissues) -> None:
    """Spine, back muscles, aorta, vena cava, kidneys, spleen and stomach."""
    w, z_lo, z_hi = grid.edge_width, float(grid.z[0]), float(grid.z[-1])
    for tube in anatomy.paraspinal:
        _paint_tube(image, grid, tube, tissues.muscle, z_lo, z_hi)
    for tube in anatomy.psoas:
        _paint_tube(image, grid, tube, tissues.muscle, z_lo, min(z_hi, -90.0))
    found = grid.crop(*anatomy.vertebra.box(z_lo, z_hi, 3.0))
    if found is not None:
        sl, sub = found
        f = anatomy.vertebra.sdf(sub)
        level = anatomy.vertebra_level(sub)
        paint(image, sl, occupancy(f, w) * np.ones_like(level), tissues.disc)
        paint(image, sl, occupancy(f + 2.5, w) * level, tissues.marrow)
    _paint_tube(image, grid, anatomy.spinous, tissues.marrow * 0.8, z_lo, z_hi)
    _paint_tube(image, grid, anatomy.canal, tissues.csf, z_lo, z_hi)
    _paint_tube(image, grid, anatomy.aorta, tissues.aorta, z_lo, z_hi)
    _paint_tube(image, grid, anatomy.ivc, tissues.liver_vessels, z_lo, z_hi)
    for kidney in anatomy.kidneys:
        _paint_blob(image, grid, kidney, tissues.fat, shell=8.0)
        _paint_blob(image, grid, kidney, tissues.kidney_cortex)
        _paint_blob(image, grid, kidney, tissues.kidney_medulla, shell=-7.0)
    below = anatomy.below_diaphragm

    def inside(sub: Grid) -> np.ndarray:
        return np.maximum(below(sub), np.float32(2.0) - anatomy.cavity_depth(sub))

    _paint_blob(image, grid, anatomy.spleen, tissues.spleen, extra=inside)
    stomach = anatomy.stomach
    _paint_blob(image, grid, stomach, tissues.bowel_wall, extra=inside)
    # Fluid lies posterior (dependent, the patient is supine), gas anterior.
    level = stomach.center[1] + stomach.radii[1] * (1 - 2 * anatomy.stomach_fill)
    _paint_blob(image, grid, stomach, tissues.stomach_fluid, shell=-4.0, extra=inside)
    def gas(sub: Grid) -> np.ndarray:
        return np.maximum(inside(sub), sub.axes()[1] - np.float32(level))

    _paint_blob(image, grid, stomach, tissues.lung, shell=-4.0, extra=gas)


def _paint_tube(image: np.ndarray, grid: Grid, tube: Tube2D, value: float, z_lo: float, z_hi: float) -> None:
    found = grid.crop(*tube.box(z_lo, z_hi, 3.0))
    if found is None:
        return
    sl, sub = found
    occ = occupancy(tube.sdf(sub), grid.edge_width)
    paint(image, sl, np.broadcast_to(occ, sub.shape), value)


_OUTSIDE = np.float32(1e3)  # a distance far outside any shape


def _detached_tumour(region: np.ndarray) -> np.ndarray | None:
    """Tumour voxels in pieces of the label map without liver voxels (None if there are none).

    A lesion may bulge a little out of the liver; where the liver around it is thinner than a
    voxel (a lobe's tip at tiny sizes), only the bulge would remain, floating outside the liver.
    """
    if not (region == LABEL_TUMOUR).any():
        return None
    components = cc3d.connected_components(region > 0, connectivity=26)
    with_liver = np.unique(components[region == LABEL_LIVER])
    detached = (region == LABEL_TUMOUR) & ~np.isin(components, with_liver)
    return detached if detached.any() else None


def render_liver(image: np.ndarray, label: np.ndarray, grid: Grid, liver: Liver, tissues: Tissues) -> None:
    """Liver, intrahepatic vessels, gallbladder and tumours: image and label (label 1 and 2)."""
    found = grid.crop(*liver.box())
    if found is None:
        return
    sl, sub = found
    w = grid.edge_width
    f_liver = liver.sdf(sub)
    f_tumour = np.full(sub.shape, np.inf, np.float32)
    lesion_f = []
    for lesion in liver.lesions:
        got = sub.crop(*lesion.blob.box(6.0 + 0.2 * lesion.diameter))
        if got is None:
            lesion_f.append(None)
            continue
        ls, lsub = got
        # A tumour may bulge out of the liver surface, but by at most a third of its radius.
        f = np.maximum(lesion.sdf(lsub), f_liver[ls] - np.float32(lesion.diameter / 6))
        np.minimum(f_tumour[ls], f, out=f_tumour[ls])
        lesion_f.append((ls, lsub, f))
    region = label[sl]
    region[f_liver < 0] = LABEL_LIVER
    region[f_tumour < 0] = LABEL_TUMOUR
    detached = _detached_tumour(region)
    if detached is not None:
        region[detached] = 0
        f_tumour[detached] = _OUTSIDE
        for ls, _, f in filter(None, lesion_f):
            f[detached[ls]] = _OUTSIDE
    whole = np.minimum(f_liver, f_tumour)

    value = np.float32(tissues.liver) * (1 + np.float32(tissues.liver_texture) * liver.texture(sub))
    paint(image, sl, slab_occupancy(whole, sub), value)
    tissue_occ = occupancy(f_liver, w)
    vessels = np.zeros(sub.shape, np.float32)
    for vessel in liver.vessels:
        got = sub.crop(*vessel.box())
        if got is None:
            continue
        vs, vsub = got
        occ = occupancy(capsule(vsub, vessel.start, vessel.end, vessel.radius_start, vessel.radius_end), w)
        if vessel.intrahepatic:
            occ *= tissue_occ[vs]
        np.maximum(vessels[vs], occ, out=vessels[vs])
    region_image = image[sl]
    region_image += vessels * (np.float32(tissues.liver_vessels) - region_image)
    if liver.gallbladder is not None:
        _paint_blob(image, grid, liver.gallbladder, tissues.gallbladder)
    for lesion, got in zip(liver.lesions, lesion_f):
        if got is None:
            continue
        ls, lsub, f = got
        val = value[ls] * np.float32(lesion.contrast)
        val *= 1 + np.float32(lesion.mosaic) * lesion.lobulation(lsub)
        val += np.float32(lesion.rim * tissues.liver) * np.clip(1 - np.abs(f + 2.5) / 2.5, 0, 1)
        if lesion.necrosis != 1.0:
            val *= 1 + np.float32(lesion.necrosis - 1) * occupancy(f + np.float32(0.25 * lesion.diameter), 3 * w)
        paint(region_image, ls, slab_occupancy(f, lsub), val)
