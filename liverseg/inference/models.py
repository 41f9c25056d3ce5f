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

The ``inference.json`` contract (written by model selection, e.g. ``liverseg_find_best``, through
:func:`write_inference_config`)::

    {"pipeline": "dual_binary", "folds": [0, 1, 2, 3, 4],
     "postprocessing": ["largest_liver_component_fill_holes", ...], "checkpoint": "best"}

``pipeline`` and ``folds`` are required, ``postprocessing`` (a step list, as
``--postprocessing FILE`` takes) and ``checkpoint`` are optional.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json
from liverseg.networks import build_network
from liverseg.paths import ENV_RESULTS, results_root
from liverseg.planning.plans import PLANS_FILE, ModelPlan, PipelineSpec, Plan, load_plan
from liverseg.postprocessing import normalise_steps
from liverseg.preprocessing.spec import PreprocessingSpec
from liverseg.training.checkpoint import BEST, LATEST, load_checkpoint, load_network_weights
from liverseg.training.run import parse_fold, training_order

log = logging.getLogger(__name__)

INFERENCE_FILE = "inference.json"
CHECKPOINT_CHOICES = ("best", "latest")
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

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what was loaded (for the settings file of a prediction run)."""
        return {
            "dataset": self.dataset, "pipeline": self.pipeline.name, "combine": self.pipeline.combine,
            "folds": list(self.folds), "source": str(self.source),
            "models": {m.name: [str(p) for p in m.checkpoints] for m in self.models},
            "postprocessing_source": self.postprocessing_source,
        }


def write_inference_config(dataset_dir: str | Path, pipeline: str, folds: Sequence[Fold],
                           postprocessing: Sequence[str | dict[str, Any]] | None = None,
                           checkpoint: str | None = None) -> Path:
    """Write ``<dataset_dir>/inference.json``: the configuration prediction uses when none is asked for."""
    content: dict[str, Any] = {"pipeline": pipeline, "folds": [parse_fold(f) for f in folds]}
    if postprocessing is not None:
        content["postprocessing"] = normalise_steps(list(postprocessing), "inference.json postprocessing")
    if checkpoint is not None:
        content["checkpoint"] = _check_checkpoint(checkpoint)
    path = Path(dataset_dir) / INFERENCE_FILE
    write_json(path, content)
    return path


def read_inference_config(path: str | Path) -> dict[str, Any]:
    """Read and check an inference.json (see the module docstring); a LiversegError names the file."""
    path = Path(path)
    try:
        content = read_json(path)
    except (OSError, ValueError) as e:
        raise LiversegError(f"{path}: cannot be read as JSON ({e}); fix or delete it") from None
    if not isinstance(content, dict) or not isinstance(content.get("pipeline"), str) or \
            not isinstance(content.get("folds"), list) or not content["folds"]:
        raise LiversegError(f"{path}: expected {{\"pipeline\": NAME, \"folds\": [0, 1, ...]}} with optional "
                            "\"postprocessing\" and \"checkpoint\"; fix or delete it")
    unknown = sorted(set(content) - {"pipeline", "folds", "postprocessing", "checkpoint"})
    if unknown:
        raise LiversegError(f"{path}: unknown key(s) {', '.join(unknown)}; "
                            "known: pipeline, folds, postprocessing, checkpoint")
    try:
        config = {"pipeline": content["pipeline"], "folds": [parse_fold(f) for f in content["folds"]]}
        if "postprocessing" in content:
            config["postprocessing"] = normalise_steps(content["postprocessing"], f"{path} postprocessing")
        if "checkpoint" in content:
            config["checkpoint"] = _check_checkpoint(content["checkpoint"])
    except LiversegError as e:
        raise LiversegError(f"{path}: {e}") from None
    return config


def load_pipeline(source: str | Path | None = None, pipeline: str | None = None, folds: Sequence[Fold] | None = None,
                  checkpoint: str | None = None) -> LoadedPipeline:
    """Find the trained models the arguments select (module docstring) and load them on the CPU."""
    dataset_dir, pipeline, model_name, folds = _locate(source, pipeline, folds)
    config_path = dataset_dir / INFERENCE_FILE
    config = read_inference_config(config_path) if pipeline is None and config_path.is_file() else None
    if config is not None:
        pipeline = config["pipeline"]
        folds = folds if folds is not None else config["folds"]
        checkpoint = checkpoint or config.get("checkpoint")
        log.info("configuration from %s: pipeline %s, folds %s", config_path, pipeline, config["folds"])
    checkpoint = _check_checkpoint(checkpoint or "best")
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
    elif config is not None and "postprocessing" in config:
        steps, steps_source = config["postprocessing"], str(config_path)
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
                  if m.is_dir() and (folds := _folds_with_checkpoint(m))]
        if models:
            parts.append(f"{pipeline_dir.name} ({'; '.join(models)})")
    return ", ".join(parts) or "nothing trained"


def _trained(dataset_dir: Path) -> bool:
    return any(dataset_dir.glob(f"*/*/{FOLD_PREFIX}*/checkpoint_*.pt"))


def _fold_dir(fold: Fold) -> str:
    return f"{FOLD_PREFIX}{fold}"


def _fold_key(fold: Fold) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def _folds_with_checkpoint(model_dir: Path, checkpoint: str = "best") -> list[Fold]:
    """Folds of a model folder whose fold folder holds the checkpoint asked for."""
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


def _check_checkpoint(checkpoint: Any) -> str:
    if checkpoint not in CHECKPOINT_CHOICES:
        raise LiversegError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}; got {checkpoint!r}")
    return checkpoint


def _checkpoint_path(fold_dir: Path, checkpoint: str) -> Path:
    if checkpoint == "best" and (fold_dir / BEST).is_file():
        return fold_dir / BEST
    if checkpoint == "best":
        log.info("%s: no %s, using %s", fold_dir, BEST, LATEST)
    return fold_dir / LATEST


def _results_dataset(name: str) -> Path:
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
            return _results_dataset(source), pipeline, None, folds
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
    if _folds_with_checkpoint(path):  # a model folder
        return path.parents[1], _same(pipeline, path.parent.name, path), path.name, folds
    if any(_folds_with_checkpoint(m) for m in path.iterdir() if m.is_dir()):  # a pipeline folder
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
    available = {m.name: _folds_with_checkpoint(pipeline_dir / m.name, checkpoint) for m in models}
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
