"""Per-epoch records: the pseudo-Dice moving average, the log line and the progress figure."""
from __future__ import annotations

import math

import pytest

from liverseg.training.history import format_record, mean_dice, plot_progress, update_ema


def test_moving_average_starts_at_the_first_value_and_weights_new_values_by_a_tenth():
    assert update_ema(None, 0.5) == 0.5
    assert update_ema(0.5, 1.0) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    ema = None
    for value in (0.2, 0.4, 0.4):
        ema = update_ema(ema, value)
    assert ema == pytest.approx(0.9 * (0.9 * 0.2 + 0.1 * 0.4) + 0.1 * 0.4)
    assert update_ema(0.3, None) == 0.3 and update_ema(0.3, math.nan) == 0.3 and update_ema(None, None) is None


def test_mean_dice_skips_classes_without_a_value():
    assert mean_dice([0.8, None, 0.6]) == pytest.approx(0.7)
    assert mean_dice([None, None]) is None and mean_dice([]) is None


def _record(epoch: int, dice: list | None, val_loss: float | None = -0.5) -> dict:
    return {"epoch": epoch, "train_loss": -0.25 - epoch / 10, "val_loss": val_loss, "pseudo_dice": dice,
            "ema_dice": None if dice is None else mean_dice(dice), "lr": 0.01 * (1 - epoch / 10) ** 0.9,
            "epoch_seconds": 12.25, "data_wait": 0.031}


def test_log_line_holds_every_measurement():
    line = format_record(_record(3, [0.912, None]), ["liver", "tumor"])
    assert line == ("epoch 3: train loss -0.5500, val loss -0.5000, pseudo-Dice liver 0.912, tumor n/a (EMA 0.912), "
                    f"lr {0.01 * 0.7 ** 0.9:.3g}, 12.2 s (waiting for data 3%)")
    quiet = format_record(_record(0, None, val_loss=None), ["liver"])
    assert "val loss n/a" in quiet and "pseudo-Dice" not in quiet


def test_progress_figure_is_written_atomically_as_png(tmp_path):
    records = [_record(0, [0.1, None]), _record(1, None, val_loss=None), _record(2, [0.5, 0.2])]
    path = plot_progress(records, ["liver", "tumor"], tmp_path / "progress.png")
    content = path.read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["progress.png"]
    plot_progress(records[:1], ["liver", "tumor"], path)  # rewritten each epoch
    assert path.read_bytes() != content
