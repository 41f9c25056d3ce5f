"""Early stopping: end a run once its online validation loss has stopped improving.

The ATLAS paper (Lambert et al. 2023) trained "until the loss on validation data stagnates over 30
epochs". With ``--early-stopping N`` (``early_stopping_patience``) the trainer ends a run after the
first epoch at which the validation loss has not improved for ``N`` epochs. The loss is the mean
over the epoch's online validation iterations, drawn from the fold's ``inner_val`` cases when
splits.json has them (never from the fold's ``val`` cases, which the final validation and model
selection judge), else from its ``val`` cases as nnU-Net does.

**Improvement** means a loss lower than the best so far by more than :data:`MIN_DELTA` (an absolute
amount in loss units; the Dice + cross-entropy losses range over about 0 to 2). Smaller gains are
noise of the few validation patches an epoch draws, and a run creeping down by such steps has
stagnated. An epoch without a finite loss (NaN from a diverged network) does not improve.

The decision is a pure function of the run's history (:func:`early_stop`), which every checkpoint
holds. A continued run therefore checks it *before* training: an early-stopped run continued with
the same options (a job re-queued with the same command line) stays stopped, whatever ``--epochs``
says. To train on, continue it with a larger patience (counted from the last improvement) or with
``--early-stopping 0`` (off). The checkpoint and the trainer's summary carry the record of the stop
(:func:`early_stop`'s dictionary, None while the run goes on).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

MIN_DELTA = 1e-3


def epochs_without_improvement(history: Sequence[Mapping[str, Any]],
                               min_delta: float = MIN_DELTA) -> tuple[int, int | None, float | None]:
    """How many of the last epochs did not improve the validation loss, and the last improving epoch and its loss.

    ``history`` holds the run's per-epoch records (``val_loss`` may be None or NaN). Without any
    improving epoch the count is the whole history and the epoch and loss are None.
    """
    best, best_index = math.inf, None
    for index, record in enumerate(history):
        loss = record.get("val_loss")
        if loss is not None and math.isfinite(loss) and loss < best - min_delta:
            best, best_index = float(loss), index
    if best_index is None:
        return len(history), None, None
    return len(history) - 1 - best_index, int(history[best_index]["epoch"]), best


def early_stop(history: Sequence[Mapping[str, Any]], patience: int, min_delta: float = MIN_DELTA) -> dict[str, Any] | None:
    """The record of an early stop when the validation loss has not improved for ``patience`` epochs, else None.

    ``patience`` 0 means early stopping is off. The record says after how many epochs the run
    stopped, the patience and ``min_delta`` used, and the best epoch and its validation loss.
    """
    if patience <= 0 or not history:
        return None
    stale, best_epoch, best_loss = epochs_without_improvement(history, min_delta)
    if stale < patience:
        return None
    return {"stopped_after_epochs": len(history), "patience": int(patience), "min_delta": float(min_delta),
            "best_epoch": best_epoch, "best_val_loss": best_loss}


def describe(record: Mapping[str, Any]) -> str:
    """One sentence for the log about an early stop recorded by :func:`early_stop`."""
    best = ("no epoch had a finite validation loss" if record["best_epoch"] is None else
            f"the best was {record['best_val_loss']:.4f} in epoch {record['best_epoch']}")
    return (f"early stopping after {record['stopped_after_epochs']} epochs: the validation loss has not improved by more "
            f"than {record['min_delta']:g} for {record['patience']} epochs ({best})")
