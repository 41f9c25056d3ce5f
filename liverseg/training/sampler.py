"""Where a training patch comes from in one case: its centre, the region cut around it, its labels and loss mask.

The plan's :class:`~liverseg.planning.parts.SamplingSpec` gives probabilities for three kinds of
centres: ``"lesion"`` (pick one of the case's lesions uniformly, then one of its voxels, so a small
satellite lesion is a centre as often as a large one), ``"class_<label>"`` (a voxel of that
original label) and ``"random"`` (anywhere). Candidate voxels come from the case's precomputed
:class:`~liverseg.preprocessing.locations.Locations`, so no volume is scanned.

Fallbacks. A kind the case cannot serve passes its share on, so the ratios of every case still sum
to 1: a case without lesions spreads the lesion share over the classes in proportion to their
probabilities (all of it to ``random`` when no class has a probability), i.e. the class
probabilities are renormalised without the lesion term, and ``random`` keeps its own share; a class
absent from the case gives its share to ``random``.

Placement. On every axis where the case is at least a patch long, the centre is clamped so the
*patch* lies inside the case: no patch wastes voxels on padding, and the chosen voxel stays inside
the patch. Random centres are uniform over those clamped positions (nnU-Net's rule). On a shorter
axis the patch is centred on the case. The *region* (the patch plus the margin that augmentation
rotates and scales into view) may reach past the case; :func:`cut_region` pads it with 0 in the
image and 0 (background) in the label. Images are z-scored, so 0 is the foreground mean rather
than "air"; 0 is what the sliding-window predictor pads with and what batchgeneratorsv2's spatial
transform fills in, so training sees the same padding as inference.

``patch_must_contain``: a centre whose patch holds none of those labels is drawn again (same kind,
at most ``max_tries`` times), and then replaced by a voxel of one of those labels.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import edt
import numpy as np

from liverseg.planning.parts import SamplingSpec
from liverseg.preprocessing.locations import Locations

LESION = "lesion"
RANDOM = "random"
_CLASS_PREFIX = "class_"
MAX_TRIES = 10


class Centre(NamedTuple):
    """A patch centre ``(z, y, x)`` in voxels of the case, and the kind of centre it ended up being."""

    position: tuple[int, int, int]
    kind: str


def class_kind(label: int) -> str:
    """The kind name of centres on voxels of original label ``label`` (``"class_1"``)."""
    return f"{_CLASS_PREFIX}{int(label)}"


def kind_probabilities(sampling: SamplingSpec) -> dict[str, float]:
    """The plan's probabilities per centre kind (``"lesion"``, ``"class_<label>"``, ``"random"``), zeros left out."""
    classes = {class_kind(k): p for k, p in sampling.classes.items()}
    probabilities = {LESION: sampling.lesion, **classes, RANDOM: sampling.random}
    return {k: float(p) for k, p in probabilities.items() if p > 0}


def draw_kinds(sampling: SamplingSpec, n: int, rng: np.random.Generator) -> list[str]:
    """The kinds of ``n`` centres of one batch, in random order.

    Stratified: kind ``k`` gets ``floor(n p_k)`` samples for sure and one more with probability
    equal to the remainder (systematic sampling), so every kind's expected share is exactly its
    probability and a batch deviates from the plan by less than one sample per kind. With lesion
    0.9 and a batch of 2, every batch has at least one lesion patch and 80% have two; independent
    draws would give 1% of batches without one. ``n = 1`` is a plain draw.
    """
    probabilities = kind_probabilities(sampling)
    kinds = list(probabilities)
    expected = np.array([probabilities[k] for k in kinds]) * n
    counts = np.floor(expected + 1e-9).astype(int)
    remainders = np.clip(expected - counts, 0.0, None)
    extra = n - int(counts.sum())
    if extra > 0 and remainders.sum() <= 0:  # only through rounding of probabilities that sum to 1 - 1e-6
        counts[int(np.argmax(expected))] += extra
    elif extra > 0:
        # Points u, u+1, ..., u+extra-1 on the stacked remainders: kind k is hit with probability remainders[k].
        edges = np.cumsum(remainders) * extra / remainders.sum()
        points = rng.random() + np.arange(extra)
        counts += np.bincount(np.searchsorted(edges, points, side="right"), minlength=len(kinds))[: len(kinds)]
    drawn = [kind for kind, count in zip(kinds, counts) for _ in range(count)]
    return [drawn[i] for i in rng.permutation(len(drawn))]


def case_probabilities(sampling: SamplingSpec, locations: Locations) -> dict[str, float]:
    """The probabilities per kind for one case, after the fallbacks of the module docstring."""
    probabilities = kind_probabilities(sampling)
    for kind in [k for k in probabilities if k.startswith(_CLASS_PREFIX)]:
        if len(_class_voxels(locations, kind)) == 0:
            probabilities[RANDOM] = probabilities.get(RANDOM, 0.0) + probabilities.pop(kind)
    lesion = probabilities.pop(LESION, 0.0)
    if lesion and _lesions(locations):
        probabilities[LESION] = lesion
    elif lesion:
        classes = {k: p for k, p in probabilities.items() if k.startswith(_CLASS_PREFIX)}
        total = sum(classes.values())
        for kind, p in classes.items():
            probabilities[kind] = p + lesion * p / total
        if not classes:
            probabilities[RANDOM] = probabilities.get(RANDOM, 0.0) + lesion
    return probabilities


def resolve_kind(kind: str, sampling: SamplingSpec, locations: Locations, rng: np.random.Generator) -> str:
    """``kind`` if the case can serve it, else a kind drawn by the fallback rules (module docstring)."""
    if kind == RANDOM or (kind == LESION and _lesions(locations)):
        return kind
    if kind.startswith(_CLASS_PREFIX) and len(_class_voxels(locations, kind)):
        return kind
    if kind == LESION:
        fallback = {k: p for k, p in kind_probabilities(sampling).items() if k.startswith(_CLASS_PREFIX)}
        fallback = {k: p for k, p in fallback.items() if len(_class_voxels(locations, k))}
        if fallback:
            names = list(fallback)
            weights = np.array([fallback[k] for k in names])
            return names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return RANDOM


def choose_centre(
    locations: Locations,
    sampling: SamplingSpec,
    shape: Sequence[int],
    rng: np.random.Generator,
    patch_size: Sequence[int] | None = None,
    seg: np.ndarray | None = None,
    kind: str | None = None,
    max_tries: int = MAX_TRIES,
) -> Centre:
    """A patch centre in a case of ``shape`` ``(z, y, x)``, drawn as the plan's ``sampling`` says.

    ``kind`` fixes the kind (as :func:`draw_kinds` gives it for a batch); otherwise it is drawn
    from the plan's probabilities. ``patch_size`` (defaults to 1 voxel) is what the centre is
    clamped for (module docstring). ``seg``, the case's original labels, is needed when the plan
    has ``patch_must_contain``.
    """
    patch = tuple(int(p) for p in patch_size) if patch_size is not None else (1, 1, 1)
    if kind is None:
        kind = draw_kinds(sampling, 1, rng)[0]
    kind = resolve_kind(kind, sampling, locations, rng)
    must = tuple(sampling.patch_must_contain)
    if must and seg is None:
        raise ValueError("patch_must_contain needs the case's label map (seg)")
    for _ in range(max_tries if must else 1):
        position = _draw(kind, locations, shape, patch, rng)
        if not must or _patch_holds(seg, position, patch, must):
            return Centre(position, kind)
    present = [label for label in must if len(_class_voxels(locations, class_kind(label)))]
    if not present:  # the case has none of the labels: nothing better to offer
        return Centre(position, kind)
    kind = class_kind(present[int(rng.integers(len(present)))])
    return Centre(_draw(kind, locations, shape, patch, rng), kind)


def clamp_centre(position: Sequence[int], shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """``position`` moved so the patch around it lies inside the case on every axis long enough for it."""
    low, high = _centre_range(shape, patch_size)
    return tuple(int(min(max(p, lo), hi)) for p, lo, hi in zip(position, low, high))  # type: ignore[return-value]


def region_slices(centre: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """The (unclipped) slices of a region of ``size`` around ``centre``: it starts at ``centre - size // 2``."""
    return tuple(slice(int(c) - int(s) // 2, int(c) - int(s) // 2 + int(s)) for c, s in zip(centre, size))


def cut_region(
    data: np.ndarray | None, seg: np.ndarray | None, centre: Sequence[int], region_size: Sequence[int]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The region of ``region_size`` around ``centre`` from a ``(c, z, y, x)`` image and a ``(z, y, x)`` label.

    Returns a float32 image and a uint8 label of exactly the region's size (either may be None when
    not given), zero-padded where the region reaches past the case. Only the overlapping part is
    read, so memory-mapped arrays are not loaded whole.
    """
    shape = seg.shape if seg is not None else data.shape[1:]
    size = tuple(int(s) for s in region_size)
    source, target = overlap(shape, centre, size)
    data_out = seg_out = None
    if data is not None:
        data_out = np.zeros((data.shape[0], *size), dtype=np.float32)
        data_out[(slice(None), *target)] = data[(slice(None), *source)]
    if seg is not None:
        seg_out = np.zeros(size, dtype=np.uint8)
        seg_out[target] = seg[source]
    return data_out, seg_out


def overlap(shape: Sequence[int], centre: Sequence[int], size: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a region of ``size`` around ``centre`` meets a volume of ``shape``: slices in the volume and in the region.

    Both are empty (zero-length) on some axis when the region lies wholly outside.
    """
    wanted = region_slices(centre, size)
    source = tuple(slice(min(max(w.start, 0), n), max(min(w.stop, n), 0)) for w, n in zip(wanted, shape))
    source = tuple(slice(s.start, max(s.stop, s.start)) for s in source)
    target = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(source, wanted))
    return source, target


def map_labels(seg: np.ndarray, learns: dict[int, int]) -> np.ndarray:
    """Original labels to the labels a model learns (``{1: 1, 2: 1}``: liver; ``{2: 1}``: tumour); others become 0."""
    table = np.zeros(256, dtype=np.uint8)
    for original, target in learns.items():
        table[int(original)] = int(target)
    return table[seg]


def dilated_mask(seg: np.ndarray, labels: Sequence[int], dilation_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """The voxels of a case within ``dilation_mm`` of ``labels``: where a masked model's loss counts.

    Distances are Euclidean between voxel centres, in mm at the case's ``spacing`` ``(z, y, x)``;
    a voxel of ``labels`` is at distance 0, so ``dilation_mm=0`` gives the labels themselves.
    Computed once per case on the whole volume (the region a patch comes from may not hold the
    liver that a voxel near its edge is close to). Returns a bool array of ``seg``'s shape.
    """
    near = np.isin(seg, np.asarray(labels, dtype=seg.dtype))
    if not near.any():
        return near
    # edt is several times faster on uint8 than on bool input
    distance = edt.edt((~near).view(np.uint8), anisotropy=tuple(float(s) for s in spacing), black_border=False, parallel=1)
    return distance <= dilation_mm


class PackedMask:
    """A bool ``(z, y, x)`` volume kept as bits (an eighth of the memory), from which regions are cut.

    The loader keeps one per case and worker: a 40 x 450 x 450 mask takes 1 MB instead of 8.
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.shape = tuple(mask.shape)
        self.bits = np.packbits(mask, axis=-1)

    def cut(self, centre: Sequence[int], region_size: Sequence[int]) -> np.ndarray:
        """The bool region of ``region_size`` around ``centre``, False beyond the volume."""
        size = tuple(int(s) for s in region_size)
        (sz, sy, sx), target = overlap(self.shape, centre, size)
        out = np.zeros(size, dtype=bool)
        first = sx.start // 8
        rows = np.unpackbits(self.bits[sz, sy, first:(sx.stop + 7) // 8], axis=-1)
        out[target] = rows[..., sx.start - 8 * first:sx.stop - 8 * first]
        return out


def label_box(seg: np.ndarray, labels: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """The ``[start, stop)`` box per axis of the voxels of ``labels`` in ``seg``, or None when there are none."""
    present = np.isin(seg, np.asarray(labels, dtype=seg.dtype))
    box = []
    for axis in range(seg.ndim):
        hits = np.flatnonzero(present.any(axis=tuple(a for a in range(seg.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _centre_range(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    shape_a, patch = np.asarray(shape, dtype=int), np.asarray(patch_size, dtype=int)
    low = patch // 2
    high = shape_a - patch + patch // 2
    short = high < low
    # Too short an axis: the patch is centred on the case (same rule as the predictor's padding).
    low[short] = high[short] = (shape_a[short] - patch[short]) // 2 + patch[short] // 2
    return low, high


def _draw(kind: str, locations: Locations, shape: Sequence[int], patch: Sequence[int],
          rng: np.random.Generator) -> tuple[int, int, int]:
    if kind == RANDOM:
        low, high = _centre_range(shape, patch)
        return tuple(int(v) for v in rng.integers(low, high + 1))  # type: ignore[return-value]
    if kind == LESION:
        lesions = _lesions(locations)
        voxels = lesions[int(rng.integers(len(lesions)))]
    else:
        voxels = _class_voxels(locations, kind)
    return clamp_centre(voxels[int(rng.integers(len(voxels)))], shape, patch)


def _patch_holds(seg: np.ndarray, centre: Sequence[int], patch: Sequence[int], labels: Sequence[int]) -> bool:
    window = tuple(slice(max(s.start, 0), max(s.stop, 0)) for s in region_slices(centre, patch))
    return bool(np.isin(seg[window], np.asarray(labels, dtype=seg.dtype)).any())


def _lesions(locations: Locations) -> list[np.ndarray]:
    return [lesion for lesion in locations.lesions if len(lesion)]


def _class_voxels(locations: Locations, kind: str) -> np.ndarray:
    return locations.classes.get(int(kind[len(_CLASS_PREFIX):]), np.zeros((0, 3), dtype=np.int16))
