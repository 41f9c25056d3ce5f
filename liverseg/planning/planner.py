"""Assemble a :class:`Plan` from a fingerprint, the pipeline templates and a preset.

Every decision is written into the plan with its reason (``Plan.reasons`` for the dataset-wide
ones, ``ModelPlan.reasons`` per model). The rules live in their modules: target spacing and z
policy (:mod:`~liverseg.planning.spacing`), topology (:mod:`~liverseg.planning.topology`), memory
(:mod:`~liverseg.planning.memory`), patch and batch size (:mod:`~liverseg.planning.patch_size`).
This module decides the rest:

- **which grid** each model uses: ``full`` models share the target spacing (one preprocessing
  spec, ``fullres``); ``low`` models (the cascade's first stage) use the finest coarser grid on
  which the median volume fits one patch under the budget (``lowres``);
- **whether a pipeline is emitted**: ``always``, or ``large_volume`` (the cascade) only when the
  median volume at target spacing holds more than ``LARGE_VOLUME_RATIO`` = 4 full-resolution
  patches, i.e. when a single patch sees only a small part of the volume;
- **normalisation** per channel from dataset.json's channel name, with the fingerprint's
  foreground statistics for CT;
- **the recommended pipeline**: ``dual_binary`` when the box its tumour model must see (lesion
  boxes at the percentile plus context) is at most ``DUAL_BINARY_PATCH_RATIO`` = half the volume of
  the box its liver model must see (lesions small against the liver: a smaller tumour patch with
  lesion-first sampling faces less class imbalance, the setting in which Lambert et al. 2023
  found two binary models better for the liver and on par for tumours), ``multiclass`` otherwise.
  Boxes rather than patches decide, so the preset does not change the recommendation. A 2D
  pipeline (every model ``"dims": 2``) is never recommended while a 3D one is emitted: only
  cross-validation (``liverseg_find_best``) may prefer it;
- **2D models** (the 2D configuration, nnU-Net's ``2d``): a patch of one slice holding the box's
  in-plane extent, in-plane pooling and ``[1, 3, 3]`` kernels, a batch counted in voxels
  (:mod:`~liverseg.planning.patch_size`), and at most as many stages as the plan's full-resolution
  3D models have, so a 2D model's encoder fits an ``ahnet`` planned like them
  (``liverseg_train --init-encoder-from``): 2D pipelines are planned after the 3D ones.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.planning.memory import GIB
from liverseg.planning.patch_size import coverage, fits_budget, percentile_extent, plan_patch
from liverseg.planning.plans import ModelPlan, PipelineSpec, Plan, PlannerSettings
from liverseg.planning.spacing import SpacingDecision, choose_target_spacing, coarser_spacings, mirror_axes
from liverseg.planning.templates import Defaults, ModelTemplate, PipelineTemplate, Preset
from liverseg.planning.topology import derive_topology, describe_topology, is_in_plane
from liverseg.preprocessing.normalize import CT_STATS_KEYS, scheme_for_channel
from liverseg.preprocessing.resample import target_shape
from liverseg.preprocessing.spec import PreprocessingSpec

LARGE_VOLUME_RATIO = 4.0
DUAL_BINARY_PATCH_RATIO = 0.5
SPEC_IDS = {"full": "fullres", "low": "lowres"}
PIPELINE_ORDER = ("multiclass", "dual_binary", "cascade")
_BOX_NAMES = {"liver": "liver", "lesions": "lesion"}


@dataclass(frozen=True)
class DatasetStats:
    """What the planner reads from a fingerprint, as arrays (one row per case, lesion or liver)."""

    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    lesion_label: int
    spacings: np.ndarray
    shapes: np.ndarray
    crop_shapes: np.ndarray
    liver_extents: np.ndarray
    lesion_extents: np.ndarray
    foreground_intensity: dict[str, Any]

    @classmethod
    def from_fingerprint(cls, fingerprint: Mapping[str, Any]) -> "DatasetStats":
        """Pull the planner's inputs out of a fingerprint dictionary (see :mod:`liverseg.fingerprint`)."""
        try:
            cases = list(fingerprint["cases"].values())
            return cls(
                name=str(fingerprint["dataset"]),
                channel_names=dict(fingerprint["channel_names"]),
                labels=dict(fingerprint["labels"]),
                lesion_label=int(fingerprint.get("lesion_label", 2)),
                spacings=np.array([c["spacing"] for c in cases], dtype=np.float64).reshape(-1, 3),
                shapes=np.array([c["shape"] for c in cases], dtype=np.int64).reshape(-1, 3),
                crop_shapes=np.array([c["shape_after_crop"] for c in cases], dtype=np.int64).reshape(-1, 3),
                liver_extents=np.array([c["liver"]["extent_mm"] for c in cases if c["liver"]], dtype=np.float64).reshape(-1, 3),
                lesion_extents=np.array([les["extent_mm"] for c in cases for les in c["lesions"]], dtype=np.float64).reshape(-1, 3),
                foreground_intensity=dict(fingerprint.get("summary", {}).get("foreground_intensity", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LiversegError(f"the fingerprint lacks what the planner needs ({type(e).__name__}: {e}); "
                                "run liverseg_fingerprint again") from None

    def grid_shapes(self, spacing: Sequence[float]) -> np.ndarray:
        """Every case's cropped shape resampled to ``spacing``, ``(n, 3)``."""
        return np.array([target_shape(s, sp, spacing) for s, sp in zip(self.crop_shapes, self.spacings)], dtype=np.int64).reshape(-1, 3)

    def median_grid_shape(self, spacing: Sequence[float]) -> tuple[int, int, int]:
        """Per-axis median of the cropped shapes at ``spacing`` (rounded up)."""
        return tuple(int(math.ceil(v)) for v in np.median(self.grid_shapes(spacing), axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Context:
    stats: DatasetStats
    preset: Preset
    schedule: Any
    budget_bytes: float
    percentile: float
    stages_2d: int | None = None  # stage limit of 2D models: the full-resolution 3D models' stages


def _normalization(stats: DatasetStats) -> tuple[tuple[str, ...], tuple[dict[str, float] | None, ...], str]:
    channels = sorted(stats.channel_names, key=int)
    schemes = tuple(scheme_for_channel(stats.channel_names[c]) for c in channels)
    texts = []
    for channel, scheme in zip(channels, schemes):
        name = stats.channel_names[channel]
        if scheme == "ct":
            texts.append(f"channel {channel} '{name}': ct (clip to the dataset's foreground 0.5/99.5 percentiles, then dataset z-score)")
        else:
            texts.append(f"channel {channel} '{name}': zscore_foreground (per case: clip to the body's 0.5/99.5 percentiles, "
                         "z-score over the body; 'percentile' maps the 2nd/98th percentiles to 0/1 instead)")
    if "ct" not in schemes:
        return schemes, (), "; ".join(texts)
    statistics = []
    for channel, scheme in zip(channels, schemes):
        values = stats.foreground_intensity.get(channel) if scheme == "ct" else None
        if scheme == "ct" and (not values or any(values.get(k) is None for k in CT_STATS_KEYS)):
            raise LiversegError(f"channel {channel} is CT but the fingerprint has no foreground intensity statistics for it; "
                                "run liverseg_fingerprint again")
        statistics.append({k: float(values[k]) for k in CT_STATS_KEYS} if scheme == "ct" else None)
    return schemes, tuple(statistics), "; ".join(texts)


def _spec(stats: DatasetStats, spacing: Sequence[float], decision: SpacingDecision) -> PreprocessingSpec:
    schemes, statistics, _ = _normalization(stats)
    return PreprocessingSpec(
        target_spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        normalization=schemes,
        separate_z=decision.separate_z,
        order_z_image=decision.order_z_image,
        order_z_label=decision.order_z_label,
        intensity_statistics=statistics,
        sampling_classes=tuple(sorted(v for v in stats.labels.values() if v > 0)),
        lesion_label=stats.lesion_label,
    )


def _plan_model(template: ModelTemplate, spacing: Sequence[float], ctx: _Context) -> ModelPlan:
    stats, preset = ctx.stats, ctx.preset
    in_plane = template.dims == 2
    settings = dataclasses.replace(preset.network, network=template.network)
    capped = in_plane and ctx.stages_2d is not None and ctx.stages_2d < settings.max_stages
    if capped:
        settings = dataclasses.replace(settings, max_stages=ctx.stages_2d)
    num_classes = max(template.learns.values()) + 1
    image_shape = stats.median_grid_shape(spacing)
    boxes = {"liver": stats.liver_extents, "lesions": stats.lesion_extents}.get(template.bbox_target)
    if boxes is None:
        desired_mm = np.asarray(image_shape) * np.asarray(spacing)
        what = "the whole median (cropped) volume"
    else:
        desired_mm = _wanted_mm(template, ctx)
        box = _BOX_NAMES[template.bbox_target]
        what = f"the {ctx.percentile:g}th percentile of the {box} boxes plus {template.context_mm:g} mm per side"
    if in_plane:
        desired_mm = np.array(desired_mm, dtype=np.float64)
        desired_mm[0] = spacing[0]
        what += " in-plane, on one slice (a 2D model)"
    choice = plan_patch(desired_mm, image_shape, spacing, settings, ctx.budget_bytes, float(stats.grid_shapes(spacing).prod(axis=1).sum()),
                        preset.max_patch_voxels, preset.max_batch_size, len(stats.channel_names), num_classes, what, in_plane)
    patch_reason = choice.patch_reason
    if boxes is not None:
        patch_mm = np.asarray(choice.topology.patch_size) * np.asarray(spacing)
        if in_plane:
            held = float(np.mean(np.all(boxes[:, 1:] <= patch_mm[1:] + 1e-6, axis=1))) if len(boxes) else 1.0
            patch_reason += f"; holds {100 * held:.0f}% of the {len(boxes)} {box} boxes in-plane"
        else:
            patch_reason += f"; holds {100 * coverage(boxes, patch_mm):.0f}% of the {len(boxes)} {box} boxes on all axes at once"
    topology_reason = describe_topology(choice.topology)
    if capped:
        topology_reason += (f"; at most {ctx.stages_2d} stages, as many as the plan's full-resolution 3D models, so its encoder "
                            "fits an ahnet planned like them (liverseg_train --init-encoder-from)")
    reasons = {"patch_size": patch_reason, "topology": topology_reason, "batch_size": choice.batch_reason,
               "mirroring": _describe_mirroring(mirror_axes(template.mirroring, spacing, one_slice=in_plane)),
               **template.reasons}
    return ModelPlan(
        name=template.name,
        learns=dict(template.learns),
        preprocessing=SPEC_IDS[template.resolution],
        bbox_target=template.bbox_target,
        topology=choice.topology,
        batch_size=choice.batch_size,
        sampling=template.sampling,
        schedule=ctx.schedule,
        loss_mask_labels=template.loss_mask_labels,
        loss_mask_dilation_mm=template.loss_mask_dilation_mm,
        roi=template.roi,
        reasons=reasons,
        mirroring=template.mirroring,
    )


def _describe_mirroring(axes: Sequence[int]) -> str:
    if not axes:
        return "no mirroring, in training or at test time"
    names = " and ".join("zyx"[a] for a in axes)
    return (f"mirrored along {names} in training (probability 0.5 per axis) and at test time ({2 ** len(axes)} passes): "
            "nnU-Net's axes for this grid")


def _coarse_spacing(ctx: _Context, target: Sequence[float], templates: Sequence[ModelTemplate]) -> tuple[float, float, float] | None:
    """The finest grid on which the median volume fits one patch of every low-resolution model."""
    for spacing in coarser_spacings(target):
        shape = ctx.stats.median_grid_shape(spacing)
        if all(
            fits_budget(derive_topology(shape, spacing, dataclasses.replace(ctx.preset.network, network=t.network)), ctx.budget_bytes,
                        ctx.preset.max_patch_voxels, len(ctx.stats.channel_names), max(t.learns.values()) + 1)
            for t in templates
        ):
            return spacing
    return None


def _not_emitted(template: PipelineTemplate, reason: str) -> PipelineSpec:
    return PipelineSpec(template.name, template.description, False, reason, template.combine, template.postprocessing, ())


def _plan_pipeline(template: PipelineTemplate, ctx: _Context, decision: SpacingDecision, coarse: dict[str, Any]) -> PipelineSpec:
    stats = ctx.stats
    missing = sorted({label for m in template.models for label in m.learns} - set(stats.labels.values()))
    if missing:
        return _not_emitted(template, f"the dataset has no label(s) {missing} that its models learn (labels: {stats.labels})")
    if any(m.bbox_target == "lesions" for m in template.models) and len(stats.lesion_extents) == 0:
        return _not_emitted(template, "the training data holds no lesions, so a tumour model has nothing to learn")
    full = [_plan_model(m, decision.target_spacing, ctx) for m in template.models if m.resolution == "full"]
    low_templates = [m for m in template.models if m.resolution == "low"]
    if template.emit == "large_volume":
        volume = math.prod(stats.median_grid_shape(decision.target_spacing))
        patch = max((math.prod(m.topology.patch_size) for m in full), default=1)
        ratio = volume / patch
        if ratio <= LARGE_VOLUME_RATIO:
            return _not_emitted(template, f"the median volume at target spacing ({volume} voxels) holds only {ratio:.1f} full-resolution "
                                          f"patches ({patch} voxels), not more than {LARGE_VOLUME_RATIO:g}: "
                                          "one patch already sees most of it")
        reason = (f"the median volume at target spacing ({volume} voxels) holds {ratio:.1f} full-resolution patches ({patch} voxels), "
                  f"more than {LARGE_VOLUME_RATIO:g}: a coarse stage sees the whole volume at once and the fine stage "
                  "only the liver region")
    else:
        reason = "emitted for every dataset"
    low: list[ModelPlan] = []
    if low_templates:
        if "spacing" not in coarse:
            coarse["spacing"] = _coarse_spacing(ctx, decision.target_spacing, low_templates)
        spacing = coarse["spacing"]
        if spacing is None or tuple(spacing) == tuple(decision.target_spacing):
            why = "no coarser grid up to 16x lets the median volume fit one patch" if spacing is None else \
                "the median volume already fits one patch at target spacing, so a coarse stage adds nothing"
            return _not_emitted(template, why)
        low = [_plan_model(m, spacing, ctx) for m in low_templates]
    by_name = {m.name: m for m in [*full, *low]}
    models = tuple(by_name[m.name] for m in template.models)
    return PipelineSpec(template.name, template.description, True, reason, template.combine, template.postprocessing, models)


def _wanted_mm(template: ModelTemplate, ctx: _Context) -> np.ndarray:
    boxes = {"liver": ctx.stats.liver_extents, "lesions": ctx.stats.lesion_extents}[template.bbox_target]
    return percentile_extent(boxes, ctx.percentile) + 2 * template.context_mm


def _recommend(pipelines: Sequence[PipelineSpec], templates: Mapping[str, PipelineTemplate], ctx: _Context) -> tuple[str, str]:
    """The recommended pipeline and why: compares what the tumour and liver models must see, in mm.

    The boxes (not the patches, which a small budget or preset may cap alike) decide, so the
    recommendation does not depend on the preset.
    """
    emitted = {p.name: p for p in pipelines if p.emitted}
    if not emitted:
        raise LiversegError("no pipeline could be planned for this dataset (see the reasons of each template)")
    three_d = {name: p for name, p in emitted.items() if not is_2d_pipeline(p)}
    emitted = three_d or emitted  # a 2D pipeline is recommended only when nothing else was planned
    if "dual_binary" in emitted and "multiclass" in emitted:
        models = templates["dual_binary"].models
        tumour = next((m for m in models if m.bbox_target == "lesions"), None)
        liver = next((m for m in models if m.bbox_target == "liver"), None)
        if tumour is not None and liver is not None:
            tumour_mm, liver_mm = _wanted_mm(tumour, ctx), _wanted_mm(liver, ctx)
            ratio = float(np.prod(tumour_mm) / np.prod(liver_mm))
            sizes = (f"the tumour model's box ({_mm(tumour_mm, '{:.0f}')} mm) is {100 * ratio:.0f}% of the liver model's "
                     f"({_mm(liver_mm, '{:.0f}')} mm)")
            if ratio <= DUAL_BINARY_PATCH_RATIO:
                return "dual_binary", (
                    f"lesions are small against the liver: {sizes}, at most {100 * DUAL_BINARY_PATCH_RATIO:.0f}%, so a separate tumour "
                    "model trains on lesion-centred patches with far less background; Lambert et al. 2023 found two binary models "
                    "significantly better for the liver and on par for tumours"
                )
            return "multiclass", (
                f"lesions are large against the liver: {sizes}, more than {100 * DUAL_BINARY_PATCH_RATIO:.0f}%, so a separate tumour "
                "model would see nearly what the multiclass model sees, and one model is half the training"
            )
    name = next(n for n in [*PIPELINE_ORDER, *emitted] if n in emitted)
    return name, f"the first emitted pipeline ({', '.join(emitted)} emitted)"


def is_2d_pipeline(pipeline: PipelineSpec) -> bool:
    """Whether every model of an emitted pipeline works on single slices (a 2D configuration)."""
    return bool(pipeline.models) and all(is_in_plane(m.topology.kernel_sizes, m.topology.strides) for m in pipeline.models)


def _stages_of_3d_models(pipelines: Sequence[PipelineSpec]) -> int | None:
    """The most stages of the emitted full-resolution 3D models (the 2D models' limit), None without any."""
    stages = [m.topology.num_stages for p in pipelines if p.emitted for m in p.models
              if m.preprocessing == SPEC_IDS["full"] and not is_in_plane(m.topology.kernel_sizes, m.topology.strides)]
    return max(stages, default=None)


def _plan_pipelines(templates: Mapping[str, PipelineTemplate], ctx: _Context,
                    decision: SpacingDecision) -> tuple[tuple[PipelineSpec, ...], dict[str, Any]]:
    """Every template's pipeline in the templates' order, those with 2D models planned last (module docstring); and the coarse grid."""
    ordered = _ordered(templates)
    coarse: dict[str, Any] = {}
    has_2d = {t.name for t in ordered if any(m.dims == 2 for m in t.models)}
    planned = {t.name: _plan_pipeline(t, ctx, decision, coarse) for t in ordered if t.name not in has_2d}
    ctx_2d = dataclasses.replace(ctx, stages_2d=_stages_of_3d_models(list(planned.values())))
    planned.update({t.name: _plan_pipeline(t, ctx_2d, decision, coarse) for t in ordered if t.name in has_2d})
    return tuple(planned[t.name] for t in ordered), coarse


def _ordered(templates: Mapping[str, PipelineTemplate]) -> list[PipelineTemplate]:
    names = [n for n in PIPELINE_ORDER if n in templates] + sorted(n for n in templates if n not in PIPELINE_ORDER)
    return [templates[n] for n in names]


def plan_from_fingerprint(
    fingerprint: Mapping[str, Any],
    templates: Mapping[str, PipelineTemplate],
    defaults: Defaults,
    preset: str = "default",
    gpu_memory_gb: float | None = None,
    percentile: float = 95.0,
) -> Plan:
    """The plan for a dataset: every template's pipeline with its numbers, and the recommended one.

    ``gpu_memory_gb`` overrides the preset's budget; ``percentile`` is the share of bounding boxes
    (per axis) each patch must hold when memory allows.
    """
    if not templates:
        raise LiversegError("no pipeline templates found; liverseg_configs/ should hold multiclass.json, dual_binary.json, cascade.json")
    budget = gpu_memory_gb if gpu_memory_gb is not None else defaults.preset(preset).gpu_memory_gb
    settings = PlannerSettings(preset, float(budget), float(percentile))
    stats = DatasetStats.from_fingerprint(fingerprint)
    if len(stats.liver_extents) == 0:
        raise LiversegError(f"{stats.name}: no training case has liver labels, so there is nothing to plan patch sizes from; "
                            "check labelsTr")
    preset_obj = defaults.preset(preset)
    ctx = _Context(stats, preset_obj, defaults.schedule_for(preset_obj), settings.gpu_memory_gb * GIB, settings.percentile)
    decision = choose_target_spacing(stats.spacings, stats.shapes)
    pipelines, coarse = _plan_pipelines(templates, ctx, decision)
    recommended, why = _recommend(pipelines, templates, ctx)
    specs = {SPEC_IDS["full"]: _spec(stats, decision.target_spacing, decision)}
    reasons = {
        "target_spacing": decision.reason,
        "z_policy": decision.z_policy_reason,
        "normalization": _normalization(stats)[2],
        "memory": f"budget {settings.gpu_memory_gb:g} GB ({'--gpu-memory-gb' if gpu_memory_gb is not None else f'preset {preset}'}); "
                  "estimates are for mixed-precision training (see liverseg.planning.memory); halve the budget for float32 training",
    }
    if coarse.get("spacing") and any(m.preprocessing == SPEC_IDS["low"] for p in pipelines for m in p.models):
        specs[SPEC_IDS["low"]] = _spec(stats, coarse["spacing"], decision)
        reasons["low_resolution"] = (
            f"{_mm(coarse['spacing'])} mm: the finest grid (coarsening the finer axes first, {1.1:g}x per step) on which the median "
            f"volume ({_mm(stats.median_grid_shape(coarse['spacing']), '{:d}')} voxels) fits one patch with batch 2 in the budget"
        )
    reasons["recommended"] = why
    return Plan(stats.name, stats.channel_names, stats.labels, settings, specs, pipelines, recommended, reasons)


def _mm(values: Sequence[float], fmt: str = "{:g}") -> str:
    return " x ".join(fmt.format(v) for v in values)
