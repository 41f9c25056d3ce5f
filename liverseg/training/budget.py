"""Training within a wall-clock budget: how many epochs fit, and how a pipeline shares its budget.

A user with ten minutes of CPU (``liverseg_demo``, a quick look at a new dataset) wants the best
model that time allows, not a run cut off halfway through its learning-rate schedule. With a
budget the trainer therefore *shortens the schedule* instead of stopping early: after each epoch
:func:`epochs_within_budget` estimates from the epochs so far how many fit in the time left and,
whenever that differs from the current end, the poly schedule is re-aimed at it, so the run still
finishes with a decayed learning rate. The estimate is the mean duration of the last
``RECENT_EPOCHS`` epochs: the first epoch is often slower (caches, kernel selection) and a run's
pace changes when a neighbouring job starts or ends, so an early, pessimistic end is lengthened
again once the epochs are faster (a run whose first epoch took 27 s and the others 22 s lost
five of its 25 epochs while the end could only move earlier). The end never goes past the
requested epochs and never before the epoch in progress.

The budget counts training epochs only (``epoch_seconds`` of the run's history, resumed parts
included); the final whole-case validation comes on top. Epoch counts then depend on the
machine's speed, so a budgeted run is not repeatable the way a fixed-epoch run with a seed is.

A pipeline with several models splits its budget by :func:`budget_shares`: in proportion to each
model's planned work (voxels per batch times iterations), re-divided before each model over the
time actually left, so a model that overran does not starve the others silently.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from liverseg.planning.plans import ModelPlan

RECENT_EPOCHS = 3  # epochs whose mean duration predicts the next ones


def epochs_within_budget(history: Sequence[Mapping[str, Any]], budget_seconds: float, requested_epochs: int) -> int:
    """The number of epochs the run should have in total so that training ends within ``budget_seconds``.

    ``history`` is the run's per-epoch records (each with ``epoch_seconds``). The answer is between
    ``len(history)`` (stop now) and ``requested_epochs`` (the budget is no limit), estimated from
    the pace of the last :data:`RECENT_EPOCHS` epochs.
    """
    done = len(history)
    if done == 0:
        return requested_epochs
    spent = sum(float(r["epoch_seconds"]) for r in history)
    recent = [float(r["epoch_seconds"]) for r in history[-RECENT_EPOCHS:]]
    per_epoch = sum(recent) / len(recent)
    remaining = budget_seconds - spent
    affordable = done + max(0, math.floor(remaining / per_epoch)) if per_epoch > 0 else requested_epochs
    return max(done, min(requested_epochs, affordable))


def model_work(model: ModelPlan, epochs: int | None = None, iterations_per_epoch: int | None = None) -> float:
    """The planned training work of ``model``: voxels per batch times all iterations (a proxy for its time)."""
    voxels = math.prod(int(p) for p in model.topology.patch_size) * model.batch_size
    epochs = model.schedule.epochs if epochs is None else epochs
    iterations = model.schedule.iterations_per_epoch if iterations_per_epoch is None else iterations_per_epoch
    return float(voxels * epochs * iterations)


def budget_shares(models: Sequence[ModelPlan], seconds_left: float, **schedule: int | None) -> list[float]:
    """Seconds for each of ``models`` out of ``seconds_left``, in proportion to :func:`model_work`.

    ``schedule`` may give ``epochs`` / ``iterations_per_epoch`` overriding the plan's for every model.
    """
    work = [model_work(m, schedule.get("epochs"), schedule.get("iterations_per_epoch")) for m in models]
    total = sum(work)
    return [max(0.0, seconds_left) * w / total for w in work]
