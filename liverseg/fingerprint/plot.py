"""fingerprint.png: the sizes that decide patch sizes, at a glance.

After Fig. 3 of Lambert et al. 2023 (ATLAS): the bounding-box extents of tumour lesions and of the
liver, here in mm (x extent against y extent, coloured by z extent), with optional patch sizes
overlaid, plus the voxel spacings and the distribution of lesion diameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

from liverseg.io.atomic import save_figure  # noqa: E402

_PATCH_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple")


def _extent_panel(ax, extents: np.ndarray, title: str, log_scale: bool, patch_sizes_mm: Mapping[str, Sequence[float]]) -> None:
    ax.set_title(f"{title} (n = {len(extents)})")
    ax.set_xlabel("x extent (mm)")
    ax.set_ylabel("y extent (mm)")
    if len(extents) == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        return
    points = ax.scatter(extents[:, 2], extents[:, 1], c=extents[:, 0], cmap="viridis", s=22, alpha=0.8, edgecolors="none")
    ax.figure.colorbar(points, ax=ax, label="z extent (mm)")
    for colour, (name, size) in zip(_PATCH_COLOURS, patch_sizes_mm.items()):
        z, y, x = size
        # Lines rather than a rectangle from the origin, so the overlay also works on log axes.
        ax.axvline(x, linestyle="--", color=colour, label=f"patch {name}: x {x:.0f}, y {y:.0f}, z {z:.0f} mm")
        ax.axhline(y, linestyle="--", color=colour)
    if patch_sizes_mm:
        ax.legend(loc="best", fontsize=8, framealpha=0.6)
    top = max(extents[:, 1:].max(), *(max(s[1], s[2]) for s in patch_sizes_mm.values()), 1.0) * 1.1
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax.xaxis)
        _plain_log_ticks(ax.yaxis)
        bottom = max(extents[:, 1:].min() / 1.5, 0.1)
        ax.set_xlim(bottom, top)
        ax.set_ylim(bottom, top)
    else:
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.grid(True, which="major", alpha=0.3)


def _plain_log_ticks(axis) -> None:
    """Tick labels 1, 2, 5, 10, 20, ... instead of 10^0, 10^1 on a log axis."""
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _spacing_panel(ax, cases: Mapping[str, Any]) -> None:
    spacing = np.array([c["spacing"] for c in cases.values()])
    in_plane = spacing[:, 1:].max(axis=1)
    points = ax.scatter(in_plane, spacing[:, 0], c=spacing[:, 0] / in_plane, cmap="plasma", s=20, edgecolors="none")
    ax.figure.colorbar(points, ax=ax, label="anisotropy (slice / in-plane)")
    ax.set_title(f"voxel spacing (n = {len(spacing)} cases)")
    ax.set_xlabel("in-plane spacing, max of y and x (mm)")
    ax.set_ylabel("slice spacing z (mm)")
    ax.grid(True, alpha=0.3)


def _diameter_panel(ax, diameters: np.ndarray) -> None:
    ax.set_title(f"lesion longest axial diameter (n = {len(diameters)})")
    ax.set_xlabel("diameter (mm)")
    ax.set_ylabel("lesions")
    if len(diameters) == 0:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        return
    low, high = max(diameters.min(), 0.5), max(diameters.max(), 10.0) * 1.1
    ax.hist(diameters, bins=np.geomspace(low, high, 30), color="tab:gray")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    measurable = int(np.count_nonzero(diameters >= 10.0))
    ax.axvline(10.0, color="tab:red", linestyle="--", label=f"10 mm (RECIST measurable: {measurable})")
    ax.legend(fontsize=8)


def plot_fingerprint(
    fingerprint: Mapping[str, Any], path: str | Path, patch_sizes_mm: Mapping[str, Sequence[float]] | None = None
) -> None:
    """Draw the fingerprint's box extents, spacings and lesion diameters into a PNG, atomically.

    ``patch_sizes_mm`` optionally overlays patch sizes (name -> ``(z, y, x)`` in mm) on the box
    panels, as the planner chooses them.
    """
    patch_sizes_mm = dict(patch_sizes_mm or {})
    cases = fingerprint["cases"]
    lesions = np.array([lesion["extent_mm"] for c in cases.values() for lesion in c["lesions"]], dtype=float).reshape(-1, 3)
    livers = np.array([c["liver"]["extent_mm"] for c in cases.values() if c["liver"]], dtype=float).reshape(-1, 3)
    diameters = np.array([lesion["longest_axial_diameter_mm"] for c in cases.values() for lesion in c["lesions"]], dtype=float)

    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    _extent_panel(axes[0, 0], lesions, "tumour lesion bounding boxes", True, patch_sizes_mm)
    _extent_panel(axes[0, 1], livers, "liver bounding boxes", False, patch_sizes_mm)
    _spacing_panel(axes[1, 0], cases)
    _diameter_panel(axes[1, 1], diameters)
    fig.suptitle(f"{fingerprint['dataset']}: {fingerprint['num_cases']} cases")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
