"""The training loop: a short function calling well-named parts, configured by the plan and :class:`TrainSettings`.

:func:`train_model` trains one model of a pipeline on one fold into a results folder:

1. **set up**: seed every generator, build the network the plan names, the loss wrapped in
   deep supervision, the optimiser and the learning-rate schedule (one step per epoch);
2. **resume** (``continue_training``): load the newest checkpoint of the folder and restore the
   network, optimiser, schedule, gradient scaler, epoch, pseudo-Dice averages, history and every
   random generator, so the run continues as if never stopped; or **initialise** the network from
   another run's weights (``init_from``);
3. **each epoch**: fresh batches (:func:`liverseg.training.data.training_batches`, seeded by the run
   seed and the epoch number, so an epoch's patches do not depend on whether the run was
   interrupted before it), the training iterations, the validation iterations (loss and pseudo-Dice),
   one schedule step, the log line, ``progress.png``, and the checkpoints; the loop ends early when
   the validation loss stagnates (``early_stopping_patience``, :mod:`liverseg.training.early_stopping`)
   and pauses, without changing the schedule, after ``stop_after_epoch`` epochs;
4. **at the end** (not when paused): whole-case prediction of the fold's validation cases
   (:func:`liverseg.training.validation.validate_cases`).

Precision and threads: on CUDA, ``auto`` trains under fp16 autocast with a gradient scaler
(nnU-Net's default). On a CPU with native bf16 instructions (avx512_bf16, AMX) ``auto`` trains
under bf16 autocast, 1.5-1.8x faster per step than fp32 for the fast preset on this 2-core
machine (``benchmarks/training_speed.py``); weights, optimiser and losses stay fp32. Other CPUs
train in fp32. 3D networks on a CPU run in channels-last layout
(:mod:`liverseg.networks.memory_format`, 10-18% faster steps). Without explicit settings a CPU
run uses one augmentation worker (none on a single core) and gives the network the remaining
cores: on a shared 2-core machine a second torch thread competing with the worker or with other
jobs made steps 2-7x *slower*.

Online validation (pseudo-Dice, best checkpoint) uses the fold's ``inner_val`` cases when
splits.json has them (a model-selection set that the final validation never sees), else its
``val`` cases as nnU-Net does. Fold ``"all"`` trains on every case; its online validation then
draws patches from the training cases (a measure of fit, not of generalisation) and there is no
final validation.

Several processes (PyTorch DDP, started by torchrun; :mod:`liverseg.training.distributed`): the
plan's batch is the global batch, split evenly over the processes; the network is wrapped in
DistributedDataParallel, the loss is that of the concatenated batch, so a step updates the
weights as one process would on the whole batch; validation counts are summed over the processes
and every process keeps the same history (so early stopping and the time budget decide alike).
Only rank 0 writes checkpoints, ``progress.png`` and the final validation. Checkpoints hold every
process' random states (``rng_ranks``): a run continued with as many processes restores each one's;
with another number of processes the other ranks are seeded from the seed, their rank and the epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from liverseg.data.splits import read_splits
from liverseg.errors import LiversegError
from liverseg.io.atomic import remove_stale_temporaries
from liverseg.io.dataset import RawDataset
from liverseg.networks import build_network
from liverseg.networks.memory_format import in_preferred_format
from liverseg.paths import preprocessed_root, raw_root
from liverseg.planning.plan_dataset import SPLITS_FILE
from liverseg.planning.plans import ModelPlan, Plan
from liverseg.preprocessing.run import preprocessed_cases
from liverseg.training import checkpoint as ckpt
from liverseg.training import distributed
from liverseg.training.budget import epochs_within_budget
from liverseg.training.data import training_batches
from liverseg.training.deep_supervision import DeepSupervisionLoss
from liverseg.training.early_stopping import describe as describe_early_stop
from liverseg.training.early_stopping import early_stop
from liverseg.training.history import format_record, mean_dice, plot_progress, update_ema
from liverseg.training.losses import build_loss
from liverseg.training.optim import build_lr_schedule, build_optimizer, clip_gradients
from liverseg.training.settings import TrainSettings, resolve_workers, training_precision
from liverseg.training.validation import class_names, dice_from_counts, overlap_counts, validate_cases

log = logging.getLogger(__name__)

PROGRESS_PLOT = "progress.png"


@dataclass
class TrainingParts:
    """What the loop works with: network, loss, optimiser, schedule, gradient scaler, device, autocast dtype, input layout."""

    network: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler | None
    device: torch.device
    autocast: torch.dtype | None
    memory_format: torch.memory_format = torch.contiguous_format


@dataclass
class RunState:
    """Where the run is: epochs done, pseudo-Dice moving average (now and best), the per-epoch records, an early stop."""

    epoch: int = 0
    ema_dice: float | None = None
    best_ema_dice: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    early_stop: dict[str, Any] | None = None


def train_model(plan: Plan, model: ModelPlan, fold: int | str, results_dir: str | Path, settings: TrainSettings,
                pipeline: str | None = None) -> dict[str, Any]:
    """Train ``model`` of ``plan`` on ``fold`` (a number or ``"all"``) into ``results_dir``; returns a summary.

    The folder receives ``checkpoint_latest.pt``, ``checkpoint_best.pt``, ``progress.png`` and
    ``validation/``; see the module docstring for the steps.
    """
    results_dir = Path(results_dir)
    distributed.init_from_environment(settings.device)
    settings = distributed.broadcast_object(settings)  # rank 0's (e.g. its share of a time budget) on every process
    results_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        remove_stale_temporaries(results_dir)
    data_folder = preprocessed_folder(plan, model)
    train_cases, online_val, final_val = fold_cases(plan, data_folder, fold)
    device = distributed.training_device(settings.device)
    resumed = ckpt.newest_checkpoint(results_dir) if settings.continue_training else None
    if settings.continue_training and resumed is None:
        log.warning("--continue: no checkpoint in %s yet, starting from the beginning", results_dir)
    if resumed is not None:
        settings = settings.resumed(resumed[1]["settings"], resumed[1]["epoch"])
    per_process = distributed.per_rank_batch(settings.batch_size)
    settings = resolve_workers(settings, device, distributed.cpus_per_process())
    with torch_threads(settings.threads):
        parts, state = start_run(model, len(plan.channel_names), settings, device, resumed)
        names = class_names(model, plan.labels)
        log.info("training %s, fold %s: %d training and %d validation case(s), epochs %d to %d, %d iterations of batch %d, "
                 "%s (%s, %d thread(s), %d augmentation worker(s))", model.name, fold, len(train_cases), len(online_val),
                 state.epoch, settings.epochs, settings.iterations_per_epoch, settings.batch_size, device,
                 parts.autocast or torch.float32, settings.threads, settings.num_workers)
        if distributed.is_distributed():
            log.info("%d processes train together, %d patch(es) of the batch each", distributed.world_size(), per_process)
        if state.epoch >= settings.epochs:
            log.info("all %d epochs are done (give more with --epochs to train longer)", settings.epochs)
        state.early_stop = early_stop(state.history, settings.early_stopping_patience)
        if state.early_stop is not None:  # a continued run that had stopped early stays stopped
            log.info("%s; to train on, continue with a larger --early-stopping or with --early-stopping 0",
                     describe_early_stop(state.early_stop))
        requested_epochs = settings.epochs  # a time budget may move the schedule's end, never beyond this
        while state.epoch < settings.end_epoch and state.early_stop is None:
            record = run_epoch(parts, plan, model, data_folder, (train_cases, online_val), settings, state.epoch)
            record = distributed.broadcast_object(record)  # one history on every process: the same decisions
            state.ema_dice = update_ema(state.ema_dice, mean_dice(record["pseudo_dice"] or []))
            record["ema_dice"] = state.ema_dice
            state.history.append(record)
            state.epoch += 1
            log.info(format_record(record, names))
            settings = fit_schedule_to_budget(parts, state, settings, requested_epochs)
            state.early_stop = early_stop(state.history, settings.early_stopping_patience)
            if state.early_stop is not None:
                log.info(describe_early_stop(state.early_stop))
            if distributed.is_main():
                plot_progress(state.history, names, results_dir / PROGRESS_PLOT)
            save_checkpoints(parts, state, plan, model, fold, settings, pipeline, results_dir)
        summary = None
        paused = state.epoch < settings.epochs and state.early_stop is None
        if paused:
            log.info("paused after epoch %d of %d (stop_after_epoch); continue the run to go on", state.epoch,
                     settings.epochs)
        if settings.final_validation and final_val and not paused and distributed.is_main():
            raw = RawDataset(raw_root() / plan.dataset)
            summary = validate_cases(distributed.unwrap(parts.network), model, plan.labels, data_folder, raw, final_val,
                                     results_dir, device, {"auto": "auto", "fp32": False, "bf16": True}[settings.precision])
    return {"results_dir": str(results_dir), "epochs": state.epoch, "ema_dice": state.ema_dice,
            "best_ema_dice": state.best_ema_dice, "history": state.history, "validation": summary,
            "early_stopping": state.early_stop}


def fit_schedule_to_budget(parts: TrainingParts, state: RunState, settings: TrainSettings,
                           requested_epochs: int) -> TrainSettings:
    """``settings`` with the schedule's end (and the learning-rate decay) moved to the epochs the time budget allows.

    The end may move earlier or, when the epochs got faster, later again, up to ``requested_epochs``.
    """
    if settings.time_budget_minutes is None:
        return settings
    epochs = epochs_within_budget(state.history, settings.time_budget_minutes * 60, requested_epochs)
    if epochs == settings.epochs:
        return settings
    log.info("time budget of %.1f min: the schedule ends after epoch %d instead of %d", settings.time_budget_minutes,
             epochs, settings.epochs)
    parts.schedule.set_max_steps(epochs)
    return dataclasses.replace(settings, epochs=epochs)


def start_run(model: ModelPlan, in_channels: int, settings: TrainSettings, device: torch.device,
              resumed: tuple[Path, dict[str, Any]] | None) -> tuple[TrainingParts, RunState]:
    """Seeded parts and the state to start from: a checkpoint's, or epoch 0 (with ``init_from``'s weights if given)."""
    seed_everything(distributed.rank_seed(settings.seed))
    parts = build_parts(model, in_channels, settings, device)
    state = RunState()
    if resumed is not None:
        state = restore(parts, resumed[1], resumed[0], model, settings)
    elif settings.init_from is not None:
        ckpt.load_network_weights(parts.network, ckpt.load_checkpoint(settings.init_from), settings.init_from)
        log.info("network initialised from %s", settings.init_from)
    parts.network = distributed.wrap(parts.network, device)
    return parts, state


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def preprocessed_folder(plan: Plan, model: ModelPlan) -> Path:
    """The folder of the model's preprocessed cases (its preprocessing spec's folder)."""
    folder = preprocessed_root() / plan.dataset / plan.preprocessing[model.preprocessing].folder_name
    if not folder.is_dir():
        raise LiversegError(f"{folder}: the preprocessed cases of model {model.name} are missing; run liverseg_plan "
                            f"-d {plan.dataset} --preprocess-only")
    return folder


def fold_cases(plan: Plan, data_folder: Path, fold: int | str) -> tuple[list[str], list[str], list[str]]:
    """Training cases, online validation cases and final validation cases of ``fold`` (see the module docstring)."""
    available = preprocessed_cases(data_folder)
    if fold == "all":
        return available, available, []
    path = preprocessed_root() / plan.dataset / SPLITS_FILE
    if not path.is_file():
        raise LiversegError(f"{path}: no cross-validation folds (a dataset needs at least 2 cases for them); train with "
                            "fold 'all' or run liverseg_plan")
    splits = read_splits(path)
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < len(splits):
        raise LiversegError(f"fold {fold!r} does not exist: {path} has folds 0 to {len(splits) - 1} (or use 'all')")
    split = splits[fold]
    missing = sorted(set(split["train"] + split["val"] + split.get("inner_val", [])) - set(available))
    if missing:
        raise LiversegError(f"{data_folder}: case(s) {', '.join(missing[:5])} of fold {fold} are not preprocessed; run "
                            f"liverseg_plan -d {plan.dataset} --preprocess-only")
    return list(split["train"]), list(split.get("inner_val") or split["val"]), list(split["val"])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CPU and CUDA): a CPU run is then repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_parts(model: ModelPlan, in_channels: int, settings: TrainSettings, device: torch.device) -> TrainingParts:
    """Network, deep-supervision loss, optimiser, schedule and scaler for ``model``, as the plan and settings say."""
    topology = model.topology
    network = build_network(topology.network, in_channels, model.num_classes, **topology.network_kwargs()).to(device)
    memory_format = in_preferred_format(network, device)
    loss = DeepSupervisionLoss(build_loss(model.schedule.loss))
    schedule = model.schedule
    optimizer = build_optimizer(schedule.optimizer, network.parameters(), settings.learning_rate,
                                weight_decay=schedule.weight_decay, momentum=schedule.momentum)
    lr_schedule = build_lr_schedule(schedule.lr_schedule, optimizer, settings.learning_rate, settings.epochs,
                                    schedule.poly_exponent)
    dtype, use_scaler = training_precision(device, settings.precision)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    return TrainingParts(network, loss, optimizer, lr_schedule, scaler, device, dtype, memory_format)


def restore(parts: TrainingParts, state: dict[str, Any], source: Path, model: ModelPlan, settings: TrainSettings) -> RunState:
    """Load a checkpoint's training state into ``parts``; extend the schedule if ``settings.epochs`` grew."""
    ckpt.load_network_weights(parts.network, state, source)
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["lr_schedule"])
    if parts.scaler is not None and state.get("grad_scaler"):
        parts.scaler.load_state_dict(state["grad_scaler"])
    if state.get("model_plan") not in (None, model.to_dict()):
        log.warning("%s was trained with another version of model %s in plans.json; continuing with the current one",
                    source, model.name)
    if settings.epochs != parts.schedule.max_steps:
        log.info("schedule changed from %d to %d epochs", parts.schedule.max_steps, settings.epochs)
        parts.schedule.set_max_steps(settings.epochs)
    ckpt.restore_rng_states(state["rng"])
    restore_process_rng(state, settings.seed)
    log.info("continuing from %s after epoch %d", source, state["epoch"])
    return RunState(int(state["epoch"]), state.get("ema_dice"), state.get("best_ema_dice"), list(state["history"]))


def restore_process_rng(state: dict[str, Any], seed: int) -> None:
    """Under DDP, this process' random states from the checkpoint, or (other number of processes) fresh ones.

    Fresh states come from the seed, the rank and the epoch; rank 0 keeps the states of ``rng``.
    """
    if not distributed.is_distributed():
        return
    saved = state.get("rng_ranks") or []
    if len(saved) == distributed.world_size():
        ckpt.restore_rng_states(saved[distributed.rank()])
        return
    if distributed.is_main():
        log.warning("the checkpoint holds the random states of %d process(es), this run has %d: the others start from "
                    "fresh seeds (the run continues correctly, though not as an uninterrupted run would)",
                    max(len(saved), 1), distributed.world_size())
    else:
        seed_everything(distributed.rank_seed(seed, epoch=int(state["epoch"])))


def run_epoch(parts: TrainingParts, plan: Plan, model: ModelPlan, data_folder: Path, cases: tuple[list[str], list[str]],
              settings: TrainSettings, epoch: int) -> dict[str, Any]:
    """Train and validate one epoch on fresh batches; returns its record (without the moving average)."""
    start = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    with training_batches(plan, model, data_folder, cases[0], cases[1], seed=settings.seed, num_workers=settings.num_workers,
                          seed_stream=epoch, batch_size=distributed.per_rank_batch(settings.batch_size),
                          shard=distributed.shard()) as (train_batches, val_batches):
        train_loss, data_wait = train_iterations(parts, train_batches, settings.iterations_per_epoch, f"epoch {epoch}")
        val_loss, counts = validation_iterations(parts, val_batches, settings.validation_iterations, model.num_classes)
    parts.schedule.step()
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "pseudo_dice": None if counts is None else dice_from_counts(counts), "lr": lr,
            "epoch_seconds": time.perf_counter() - start, "data_wait": data_wait, "threads": torch.get_num_threads()}


def train_iterations(parts: TrainingParts, batches: Iterator[dict], iterations: int, description: str) -> tuple[float, float]:
    """Run ``iterations`` optimiser steps; returns the mean loss and the share of time spent waiting for batches."""
    parts.network.train()
    losses, waited, start = [], 0.0, time.perf_counter()
    for _ in tqdm(range(iterations), desc=description, unit="it", disable=None if distributed.is_main() else True,
                  leave=False):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        losses.append(train_step(parts, batch))
    bad = sum(not math.isfinite(v) for v in losses)
    if bad:
        log.warning("%d of %d training losses were not finite (NaN or inf)", bad, iterations)
    return float(np.mean(losses)), waited / max(time.perf_counter() - start, 1e-9)


def train_step(parts: TrainingParts, batch: dict) -> float:
    """One optimiser step on one batch; returns the loss."""
    data, target, mask = _on_device(batch, parts.device, parts.memory_format)
    parts.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(parts.device.type, dtype=parts.autocast, enabled=parts.autocast is not None):
        outputs = parts.network(data)
        loss = parts.loss(*distributed.gather_for_loss(outputs, target, mask))  # the global batch's loss under DDP
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)
        clip_gradients(parts.network)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        clip_gradients(parts.network)
        parts.optimizer.step()
    return float(loss.detach())


def validation_iterations(parts: TrainingParts, batches: Iterator[dict], iterations: int,
                          num_classes: int) -> tuple[float | None, torch.Tensor | None]:
    """Loss and summed true/false positive/negative counts over ``iterations`` validation batches (None if 0)."""
    if iterations == 0:
        return None, None
    parts.network.eval()
    losses, counts = [], torch.zeros((3, num_classes - 1), dtype=torch.int64)
    with torch.no_grad():
        for _ in range(iterations):
            data, target, mask = _on_device(next(batches), parts.device, parts.memory_format)
            with torch.autocast(parts.device.type, dtype=parts.autocast, enabled=parts.autocast is not None):
                outputs = parts.network(data)
                losses.append(float(parts.loss(*distributed.gather_for_loss(outputs, target, mask))))
            logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
            counts += overlap_counts(logits, target, mask, num_classes).cpu()
    return float(np.mean(losses)), distributed.all_reduce_sum(counts)


def save_checkpoints(parts: TrainingParts, state: RunState, plan: Plan, model: ModelPlan, fold: int | str,
                     settings: TrainSettings, pipeline: str | None, results_dir: Path) -> None:
    """Write checkpoint_best.pt when the pseudo-Dice average improved, checkpoint_latest.pt as ``save_every`` says.

    The latest checkpoint is written every ``save_every`` epochs and after the last one (the end of
    the schedule, ``stop_after_epoch``, or an early stop).
    """
    improved = state.ema_dice is not None and (state.best_ema_dice is None or state.ema_dice > state.best_ema_dice)
    if improved:
        state.best_ema_dice = state.ema_dice
    latest = state.epoch % settings.save_every == 0 or state.epoch >= settings.end_epoch or state.early_stop is not None
    if not (improved or latest):
        return
    rng_ranks = distributed.all_gather_objects(ckpt.rng_states()) if distributed.is_distributed() else None
    if not distributed.is_main():
        return
    content = {
        "network": distributed.unwrap(parts.network).state_dict(), "optimizer": parts.optimizer.state_dict(),
        "lr_schedule": parts.schedule.state_dict(), "grad_scaler": None if parts.scaler is None else parts.scaler.state_dict(),
        "epoch": state.epoch, "ema_dice": state.ema_dice, "best_ema_dice": state.best_ema_dice, "rng": ckpt.rng_states(),
        "history": state.history, "plan": plan.to_dict(), "pipeline": pipeline, "model": model.name,
        "model_plan": model.to_dict(), "fold": fold, "settings": settings.to_dict(),
        "early_stopping": state.early_stop, "processes": distributed.world_size(), "rng_ranks": rng_ranks,
    }
    for name, wanted in ((ckpt.BEST, improved), (ckpt.LATEST, latest)):
        if wanted:
            seconds = ckpt.save_checkpoint(results_dir / name, content)
            log.debug("wrote %s in %.2f s", name, seconds)
    if improved:
        log.info("new best pseudo-Dice average %.4f: wrote %s", state.ema_dice, ckpt.BEST)


def _on_device(batch: dict, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    data = torch.as_tensor(batch["data"]).to(device, torch.float32, non_blocking=True).contiguous(memory_format=memory_format)
    target = torch.as_tensor(batch["target"]).to(device, non_blocking=True)
    mask = batch.get("mask")
    return data, target, None if mask is None else torch.as_tensor(mask).to(device, non_blocking=True)
