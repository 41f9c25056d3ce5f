"""Named metric profiles: which definition each segmentation metric uses, and the empty-mask rules.

The reference implementations of the surface metrics disagree with each other (see
docs/evaluation.md), so a reported number is only meaningful together with the definitions behind
it. A profile fixes all of them at once and is written into every ``summary.json``:

* ``atlas`` reproduces the ATLAS 2023 challenge evaluation: MedPy-style boundary-voxel distances,
  HD as the maximum, ASSD as the mean of the two directed mean distances (MedPy 0.4), Surface Dice
  on DeepMind surfels, and NaN (excluded from means) when reference and prediction are both empty.
* ``default`` (alias ``lesion``) uses the lesion-style convention that two empty masks agree
  perfectly (Dice 1), HD95 as the larger of the two directed 95th percentiles (MONAI) and ASSD as
  the mean over all distances of both directions pooled (MedPy >= 0.5.2, MONAI).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from liverseg.errors import LiversegError

SURFACES = ("voxels", "surfels")
HD95_DEFINITIONS = ("pooled", "max_directed", "area_weighted")
ASSD_DEFINITIONS = ("mean_of_directed", "pooled")


@dataclass(frozen=True)
class MetricProfile:
    """Definitions and conventions for one way of computing the segmentation metrics.

    ``both_empty_overlap`` is the Dice and Surface Dice given when reference and prediction are both
    empty (NaN excludes the case from the means). ``distance_surface`` is the surface model of HD,
    the ``pooled``/``max_directed`` HD95 and ASSD; ``area_weighted`` HD95 always uses surfels, as
    DeepMind defines it. ``surface_dice_surface`` is the surface model of Surface Dice.
    """

    name: str
    both_empty_overlap: float
    distance_surface: str
    surface_dice_surface: str
    hd95: str
    assd: str
    percentile: float = 95.0
    description: str = ""

    def __post_init__(self) -> None:
        for field, allowed in (
            ("distance_surface", SURFACES),
            ("surface_dice_surface", SURFACES),
            ("hd95", HD95_DEFINITIONS),
            ("assd", ASSD_DEFINITIONS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise LiversegError(
                    f"metric profile '{self.name}': {field} '{value}' is not one of {', '.join(allowed)}"
                )
        if not (math.isnan(self.both_empty_overlap) or self.both_empty_overlap == 1.0):
            raise LiversegError(
                f"metric profile '{self.name}': both_empty_overlap must be NaN (exclude the case) or 1.0, "
                f"not {self.both_empty_overlap}"
            )
        if not 0.0 < self.percentile <= 100.0:
            raise LiversegError(f"metric profile '{self.name}': percentile must be in (0, 100], not {self.percentile}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (NaN written as the string 'nan' so the file stays valid JSON)."""
        d = dataclasses.asdict(self)
        if math.isnan(self.both_empty_overlap):
            d["both_empty_overlap"] = "nan"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetricProfile":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["both_empty_overlap"] = float(d["both_empty_overlap"])
        return cls(**d)


PROFILES: dict[str, MetricProfile] = {
    "atlas": MetricProfile(
        name="atlas",
        both_empty_overlap=math.nan,
        distance_surface="voxels",
        surface_dice_surface="surfels",
        hd95="pooled",
        assd="mean_of_directed",
        description=(
            "ATLAS 2023 challenge: boundary-voxel distances as MedPy; HD = maximum; HD95 pooled over both "
            "directions (MedPy); ASSD = mean of the two directed means (MedPy 0.4); Surface Dice on "
            "DeepMind surfels; both masks empty -> NaN, excluded and counted"
        ),
    ),
    "default": MetricProfile(
        name="default",
        both_empty_overlap=1.0,
        distance_surface="voxels",
        surface_dice_surface="surfels",
        hd95="max_directed",
        assd="pooled",
        description=(
            "liverseg default (lesion-style empty rule): boundary-voxel distances; HD = maximum; HD95 = larger of "
            "the two directed 95th percentiles (MONAI); ASSD = mean of all distances of both directions pooled "
            "(MedPy >= 0.5.2, MONAI); Surface Dice on DeepMind surfels; both masks empty -> Dice 1"
        ),
    ),
}
ALIASES = {"lesion": "default"}


def profile_names() -> list[str]:
    """Names accepted by :func:`get_profile`, aliases included."""
    return sorted(PROFILES) + sorted(ALIASES)


def get_profile(profile: str | MetricProfile = "default", **overrides: Any) -> MetricProfile:
    """The named profile (or the given one), with single definitions replaced by ``overrides``.

    Overrides whose value is None are ignored, so command-line options that were not given can be
    passed straight through.
    """
    if isinstance(profile, MetricProfile):
        base = profile
    else:
        key = ALIASES.get(profile, profile)
        if key not in PROFILES:
            raise LiversegError(f"unknown metric profile '{profile}'; choose one of {', '.join(profile_names())}")
        base = PROFILES[key]
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(MetricProfile)}
    if unknown:
        raise LiversegError(f"unknown metric profile setting(s): {', '.join(sorted(unknown))}")
    if not changes:
        return base
    changed = {k: v for k, v in changes.items() if getattr(base, k) != v}
    if not changed:
        return base
    suffix = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return dataclasses.replace(base, name=f"{base.name}+{suffix}", **changes)
