"""Pipeline templates and planner defaults, read from JSON files: pipelines are data.

A template (``liverseg_configs/<pipeline>.json``) says which models a pipeline has, what each
learns (label mapping), on which grid (``resolution``: ``full`` or the cascade's ``low``), in how
many dimensions it works (``dims``: 3, or 2 for a model of single slices, the 2D configuration),
whether it is mirrored in training and at test time (``mirroring``: ``auto``, nnU-Net's axes, or
``none``),
what its patch must hold (``bbox_target`` plus ``context_mm`` per side, in-plane only in 2D), how
patches are sampled, whether
the loss is masked or the model works on a region of interest, how the outputs combine and which
post-processing steps run. The planner fills in the numbers. Templates are read from
``liverseg_configs/``, then ``$LIVERSEG_PREPROCESSED/templates/``, then folders given with
``--templates``; a later file with the same pipeline name replaces an earlier one, so a user adds
or changes a pipeline by adding a file. ``defaults.json`` holds the training schedule, the
cross-validation settings and the presets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json
from liverseg.paths import preprocessed_root
from liverseg.planning.names import check_name
from liverseg.planning.plans import RegionOfInterest, SamplingSpec, TrainingSchedule
from liverseg.planning.topology import NetworkSettings
from liverseg.postprocessing import normalise_steps
from liverseg_configs import CONFIG_DIR, DEFAULTS_FILE

log = logging.getLogger(__name__)

USER_TEMPLATES_FOLDER = "templates"
_PIPELINE_KEYS = ("description", "emit", "combine", "postprocessing", "models")
_MODEL_KEYS = ("learns", "resolution", "dims", "bbox_target", "context_mm", "network", "sampling", "loss_mask", "roi",
               "mirroring")
MODEL_DIMS = (2, 3)
_PRESET_KEYS = ("description", "gpu_memory_gb", "network", "max_patch_voxels", "max_batch_size", "schedule")


@dataclass(frozen=True)
class ModelTemplate:
    """One model of a pipeline template, before the planner adds the numbers."""

    name: str
    learns: dict[int, int]
    resolution: str
    bbox_target: str
    context_mm: float
    network: str
    sampling: SamplingSpec
    reasons: dict[str, str]
    loss_mask_labels: tuple[int, ...] = ()
    loss_mask_dilation_mm: float | None = None
    roi: RegionOfInterest | None = None
    dims: int = 3
    mirroring: str = "auto"


@dataclass(frozen=True)
class PipelineTemplate:
    """A pipeline template: its models, combine rule, post-processing and when to emit it."""

    name: str
    description: str
    emit: str
    combine: str
    postprocessing: tuple[str | dict[str, Any], ...]
    models: tuple[ModelTemplate, ...]
    source: Path


@dataclass(frozen=True)
class Preset:
    """A named planner preset: network sizing, memory budget, limits and schedule changes."""

    name: str
    description: str
    gpu_memory_gb: float
    network: NetworkSettings
    max_patch_voxels: int | None
    max_batch_size: int | None
    schedule: dict[str, Any]


@dataclass(frozen=True)
class Defaults:
    """The content of defaults.json."""

    schedule: dict[str, Any]
    splits: dict[str, Any]
    presets: dict[str, Preset]

    def preset(self, name: str) -> Preset:
        """The preset called ``name``."""
        if name not in self.presets:
            raise LiversegError(f"unknown preset '{name}'; presets: {', '.join(self.presets)}")
        return self.presets[name]

    def schedule_for(self, preset: Preset) -> TrainingSchedule:
        """The default schedule with the preset's changes applied."""
        unknown = sorted(set(preset.schedule) - set(self.schedule))
        if unknown:
            raise LiversegError(f"preset '{preset.name}': unknown schedule key(s) {', '.join(unknown)}; known: {', '.join(self.schedule)}")
        return TrainingSchedule.from_dict({**self.schedule, **preset.schedule}, f"preset '{preset.name}' schedule")


def _check_keys(d: Any, known: Sequence[str], where: str, optional: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise LiversegError(f"{where}: expected an object, got {d!r:.100}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise LiversegError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
    missing = [k for k in known if k not in d and k not in optional]
    if missing:
        raise LiversegError(f"{where}: missing key(s) {', '.join(missing)}")
    return dict(d)


def _model_template(name: str, d: Any, where: str) -> ModelTemplate:
    d = _check_keys(d, _MODEL_KEYS, where, optional=("context_mm", "loss_mask", "roi", "dims", "mirroring"))
    reasons: dict[str, str] = {}
    sampling = _check_keys(d["sampling"], ("lesion", "classes", "random", "patch_must_contain", "reason"), f"{where}.sampling",
                           optional=("lesion", "classes", "random", "patch_must_contain", "reason"))
    reasons["sampling"] = str(sampling.pop("reason", ""))
    loss_mask = d.get("loss_mask") or {}
    if loss_mask:
        loss_mask = _check_keys(loss_mask, ("labels", "dilation_mm", "reason"), f"{where}.loss_mask", optional=("reason",))
        reasons["loss_mask"] = str(loss_mask.get("reason", ""))
    roi = d.get("roi")
    if roi is not None:
        roi = dict(_check_keys(roi, ("labels", "margin_mm", "jitter_mm", "from_model", "reason"), f"{where}.roi", optional=("reason",)))
        reasons["roi"] = str(roi.pop("reason", ""))
        roi = RegionOfInterest.from_dict(roi, f"{where}.roi")
    mirroring = _check_keys(d.get("mirroring") or {"axes": "auto"}, ("axes", "reason"), f"{where}.mirroring",
                            optional=("reason",))
    if "reason" in mirroring:
        reasons["mirroring"] = str(mirroring["reason"])
    try:
        check_name("mirroring", mirroring["axes"])
        learns = {int(k): int(v) for k, v in dict(d["learns"]).items()}
        context = float(d.get("context_mm", 0.0))
        dilation = None if not loss_mask else float(loss_mask["dilation_mm"])
        mask_labels = tuple(int(v) for v in loss_mask.get("labels", ())) if loss_mask else ()
        check_name("resolution", d["resolution"])
        check_name("bbox_target", d["bbox_target"])
        check_name("network", d["network"])
    except (TypeError, ValueError) as e:
        raise LiversegError(f"{where}: {e}") from None
    except LiversegError as e:
        raise LiversegError(f"{where}: {e}") from None
    if context < 0 or (dilation is not None and dilation < 0):
        raise LiversegError(f"{where}: context_mm and loss_mask.dilation_mm must be >= 0")
    if not learns or 0 in learns or min(learns.values()) < 1:
        raise LiversegError(f"{where}: learns must map original labels (not 0) to target labels >= 1; got {d['learns']!r}")
    dims = _dims(d, where)
    return ModelTemplate(name, learns, d["resolution"], d["bbox_target"], context, d["network"],
                         SamplingSpec.from_dict(sampling, f"{where}.sampling"), reasons, mask_labels, dilation, roi, dims,
                         mirroring["axes"])


def _dims(d: Mapping[str, Any], where: str) -> int:
    """The model's ``dims`` (default 3), checked against its grid."""
    dims = d.get("dims", 3)
    if dims not in MODEL_DIMS or isinstance(dims, bool):
        raise LiversegError(f"{where}: dims must be 3 (3D patches) or 2 (single slices, the 2D configuration); got {dims!r}")
    if dims == 2 and d["resolution"] != "full":
        raise LiversegError(f"{where}: a 2D model (dims 2) works at full resolution; set resolution to 'full'")
    return int(dims)


def parse_template(name: str, d: Any, source: Path) -> PipelineTemplate:
    """Validate the content of one template file; errors name the file and the key."""
    where = f"{source}"
    d = _check_keys(d, ("name", *_PIPELINE_KEYS), where, optional=("name",))
    if d.get("name", name) != name:
        raise LiversegError(f"{where}: 'name' is {d['name']!r} but the file is named {name}.json; make them agree (or drop 'name')")
    try:
        check_name("emit", d["emit"])
        check_name("combine", d["combine"])
        normalise_steps(d["postprocessing"], "postprocessing")
    except LiversegError as e:
        raise LiversegError(f"{where}: {e}") from None
    if not isinstance(d["models"], Mapping) or not d["models"]:
        raise LiversegError(f"{where}: models must be a non-empty object mapping model names to models")
    models = tuple(_model_template(n, m, f"{where}: models.{n}") for n, m in d["models"].items())
    names = [m.name for m in models]
    for model in models:
        if model.roi is not None and model.roi.from_model not in names:
            raise LiversegError(f"{where}: models.{model.name}.roi.from_model {model.roi.from_model!r} is not a model of this template")
    return PipelineTemplate(name, str(d["description"]), d["emit"], d["combine"], tuple(d["postprocessing"]), models, source)


def template_folders(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where templates are read from, in order: built-in, the user store's templates/, ``extra``."""
    folders = [CONFIG_DIR]
    user = preprocessed_root() / USER_TEMPLATES_FOLDER
    if user.is_dir():
        folders.append(user)
    for folder in extra:
        folder = Path(folder)
        if not folder.is_dir():
            raise LiversegError(f"templates folder {folder} does not exist; give a folder holding <pipeline>.json files")
        folders.append(folder)
    return folders


def load_templates(extra: Sequence[str | Path] = ()) -> dict[str, PipelineTemplate]:
    """All pipeline templates by name (later folders replace earlier templates of the same name)."""
    templates: dict[str, PipelineTemplate] = {}
    for folder in template_folders(extra):
        for path in sorted(folder.glob("*.json")):
            if path.name == DEFAULTS_FILE:
                continue
            try:
                content = read_json(path)
            except ValueError as e:
                raise LiversegError(f"{path}: not valid JSON ({e})") from None
            if path.stem in templates:
                log.info("pipeline template %s replaces %s", path, templates[path.stem].source)
            templates[path.stem] = parse_template(path.stem, content, path)
    return templates


def load_defaults(path: str | Path | None = None) -> Defaults:
    """Schedule defaults, cross-validation settings and presets (``liverseg_configs/defaults.json``)."""
    path = Path(path) if path else CONFIG_DIR / DEFAULTS_FILE
    d = _check_keys(read_json(path), ("schedule", "splits", "presets"), str(path))
    presets = {}
    for name, p in d["presets"].items():
        where = f"{path}: presets.{name}"
        p = _check_keys(p, _PRESET_KEYS, where)
        try:
            network = NetworkSettings(**p["network"])
        except TypeError as e:
            raise LiversegError(f"{where}.network: {e}") from None
        presets[name] = Preset(name, str(p["description"]), float(p["gpu_memory_gb"]), network,
                               p["max_patch_voxels"], p["max_batch_size"], dict(p["schedule"]))
    defaults = Defaults(dict(d["schedule"]), dict(d["splits"]), presets)
    for preset in presets.values():
        defaults.schedule_for(preset)  # validates every preset's schedule now, not at planning time
    return defaults
