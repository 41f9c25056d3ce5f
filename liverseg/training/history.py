"""What each epoch of a training run measured: the log line and the ``progress.png`` curves.

One record per epoch (a plain dictionary, so it goes into checkpoints as it is):

- ``epoch`` (counted from 0), ``train_loss`` and ``val_loss`` (means over the epoch's iterations;
  ``val_loss`` is None without validation iterations);
- ``pseudo_dice``: per foreground class of the model, Dice from the true and false positives and
  false negatives summed over all validation patches of the epoch (nnU-Net's online pseudo-Dice;
  None for a class absent from both reference and prediction); ``ema_dice``: the exponential
  moving average of their mean, which picks ``checkpoint_best.pt``;
- ``lr``: the learning rate the epoch trained with; ``epoch_seconds``; ``data_wait``: the share of
  the training iterations' time spent waiting for the next batch; ``threads``: the torch threads
  at the epoch's end (the demo hands a side-by-side run a second one when its neighbour ends).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from liverseg.io.atomic import save_figure

EMA_WEIGHT_OLD = 0.9  # nnU-Net's smoothing: ema = 0.9 * ema + 0.1 * mean pseudo-Dice


def update_ema(previous: float | None, value: float | None) -> float | None:
    """The moving average after one more epoch: starts at the first value; epochs without a value leave it."""
    if value is None or not math.isfinite(value):
        return previous
    if previous is None:
        return float(value)
    return EMA_WEIGHT_OLD * previous + (1 - EMA_WEIGHT_OLD) * float(value)


def mean_dice(pseudo_dice: Sequence[float | None]) -> float | None:
    """Mean of the classes' pseudo-Dice that are defined; None when none is."""
    values = [d for d in pseudo_dice if d is not None and math.isfinite(d)]
    return sum(values) / len(values) if values else None


def format_record(record: dict[str, Any], class_names: Sequence[str]) -> str:
    """The per-epoch log line, e.g. ``epoch 3: train loss -0.412, val loss -0.380, pseudo-Dice liver 0.91 ...``."""

    def number(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    parts = [f"epoch {record['epoch']}: train loss {number(record['train_loss'])}", f"val loss {number(record['val_loss'])}"]
    if record.get("pseudo_dice") is not None:
        dice = ", ".join(f"{name} {number(d, 3)}" for name, d in zip(class_names, record["pseudo_dice"]))
        parts.append(f"pseudo-Dice {dice} (EMA {number(record.get('ema_dice'), 3)})")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['epoch_seconds']:.1f} s (waiting for data {100 * record.get('data_wait', 0.0):.0f}%)")
    return ", ".join(parts)


def plot_progress(records: Sequence[dict[str, Any]], class_names: Sequence[str], path: str | Path) -> Path:
    """Draw losses, pseudo-Dice, learning rate and epoch time over the epochs into ``path`` (PNG), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]})
    try:
        loss_axis = axes[0]
        loss_axis.plot(epochs, [r["train_loss"] for r in records], color="tab:blue", label="train loss")
        loss_axis.plot(epochs, [_nan(r["val_loss"]) for r in records], color="tab:red", label="validation loss")
        loss_axis.set_ylabel("loss")
        dice_axis = loss_axis.twinx()
        for index, name in enumerate(class_names):
            values = [_nan(r["pseudo_dice"][index]) if r.get("pseudo_dice") else math.nan for r in records]
            dice_axis.plot(epochs, values, linestyle=":", marker=".", label=f"pseudo-Dice {name}")
        dice_axis.plot(epochs, [_nan(r.get("ema_dice")) for r in records], color="tab:green", label="pseudo-Dice EMA")
        dice_axis.set_ylabel("pseudo-Dice")
        dice_axis.set_ylim(0, 1)
        lines = loss_axis.get_legend_handles_labels()
        more = dice_axis.get_legend_handles_labels()
        loss_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize="small")
        axes[1].plot(epochs, [r["lr"] for r in records], color="tab:purple")
        axes[1].set_ylabel("learning rate")
        axes[2].plot(epochs, [r["epoch_seconds"] for r in records], color="tab:gray", label="epoch")
        axes[2].set_ylabel("seconds")
        axes[2].set_xlabel("epoch")
        for axis in axes:
            axis.grid(alpha=0.3)
        figure.tight_layout()
    except BaseException:
        plt.close(figure)
        raise
    return save_figure(figure, path, dpi=80)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
