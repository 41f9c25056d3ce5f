"""What a person reads after planning: a summary table on stdout and plans.png.

plans.png is the fingerprint figure (bounding-box extents of lesions and livers, spacings, lesion
diameters) with each model's patch size in mm overlaid, so one sees at a glance which boxes a
patch holds. Models with the same patch in mm share one overlay; the cascade's coarse model, whose
patch is the whole volume, is left out.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from liverseg.fingerprint.plot import plot_fingerprint
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.plans import ModelPlan, Plan

log = logging.getLogger(__name__)

MAX_OVERLAYS = 4  # colours of the fingerprint figure's overlay
_COLUMNS = ("pipeline", "model", "learns", "spacing (mm)", "patch (vox)", "patch (mm)", "stages", "z pools", "batch", "memory", "sampling")


def _triple(values: Any, fmt: str = "{:g}") -> str:
    return "x".join(fmt.format(v) for v in values)


def patch_mm(plan: Plan, model: ModelPlan) -> tuple[float, float, float]:
    """A model's patch extent in mm ``(z, y, x)`` at its preprocessing spacing."""
    spacing = plan.preprocessing[model.preprocessing].target_spacing
    return tuple(float(p * s) for p, s in zip(model.topology.patch_size, spacing))  # type: ignore[return-value]


def _sampling(model: ModelPlan) -> str:
    parts = [f"lesion {model.sampling.lesion:.0%}"] if model.sampling.lesion else []
    parts += [f"label {k} {v:.0%}" for k, v in model.sampling.classes.items() if v]
    parts += [f"random {model.sampling.random:.0%}"] if model.sampling.random else []
    return ", ".join(parts)


def _row(plan: Plan, pipeline: str, model: ModelPlan) -> list[str]:
    spec = plan.preprocessing[model.preprocessing]
    memory = estimate_training_memory(model.topology, model.batch_size, len(spec.normalization), model.num_classes)
    learns = ",".join(f"{k}>{v}" for k, v in model.learns.items())
    z_pools = sum(1 for s in model.topology.strides if s[0] == 2)
    return [pipeline, model.name, learns, _triple(spec.target_spacing, "{:.3g}"), _triple(model.topology.patch_size),
            _triple(patch_mm(plan, model), "{:.0f}"), str(model.topology.num_stages), str(z_pools), str(model.batch_size),
            f"{memory / GIB:.1f} GB", _sampling(model)]


def format_plan(plan: Plan) -> str:
    """The plan as a few lines and a table: spacing, z policy, every model's numbers, recommendation."""
    full = plan.preprocessing.get("fullres") or next(iter(plan.preprocessing.values()))
    lines = [
        f"{plan.dataset}: preset {plan.planner.preset}, memory budget {plan.planner.gpu_memory_gb:g} GB, "
        f"patches hold the {plan.planner.percentile:g}th percentile of the boxes where memory allows",
        f"target spacing (z, y, x): {_triple(full.target_spacing, '{:.4g}')} mm; separate z: {full.separate_z} "
        f"(order z image {full.order_z_image}, label {full.order_z_label}); normalisation: {', '.join(full.normalization)}",
    ]
    if "target_spacing" in plan.reasons:
        lines.append(f"  why: {plan.reasons['target_spacing']}")
    rows = [list(_COLUMNS)] + [_row(plan, p.name, m) for p in plan.pipelines if p.emitted for m in p.models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += ["", table[0], "  ".join("-" * w for w in widths), *table[1:], ""]
    for pipeline in plan.pipelines:
        if not pipeline.emitted:
            lines.append(f"{pipeline.name}: not emitted: {pipeline.reason}")
    lines.append(f"recommended: {plan.recommended} ({plan.reasons.get('recommended', '')})")
    return "\n".join(lines)


def overlay_patches(plan: Plan) -> dict[str, tuple[float, float, float]]:
    """Legend label -> patch extent in mm, one entry per distinct patch (coarse models left out)."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for pipeline in plan.pipelines:
        for model in pipeline.models if pipeline.emitted else ():
            if model.bbox_target == "volume":
                continue
            label = pipeline.name if model.name == pipeline.name else f"{pipeline.name}/{model.name}"
            groups.setdefault(tuple(round(v, 1) for v in patch_mm(plan, model)), []).append(label)
    if len(groups) > MAX_OVERLAYS:
        log.info("plans.png shows the %d largest of %d distinct patch sizes", MAX_OVERLAYS, len(groups))
    ordered = sorted(groups.items(), key=lambda kv: -float(np.prod(kv[0])))[:MAX_OVERLAYS]
    return {", ".join(names): size for size, names in ordered}  # type: ignore[misc]


def plot_plan(plan: Plan, fingerprint: Mapping[str, Any], path: str | Path) -> Path:
    """Write plans.png: the fingerprint's box distributions with the models' patch sizes overlaid."""
    path = Path(path)
    plot_fingerprint(fingerprint, path, overlay_patches(plan))
    return path
