"""Image reading and writing through SimpleITK, in one canonical axis layout.

Every image is brought to the canonical orientation (``LPS``: index axes x, y, z point to the
patient's left, posterior and superior) on read, so the network always sees the same layout
whatever the scanner wrote, and is put back exactly into its original orientation on write.
Arrays are numpy ``(z, y, x)`` as ``sitk.GetArrayFromImage`` returns them; :class:`Geometry`
stores spacings in the same ``(z, y, x)`` order and keeps the original header to undo everything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output
from liverseg.io.checks import nifti_truncation

CANONICAL_ORIENTATION = "LPS"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where an array's voxels are in the world, before and after canonical reorientation.

    ``shape``, ``spacing``, ``origin`` and ``direction`` describe the canonical array; ``shape`` and
    ``spacing`` are in ``(z, y, x)`` order, ``origin`` and ``direction`` in SimpleITK's world order. The
    ``original_*`` fields are the header on disk (SimpleITK order), used to write results back.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    original_orientation: str
    original_size: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    original_origin: tuple[float, float, float]
    original_direction: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (v if isinstance(v, str) else tuple(v)) for k, v in d.items()})


def image_suffix(path: str | Path) -> str:
    """The supported file ending of ``path`` (``.nii.gz`` counts as one), or '' if none."""
    name = str(path).lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def read_sitk(path: str | Path) -> sitk.Image:
    """Read an image file, or a folder holding one DICOM series, as a SimpleITK image."""
    path = Path(path)
    if not path.exists():
        raise LiversegError(f"{path}: file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise LiversegError(f"{path}: folder holds no DICOM series; give an image file or a DICOM folder")
            if len(series) > 1:
                raise LiversegError(f"{path}: folder holds {len(series)} DICOM series; put each series in its own folder")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        truncated = nifti_truncation(path)
        if truncated:
            raise LiversegError(f"{path}: {truncated}; copy or convert the file again")
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise LiversegError(f"{path}: cannot be read as an image ({first_line}); is the file complete and in a supported format?") from None


def to_canonical(image: sitk.Image, source: str = "image") -> tuple[sitk.Image, str]:
    """Reorient a 3D image to the canonical orientation; also return its original orientation code."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LiversegError(
            f"{source}: expected a 3D single-channel image, got dimension {image.GetDimension()} with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s); split 4D or vector images into one file per channel"
        )
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    if code == CANONICAL_ORIENTATION:
        return image, code
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION), code


def sitk_to_array(image: sitk.Image, source: str = "image") -> tuple[np.ndarray, Geometry]:
    """Canonical ``(z, y, x)`` array and geometry of an in-memory SimpleITK image."""
    canonical, code = to_canonical(image, source)
    array = sitk.GetArrayFromImage(canonical)
    geometry = Geometry(
        shape=tuple(int(n) for n in array.shape),
        spacing=tuple(float(s) for s in canonical.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in canonical.GetOrigin()),
        direction=tuple(float(d) for d in canonical.GetDirection()),
        original_orientation=code,
        original_size=tuple(int(s) for s in image.GetSize()),
        original_spacing=tuple(float(s) for s in image.GetSpacing()),
        original_origin=tuple(float(o) for o in image.GetOrigin()),
        original_direction=tuple(float(d) for d in image.GetDirection()),
    )
    return array, geometry


def array_to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """SimpleITK image of a canonical array, in the original orientation and header."""
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    canonical = sitk.GetImageFromArray(array)
    canonical.SetSpacing(geometry.spacing[::-1])
    canonical.SetOrigin(geometry.origin)
    canonical.SetDirection(geometry.direction)
    image = canonical
    if geometry.original_orientation != CANONICAL_ORIENTATION:
        image = sitk.DICOMOrient(canonical, geometry.original_orientation)
    # Reorientation is an exact permutation and flip; restoring the header removes float drift.
    image.SetSpacing(geometry.original_spacing)
    image.SetOrigin(geometry.original_origin)
    image.SetDirection(geometry.original_direction)
    return image


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an image file or DICOM folder as a canonical ``(z, y, x)`` array and its geometry."""
    return sitk_to_array(read_sitk(path), str(path))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a canonical array to ``path`` in its original orientation and header, atomically."""
    image = array_to_sitk(array, geometry)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def read_channels(paths: Sequence[str | Path], tolerance: float = 1e-3) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case as a float32 ``(c, z, y, x)`` array and one geometry.

    All channels must share size, spacing, origin and direction (within ``tolerance``).
    """
    arrays, geometries = [], []
    for p in paths:
        arr, geo = read_image(p)
        arrays.append(arr.astype(np.float32, copy=False))
        geometries.append(geo)
    if not arrays:
        raise ValueError("read_channels needs at least one path")
    reference = geometries[0]
    for p, geo in zip(paths[1:], geometries[1:]):
        problem = geometry_mismatch(reference, geo, tolerance)
        if problem:
            raise LiversegError(f"{p}: {problem} compared with channel {paths[0]}; all channels of a case must share one grid")
    return np.stack(arrays), reference


def geometry_mismatch(a: Geometry, b: Geometry, tolerance: float = 1e-3) -> str:
    """Describe how two geometries differ on disk ('' when they agree within ``tolerance``)."""
    if a.original_size != b.original_size:
        return f"size {b.original_size} differs from {a.original_size}"
    for name in ("original_spacing", "original_origin", "original_direction"):
        va, vb = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        diff = float(np.max(np.abs(va - vb)))
        if diff > tolerance:
            return f"{name.removeprefix('original_')} {tuple(np.round(vb, 4))} differs from {tuple(np.round(va, 4))} (max difference {diff:.4g})"
    return ""
