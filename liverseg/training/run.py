"""Train the models of a pipeline for one fold, from plans.json alone: what ``liverseg_train`` does.

For each model of the pipeline (or the one asked for) :func:`train` makes the results folder
``$LIVERSEG_RESULTS/<Dataset>/<pipeline>/<model>/fold_<k>/`` (``fold_all`` for fold ``"all"``),
copies plans.json into it (a results folder is self-contained: zip it, share it, predict with it),
logs into its ``log.txt`` as well as to the console, and calls
:func:`liverseg.training.trainer.train_model`. A cascade's stages train in order, the coarse stage
first; with ``init_stage2_from_stage1`` the fine stage starts from the coarse stage's final
weights when the two networks have the same architecture (the cascade paper initialised its
second network this way), and from scratch otherwise. With ``init_encoder_from`` an ``ahnet``'s
encoder starts from a trained 2D model (:mod:`liverseg.training.init_encoder`, checked before any
model trains). With ``seeds`` above 1 each model is chosen
among that many seeds by successive halving (:mod:`liverseg.training.seeds`). Under torchrun
(several processes, :mod:`liverseg.training.distributed`) only rank 0 copies plans.json and writes log.txt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output
from liverseg.networks import build_network
from liverseg.paths import dataset_folder_name, preprocessed_root, results_root
from liverseg.planning.plans import PLANS_FILE, ModelPlan, PipelineSpec, Plan, load_plan
from liverseg.training import distributed
from liverseg.training.budget import budget_shares
from liverseg.training.checkpoint import LATEST, architectures_match, load_checkpoint
from liverseg.training.init_encoder import check_encoder_source, start_from_2d_encoder
from liverseg.training.seeds import check_seed_settings, train_seeds
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import fold_cases, preprocessed_folder
from liverseg.training.trainers import get_trainer

log = logging.getLogger(__name__)

LOG_FILE = "log.txt"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def train(dataset: str, pipeline: str, fold: int | str, model: str | None = None, init_stage2_from_stage1: bool = False,
          seeds: int | None = None, trainer: str | None = None, **overrides: Any) -> list[Path]:
    """Train ``pipeline``'s models (or only ``model``) of ``dataset`` on ``fold``; returns their results folders.

    ``fold`` is a fold number of splits.json or ``"all"``. ``overrides`` are
    :class:`~liverseg.training.settings.TrainSettings` fields (``epochs``, ``learning_rate``,
    ``batch_size``, ``continue_training``, ``init_encoder_from``, ...); None means "as the plan says". A
    ``time_budget_minutes`` is shared by the models in proportion to their planned work
    (:mod:`liverseg.training.budget`). ``seeds`` > 1 trains each model as a multi-seed selection
    (:func:`liverseg.training.seeds.train_seeds`). ``trainer`` names a registered trainer
    (:mod:`liverseg.training.trainers`) used instead of the one each model's schedule names.
    """
    name = dataset_folder_name(dataset)
    plans_path = preprocessed_root() / name / PLANS_FILE
    plan = load_plan(plans_path)
    spec = emitted_pipeline(plan, pipeline)
    fold = parse_fold(fold)
    if distributed.init_from_environment(overrides.get("device") or "auto") and seeds is not None and seeds > 1:
        raise LiversegError("--seeds trains its seeds in one process (or one seed per GPU as separate jobs) and cannot "
                            "run with several torchrun processes: leave out --seeds, or --ddp/torchrun")
    models = training_order(spec.models if model is None else (spec.model(model),))
    settings = {}
    for m in models:  # everything is checked before the first model trains
        try:
            settings[m.name] = TrainSettings.from_overrides(m, **overrides)
        except LiversegError as e:
            raise LiversegError(f"{plans_path}: pipelines.{spec.name}.models.{m.name}: {e}") from None
        check_seed_settings(settings[m.name], 1 if seeds is None else seeds)
        get_trainer(trainer or m.schedule.trainer)
        fold_cases(plan, preprocessed_folder(plan, m), fold)
        if init_stage2_from_stage1 and m.roi is not None and m.roi.from_model not in [o.name for o in models]:
            _stage1_checkpoint(results_root() / name / spec.name / m.roi.from_model / f"fold_{fold}", m)
        if settings[m.name].init_encoder_from is not None:
            if init_stage2_from_stage1 and m.roi is not None:
                raise LiversegError(f"model {m.name}: --init-stage2-from-stage1 and --init-encoder-from both give its "
                                    "starting weights; give one of them")
            check_encoder_source(plan, m, settings[m.name].init_encoder_from)
    folders = []
    started = time.monotonic()
    for index, m in enumerate(models):
        folder = results_root() / name / spec.name / m.name / f"fold_{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():  # under DDP rank 0 writes the files
            with atomic_output(folder / PLANS_FILE) as tmp:
                shutil.copyfile(plans_path, tmp)
        model_settings = settings[m.name]
        if model_settings.time_budget_minutes is not None and len(models) > 1:
            model_settings = _budget_share(models[index:], settings, model_settings.time_budget_minutes * 60
                                           - (time.monotonic() - started))
        with log_file(folder / LOG_FILE) if distributed.is_main() else contextlib.nullcontext():
            if init_stage2_from_stage1 and m.roi is not None and not model_settings.continue_training:
                stage1 = results_root() / name / spec.name / m.roi.from_model / f"fold_{fold}"
                model_settings = _with_stage1_weights(plan, m, stage1, model_settings)
            model_settings = start_from_2d_encoder(plan, m, model_settings, folder, spec.name, fold)
            log.info("liverseg_train: dataset %s, pipeline %s, model %s, fold %s, settings %s", name, spec.name, m.name, fold,
                     model_settings.to_dict())
            if seeds is not None and seeds > 1:
                train_seeds(plan, m, fold, folder, model_settings, seeds, pipeline=spec.name)
            else:
                get_trainer(trainer or m.schedule.trainer)(plan, m, fold, folder, model_settings, pipeline=spec.name)
        folders.append(folder)
    return folders


def _budget_share(models: Sequence[ModelPlan], settings: dict[str, TrainSettings], seconds_left: float) -> TrainSettings:
    """The first model's settings with its share of the pipeline's remaining time (liverseg.training.budget)."""
    first = settings[models[0].name]
    shares = budget_shares(models, seconds_left, epochs=first.epochs, iterations_per_epoch=first.iterations_per_epoch)
    minutes = max(shares[0], 1.0) / 60
    log.info("time budget: %.1f of the %.1f minutes left go to model %s", minutes, max(seconds_left, 0) / 60,
             models[0].name)
    return dataclasses.replace(first, time_budget_minutes=minutes)


def emitted_pipeline(plan: Plan, name: str) -> PipelineSpec:
    """The plan's pipeline ``name``; a LiversegError listing the trainable ones when it is unknown or not emitted."""
    emitted = [p.name for p in plan.pipelines if p.emitted]
    if name not in [p.name for p in plan.pipelines]:
        raise LiversegError(f"the plan of {plan.dataset} has no pipeline '{name}'; pipelines you can train: {', '.join(emitted)}")
    spec = plan.pipeline(name)
    if not spec.emitted:
        raise LiversegError(f"pipeline '{name}' was not planned for {plan.dataset} ({spec.reason}); pipelines you can train: "
                            f"{', '.join(emitted)}")
    return spec


def parse_fold(fold: int | str) -> int | str:
    """A fold number or ``"all"`` from what the user typed."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        number = int(fold)
    except (TypeError, ValueError):
        raise LiversegError(f"fold must be a number (0, 1, ...) or 'all'; got {fold!r}") from None
    if number < 0 or isinstance(fold, bool) or str(number) != str(fold).strip():
        raise LiversegError(f"fold must be a number (0, 1, ...) or 'all'; got {fold!r}")
    return number


def training_order(models: Sequence[ModelPlan]) -> list[ModelPlan]:
    """The models with every cascade stage after the stage it takes its region from."""
    names = {m.name for m in models}
    ordered: list[ModelPlan] = []
    pending = list(models)
    while pending:
        ready = [m for m in pending if m.roi is None or m.roi.from_model not in names or
                 m.roi.from_model in {o.name for o in ordered}]
        if not ready:
            raise LiversegError(f"the models {', '.join(m.name for m in pending)} take their regions from each other in a circle")
        ordered.extend(ready)
        pending = [m for m in pending if m not in ready]
    return ordered


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Also send liverseg's log records (INFO and above) to ``path`` while the block runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("liverseg")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _with_stage1_weights(plan: Plan, model: ModelPlan, stage1_folder: Path, settings: TrainSettings) -> TrainSettings:
    """``settings`` initialising from the first stage's final checkpoint, when the architectures match."""
    if settings.init_from is not None:
        return settings
    source = _stage1_checkpoint(stage1_folder, model)
    network = build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                            **model.topology.network_kwargs())
    if not architectures_match(network, load_checkpoint(source)):
        log.warning("%s: the networks of %s and %s differ (stages, features or kernels); %s starts from scratch",
                    source, model.roi.from_model, model.name, model.name)
        return settings
    log.info("%s starts from the weights of %s (%s)", model.name, model.roi.from_model, source)
    return dataclasses.replace(settings, init_from=source)


def _stage1_checkpoint(stage1_folder: Path, model: ModelPlan) -> Path:
    """The first stage's final checkpoint, which must exist."""
    source = stage1_folder / LATEST
    if not source.is_file():
        raise LiversegError(f"{source}: the first stage ({model.roi.from_model}) has no checkpoint to initialise "
                            f"{model.name} from; train it first")
    return source
