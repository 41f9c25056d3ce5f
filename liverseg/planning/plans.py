"""plans.json as typed, frozen dataclasses: validated when built, when loaded and after overrides.

A :class:`Plan` holds the preprocessing specs (one per distinct grid, shared by the models that use
it), the pipelines (each a list of :class:`ModelPlan`), the recommended pipeline and the reason for
every decision. ``to_dict``/``from_dict`` round-trip it through JSON; ``from_dict`` rejects unknown
keys, unknown names and impossible numbers with a message naming the place in the file, so a
hand-edited plans.json fails at load time with a clear error. Sizes are ``(z, y, x)``.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from liverseg.errors import LiversegError
from liverseg.fingerprint.dataset import to_json_text
from liverseg.io.atomic import atomic_output, read_json
from liverseg.planning.memory import GIB, estimate_training_memory
from liverseg.planning.names import check_name
from liverseg.preprocessing.spec import PreprocessingSpec

PLAN_VERSION = 1
PLANS_FILE = "plans.json"
MAX_PATCH_AXIS = 2048
_SUM_TOLERANCE = 1e-6


def _ints(value: Any, what: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        size = f"{length} " if length else ""
        raise LiversegError(f"{what} must be a list of {size}integers; got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise LiversegError(f"{what} must hold integers >= {minimum}; got {list(value)}")
    return tuple(value)


def _int_keys(mapping: Any, what: str) -> dict[int, Any]:
    if not isinstance(mapping, Mapping):
        raise LiversegError(f"{what} must be a mapping; got {mapping!r}")
    try:
        return {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise LiversegError(f"{what} keys must be label values (integers); got {list(mapping)}") from None


def _kwargs(cls: type, d: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments of ``cls`` in ``d``; unknown or missing keys are a user error."""
    if not isinstance(d, Mapping):
        raise LiversegError(f"{where}: expected an object, got {d!r:.100}")
    names = [f.name for f in fields(cls) if f.name not in skip]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise LiversegError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(names)}")
    missing = [n for n in names if n not in d and _is_required(cls, n)]
    if missing:
        raise LiversegError(f"{where}: missing key(s) {', '.join(missing)}")
    return dict(d)


def _is_required(cls: type, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is MISSING and f.default_factory is MISSING


def _build(cls: type, where: str, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except LiversegError as e:
        raise LiversegError(f"{where}: {e}") from None
    except TypeError as e:  # a value of the wrong JSON type reached a comparison or conversion
        raise LiversegError(f"{where}: {e}") from None


@dataclass(frozen=True)
class NetworkTopology:
    """The network a model trains and its patch: kernels, strides and widths per stage.

    The fields after ``patch_size`` are the network's constructor arguments
    (:func:`liverseg.networks.build_network`, via :meth:`network_kwargs`): one ``kernel_sizes``,
    ``strides`` and ``features_per_stage`` entry per stage, ``(z, y, x)``, ``strides[0]`` normally
    all ones and ``[1, 2, 2]`` for a stage that halves y and x only. The patch must be a multiple
    of the product of the strides along each axis.
    """

    network: str
    patch_size: tuple[int, int, int]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    features_per_stage: tuple[int, ...]
    n_conv_per_stage: int = 2
    n_conv_per_stage_decoder: int = 2
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        check_name("network", self.network)
        _ints(self.patch_size, "patch_size", 3)
        if max(self.patch_size) > MAX_PATCH_AXIS:
            raise LiversegError(f"patch_size {list(self.patch_size)} exceeds {MAX_PATCH_AXIS} voxels on an axis")
        stages = len(self.features_per_stage)
        if stages < 2 or len(self.kernel_sizes) != stages or len(self.strides) != stages:
            raise LiversegError(
                f"kernel_sizes, strides and features_per_stage need one entry per stage (at least 2 stages); "
                f"got {len(self.kernel_sizes)}, {len(self.strides)} and {stages}"
            )
        for kernel in self.kernel_sizes:
            if any(k % 2 == 0 for k in _ints(kernel, "each kernel_sizes entry", 3)):
                raise LiversegError(f"kernel sizes must be odd (1, 3, 5, ...); got {list(kernel)}")
        for stride in self.strides:
            _ints(stride, "each strides entry", 3)
        _ints(self.features_per_stage, "features_per_stage")
        _ints([self.n_conv_per_stage, self.n_conv_per_stage_decoder], "n_conv_per_stage and n_conv_per_stage_decoder", 2)
        if not isinstance(self.deep_supervision, bool):
            raise LiversegError(f"deep_supervision must be true or false; got {self.deep_supervision!r}")
        divisor = self.divisor
        bad = [axis for axis, p, d in zip("zyx", self.patch_size, divisor) if p % d]
        if bad:
            raise LiversegError(
                f"patch_size {list(self.patch_size)} is not divisible by the product of the strides {list(divisor)} "
                f"on axis {', '.join(bad)}; use multiples of {list(divisor)} "
                f"(e.g. {[math.ceil(p / d) * d for p, d in zip(self.patch_size, divisor)]}) or change the strides"
            )

    @property
    def num_stages(self) -> int:
        """Number of resolution levels."""
        return len(self.features_per_stage)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Product of the strides per axis: the patch must be a multiple of it."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(3))  # type: ignore[return-value]

    def network_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the network's constructor (besides channels and classes)."""
        return {
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "strides": [list(s) for s in self.strides],
            "features_per_stage": list(self.features_per_stage),
            "n_conv_per_stage": self.n_conv_per_stage,
            "n_conv_per_stage_decoder": self.n_conv_per_stage_decoder,
            "deep_supervision": self.deep_supervision,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"network": self.network, "patch_size": list(self.patch_size), **self.network_kwargs()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "topology") -> "NetworkTopology":
        """Validated inverse of :meth:`to_dict`."""
        kw = _kwargs(cls, d, where)
        for key in ("kernel_sizes", "strides"):
            if not isinstance(kw[key], list):
                raise LiversegError(f"{where}: {key} must be a list of [z, y, x] triples")
            kw[key] = tuple(_ints(v, f"{where}: each {key} entry", 3) for v in kw[key])
        kw["patch_size"] = _ints(kw["patch_size"], f"{where}: patch_size", 3)
        kw["features_per_stage"] = _ints(kw["features_per_stage"], f"{where}: features_per_stage")
        return _build(cls, where, **kw)


@dataclass(frozen=True)
class SamplingSpec:
    """Where training patches are centred: probabilities that sum to 1.

    ``lesion``: on a voxel of a lesion chosen uniformly among the case's lesions (lesion first, so
    small lesions are seen as often as big ones; cases without lesions fall back to ``classes``);
    ``classes``: on a voxel of the given original label; ``random``: anywhere. A non-empty
    ``patch_must_contain`` (original labels) makes every patch hold at least one such voxel.
    """

    lesion: float = 0.0
    classes: dict[int, float] = field(default_factory=dict)
    random: float = 1.0
    patch_must_contain: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        values = [self.lesion, self.random, *self.classes.values()]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values):
            raise LiversegError(f"sampling probabilities must be numbers in [0, 1]; got lesion {self.lesion!r}, classes {self.classes!r}, random {self.random!r}")
        if abs(sum(values) - 1.0) > _SUM_TOLERANCE:
            raise LiversegError(f"sampling probabilities must sum to 1 (lesion + classes + random); they sum to {sum(values):.6g}")
        _ints(self.patch_must_contain, "patch_must_contain", minimum=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"lesion": self.lesion, "classes": {str(k): v for k, v in self.classes.items()}, "random": self.random,
                "patch_must_contain": list(self.patch_must_contain)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "sampling") -> "SamplingSpec":
        """Validated inverse of :meth:`to_dict`."""
        kw = _kwargs(cls, d, where)
        kw["classes"] = _int_keys(kw.get("classes", {}), f"{where}: classes")
        kw["patch_must_contain"] = _ints(kw.get("patch_must_contain", []), f"{where}: patch_must_contain", minimum=0)
        return _build(cls, where, **kw)


@dataclass(frozen=True)
class TrainingSchedule:
    """How long and how a model trains; the trainer (a later issue) reads this."""

    epochs: int
    iterations_per_epoch: int
    validation_iterations: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    poly_exponent: float
    loss: str

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "validation_iterations"):
            _ints([getattr(self, name)], name, 1, minimum=0 if name == "validation_iterations" else 1)
        for name in ("learning_rate", "momentum", "weight_decay", "poly_exponent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise LiversegError(f"{name} must be a number >= 0; got {value!r}")
        if self.learning_rate <= 0:
            raise LiversegError(f"learning_rate must be positive; got {self.learning_rate}")
        check_name("optimizer", self.optimizer)
        check_name("lr_schedule", self.lr_schedule)
        check_name("loss", self.loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "schedule") -> "TrainingSchedule":
        """Validated inverse of :meth:`to_dict`."""
        return _build(cls, where, **_kwargs(cls, d, where))


@dataclass(frozen=True)
class RegionOfInterest:
    """A cascade's second stage works on the box of ``labels`` grown by ``margin_mm``.

    At training the box comes from the ground truth, jittered by up to ``jitter_mm`` per side; at
    inference from the prediction of ``from_model`` (the coarse stage).
    """

    labels: tuple[int, ...]
    margin_mm: float
    jitter_mm: float
    from_model: str

    def __post_init__(self) -> None:
        _ints(self.labels, "roi labels")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in (self.margin_mm, self.jitter_mm)):
            raise LiversegError(f"roi margin_mm and jitter_mm must be numbers >= 0; got {self.margin_mm!r}, {self.jitter_mm!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"labels": list(self.labels), "margin_mm": self.margin_mm, "jitter_mm": self.jitter_mm, "from_model": self.from_model}

    @classmethod
    def from_dict(cls, d: Any, where: str = "roi") -> "RegionOfInterest":
        """Validated inverse of :meth:`to_dict`."""
        kw = _kwargs(cls, d, where)
        kw["labels"] = _ints(kw["labels"], f"{where}: labels")
        return _build(cls, where, **kw)


@dataclass(frozen=True)
class ModelPlan:
    """One model of a pipeline: what it learns, on which grid, with which network, patches and batch.

    ``learns`` maps original labels to the labels the model is trained on (missing labels become
    background): ``{1: 1, 2: 1}`` for a liver model, ``{2: 1}`` for a tumour model.
    ``preprocessing`` names the plan's preprocessing spec (the grid and normalisation). With
    ``loss_mask_dilation_mm`` set, the loss counts only voxels within that distance of
    ``loss_mask_labels`` (the tumour model's dilated liver mask). ``reasons`` says why each number
    is what it is.
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

    def __post_init__(self) -> None:
        if not self.learns or not all(isinstance(v, int) and v >= 1 for v in self.learns.values()):
            raise LiversegError(f"learns must map original labels to target labels >= 1; got {self.learns!r}")
        if 0 in self.learns:
            raise LiversegError("learns must not map the background label 0; labels not listed become background")
        check_name("bbox_target", self.bbox_target)
        _ints([self.batch_size], "batch_size", 1)
        _ints(self.loss_mask_labels, "loss_mask_labels")
        if self.loss_mask_dilation_mm is not None and (not isinstance(self.loss_mask_dilation_mm, (int, float)) or self.loss_mask_dilation_mm < 0):
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
            "reasons": dict(self.reasons),
        }

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> "ModelPlan":
        """Validated inverse of :meth:`to_dict`."""
        kw = _kwargs(cls, d, where, skip=("name",))
        kw["learns"] = _int_keys(kw["learns"], f"{where}: learns")
        kw["topology"] = NetworkTopology.from_dict(kw["topology"], f"{where}.topology")
        kw["sampling"] = SamplingSpec.from_dict(kw["sampling"], f"{where}.sampling")
        kw["schedule"] = TrainingSchedule.from_dict(kw["schedule"], f"{where}.schedule")
        kw["loss_mask_labels"] = _ints(kw.get("loss_mask_labels", []), f"{where}: loss_mask_labels")
        if kw.get("roi") is not None:
            kw["roi"] = RegionOfInterest.from_dict(kw["roi"], f"{where}.roi")
        if not isinstance(kw.get("reasons", {}), Mapping):
            raise LiversegError(f"{where}: reasons must be an object of texts")
        return _build(cls, where, name=name, **kw)


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its models (trained separately), how their outputs combine, the post-processing.

    ``emitted`` is false when the planner found the pipeline would not help on this dataset (then
    ``models`` is empty and ``reason`` says why).
    """

    name: str
    description: str
    emitted: bool
    reason: str
    combine: str
    postprocessing: tuple[str, ...]
    models: tuple[ModelPlan, ...]

    def __post_init__(self) -> None:
        check_name("combine", self.combine)
        for step in self.postprocessing:
            check_name("postprocessing", step)
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise LiversegError(f"model names must be unique within a pipeline; got {names}")
        if self.emitted and not self.models:
            raise LiversegError("an emitted pipeline needs at least one model")
        for model in self.models:
            if model.roi is not None and model.roi.from_model not in names:
                raise LiversegError(f"model {model.name}: roi.from_model {model.roi.from_model!r} is not a model of this pipeline ({', '.join(names)})")

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
        kw = _kwargs(cls, d, where, skip=("name",))
        if not isinstance(kw["models"], Mapping):
            raise LiversegError(f"{where}: models must be an object mapping model names to models")
        kw["models"] = tuple(ModelPlan.from_dict(n, m, f"{where}.models.{n}") for n, m in kw["models"].items())
        if not isinstance(kw["postprocessing"], list):
            raise LiversegError(f"{where}: postprocessing must be a list of step names")
        kw["postprocessing"] = tuple(kw["postprocessing"])
        return _build(cls, where, name=name, **kw)


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
                    raise LiversegError(f"{where}: preprocessing {model.preprocessing!r} is not one of the plan's specs ({', '.join(self.preprocessing)})")
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
        kw = _kwargs(cls, d, where)
        kw["planner"] = _build(PlannerSettings, f"{where}.planner", **_kwargs(PlannerSettings, kw["planner"], f"{where}.planner"))
        specs = kw["preprocessing"]
        if not isinstance(specs, Mapping) or not isinstance(kw["pipelines"], Mapping):
            raise LiversegError(f"{where}: preprocessing and pipelines must be objects keyed by name")
        kw["preprocessing"] = {k: _spec(v, f"{where}.preprocessing.{k}") for k, v in specs.items()}
        kw["pipelines"] = tuple(PipelineSpec.from_dict(n, p, f"{where}.pipelines.{n}") for n, p in kw["pipelines"].items())
        return _build(cls, where, **kw)


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
