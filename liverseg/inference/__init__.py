"""Inference: sliding-window prediction with test-time mirroring, devices and precision.

Fold ensembling, the pipelines (multiclass, dual_binary, cascade) and the export back to the
input geometry build on :func:`predict_sliding_window`.
"""
from __future__ import annotations

from liverseg.inference.device import autocast_dtype, bf16_supported, configure_threads, resolve_device
from liverseg.inference.sliding_window import mirror_combinations, predict_sliding_window
from liverseg.inference.windows import compute_steps, gaussian_importance_map, pad_to_patch, window_slices

__all__ = [
    "autocast_dtype", "bf16_supported", "compute_steps", "configure_threads", "gaussian_importance_map",
    "mirror_combinations", "pad_to_patch", "predict_sliding_window", "resolve_device", "window_slices",
]
