"""The leaf parts of a plan: network topology, sampling, schedule, region of interest.

Each is a frozen dataclass validated when built (a :class:`~liverseg.errors.LiversegError` says
what is wrong), with ``to_dict``/``from_dict`` for plans.json; :mod:`liverseg.planning.plans`
assembles them into models, pipelines and the plan. Sizes are ``(z, y, x)``.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping

from liverseg.errors import LiversegError
from liverseg.planning.names import check_name

MAX_PATCH_AXIS = 2048
_SUM_TOLERANCE = 1e-6


def ints(value: Any, what: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a tuple of integers >= ``minimum`` (of ``length``), or a LiversegError naming ``what``."""
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        size = f"{length} " if length else ""
        raise LiversegError(f"{what} must be a list of {size}integers; got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise LiversegError(f"{what} must hold integers >= {minimum}; got {list(value)}")
    return tuple(value)


def int_keys(mapping: Any, what: str) -> dict[int, Any]:
    """A JSON object keyed by label values ("1") as a dict keyed by integers."""
    if not isinstance(mapping, Mapping):
        raise LiversegError(f"{what} must be a mapping; got {mapping!r}")
    try:
        return {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise LiversegError(f"{what} keys must be label values (integers); got {list(mapping)}") from None


def kwargs_of(cls: type, d: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
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


def build(cls: type, where: str, **kwargs: Any) -> Any:
    """``cls(**kwargs)``, with validation errors prefixed by ``where`` (the place in the file)."""
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
        ints(self.patch_size, "patch_size", 3)
        if max(self.patch_size) > MAX_PATCH_AXIS:
            raise LiversegError(f"patch_size {list(self.patch_size)} exceeds {MAX_PATCH_AXIS} voxels on an axis")
        stages = len(self.features_per_stage)
        if stages < 2 or len(self.kernel_sizes) != stages or len(self.strides) != stages:
            raise LiversegError(
                f"kernel_sizes, strides and features_per_stage need one entry per stage (at least 2 stages); "
                f"got {len(self.kernel_sizes)}, {len(self.strides)} and {stages}"
            )
        for kernel in self.kernel_sizes:
            if any(k % 2 == 0 for k in ints(kernel, "each kernel_sizes entry", 3)):
                raise LiversegError(f"kernel sizes must be odd (1, 3, 5, ...); got {list(kernel)}")
        for stride in self.strides:
            ints(stride, "each strides entry", 3)
        ints(self.features_per_stage, "features_per_stage")
        ints([self.n_conv_per_stage, self.n_conv_per_stage_decoder], "n_conv_per_stage and n_conv_per_stage_decoder", 2)
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
        kw = kwargs_of(cls, d, where)
        for key in ("kernel_sizes", "strides"):
            if not isinstance(kw[key], list):
                raise LiversegError(f"{where}: {key} must be a list of [z, y, x] triples")
            kw[key] = tuple(ints(v, f"{where}: each {key} entry", 3) for v in kw[key])
        kw["patch_size"] = ints(kw["patch_size"], f"{where}: patch_size", 3)
        kw["features_per_stage"] = ints(kw["features_per_stage"], f"{where}: features_per_stage")
        return build(cls, where, **kw)


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
            raise LiversegError(f"sampling probabilities must be numbers in [0, 1]; got lesion {self.lesion!r}, "
                                f"classes {self.classes!r}, random {self.random!r}")
        if abs(sum(values) - 1.0) > _SUM_TOLERANCE:
            raise LiversegError(f"sampling probabilities must sum to 1 (lesion + classes + random); they sum to {sum(values):.6g}")
        ints(self.patch_must_contain, "patch_must_contain", minimum=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"lesion": self.lesion, "classes": {str(k): v for k, v in self.classes.items()}, "random": self.random,
                "patch_must_contain": list(self.patch_must_contain)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "sampling") -> "SamplingSpec":
        """Validated inverse of :meth:`to_dict`."""
        kw = kwargs_of(cls, d, where)
        kw["classes"] = int_keys(kw.get("classes", {}), f"{where}: classes")
        kw["patch_must_contain"] = ints(kw.get("patch_must_contain", []), f"{where}: patch_must_contain", minimum=0)
        return build(cls, where, **kw)


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
    trainer: str = "default"

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "validation_iterations"):
            ints([getattr(self, name)], name, 1, minimum=0 if name == "validation_iterations" else 1)
        for name in ("learning_rate", "momentum", "weight_decay", "poly_exponent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise LiversegError(f"{name} must be a number >= 0; got {value!r}")
        if self.learning_rate <= 0:
            raise LiversegError(f"learning_rate must be positive; got {self.learning_rate}")
        check_name("optimizer", self.optimizer)
        check_name("lr_schedule", self.lr_schedule)
        check_name("loss", self.loss)
        check_name("trainer", self.trainer)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "schedule") -> "TrainingSchedule":
        """Validated inverse of :meth:`to_dict`."""
        return build(cls, where, **kwargs_of(cls, d, where))


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
        ints(self.labels, "roi labels")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in (self.margin_mm, self.jitter_mm)):
            raise LiversegError(f"roi margin_mm and jitter_mm must be numbers >= 0; got {self.margin_mm!r}, {self.jitter_mm!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"labels": list(self.labels), "margin_mm": self.margin_mm, "jitter_mm": self.jitter_mm, "from_model": self.from_model}

    @classmethod
    def from_dict(cls, d: Any, where: str = "roi") -> "RegionOfInterest":
        """Validated inverse of :meth:`to_dict`."""
        kw = kwargs_of(cls, d, where)
        kw["labels"] = ints(kw["labels"], f"{where}: labels")
        return build(cls, where, **kw)


