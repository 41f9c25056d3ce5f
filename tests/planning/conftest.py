"""Fabricated fingerprints: dictionaries in fingerprint.json's format, built from chosen numbers.

Only what the planner and the plan figure read is filled in: per case ``spacing``, ``shape``,
``shape_after_crop``, ``liver.extent_mm`` and the lesions' ``extent_mm`` and diameters, plus the
channel names, labels and the dataset's foreground intensity statistics.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

from liverseg.io.dataset import ATLAS_LABELS

CT_STATS = {"num_voxels": 1000, "mean": 100.0, "std": 40.0, "min": -100.0, "max": 400.0, "percentile_00_5": -20.0,
            "percentile_02_0": 10.0, "median": 100.0, "percentile_98_0": 190.0, "percentile_99_5": 230.0}


def fabricate_fingerprint(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    liver_extents: Sequence[Sequence[float] | None],
    lesion_extents: Sequence[Sequence[Sequence[float]]],
    channel: str = "MRI",
    name: str = "Dataset900_Fabricated",
    labels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A fingerprint with one case per row of ``spacings`` (z, y, x mm) and ``shapes`` (voxels)."""
    cases = {}
    for i, (spacing, shape, liver, lesions) in enumerate(zip(spacings, shapes, liver_extents, lesion_extents)):
        cases[f"case_{i:03d}"] = {
            "spacing": [float(s) for s in spacing],
            "shape": [int(s) for s in shape],
            "shape_after_crop": [int(s) for s in shape],
            "liver": None if liver is None else {"extent_mm": [float(v) for v in liver]},
            "lesions": [{"extent_mm": [float(v) for v in e], "longest_axial_diameter_mm": float(max(e[1:]))} for e in lesions],
        }
    return {
        "version": 1,
        "dataset": name,
        "channel_names": {"0": channel},
        "labels": dict(labels or ATLAS_LABELS),
        "lesion_label": 2,
        "num_cases": len(cases),
        "summary": {"foreground_intensity": {"0": dict(CT_STATS)}},
        "cases": cases,
    }


def atlas_like(num_cases: int = 20, seed: int = 0, in_plane: tuple[float, float] = (0.7, 1.5), z: tuple[float, float] = (2.5, 6.0),
               huge: bool = False) -> dict[str, Any]:
    """A thick-slice liver MRI set like ATLAS: 0.7-1.5 mm in-plane, 2.5-6 mm slices, 1-5 lesions of 5-90 mm."""
    rng = np.random.default_rng(seed)
    spacings, shapes, livers, lesions = [], [], [], []
    for _ in range(num_cases):
        s_in, s_z = rng.uniform(*in_plane), rng.uniform(*z)
        fov = rng.uniform(350, 450) * (4 if huge else 1)
        spacings.append((s_z, s_in, s_in))
        shapes.append((int(rng.uniform(240, 300) / s_z), int(fov / s_in), int(fov / s_in)))
        livers.append(rng.uniform([140, 150, 160], [200, 210, 240]))
        sizes = rng.uniform(5, 90, size=rng.integers(1, 6))
        lesions.append([size * rng.uniform(0.8, 1.2, 3) for size in sizes])
    return fabricate_fingerprint(spacings, shapes, livers, lesions)


def ct_like(num_cases: int = 12, seed: int = 1) -> dict[str, Any]:
    """An isotropic CT set: 0.8 mm voxels in every direction, livers and lesions as in atlas_like."""
    rng = np.random.default_rng(seed)
    spacings = [(0.8, 0.8, 0.8)] * num_cases
    shapes = [(int(rng.uniform(250, 320)), 448, 448) for _ in range(num_cases)]
    livers = [rng.uniform([140, 150, 160], [200, 210, 240]) for _ in range(num_cases)]
    lesions = [[size * np.ones(3) for size in rng.uniform(5, 60, size=3)] for _ in range(num_cases)]
    return fabricate_fingerprint(spacings, shapes, livers, lesions, channel="CT")


@pytest.fixture
def fingerprints():
    """The fabricators, for tests: ``fingerprints.make(...)``, ``.atlas_like(...)``, ``.ct_like(...)``."""

    class _Fabricators:
        make = staticmethod(fabricate_fingerprint)
        atlas = staticmethod(atlas_like)
        ct = staticmethod(ct_like)

    return _Fabricators


@pytest.fixture(scope="session")
def atlas_plan():
    """The default-preset plan of an ATLAS-like fabricated fingerprint (planned once per session)."""
    from liverseg.planning.planner import plan_from_fingerprint
    from liverseg.planning.templates import load_defaults, load_templates

    return plan_from_fingerprint(atlas_like(), load_templates(), load_defaults())
