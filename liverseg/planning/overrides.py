"""User overrides of a plan: a partial plans.json merged into the planned one, then validated.

An overrides file has the shape of plans.json, holding only what changes; objects merge key by
key (models by name), lists and numbers replace. For example::

    {"pipelines": {"dual_binary": {"models": {"tumour": {"topology": {"patch_size": [32, 128, 128]},
                                                          "batch_size": 4}}}},
     "preprocessing": {"fullres": {"normalization": ["percentile"]}}}

A key that plans.json does not have is rejected with the keys it does have (so a typo never goes
unnoticed), except inside the free-form maps (``learns``, ``sampling.classes``, ``reasons``,
``extra``). When an override changes a model's ``patch_size`` but not its ``strides`` or
``kernel_sizes``, they are derived again for the new patch by the planner's rules (a patch the
new strides do not divide is an error naming the sizes that would work); a 2D model's topology
stays 2D (in-plane pooling and kernels only). The merged plan goes
through the same validation as a loaded plans.json.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json
from liverseg.planning.plans import NetworkTopology, Plan
from liverseg.planning.templates import load_defaults
from liverseg.planning.topology import NetworkSettings, describe_topology, is_in_plane, strides_and_kernels

FREE_FORM_KEYS = frozenset({"learns", "classes", "reasons", "extra"})


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read an overrides JSON file (an object shaped like plans.json)."""
    path = Path(path)
    if not path.is_file():
        raise LiversegError(f"{path}: no such overrides file")
    try:
        content = read_json(path)
    except ValueError as e:
        raise LiversegError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise LiversegError(f"{path}: an overrides file holds one JSON object shaped like plans.json")
    return content


def merge(base: Any, changes: Any, where: str = "") -> Any:
    """``base`` with ``changes`` merged in: objects key by key, anything else replaced.

    Keys that ``base`` lacks are errors listing the keys it has, except below free-form maps.
    """
    if not isinstance(changes, Mapping) or not isinstance(base, Mapping):
        return copy.deepcopy(changes)
    merged = dict(base)
    free = where.rsplit(".", 1)[-1] in FREE_FORM_KEYS
    for key, value in changes.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base and not free:
            known = ", ".join(map(str, base)) or "(none)"
            raise LiversegError(f"unknown key '{key}' at {where or 'the top level'}; known keys there: {known}")
        merged[key] = merge(base[key], value, path) if key in base else copy.deepcopy(value)
    return merged


def _rederive(merged: dict[str, Any], changes: Mapping[str, Any], plan: Plan, source: str) -> None:
    """Derive strides and kernels again where an override changed a patch size but not them."""
    settings = _preset_network(plan.planner.preset)
    for pipeline_name, pipeline in (changes.get("pipelines") or {}).items():
        for model_name, model in ((pipeline or {}).get("models") or {}).items():
            topology = (model or {}).get("topology") or {}
            if "patch_size" not in topology or {"strides", "kernel_sizes"} & set(topology):
                continue
            target = merged["pipelines"][pipeline_name]["models"][model_name]
            spacing = merged["preprocessing"][target["preprocessing"]]["target_spacing"]
            where = f"{source}: pipelines.{pipeline_name}.models.{model_name}.topology"
            patch = topology["patch_size"]
            if not isinstance(patch, list) or len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
                raise LiversegError(f"{where}: patch_size must be three positive integers (z, y, x); got {patch!r}")
            current = target["topology"]
            in_plane = is_in_plane(current["kernel_sizes"], current["strides"])
            strides, kernels = strides_and_kernels(patch, spacing, dataclasses.replace(settings, network=current["network"]),
                                                   in_plane)
            features = [min(settings.base_features * 2**s, settings.max_features) for s in range(len(strides))]
            if "features_per_stage" in topology and len(topology["features_per_stage"]) == len(strides):
                features = topology["features_per_stage"]
            current.update(strides=[list(s) for s in strides], kernel_sizes=[list(k) for k in kernels], features_per_stage=features)
            try:
                rebuilt = NetworkTopology.from_dict(current, where)
            except LiversegError as e:
                raise LiversegError(f"{e} (strides derived for the overridden patch size {patch} at spacing {list(spacing)})") from None
            target.setdefault("reasons", {})
            target["reasons"]["patch_size"] = f"{patch[0]} x {patch[1]} x {patch[2]} voxels, set by {source}"
            target["reasons"]["topology"] = describe_topology(rebuilt) + " (derived again for the overridden patch size)"


def _preset_network(preset: str) -> NetworkSettings:
    try:
        return load_defaults().preset(preset).network
    except LiversegError:
        return NetworkSettings()


def apply_overrides(plan: Plan, changes: Mapping[str, Any], source: str = "overrides") -> Plan:
    """The plan with ``changes`` (a partial plans.json) merged in and validated.

    Errors name ``source`` (e.g. the overrides file) and the place in it.
    """
    base = plan.to_dict()
    try:
        merged = merge(base, changes)
    except LiversegError as e:
        raise LiversegError(f"{source}: {e}") from None
    _rederive(merged, changes, plan, source)
    return Plan.from_dict(merged, where=f"plan with {source}")
