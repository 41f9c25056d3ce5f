"""Planning: from a dataset fingerprint to plans.json (what each pipeline's models will do).

Modules: :mod:`~liverseg.planning.plans` (the typed plan and its JSON), :mod:`~liverseg.planning.spacing`
(target spacing, z policy), :mod:`~liverseg.planning.topology` (pooling, kernels, widths),
:mod:`~liverseg.planning.memory` (training-memory estimate), :mod:`~liverseg.planning.patch_size`
(patch and batch size), :mod:`~liverseg.planning.templates` (pipeline templates, presets),
:mod:`~liverseg.planning.planner` (assembles a plan), :mod:`~liverseg.planning.overrides` (user
changes), :mod:`~liverseg.planning.report` (table and figure), :mod:`~liverseg.planning.plan_dataset`
(the whole ``liverseg_plan`` flow). See docs/planning.md.
"""
from liverseg.planning.plans import (
    PLANS_FILE,
    ModelPlan,
    NetworkTopology,
    PipelineSpec,
    Plan,
    SamplingSpec,
    TrainingSchedule,
    load_plan,
    save_plan,
)

__all__ = [
    "PLANS_FILE",
    "ModelPlan",
    "NetworkTopology",
    "PipelineSpec",
    "Plan",
    "SamplingSpec",
    "TrainingSchedule",
    "load_plan",
    "save_plan",
]
