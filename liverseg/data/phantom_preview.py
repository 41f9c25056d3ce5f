"""A montage PNG of a raw dataset: an axial and a coronal slice through the liver of each case.

The axial slice is the one with the most tumour (or the liver's centre when there is none).
Slices are shown in radiological convention (patient's right on the image's left, anterior at
the top of axial slices, superior at the top of coronal ones) with the physical aspect ratio, and
the liver (labels 1 and 2) and tumour (label 2) outlines drawn in two colours, so a person can
check at a glance that the images and labels of a dataset agree.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from liverseg.errors import LiversegError  # noqa: E402
from liverseg.io.atomic import save_figure  # noqa: E402
from liverseg.io.dataset import RawDataset  # noqa: E402
from liverseg.io.images import read_image  # noqa: E402

LIVER_COLOUR, TUMOUR_COLOUR = "#33dd55", "#ff3344"


def _centre(mask: np.ndarray, axis: int) -> int:
    profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    if profile.sum() == 0:
        return mask.shape[axis] // 2
    return int(round(float(np.average(np.arange(len(profile)), weights=profile))))


def _show(ax, image, label, aspect, title, flip_rows) -> None:
    if flip_rows:
        image, label = image[::-1], label[::-1]
    lo, hi = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
    for mask, colour in ((label > 0, LIVER_COLOUR), (label == 2, TUMOUR_COLOUR)):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def write_preview(dataset_root: Path, output_png: Path, max_cases: int = 6) -> Path:
    """Draw the montage of the first ``max_cases`` training cases of a raw dataset into ``output_png``."""
    dataset = RawDataset(dataset_root)
    cases = dataset.training_cases()[:max_cases]
    if not cases:
        raise LiversegError(f"{dataset_root}: no training cases in imagesTr to preview")
    columns = min(3, len(cases))
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(4.2 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, case in enumerate(cases):
        image, geometry = read_image(dataset.image_files(case)[0])
        label_path = dataset.label_file(case)
        label = read_image(label_path)[0] if label_path.is_file() else np.zeros(image.shape, np.uint8)
        sz, sy, sx = geometry.spacing
        tumour = label == 2
        # The axial slice with the most tumour (else through the liver's centre), so lesions show.
        z = int(np.argmax(tumour.sum(axis=(1, 2)))) if tumour.any() else _centre(label > 0, 0)
        y = _centre(label > 0, 1)
        ax_axial, ax_coronal = axes[i // columns, 2 * (i % columns)], axes[i // columns, 2 * (i % columns) + 1]
        _show(ax_axial, image[z], label[z], sy / sx, f"{case} axial {z}", flip_rows=False)
        _show(ax_coronal, image[:, y], label[:, y], sz / sx, f"coronal {y}", flip_rows=True)
    fig.tight_layout()
    return save_figure(fig, output_png, dpi=110)
