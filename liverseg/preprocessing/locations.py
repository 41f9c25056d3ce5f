"""Where the training sampler can centre patches: sampled voxels of each class and of each lesion.

Computed once per preprocessed case, so the sampler never scans a volume. Per class, a bounded
random sample of voxel coordinates; per lesion (26-connected component of the tumour label), a
bounded sample of its voxels and its size, so the sampler can pick a lesion first and then a voxel
in it: small satellite lesions are then seen as often as large ones, whereas picking a tumour voxel
directly (nnU-Net) favours lesions in proportion to their volume.

Coordinates are ``(n, 3)`` arrays in ``(z, y, x)`` order, int16 when the volume allows it (every
axis shorter than 32768 voxels), int32 otherwise. Sampling is seeded and does not depend on which
other classes are asked for.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Sequence

import cc3d
import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output

_CLASS_PREFIX = "class_"
# Seeds are mixed with a constant per purpose, so classes and lesions draw different streams.
_LESION_STREAM = 2**31 - 1


@dataclass(frozen=True)
class Locations:
    """Sampled voxel coordinates of one case.

    ``classes`` maps a label value to its ``(n, 3)`` coordinates (``n`` may be 0);
    ``lesions[i]`` holds sampled coordinates of lesion ``i`` and ``lesion_sizes[i]`` its full
    voxel count. Lesions are numbered in raster order of their first voxel.
    """

    classes: dict[int, np.ndarray] = field(default_factory=dict)
    lesions: list[np.ndarray] = field(default_factory=list)
    lesion_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def coordinate_dtype(shape: Sequence[int]) -> type[np.signedinteger]:
    """The smallest signed integer type holding every index of an array of ``shape``."""
    return np.int16 if max(shape) <= np.iinfo(np.int16).max + 1 else np.int32


def class_locations(label: np.ndarray, classes: Sequence[int], max_per_class: int = 10000, seed: int = 0) -> dict[int, np.ndarray]:
    """For each label value in ``classes``, up to ``max_per_class`` of its voxels, chosen at random.

    The sample of a class depends only on the label map, the class, ``max_per_class`` and ``seed``.
    """
    _check_label(label)
    dtype = coordinate_dtype(label.shape)
    flat = label.ravel()
    result: dict[int, np.ndarray] = {}
    for value in classes:
        indices = np.flatnonzero(flat == value)
        if indices.size > max_per_class:
            rng = np.random.default_rng([seed, int(value) % 2**32])
            indices = np.sort(rng.choice(indices, size=max_per_class, replace=False))
        result[int(value)] = _to_coordinates(indices, label.shape, dtype)
    return result


def lesion_locations(
    label: np.ndarray, lesion_label: int = 2, max_per_lesion: int = 1000, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per lesion (26-connected component of ``lesion_label``): up to ``max_per_lesion`` random voxels.

    Returns the list of ``(n_i, 3)`` coordinate arrays and the lesions' full voxel counts (int64).
    One labelling pass and one sort; no lesion is searched for in the whole volume.
    """
    _check_label(label)
    components = cc3d.connected_components(label == lesion_label, connectivity=26)
    flat = components.ravel()
    indices = np.flatnonzero(flat)
    lesion_ids = flat[indices].astype(np.int64) - 1
    num_lesions = int(lesion_ids.max()) + 1 if lesion_ids.size else 0
    sizes = np.bincount(lesion_ids, minlength=num_lesions).astype(np.int64)
    if num_lesions == 0:
        return [], sizes

    # A random key per voxel; sorting by (lesion, key) puts each lesion's voxels together in a
    # random order, and its first max_per_lesion are a uniform sample without replacement.
    keys = np.random.default_rng([seed, _LESION_STREAM]).random(indices.size)
    order = np.lexsort((keys, lesion_ids))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(indices.size) - starts[lesion_ids[order]]
    chosen = order[rank < max_per_lesion]
    chosen_ids = lesion_ids[chosen]
    # Group by lesion again, each lesion's sample in raster order.
    chosen = chosen[np.lexsort((chosen, chosen_ids))]
    counts = np.minimum(sizes, max_per_lesion)
    coordinates = _to_coordinates(indices[chosen], label.shape, coordinate_dtype(label.shape))
    return np.split(coordinates, np.cumsum(counts)[:-1]), sizes


def compute_locations(
    label: np.ndarray,
    classes: Sequence[int],
    lesion_label: int | None = 2,
    max_per_class: int = 10000,
    max_per_lesion: int = 1000,
    seed: int = 0,
) -> Locations:
    """Class and lesion locations of one label map together (no lesions when ``lesion_label`` is None)."""
    per_class = class_locations(label, classes, max_per_class, seed)
    if lesion_label is None:
        return Locations(classes=per_class)
    lesions, sizes = lesion_locations(label, lesion_label, max_per_lesion, seed)
    return Locations(classes=per_class, lesions=lesions, lesion_sizes=sizes)


def save_locations(path: str | os.PathLike, locations: Locations) -> None:
    """Write locations to a compressed ``.npz`` file, atomically."""
    arrays: dict[str, np.ndarray] = {f"{_CLASS_PREFIX}{value}": coords for value, coords in locations.classes.items()}
    lesion_counts = np.array([len(c) for c in locations.lesions], dtype=np.int64)
    if locations.lesions:
        arrays["lesion_coordinates"] = np.concatenate(locations.lesions)
    else:
        arrays["lesion_coordinates"] = np.zeros((0, 3), dtype=np.int16)
    arrays["lesion_counts"] = lesion_counts
    arrays["lesion_sizes"] = np.asarray(locations.lesion_sizes, dtype=np.int64)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_locations(path: str | os.PathLike) -> Locations:
    """Read locations written by :func:`save_locations`."""
    problem = f"{path}: not a readable locations file"
    try:
        data = np.load(path)
    except FileNotFoundError:
        raise LiversegError(f"{path}: locations file not found; preprocess the dataset again (liverseg_plan)") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise LiversegError(f"{problem} ({e}); delete it and preprocess again") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise LiversegError(f"{problem} (not an .npz archive); delete it and preprocess again")
    try:
        with data:
            classes = {int(k[len(_CLASS_PREFIX):]): data[k] for k in data.files if k.startswith(_CLASS_PREFIX)}
            coordinates, counts, sizes = data["lesion_coordinates"], data["lesion_counts"], data["lesion_sizes"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise LiversegError(f"{problem} ({e}); delete it and preprocess again") from None
    if counts.sum() != len(coordinates) or len(counts) != len(sizes):
        raise LiversegError(f"{path}: lesion entries are inconsistent; delete it and preprocess again")
    lesions = np.split(coordinates, np.cumsum(counts)[:-1]) if len(counts) else []
    return Locations(classes=classes, lesions=lesions, lesion_sizes=sizes)


def _to_coordinates(flat_indices: np.ndarray, shape: Sequence[int], dtype: type) -> np.ndarray:
    coords = np.empty((flat_indices.size, 3), dtype=dtype)
    for axis, values in enumerate(np.unravel_index(flat_indices, tuple(shape))):
        coords[:, axis] = values
    return coords


def _check_label(label: np.ndarray) -> None:
    if label.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label map, got shape {label.shape}")
