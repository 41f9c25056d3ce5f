"""Early stopping: the rule on scripted loss histories, a real run that stops, and continuing a stopped run."""
from __future__ import annotations

import logging
import math

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.plans import load_plan
from liverseg.training import checkpoint as ckpt
from liverseg.training.early_stopping import MIN_DELTA, describe, early_stop, epochs_without_improvement
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import train_model

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)


def _history(losses: list[float | None]) -> list[dict]:
    return [{"epoch": i, "val_loss": loss} for i, loss in enumerate(losses)]


# Each case worked out by hand with MIN_DELTA = 0.001: the epoch after which the run stops (1-based count), or None.
@pytest.mark.parametrize("losses, patience, stops_after", [
    ([1.0, 0.9, 0.8, 0.7], 1, None),                      # improves every epoch
    ([1.0, 0.9, 0.95, 0.8], 1, 3),                        # epoch 2 is worse: patience 1 ends the run there
    ([1.0, 0.9, 0.95, 0.8], 2, None),                     # epoch 3 improves on 0.9 before the patience runs out
    ([1.0, 0.9, 0.95, 0.9, 0.8995, 0.7], 3, 5),           # 0.8995 beats 0.9 by less than MIN_DELTA: no improvement
    ([1.0, 0.9, 0.95, 0.9, 0.8985, 0.7], 3, None),        # 0.8985 beats it by 0.0015: an improvement
    ([1.0, math.nan, None, 0.99], 2, 3),                  # NaN and missing losses never improve
    ([math.nan, math.nan], 2, 2),                         # no finite loss at all
    ([1.0, 2.0, 3.0], 0, None),                           # patience 0: off
])
def test_a_scripted_loss_history_stops_at_the_right_epoch(losses, patience, stops_after):
    stopped = [n for n in range(1, len(losses) + 1) if early_stop(_history(losses[:n]), patience) is not None]
    assert (stopped[0] if stopped else None) == stops_after


def test_the_record_names_the_best_epoch_and_the_count_restarts_at_each_improvement():
    history = _history([1.0, 0.5, 0.6, 0.7, 0.4, 0.45])
    assert epochs_without_improvement(history) == (1, 4, 0.4)
    assert epochs_without_improvement(history[:4]) == (2, 1, 0.5)
    assert epochs_without_improvement(_history([None, math.nan])) == (2, None, None)
    record = early_stop(history[:4], 2)
    assert record == {"stopped_after_epochs": 4, "patience": 2, "min_delta": MIN_DELTA, "best_epoch": 1, "best_val_loss": 0.5}
    assert describe(record) == ("early stopping after 4 epochs: the validation loss has not improved by more than 0.001 "
                                "for 2 epochs (the best was 0.5000 in epoch 1)")
    assert early_stop(history[:4], 3) is None and early_stop([], 1) is None
    # a larger min_delta turns small gains into stagnation
    assert early_stop(_history([1.0, 0.95, 0.92]), 2, min_delta=0.1)["best_epoch"] == 0


@pytest.fixture
def tiny(planned, tmp_path, monkeypatch):
    """The planned phantom's stores in the environment, results in a fresh folder; returns (plan, multiclass model)."""
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    return plan, plan.pipeline("multiclass").model("multiclass")


def _settings(model, **values) -> TrainSettings:
    base = {"iterations_per_epoch": 2, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu",
            "final_validation": False}
    return TrainSettings.from_overrides(model, **{**base, **values})


def _first_stale_epoch(losses: list[float]) -> int | None:
    """The 1-based epoch count after which patience 1 stops: the first loss not below the best so far by MIN_DELTA."""
    best = losses[0]
    for n, loss in enumerate(losses[1:], start=2):
        if not loss < best - MIN_DELTA:
            return n
        best = loss
    return None


def test_a_real_run_with_patience_1_stops_at_the_first_epoch_without_improvement_and_stays_stopped(tiny, tmp_path, caplog):
    plan, model = tiny
    folder = tmp_path / "run"
    # A learning rate of ~0 freezes the network: its validation loss only moves with the patches each epoch
    # draws, so six losses in a row falling by more than MIN_DELTA each are as good as impossible.
    frozen = {"epochs": 6, "learning_rate": 1e-12, "early_stopping_patience": 1, "save_every": 100}
    with caplog.at_level(logging.INFO, logger="liverseg"):
        result = train_model(plan, model, 0, folder, _settings(model, **frozen))
    history = result["history"]
    expected = _first_stale_epoch([r["val_loss"] for r in history])
    assert expected is not None and result["epochs"] == len(history) == expected < 6
    assert result["early_stopping"]["stopped_after_epochs"] == expected
    assert "early stopping after" in caplog.text
    latest = ckpt.load_checkpoint(folder / ckpt.LATEST)  # written at the stop although save_every is 100
    assert latest["epoch"] == expected and latest["early_stopping"] == result["early_stopping"]
    assert latest["settings"]["early_stopping_patience"] == 1
    assert latest["lr_schedule"]["max_steps"] == 6  # stopping does not rewrite the schedule

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="liverseg"):  # the same options again (patience from the checkpoint)
        again = train_model(plan, model, 0, folder, _settings(model, epochs=6, continue_training=True))
    assert again["epochs"] == expected and again["early_stopping"] == result["early_stopping"]
    assert "to train on, continue with a larger --early-stopping" in caplog.text
    assert ckpt.load_checkpoint(folder / ckpt.LATEST)["epoch"] == expected

    on = train_model(plan, model, 0, folder, _settings(model, continue_training=True, early_stopping_patience=0))
    assert on["epochs"] == 6 and on["early_stopping"] is None
    latest = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert latest["epoch"] == 6 and latest["early_stopping"] is None
    assert [r["epoch"] for r in latest["history"]] == list(range(6))


def test_early_stopping_needs_online_validation_and_a_whole_patience(tiny):
    _, model = tiny
    with pytest.raises(LiversegError, match=r"--early-stopping \(early_stopping_patience\) watches the online validation "
                                            r"loss, and --val-iters \(validation_iterations\) is 0"):
        _settings(model, early_stopping_patience=30, validation_iterations=0)
    with pytest.raises(LiversegError, match=r"--early-stopping \(early_stopping_patience\) must be a whole number >= 0"):
        _settings(model, early_stopping_patience=-1)
    with pytest.raises(LiversegError, match="stop_after_epoch must be a whole number >= 1"):
        _settings(model, stop_after_epoch=0)
    assert _settings(model, epochs=10, stop_after_epoch=3).end_epoch == 3
    assert _settings(model, epochs=2, stop_after_epoch=3).end_epoch == 2
