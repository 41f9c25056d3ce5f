"""Find and load trained models: which dataset, which pipeline, which folds, which checkpoint.

Trained models live in ``$LIVERSEG_RESULTS/<Dataset>/<pipeline>/<model>/fold_<k>/`` (see
:mod:`liverseg.training.run`); each fold folder holds ``checkpoint_best.pt`` and/or
``checkpoint_latest.pt`` and a copy of plans.json, so a results folder is all prediction needs.

What to load (:func:`load_pipeline`):

- ``source`` a dataset (``ATLAS``, ``Dataset501_ATLAS``, ``501``) under ``$LIVERSEG_RESULTS``, or
  a folder (a :class:`~pathlib.Path`, or a text with a ``/``; a plain name is a dataset first):
  a dataset's results folder, a pipeline folder ``<Dataset>/<pipeline>``, a model
  folder ``<Dataset>/<pipeline>/<model>`` (that model alone, its classes written as the labels
  they stand for) or a fold folder; ``None`` means the only dataset that has trained models;
- ``pipeline``: when not given (and ``source`` is not a pipeline or model folder), the best
  configuration written to ``<Dataset>/inference.json`` (:data:`INFERENCE_FILE`) if there is one,
  else the plan's recommended pipeline;
- ``folds``: default every fold for which each model of the pipeline has a checkpoint;
- ``checkpoint``: ``best`` (default; ``checkpoint_best.pt``, or ``checkpoint_latest.pt`` where no
  best one was written) or ``latest`` (the weights at the end of training, the ones the training's
  ``validation/summary.json`` scores).

The ``inference.json`` contract (:mod:`liverseg.inference.config`, written by model selection,
``liverseg_find_best``) names a pipeline or, as a list of two or more, an **ensemble of pipelines**
(:class:`LoadedEnsemble`), each member with the same ``folds`` and ``checkpoint``, whose label
probabilities the predictor averages before the argmax. Asking :func:`load_pipeline` for a list
of pipelines loads an ensemble as well.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from liverseg.errors import LiversegError
from liverseg.inference.config import (CHECKPOINT_CHOICES, INFERENCE_FILE, check_checkpoint, pipeline_names,
                                       read_inference_config, write_inference_config)
from liverseg.networks import build_network
from liverseg.paths import ENV_RESULTS, results_root
from liverseg.planning.plans import PLANS_FILE, ModelPlan, PipelineSpec, Plan, load_plan
from liverseg.postprocessing import normalise_steps
from liverseg.preprocessing.spec import PreprocessingSpec
from liverseg.training.checkpoint import BEST, LATEST, load_checkpoint, load_network_weights
from liverseg.training.run import parse_fold, training_order

log = logging.getLogger(__name__)

# The inference.json names stay importable from here, where prediction code has always found them.
__all__ = ["CHECKPOINT_CHOICES", "FOLD_PREFIX", "INFERENCE_FILE", "Fold", "Loaded", "LoadedEnsemble", "LoadedModel",
           "LoadedPipeline", "describe_trained", "ensemble_steps", "folds_with_checkpoint", "load_pipeline",
           "read_inference_config", "results_dataset", "trained_datasets", "trained_pipeline_folds",
           "write_inference_config"]

FOLD_PREFIX = "fold_"
_NNUNET_NAME = re.compile(r"^Dataset(\d{3})_(.+)$")

Fold = int | str


@dataclass
class LoadedModel:
    """One model of a pipeline with a network per fold, each in eval mode without deep supervision."""

    plan: ModelPlan
    spec: PreprocessingSpec
    networks: list[nn.Module]
    checkpoints: list[Path]

    @property
    def name(self) -> str:
        """The model's name in its pipeline (``multiclass``, ``liver``, ``tumour``, ``coarse``, ``fine``)."""
        return self.plan.name


@dataclass
class LoadedPipeline:
    """Everything needed to predict: the plan, the pipeline and its loaded models, and where they came from.

    ``models`` are in running order (a cascade's first stage first). ``postprocessing`` holds the
    steps of the chosen configuration: those of inference.json when it chose the pipeline,
    otherwise the plan's steps for the pipeline (none for a single model of a multi-model pipeline,
    whose steps are meant for the combined output).
    """

    dataset: str
    plan: Plan
    pipeline: PipelineSpec
    models: list[LoadedModel]
    folds: list[Fold]
    source: Path
    postprocessing: list[dict[str, Any]] = field(default_factory=list)
    postprocessing_source: str = "plan"

    @property
    def num_channels(self) -> int:
        """Input channels the models expect."""
        return len(self.plan.channel_names)

    def model(self, name: str) -> LoadedModel:
        """The loaded model called ``name``."""
        for model in self.models:
            if model.name == name:
                return model
        raise LiversegError(f"pipeline {self.pipeline.name} has no loaded model {name!r}")

    @property
    def name(self) -> str:
        """The pipeline's name (what ``-c`` and inference.json call it)."""
        return self.pipeline.name

    @property
    def members(self) -> list["LoadedPipeline"]:
        """The pipelines whose outputs are averaged: this one alone (see :class:`LoadedEnsemble`)."""
        return [self]

    @property
    def plan_steps(self) -> list[dict[str, Any]]:
        """The plan's post-processing steps for this pipeline (what ``--postprocessing plan`` runs)."""
        return normalise_steps(list(self.pipeline.postprocessing), "the plan's post-processing")

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what was loaded (for the settings file of a prediction run)."""
        return {
            "dataset": self.dataset, "pipeline": self.pipeline.name, "combine": self.pipeline.combine,
            "folds": list(self.folds), "source": str(self.source),
            "models": {m.name: [str(p) for p in m.checkpoints] for m in self.models},
            "postprocessing_source": self.postprocessing_source,
        }


@dataclass
class LoadedEnsemble:
    """An ensemble of two or more trained pipelines of one dataset: their label probabilities are averaged.

    Each member is a complete :class:`LoadedPipeline` (its own combine rule: a cascade stays a
    cascade, dual_binary merges its two models); the predictor averages the members' label
    probabilities, takes the argmax, and then runs ``postprocessing`` once on the result.
    """

    dataset: str
    members: list[LoadedPipeline]
    source: Path
    postprocessing: list[dict[str, Any]] = field(default_factory=list)
    postprocessing_source: str = "plan"

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if len(names) < 2 or len(set(names)) != len(names):
            raise LiversegError(f"an ensemble needs two or more different pipelines; got {', '.join(names) or 'none'}")
        first = self.members[0].plan
        for member in self.members[1:]:
            if member.plan.channel_names != first.channel_names or member.plan.labels != first.labels:
                raise LiversegError(f"pipelines {names[0]} and {member.name} of {self.dataset} were trained on different "
                                    f"channels or labels ({first.channel_names}, {first.labels} vs "
                                    f"{member.plan.channel_names}, {member.plan.labels}); they cannot be ensembled")

    @property
    def name(self) -> str:
        """The members' names joined by ``+`` (``multiclass+dual_binary``)."""
        return "+".join(m.name for m in self.members)

    @property
    def plan(self) -> Plan:
        """The first member's plan (every member has the same channels and labels)."""
        return self.members[0].plan

    @property
    def num_channels(self) -> int:
        """Input channels the models expect."""
        return len(self.plan.channel_names)

    @property
    def folds(self) -> list[Fold]:
        """Every fold any member uses."""
        return sorted({f for m in self.members for f in m.folds}, key=_fold_key)

    @property
    def plan_steps(self) -> list[dict[str, Any]]:
        """The members' plan steps combined (:func:`ensemble_steps`)."""
        return ensemble_steps([m.plan_steps for m in self.members])

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what was loaded (for the settings file of a prediction run)."""
        return {"dataset": self.dataset, "pipeline": [m.name for m in self.members], "folds": self.folds,
                "source": str(self.source), "members": [m.describe() for m in self.members],
                "postprocessing_source": self.postprocessing_source}


Loaded = LoadedPipeline | LoadedEnsemble


def ensemble_steps(step_lists: Sequence[Sequence[str | dict[str, Any]]]) -> list[dict[str, Any]]:
    """The post-processing of an ensemble when none is chosen: the first member's steps, then any step
    of a later member whose name is not in the list yet (a name already there keeps the first
    member's parameters and position). With the built-in templates, all members list the ATLAS
    paper's three steps, and so does the ensemble."""
    steps: list[dict[str, Any]] = []
    for step_list in step_lists:
        for step in normalise_steps(list(step_list), "the plan's post-processing"):
            if step["name"] not in {s["name"] for s in steps}:
                steps.append(step)
    return steps


def load_pipeline(source: str | Path | None = None, pipeline: str | Sequence[str] | None = None,
                  folds: Sequence[Fold] | None = None, checkpoint: str | None = None) -> Loaded:
    """Find the trained models the arguments select (module docstring) and load them on the CPU.

    ``pipeline`` may be a list of two or more pipelines (or inference.json may name one): then
    a :class:`LoadedEnsemble` of those pipelines comes back, each with ``folds`` and ``checkpoint``.
    """
    names = pipeline_names(pipeline, "pipeline")
    dataset_dir, chosen, model_name, folds = _locate(source, names[0] if names and len(names) == 1 else None, folds)
    if names and len(names) > 1 and (chosen is not None or model_name is not None):
        raise LiversegError(f"{source}: an ensemble of pipelines ({', '.join(names)}) is loaded from a dataset (-d NAME) "
                            "or a dataset's results folder, not from a pipeline's, model's or fold's folder")
    names = names if names and len(names) > 1 else None if chosen is None else [chosen]
    config_path = dataset_dir / INFERENCE_FILE
    config = read_inference_config(config_path) if names is None and config_path.is_file() else None
    if config is not None:
        names = pipeline_names(config["pipeline"], str(config_path))
        folds = folds if folds is not None else config["folds"]
        checkpoint = checkpoint or config.get("checkpoint")
        log.info("configuration from %s: pipeline %s, folds %s", config_path, " + ".join(names), config["folds"])
    checkpoint = check_checkpoint(checkpoint or "best")
    if names is not None and len(names) > 1:
        members = [_load_one(dataset_dir, name, None, folds, checkpoint) for name in names]
        ensemble = LoadedEnsemble(dataset_dir.name, members, dataset_dir)
        if config is not None and "postprocessing" in config:
            ensemble.postprocessing, ensemble.postprocessing_source = config["postprocessing"], str(config_path)
        else:
            ensemble.postprocessing = ensemble.plan_steps
        return ensemble
    loaded = _load_one(dataset_dir, names[0] if names else None, model_name, folds, checkpoint)
    if config is not None and "postprocessing" in config:
        loaded.postprocessing, loaded.postprocessing_source = config["postprocessing"], str(config_path)
    return loaded


def _load_one(dataset_dir: Path, pipeline: str | None, model_name: str | None, folds: list[Fold] | None,
              checkpoint: str) -> LoadedPipeline:
    """One pipeline (or one model of it) with the plan's post-processing."""
    plan = _plan_of(dataset_dir, pipeline)
    if pipeline is None:
        pipeline = plan.recommended
        log.info("no %s in %s: using the plan's recommended pipeline %s", INFERENCE_FILE, dataset_dir, pipeline)
    spec = _trained_pipeline(plan, dataset_dir, pipeline)
    models = training_order(spec.models if model_name is None else (spec.model(model_name),))
    chosen = _choose_folds(dataset_dir / spec.name, models, folds, checkpoint)
    loaded = [_load_model(plan, m, [_checkpoint_path(dataset_dir / spec.name / m.name / _fold_dir(f), checkpoint)
                                    for f in chosen]) for m in models]
    if model_name is not None and len(spec.models) > 1:
        spec = PipelineSpec(spec.name, spec.description, True, spec.reason, "argmax", (), tuple(m.plan for m in loaded))
        steps, steps_source = [], f"none (model {model_name} alone)"
    else:
        steps, steps_source = normalise_steps(list(spec.postprocessing), "the plan's post-processing"), "plan"
    log.info("loaded %s: pipeline %s, model(s) %s, fold(s) %s, %s checkpoints", dataset_dir.name, spec.name,
             ", ".join(m.name for m in loaded), ", ".join(map(str, chosen)), checkpoint)
    return LoadedPipeline(dataset_dir.name, plan, spec, loaded, chosen, dataset_dir / spec.name, steps, steps_source)


def trained_datasets(root: Path | None = None) -> list[str]:
    """Dataset folders under the results store that hold at least one checkpoint."""
    root = results_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _trained(d))


def describe_trained(dataset_dir: Path) -> str:
    """``pipeline (model: folds; ...)`` for each trained pipeline of a dataset's results folder, for messages."""
    parts = []
    for pipeline_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()) if dataset_dir.is_dir() else []:
        models = [f"{m.name}: folds {', '.join(map(str, folds))}" for m in sorted(pipeline_dir.iterdir())
                  if m.is_dir() and (folds := folds_with_checkpoint(m))]
        if models:
            parts.append(f"{pipeline_dir.name} ({'; '.join(models)})")
    return ", ".join(parts) or "nothing trained"


def trained_pipeline_folds(dataset_dir: Path, pipeline: str, checkpoint: str = "best") -> tuple[PipelineSpec, dict[str, list[Fold]]]:
    """A trained pipeline's plan entry and, per model of it, the folds that have the checkpoint asked for."""
    spec = _trained_pipeline(_plan_of(dataset_dir, pipeline), dataset_dir, pipeline)
    return spec, {m.name: folds_with_checkpoint(dataset_dir / spec.name / m.name, checkpoint) for m in spec.models}


def _trained(dataset_dir: Path) -> bool:
    return any(dataset_dir.glob(f"*/*/{FOLD_PREFIX}*/checkpoint_*.pt"))


def _fold_dir(fold: Fold) -> str:
    return f"{FOLD_PREFIX}{fold}"


def _fold_key(fold: Fold) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def folds_with_checkpoint(model_dir: Path, checkpoint: str = "best") -> list[Fold]:
    """Folds of a model folder whose fold folder holds the checkpoint asked for (``best`` accepts either)."""
    folds = []
    for d in model_dir.glob(f"{FOLD_PREFIX}*"):
        try:
            fold = parse_fold(d.name[len(FOLD_PREFIX):])
        except LiversegError:
            continue
        names = (BEST, LATEST) if checkpoint == "best" else (LATEST,)
        if d.is_dir() and any((d / n).is_file() for n in names):
            folds.append(fold)
    return sorted(folds, key=_fold_key)


def _checkpoint_path(fold_dir: Path, checkpoint: str) -> Path:
    if checkpoint == "best" and (fold_dir / BEST).is_file():
        return fold_dir / BEST
    if checkpoint == "best":
        log.info("%s: no %s, using %s", fold_dir, BEST, LATEST)
    return fold_dir / LATEST


def results_dataset(name: str) -> Path:
    """The results folder of a dataset given by name, nnU-Net folder name or id."""
    root = results_root()
    trained = trained_datasets(root)
    if (root / name).is_dir():
        return root / name
    if name.isdigit():
        matches = [d for d in trained if (m := _NNUNET_NAME.match(d)) and int(m.group(1)) == int(name)]
    else:
        matches = [d for d in trained if (m := _NNUNET_NAME.match(d)) and m.group(2) == name]
    if len(matches) == 1:
        return root / matches[0]
    if len(matches) > 1:
        raise LiversegError(f"dataset name '{name}' is ambiguous in {root}: {', '.join(matches)}; use the full folder name")
    raise LiversegError(f"no trained models for dataset '{name}' in {root} (set {ENV_RESULTS} to change the folder); "
                        f"datasets with trained models there: {', '.join(trained) or 'none'}. Train with liverseg_train, "
                        "or give a results folder with -m")


def _locate(source: str | Path | None, pipeline: str | None,
            folds: Sequence[Fold] | None) -> tuple[Path, str | None, str | None, list[Fold] | None]:
    """(dataset results folder, pipeline or None, single model or None, folds or None) from the arguments."""
    folds = None if folds is None else [parse_fold(f) for f in folds]
    if source is None:
        trained = trained_datasets()
        if not trained:
            raise LiversegError(f"no trained models in {results_root()} (set {ENV_RESULTS} to change the folder); train "
                                "with liverseg_train, or give a results folder with -m")
        if len(trained) > 1:
            raise LiversegError(f"several datasets have trained models in {results_root()} ({', '.join(trained)}); choose "
                                "one with -d NAME, or a results folder with -m")
        return results_root() / trained[0], pipeline, None, folds
    path = Path(source).expanduser()
    if isinstance(source, str) and not ("/" in source and path.is_dir()):
        try:  # a name is looked up in the results store first, a folder of that name in the working directory second
            return results_dataset(source), pipeline, None, folds
        except LiversegError:
            if not path.is_dir():
                raise
    if not path.is_dir():
        raise LiversegError(f"{path}: results folder not found; give a dataset's, pipeline's, model's or fold's "
                            "results folder")
    path = path.resolve()
    if any((path / n).is_file() for n in (BEST, LATEST)):  # a fold folder
        fold = parse_fold(path.name[len(FOLD_PREFIX):]) if path.name.startswith(FOLD_PREFIX) else None
        if fold is None:
            raise LiversegError(f"{path}: a folder with checkpoints must be called fold_<k>, inside "
                                "<Dataset>/<pipeline>/<model>/")
        if folds is not None and folds != [fold]:
            raise LiversegError(f"{path} is fold {fold}, but folds {folds} were asked for; give the model folder instead")
        return path.parents[2], _same(pipeline, path.parents[1].name, path), path.parent.name, [fold]
    if folds_with_checkpoint(path):  # a model folder
        return path.parents[1], _same(pipeline, path.parent.name, path), path.name, folds
    if any(folds_with_checkpoint(m) for m in path.iterdir() if m.is_dir()):  # a pipeline folder
        return path.parent, _same(pipeline, path.name, path), None, folds
    if _trained(path):  # a dataset folder
        return path, pipeline, None, folds
    raise LiversegError(f"{path}: no trained models here; expected a results folder "
                        "<Dataset>[/<pipeline>[/<model>[/fold_<k>]]] holding fold_<k>/checkpoint_best.pt or "
                        "checkpoint_latest.pt")


def _same(asked: str | None, found: str, path: Path) -> str:
    if asked is not None and asked != found:
        raise LiversegError(f"{path} holds pipeline {found}, but pipeline {asked} was asked for")
    return found


def _plan_of(dataset_dir: Path, pipeline: str | None) -> Plan:
    """The plan copied into the results folder (the chosen pipeline's, else any trained one's)."""
    pattern = f"{pipeline or '*'}/*/{FOLD_PREFIX}*/{PLANS_FILE}"
    copies = sorted(dataset_dir.glob(pattern)) or sorted(dataset_dir.glob(f"*/*/{FOLD_PREFIX}*/{PLANS_FILE}"))
    if not copies:
        raise LiversegError(f"{dataset_dir}: no plans.json in any fold folder; a results folder written by liverseg_train "
                            f"has one. Trained: {describe_trained(dataset_dir)}")
    return load_plan(copies[0])


def _trained_pipeline(plan: Plan, dataset_dir: Path, name: str) -> PipelineSpec:
    names = [p.name for p in plan.pipelines]
    if name not in names or not plan.pipeline(name).emitted or not (dataset_dir / name).is_dir():
        raise LiversegError(f"pipeline '{name}' of {dataset_dir.name} is not trained; trained: "
                            f"{describe_trained(dataset_dir)}. Choose one with -c, or train it with liverseg_train")
    return plan.pipeline(name)


def _choose_folds(pipeline_dir: Path, models: Sequence[ModelPlan], folds: list[Fold] | None, checkpoint: str) -> list[Fold]:
    """The asked-for folds, checked, or every fold that each model has a checkpoint of."""
    available = {m.name: folds_with_checkpoint(pipeline_dir / m.name, checkpoint) for m in models}
    common = [f for f in available[models[0].name] if all(f in a for a in available.values())]
    listing = "; ".join(f"{n}: {', '.join(map(str, a)) or 'none'}" for n, a in available.items())
    if folds is None:
        if not common:
            raise LiversegError(f"{pipeline_dir}: no fold has a {checkpoint} checkpoint for every model (folds per model: "
                                f"{listing}); train the missing ones with liverseg_train")
        missing = sorted({f for a in available.values() for f in a} - set(common), key=_fold_key)
        if missing:
            log.warning("%s: fold(s) %s are not trained for every model and are left out", pipeline_dir, missing)
        return common
    absent = [f for f in folds if f not in common]
    if absent:
        raise LiversegError(f"{pipeline_dir}: fold(s) {', '.join(map(str, absent))} have no {checkpoint} checkpoint "
                            f"for every model (folds per model: {listing})")
    return sorted(set(folds), key=_fold_key)


def _load_model(plan: Plan, model: ModelPlan, checkpoints: Sequence[Path]) -> LoadedModel:
    """Build the model's network once per checkpoint and load its weights."""
    networks = []
    for path in checkpoints:
        state = load_checkpoint(path)
        network = build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                                **model.topology.network_kwargs())
        load_network_weights(network, state, path)
        if hasattr(network, "set_deep_supervision"):
            network.set_deep_supervision(False)
        networks.append(network.eval())
    return LoadedModel(model, plan.preprocessing[model.preprocessing], networks, list(checkpoints))
