"""plans.json as typed, frozen dataclasses: validated when built, when loaded and after overrides.

The leaf parts (:class:`NetworkTopology`, :class:`SamplingSpec`, :class:`TrainingSchedule`,
:class:`RegionOfInterest`) live in :mod:`liverseg.planning.parts` and are re-exported here. A
:class:`Plan` holds the preprocessing specs (one per distinct grid, shared by the models that use
it), the pipelines (each a list of :class:`ModelPlan`), the recommended pipeline and the reason for
every decision. ``to_dict``/``from_dict`` round-trip it through JSON; ``from_dict`` rejects unknown
keys, unknown names and impossible numbers with a message naming the place in the file, so a
hand-edited plans.json fails at load time with a clear error. Sizes are ``(z, y, x)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from liverseg.errors import LiversegError
from liverseg.fingerprint.dataset import to_json_text
from liverseg.io.atomic import atomic_output, read_json
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.names import check_name
from liverseg.planning.parts import (
    MAX_PATCH_AXIS,
    NetworkTopology,
    RegionOfInterest,
    SamplingSpec,
    TrainingSchedule,
    build,
    int_keys,
    ints,
    kwargs_of,
)
from liverseg.postprocessing import normalise_steps
from liverseg.preprocessing.spec import PreprocessingSpec

PLAN_VERSION = 1
PLANS_FILE = "plans.json"

__all__ = [
    "MAX_PATCH_AXIS", "PLANS_FILE", "PLAN_VERSION", "ModelPlan", "NetworkTopology", "PipelineSpec", "Plan", "PlannerSettings",
    "RegionOfInterest", "SamplingSpec", "TrainingSchedule", "load_plan", "save_plan",
]


@dataclass(frozen=True)
class ModelPlan:
    """One model of a pipeline: what it learns, on which grid, with which network, patches and batch.

    ``learns`` maps original labels to the labels the model is trained on (missing labels become
    background): ``{1: 1, 2: 1}`` for a liver model, ``{2: 1}`` for a tumour model.
    ``preprocessing`` names the plan's preprocessing spec (the grid and normalisation). With
    ``loss_mask_dilation_mm`` set, the loss counts only voxels within that distance of
    ``loss_mask_labels`` (the tumour model's dilated liver mask). ``mirroring`` is how the model is
    mirrored in training and at test time: ``auto`` (nnU-Net's axes for its grid, also what a plan
    written before the key existed gets) or ``none``. ``reasons`` says why each number is what it is.
    """

    name: str
    learns: dict[int, int]
    preprocessing: str
    bbox_target: str
    topology: NetworkTopology
    batch_size: int
    sampling: SamplingSpec
    schedule: TrainingSchedule
    loss_mask_labels: tuple[int, ...] = ()
    loss_mask_dilation_mm: float | None = None
    roi: RegionOfInterest | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    mirroring: str = "auto"

    def __post_init__(self) -> None:
        check_name("mirroring", self.mirroring)
        if not self.learns or not all(isinstance(v, int) and v >= 1 for v in self.learns.values()):
            raise LiversegError(f"learns must map original labels to target labels >= 1; got {self.learns!r}")
        if 0 in self.learns:
            raise LiversegError("learns must not map the background label 0; labels not listed become background")
        check_name("bbox_target", self.bbox_target)
        ints([self.batch_size], "batch_size", 1)
        ints(self.loss_mask_labels, "loss_mask_labels")
        dilation = self.loss_mask_dilation_mm
        if dilation is not None and (not isinstance(dilation, (int, float)) or isinstance(dilation, bool) or dilation < 0):
            raise LiversegError(f"loss_mask_dilation_mm must be a number >= 0 or null; got {self.loss_mask_dilation_mm!r}")
        if self.loss_mask_dilation_mm is not None and not self.loss_mask_labels:
            raise LiversegError("loss_mask_dilation_mm needs loss_mask_labels (the labels whose dilated mask the loss is restricted to)")

    @property
    def num_classes(self) -> int:
        """Number of output classes, background included."""
        return max(self.learns.values()) + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the name is the key in the pipeline's ``models``)."""
        return {
            "learns": {str(k): v for k, v in self.learns.items()},
            "preprocessing": self.preprocessing,
            "bbox_target": self.bbox_target,
            "topology": self.topology.to_dict(),
            "batch_size": self.batch_size,
            "sampling": self.sampling.to_dict(),
            "schedule": self.schedule.to_dict(),
            "loss_mask_labels": list(self.loss_mask_labels),
            "loss_mask_dilation_mm": self.loss_mask_dilation_mm,
            "roi": None if self.roi is None else self.roi.to_dict(),
            "mirroring": self.mirroring,
            "reasons": dict(self.reasons),
        }

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> "ModelPlan":
        """Validated inverse of :meth:`to_dict`."""
        kw = kwargs_of(cls, d, where, skip=("name",))
        kw["learns"] = int_keys(kw["learns"], f"{where}: learns")
        kw["topology"] = NetworkTopology.from_dict(kw["topology"], f"{where}.topology")
        kw["sampling"] = SamplingSpec.from_dict(kw["sampling"], f"{where}.sampling")
        kw["schedule"] = TrainingSchedule.from_dict(kw["schedule"], f"{where}.schedule")
        kw["loss_mask_labels"] = ints(kw.get("loss_mask_labels", []), f"{where}: loss_mask_labels")
        if kw.get("roi") is not None:
            kw["roi"] = RegionOfInterest.from_dict(kw["roi"], f"{where}.roi")
        if not isinstance(kw.get("reasons", {}), Mapping):
            raise LiversegError(f"{where}: reasons must be an object of texts")
        return build(cls, where, name=name, **kw)


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its models (trained separately), how their outputs combine, the post-processing.

    ``emitted`` is false when the planner found the pipeline would not help on this dataset (then
    ``models`` is empty and ``reason`` says why). ``postprocessing`` lists steps in order, each a
    name or ``{"name": ..., "params": {...}}`` (:mod:`liverseg.postprocessing`).
    """

    name: str
    description: str
    emitted: bool
    reason: str
    combine: str
    postprocessing: tuple[str | dict[str, Any], ...]
    models: tuple[ModelPlan, ...]

    def __post_init__(self) -> None:
        check_name("combine", self.combine)
        normalise_steps(list(self.postprocessing), "postprocessing")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise LiversegError(f"model names must be unique within a pipeline; got {names}")
        if self.emitted and not self.models:
            raise LiversegError("an emitted pipeline needs at least one model")
        for model in self.models:
            if model.roi is not None and model.roi.from_model not in names:
                raise LiversegError(f"model {model.name}: roi.from_model {model.roi.from_model!r} is not a model of this pipeline "
                                    f"({', '.join(names)})")

    def model(self, name: str) -> ModelPlan:
        """The model called ``name``."""
        for model in self.models:
            if model.name == name:
                return model
        raise LiversegError(f"pipeline {self.name} has no model {name!r}; models: {', '.join(m.name for m in self.models) or 'none'}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the name is the key in the plan's ``pipelines``)."""
        return {
            "description": self.description,
            "emitted": self.emitted,
            "reason": self.reason,
            "combine": self.combine,
            "postprocessing": list(self.postprocessing),
            "models": {m.name: m.to_dict() for m in self.models},
        }

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> "PipelineSpec":
        """Validated inverse of :meth:`to_dict`."""
        kw = kwargs_of(cls, d, where, skip=("name",))
        if not isinstance(kw["models"], Mapping):
            raise LiversegError(f"{where}: models must be an object mapping model names to models")
        kw["models"] = tuple(ModelPlan.from_dict(n, m, f"{where}.models.{n}") for n, m in kw["models"].items())
        if not isinstance(kw["postprocessing"], list):
            raise LiversegError(f"{where}: postprocessing must be a list of step names")
        kw["postprocessing"] = tuple(kw["postprocessing"])
        return build(cls, where, name=name, **kw)


@dataclass(frozen=True)
class PlannerSettings:
    """The planner's inputs that are not data: preset, memory budget, bounding-box percentile."""

    preset: str
    gpu_memory_gb: float
    percentile: float

    def __post_init__(self) -> None:
        if not isinstance(self.gpu_memory_gb, (int, float)) or self.gpu_memory_gb <= 0:
            raise LiversegError(f"gpu_memory_gb must be a positive number; got {self.gpu_memory_gb!r}")
        if not isinstance(self.percentile, (int, float)) or not 0 < self.percentile <= 100:
            raise LiversegError(f"percentile must be in (0, 100]; got {self.percentile!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"preset": self.preset, "gpu_memory_gb": self.gpu_memory_gb, "percentile": self.percentile}


@dataclass(frozen=True)
class Plan:
    """Everything decided for one dataset: preprocessing grids, pipelines, recommendation, reasons."""

    dataset: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    planner: PlannerSettings
    preprocessing: dict[str, PreprocessingSpec]
    pipelines: tuple[PipelineSpec, ...]
    recommended: str
    reasons: dict[str, str] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.version != PLAN_VERSION:
            raise LiversegError(f"plan version {self.version!r} is not {PLAN_VERSION}; run liverseg_plan again")
        names = [p.name for p in self.pipelines]
        if len(set(names)) != len(names):
            raise LiversegError(f"pipeline names must be unique; got {names}")
        label_values = set(self.labels.values())
        budget = self.planner.gpu_memory_gb * GIB
        for pipeline in self.pipelines:
            for model in pipeline.models:
                where = f"pipelines.{pipeline.name}.models.{model.name}"
                if model.preprocessing not in self.preprocessing:
                    raise LiversegError(f"{where}: preprocessing {model.preprocessing!r} is not one of the plan's specs "
                                        f"({', '.join(self.preprocessing)})")
                unknown = sorted(set(model.learns) - label_values)
                if unknown:
                    raise LiversegError(f"{where}: learns labels {unknown} that the dataset does not have (labels: {self.labels})")
                spec = self.preprocessing[model.preprocessing]
                memory = estimate_training_memory(model.topology, model.batch_size, len(spec.normalization), model.num_classes)
                if memory > budget * (1 + 1e-9):
                    raise LiversegError(
                        f"{where}: patch {list(model.topology.patch_size)} with batch {model.batch_size} needs about "
                        f"{memory / GIB:.2f} GB for training, more than planner.gpu_memory_gb = {self.planner.gpu_memory_gb:g}; "
                        "use a smaller patch_size or batch_size, or raise gpu_memory_gb"
                    )
        emitted = [p.name for p in self.pipelines if p.emitted]
        if self.recommended not in emitted:
            raise LiversegError(f"recommended pipeline {self.recommended!r} is not an emitted pipeline ({', '.join(emitted) or 'none'})")

    def pipeline(self, name: str) -> PipelineSpec:
        """The pipeline called ``name``."""
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        raise LiversegError(f"the plan has no pipeline {name!r}; pipelines: {', '.join(p.name for p in self.pipelines)}")

    def specs_in_use(self) -> dict[str, PreprocessingSpec]:
        """The preprocessing specs that some model of an emitted pipeline uses."""
        used = {m.preprocessing for p in self.pipelines if p.emitted for m in p.models}
        return {k: v for k, v in self.preprocessing.items() if k in used}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the content of plans.json)."""
        return {
            "version": self.version,
            "axis_order": "zyx",
            "dataset": self.dataset,
            "channel_names": dict(self.channel_names),
            "labels": dict(self.labels),
            "planner": self.planner.to_dict(),
            "reasons": dict(self.reasons),
            "recommended": self.recommended,
            "preprocessing": {k: v.to_dict() for k, v in self.preprocessing.items()},
            "pipelines": {p.name: p.to_dict() for p in self.pipelines},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> "Plan":
        """Validated inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping):
            raise LiversegError(f"{where}: expected an object, got {d!r:.100}")
        d = dict(d)
        if d.get("version") != PLAN_VERSION:
            raise LiversegError(f"{where}: plan version {d.get('version')!r} is not {PLAN_VERSION}; run liverseg_plan again")
        if d.pop("axis_order", "zyx") != "zyx":
            raise LiversegError(f"{where}: axis_order must be 'zyx'")
        kw = kwargs_of(cls, d, where)
        kw["planner"] = build(PlannerSettings, f"{where}.planner", **kwargs_of(PlannerSettings, kw["planner"], f"{where}.planner"))
        specs = kw["preprocessing"]
        if not isinstance(specs, Mapping) or not isinstance(kw["pipelines"], Mapping):
            raise LiversegError(f"{where}: preprocessing and pipelines must be objects keyed by name")
        kw["preprocessing"] = {k: _spec(v, f"{where}.preprocessing.{k}") for k, v in specs.items()}
        kw["pipelines"] = tuple(PipelineSpec.from_dict(n, p, f"{where}.pipelines.{n}") for n, p in kw["pipelines"].items())
        return build(cls, where, **kw)


def _spec(d: Any, where: str) -> PreprocessingSpec:
    if not isinstance(d, Mapping):
        raise LiversegError(f"{where}: expected an object")
    try:
        return PreprocessingSpec.from_dict(dict(d))
    except (LiversegError, TypeError) as e:
        raise LiversegError(f"{where}: {e}") from None


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` as readable JSON, atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(to_json_text(plan.to_dict()) + "\n", encoding="utf-8")
    return path


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plans.json (hand edits included); a LiversegError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise LiversegError(f"{path}: no plan yet; run liverseg_plan")
    try:
        content = read_json(path)
    except ValueError as e:
        raise LiversegError(f"{path}: not valid JSON ({e}); fix it or run liverseg_plan again") from None
    return Plan.from_dict(content, where=str(path))
