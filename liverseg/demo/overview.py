"""The demo's one-page picture: scans with reference and predicted contours side by side, and the training curves.

A person judges a segmentation by looking at it. :func:`plot_overview` draws, for a few cases,
the axial slice where the reference has the most tumour (the most liver when there is none) three
times: the scan alone, the scan with the reference contours, the scan with the predicted
contours (liver green, tumour red, each case's Dice in the title); under them, the loss and
pseudo-Dice curves of every trained model read from its checkpoint history.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from liverseg.io.atomic import save_figure
from liverseg.io.images import read_image

LIVER, TUMOUR = 1, 2
_COLOURS = {LIVER: "lime", TUMOUR: "red"}


def overview_slice(reference: np.ndarray) -> int:
    """The axial slice (z index) of a reference label map with the most tumour voxels, else the most liver."""
    tumour = (reference == TUMOUR).sum(axis=(1, 2))
    if tumour.any():
        return int(tumour.argmax())
    return int((reference > 0).sum(axis=(1, 2)).argmax())


def _contours(ax, label: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """Liver (liver and tumour together) and tumour outlines of one label slice."""
    for value, mask in ((LIVER, label > 0), (TUMOUR, label == TUMOUR)):
        if mask.any():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=_COLOURS[value], linewidths=1.0,
                       extent=extent, origin="upper")


def _show_case(axes, image_file: Path, reference_file: Path, prediction_file: Path, title: str) -> None:
    image, geometry = read_image(image_file)
    reference, _ = read_image(reference_file)
    prediction, _ = read_image(prediction_file)
    z = overview_slice(reference)
    spacing = geometry.spacing
    extent = (0.0, image.shape[2] * spacing[2], image.shape[1] * spacing[1], 0.0)
    picture = image[z].astype(np.float32)
    low, high = np.percentile(picture, [1, 99])
    for ax, label, name in zip(axes, (None, reference[z], prediction[z]), ("scan", "reference", "prediction")):
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, extent=extent, origin="upper")
        if label is not None:
            _contours(ax, label, extent)
        ax.set_title(f"{title}: {name}" if name == "scan" else name, fontsize=9)
        ax.set_axis_off()
    axes[0].text(0.02, 0.02, f"slice z={z}", transform=axes[0].transAxes, color="yellow", fontsize=7)


def _plot_history(ax_loss, ax_dice, histories: Mapping[str, Sequence[Mapping]]) -> None:
    # one colour per model in both panels; solid = training, dashed = validation
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index}"
        epochs = [r["epoch"] + 1 for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], ".-", color=colour, label=f"{name} train")
        if any(r.get("val_loss") is not None for r in history):
            ax_loss.plot(epochs, [np.nan if r.get("val_loss") is None else r["val_loss"] for r in history], ".--",
                         color=colour, label=f"{name} validation")
        dice = [np.nan if not r.get("pseudo_dice") else np.nanmean([np.nan if d is None else d for d in r["pseudo_dice"]])
                for r in history]
        ax_dice.plot(epochs, dice, ".--", color=colour, label=name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation pseudo-Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(fontsize=7)


def plot_overview(cases: Sequence[tuple[str, Path, Path, Path, str]], histories: Mapping[str, Sequence[Mapping]],
                  path: str | Path) -> Path:
    """Write the overview PNG to ``path`` and return it.

    ``cases``: ``(case, image file, reference file, prediction file, caption)`` for each case to
    show; ``histories``: per trained model, its per-epoch records (``train_loss``, ``val_loss``,
    ``pseudo_dice``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(cases) + (1 if histories else 0)
    figure, axes = plt.subplots(rows, 3, figsize=(10, 3.2 * rows), squeeze=False)
    for row, (case, image_file, reference_file, prediction_file, caption) in enumerate(cases):
        _show_case(axes[row], image_file, reference_file, prediction_file, f"{case} ({caption})")
    if histories:
        bottom = axes[-1]
        _plot_history(bottom[0], bottom[1], histories)
        bottom[2].set_axis_off()
        bottom[2].text(0.0, 0.5, "contours: liver green, tumour red\nleft: scan, middle: reference,\nright: prediction\n\n"
                       "pseudo-Dice: on patches of cases held\nback from training, after each epoch; a\n"
                       "tumour model's starts near 0 and is\nnoisy while lesions are small and few",
                       fontsize=9, va="center")
    figure.tight_layout()
    return save_figure(figure, path, dpi=90)
