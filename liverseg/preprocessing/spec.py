"""What preprocessing does to every case for one group of models: the contract between plan and data.

The planner writes one :class:`PreprocessingSpec` per distinct resolution into ``plans.json``;
models that share a spec share the preprocessed files in ``$LIVERSEG_PREPROCESSED/<Dataset>/<folder_name>/``.
Spacings are ``(z, y, x)`` in mm.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from liverseg.errors import LiversegError
from liverseg.preprocessing.resample import LABEL_MODES, ORDERS


@dataclass(frozen=True)
class PreprocessingSpec:
    """Target grid, interpolation and normalisation applied alike to every case of a dataset.

    ``separate_z`` resamples in-plane first and then along z with ``order_z_image`` /
    ``order_z_label``: one z policy for the whole dataset (nnU-Net switches per case). The
    ``intensity_statistics`` are per channel (dataset-level foreground statistics from the
    fingerprint, needed by the ``ct`` scheme; ``None`` for per-case schemes).
    """

    target_spacing: tuple[float, float, float]
    normalization: tuple[str, ...]
    separate_z: bool = True
    order_inplane_image: int = 3
    order_z_image: int = 0
    order_z_label: int = 0
    label_mode: str = "onehot_linear"
    intensity_statistics: tuple[dict[str, float] | None, ...] = ()
    sampling_classes: tuple[int, ...] = (1, 2)
    lesion_label: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise LiversegError(f"preprocessing target_spacing must be three positive numbers (z, y, x); got {self.target_spacing}")
        for name in ("order_inplane_image", "order_z_image", "order_z_label"):
            if getattr(self, name) not in ORDERS:
                raise LiversegError(f"preprocessing {name} must be one of {ORDERS}; got {getattr(self, name)}")
        if self.label_mode not in LABEL_MODES:
            raise LiversegError(f"preprocessing label_mode must be one of {LABEL_MODES}; got {self.label_mode!r}")
        if not self.normalization:
            raise LiversegError("preprocessing normalization needs one scheme per channel")
        if self.intensity_statistics and len(self.intensity_statistics) != len(self.normalization):
            raise LiversegError("preprocessing intensity_statistics needs one entry per channel (or none)")

    @property
    def folder_name(self) -> str:
        """Folder of the preprocessed cases: readable spacing plus a short hash of everything else."""
        z, y, x = self.target_spacing
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
        return f"data_{z:.2f}x{y:.2f}x{x:.2f}_{digest}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists instead of tuples)."""
        d = asdict(self)
        d["target_spacing"] = [float(s) for s in self.target_spacing]
        d["normalization"] = list(self.normalization)
        d["intensity_statistics"] = [dict(s) if s else None for s in self.intensity_statistics]
        d["sampling_classes"] = list(self.sampling_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessingSpec":
        """Validated inverse of :meth:`to_dict`."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise LiversegError(f"preprocessing spec has unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
        d = dict(d)
        for key in ("target_spacing", "normalization", "sampling_classes"):
            if key in d:
                d[key] = tuple(d[key])
        if "intensity_statistics" in d:
            d["intensity_statistics"] = tuple(dict(s) if s else None for s in d["intensity_statistics"])
        return cls(**d)
