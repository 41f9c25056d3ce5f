"""Convert one downloaded case (image + label) into the raw layout, defending against release quirks.

Quirks handled: labels stored as float (cast to uint8 when integral), label headers that differ from
the image header by float noise (the image geometry is copied onto the label), uncompressed or
oddly typed images (re-written as ``.nii.gz``, integral floats stored as int16). Every problem of a
case is returned, not raised, so a conversion can report all problems of all cases together.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output
from liverseg.io.images import read_sitk
from liverseg.io.checks import (
    Header,
    geometry_differences,
    geometry_problem,
    label_values,
    nifti_truncation,
    read_header,
    shape_problem,
)

OUTPUT_ENDING = ".nii.gz"
_INT16 = np.iinfo(np.int16)
_UINT8 = sitk.GetPixelIDValueAsString(sitk.sitkUInt8)


@dataclass(frozen=True)
class CaseSource:
    """Where one case of a downloaded dataset lives, and the identifier it gets in the raw dataset."""

    case_id: str
    image: Path
    label: Path


def convert_case(case: CaseSource, root: Path, allowed_labels: frozenset[int], tolerance: float) -> list[str]:
    """Write ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` under ``root``.

    Returns the problems found (each naming its file, what is wrong and what to do); when there is
    any, nothing is written for this case.
    """
    try:
        image_header = read_header(case.image)
    except LiversegError as e:
        return [f"{e}; replace the file with a complete copy"]
    problems = _file_problems(case.image, image_header)
    try:
        label_image = read_sitk(case.label)
    except LiversegError as e:
        return problems + [f"{e}; replace the file with a complete copy"]
    label_header = Header.of_image(label_image)
    problems += _file_problems(case.label, label_header)
    if problems:
        return problems
    problems += _label_geometry_problems(case, image_header, label_header, tolerance)
    array = sitk.GetArrayViewFromImage(label_image)
    problems += _label_value_problems(case.label, array, allowed_labels)
    if problems:
        return problems

    _write_image(case.image, image_header, root / "imagesTr" / f"{case.case_id}_0000{OUTPUT_ENDING}")
    label_out = root / "labelsTr" / f"{case.case_id}{OUTPUT_ENDING}"
    clean_label_header = replace(image_header, components=1, pixel_type=_UINT8)
    if label_header == clean_label_header and str(case.label).lower().endswith(OUTPUT_ENDING):
        _copy(case.label, label_out)
    else:
        clean = sitk.GetImageFromArray(np.asarray(array).astype(np.uint8))
        _set_geometry(clean, image_header)
        _write(clean, label_out)
    return []


def _file_problems(path: Path, header: Header) -> list[str]:
    problems = []
    shape = shape_problem(header)
    if shape:
        problems.append(f"{path}: {shape}")
    truncated = nifti_truncation(path)
    if truncated:
        problems.append(f"{path}: {truncated}; replace the file with a complete copy (download or extract it again)")
    return problems


def _label_geometry_problems(case: CaseSource, image: Header, label: Header, tolerance: float) -> list[str]:
    if image.size != label.size:
        return [
            f"{case.label}: size {label.size} differs from its image {case.image.name} {image.size}; "
            "the label does not belong to this image (check the pairing of the files)"
        ]
    problem = geometry_problem(image, label, tolerance)
    if not problem:
        return []
    worst = max(geometry_differences(image, label).values())
    return [
        f"{case.label}: {problem} compared with its image {case.image.name} (tolerance {tolerance:g}); "
        f"check that it is this image's label, and if so re-run with a tolerance above {worst:.3g} "
        "(--tolerance) to copy the image geometry onto the label"
    ]


def _label_value_problems(path: Path, array: np.ndarray, allowed: frozenset[int]) -> list[str]:
    values, bad_examples, num_bad = label_values(array)
    problems = []
    if num_bad:
        problems.append(
            f"{path}: {num_bad} voxel(s) hold non-integral values (e.g. {bad_examples}); "
            "labels must be whole numbers: was the label resampled with linear interpolation? Use the original label file"
        )
    unexpected = sorted(set(values) - allowed)
    if unexpected:
        problems.append(
            f"{path}: holds label value(s) {unexpected}, expected only {sorted(allowed)}; "
            "map them to the expected labels or remove the case"
        )
    return problems


def _write_image(source: Path, header: Header, target: Path) -> None:
    """Copy a ``.nii.gz`` byte for byte; re-write anything else, storing integral floats as int16."""
    if str(source).lower().endswith(OUTPUT_ENDING):
        _copy(source, target)
        return
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" or (array.dtype.kind in "ui" and array.dtype.itemsize > 2):
        if array.size and _fits_int16_exactly(array):
            smaller = sitk.GetImageFromArray(np.asarray(array).astype(np.int16))
            smaller.CopyInformation(image)
            image = smaller
    _write(image, target)


def _fits_int16_exactly(array: np.ndarray) -> bool:
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        return False  # also False when NaN is present
    return _INT16.min <= array.min() and array.max() <= _INT16.max


def _set_geometry(image: sitk.Image, header: Header) -> None:
    image.SetSpacing(header.spacing)
    image.SetOrigin(header.origin)
    image.SetDirection(header.direction)


def _copy(source: Path, target: Path) -> None:
    with atomic_output(target) as tmp:
        shutil.copyfile(source, tmp)


def _write(image: sitk.Image, target: Path) -> None:
    with atomic_output(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
