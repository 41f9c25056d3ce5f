"""Cheap checks on image files: headers without voxels, shapes, label values, NIfTI completeness.

SimpleITK reads a truncated ``.nii`` or ``.nii.gz`` without complaint and fills the missing voxels
with zeros (measured with SimpleITK 2.5), so completeness of NIfTI files is checked here against
the size their own header promises.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverseg.errors import LiversegError

_NIFTI1_HEADER_SIZE = 348
_NIFTI2_HEADER_SIZE = 540


@dataclass(frozen=True)
class Header:
    """An image header as stored on disk (SimpleITK index order, not the canonical layout)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel_type: str

    @property
    def dimension(self) -> int:
        """Number of image axes."""
        return len(self.size)

    @classmethod
    def of_image(cls, image: sitk.Image) -> "Header":
        """Header of an image already in memory."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
            components=int(image.GetNumberOfComponentsPerPixel()),
            pixel_type=image.GetPixelIDTypeAsString(),
        )


def read_header(path: str | Path) -> Header:
    """Read only the header of an image file, so geometry checks do not pay for the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise LiversegError(f"{path}: cannot be read as an image ({_last_line(e)})") from None
    return Header(
        size=tuple(int(s) for s in reader.GetSize()),
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


def shape_problem(header: Header) -> str:
    """Why an image is not a single-channel 3D volume ('' when it is)."""
    if header.dimension != 3 or header.components != 1:
        return (
            f"is {header.dimension}D with {header.components} component(s) per voxel (size {header.size}); "
            "liverseg needs 3D single-channel volumes: split 4D or vector images into one file per channel"
        )
    return ""


def geometry_differences(reference: Header, other: Header) -> dict[str, float]:
    """Largest absolute difference of spacing, origin and direction between two same-sized headers."""
    return {
        name: float(np.max(np.abs(np.subtract(getattr(reference, name), getattr(other, name)))))
        for name in ("spacing", "origin", "direction")
    }


def geometry_problem(reference: Header, other: Header, tolerance: float) -> str:
    """How ``other`` differs from ``reference`` beyond ``tolerance`` ('' when they agree)."""
    if reference.size != other.size:
        return f"size {other.size} differs from {reference.size}"
    diffs = geometry_differences(reference, other)
    parts = [
        f"{name} {_rounded(getattr(other, name))} differs from {_rounded(getattr(reference, name))} (max difference {diff:.4g})"
        for name, diff in diffs.items()
        if diff > tolerance
    ]
    return "; ".join(parts)


def label_values(array: np.ndarray) -> tuple[list[int], list[float], int]:
    """The integral values in a label array, examples of non-integral ones, and how many voxels hold those.

    Float label files are common in downloaded datasets; a value is accepted when it is finite and
    integral (1.0 is label 1, 1.5 and NaN are not labels).
    """
    if array.dtype.kind in "ui":
        return [int(v) for v in np.unique(array)], [], 0
    good = np.isfinite(array) & (array == np.round(array))
    num_bad = int(good.size - np.count_nonzero(good))
    bad_examples = [float(v) for v in np.unique(array[~good])[:5]] if num_bad else []
    valid = array[good] if num_bad else array.ravel()
    if valid.size and valid.min() >= 0 and valid.max() <= 255:
        valid = valid.astype(np.uint8)  # unique on uint8 is much cheaper than on floats
    return [int(v) for v in np.unique(valid)], bad_examples, num_bad


def nifti_truncation(path: str | Path) -> str:
    """Why a ``.nii``/``.nii.gz`` file holds fewer bytes than its header promises ('' when complete).

    Files of other formats return '' (their readers detect truncation themselves).
    """
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".nii.gz")
    if not (compressed or name.endswith(".nii")):
        return ""
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(_NIFTI2_HEADER_SIZE)
    except (OSError, EOFError, zlib.error) as e:
        return f"is not a readable {'gzip' if compressed else 'NIfTI'} file ({e})"
    expected = _nifti_data_end(header)
    if expected is None:
        return ""  # not a NIfTI header we understand: let the image reader decide
    if compressed:
        return _gzip_shortfall(path, expected)
    actual = os.path.getsize(path)
    return _shortfall_message(actual, expected) if actual < expected else ""


def _nifti_data_end(header: bytes) -> int | None:
    """Byte offset where a NIfTI-1/2 file's voxel data ends, from its header."""
    if len(header) < _NIFTI1_HEADER_SIZE:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == _NIFTI1_HEADER_SIZE:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if sizeof_hdr == _NIFTI2_HEADER_SIZE and len(header) >= _NIFTI2_HEADER_SIZE:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1 : ndim + 1]):
        return None
    return max(offset, sizeof_hdr) + int(np.prod(dims[1 : ndim + 1], dtype=np.int64)) * bitpix // 8


def _gzip_shortfall(path: Path, expected: int) -> str:
    # The gzip trailer stores the uncompressed size modulo 2**32: a match is the cheap common case.
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == expected % 2**32:
            return ""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        return f"is truncated or corrupt ({e}; {total} bytes could be decompressed, the header needs {expected})"
    return _shortfall_message(total, expected) if total < expected else ""


def _shortfall_message(actual: int, expected: int) -> str:
    return f"is truncated: it holds {actual} bytes of image data and header, its header needs {expected}"


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _last_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else "unknown reason"
