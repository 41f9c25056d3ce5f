"""Multi-seed selection: rungs, scripted scores, resuming, and real selections on a tiny phantom."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from liverseg.cli.train import main
from liverseg.errors import LiversegError
from liverseg.planning.plans import load_plan
from liverseg.training import checkpoint as ckpt
from liverseg.training.run import train
from liverseg.training.seeds import (PLOT_FILE, SEEDS_FOLDER, STATE_FILE, check_seed_settings, elimination_table, new_state,
                                     rung_epochs, successive_halving, train_seeds)
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import train_model

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
QUICK = {"iterations_per_epoch": 1, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu"}


@pytest.mark.parametrize("epochs, rungs", [
    (1000, [62, 125, 250, 500]),   # 1000/16 = 62.5, rounded down
    (80, [5, 10, 20, 40]),         # the paper's 5k, 10k, 20k, 40k of 80k iterations
    (16, [1, 2, 4, 8]),
    (4, [1, 2]),                   # 1/16 and 1/8 of 4 round to 0, so at least 1, merged with 1/4
    (2, [1]),
    (1, [1]),                      # no rung before the end: the seeds are compared at the end
])
def test_rungs_are_the_paper_fractions_of_the_schedule(epochs, rungs):
    assert rung_epochs(epochs) == rungs


class Script:
    """Scripted training and scores: records what was trained and scored, raises on a chosen call."""

    def __init__(self, scores: dict[tuple[int, int], float | None], fail_at_score: int | None = None) -> None:
        self.scores, self.fail_at_score = scores, fail_at_score
        self.trained: list[tuple[int, int]] = []
        self.scored: list[tuple[int, int]] = []

    def train_to(self, seed: int, epoch: int) -> None:
        self.trained.append((seed, epoch))

    def score(self, seed: int, epoch: int) -> float | None:
        if self.fail_at_score is not None and len(self.scored) + 1 == self.fail_at_score:
            raise RuntimeError("killed")
        self.scored.append((seed, epoch))
        return self.scores[seed, epoch]


# 8 seeds, 16 epochs, rungs after 1, 2, 4 and 8 epochs. Worked out by hand:
# rung 1: 5 (.7), then 1 and 3 tie at .5 (lower seed first), 7 (.4) | 0 (.3), 4 (.2), 2 (.1), 6 (no score) out
# rung 2: 7 (.8), 1 (.6) | 3 (.55), 5 (.52) out;  rung 3: 1 (.7) | 7 (.65) out;  rung 4: 1 alone, the winner
EIGHT = {**{(s, 1): v for s, v in enumerate([0.3, 0.5, 0.1, 0.5, 0.2, 0.7, None, 0.4])},
         (1, 2): 0.6, (3, 2): 0.55, (5, 2): 0.52, (7, 2): 0.8, (1, 4): 0.7, (7, 4): 0.65, (1, 8): 0.75}


def test_a_scripted_history_keeps_the_right_seeds_at_each_rung():
    state = new_state(range(8), 16, rung_epochs(16))
    script = Script(EIGHT)
    assert successive_halving(state, script.train_to, script.score) == 1
    assert [(e["epoch"], e["kept"], e["eliminated"]) for e in state["eliminations"]] == [
        (1, [5, 1, 3, 7], [0, 4, 2, 6]), (2, [7, 1], [3, 5]), (4, [1], [7]), (8, [1], [])]
    assert script.trained == [(s, 1) for s in range(8)] + [(1, 2), (3, 2), (5, 2), (7, 2), (1, 4), (7, 4), (1, 8)]
    assert script.scored == script.trained and state["alive"] == [1]
    assert state["scores"]["1"]["6"] is None and state["scores"]["8"] == {"1": 0.75}
    state["winner"] = 1
    rows = [line.split() for line in elimination_table(state).splitlines()]
    assert rows[0] == ["seed", "epoch", "1", "epoch", "2", "epoch", "4", "epoch", "8", "result"]
    assert rows[1 + 6] == ["6", "n/a", "eliminated", "at", "epoch", "1"]
    assert rows[1 + 7] == ["7", "0.4000", "0.8000", "0.6500", "eliminated", "at", "epoch", "4"]
    assert rows[1 + 1] == ["1", "0.5000", "0.6000", "0.7000", "0.7500", "winner"]


def test_odd_counts_keep_the_larger_half_and_the_last_rung_keeps_one():
    scores = {(s, 1): v for s, v in enumerate([0.1, 0.5, math.nan, 0.3, 0.4])}
    scores.update({(1, 2): 0.2, (3, 2): 0.9, (4, 2): 0.5})
    state = new_state(range(5), 4, [1, 2])
    script = Script(scores)
    assert successive_halving(state, script.train_to, script.score) == 3
    # 5 seeds keep ceil(5 / 2) = 3; NaN counts as no score; the last rung keeps one of the three
    assert [(e["kept"], e["eliminated"]) for e in state["eliminations"]] == [([1, 4, 3], [0, 2]), ([3], [4, 1])]
    single = new_state([7, 8], 1, rung_epochs(1))  # a one-epoch schedule: both seeds train to the end, the best wins
    script = Script({(7, 1): 0.2, (8, 1): 0.6})
    assert successive_halving(single, script.train_to, script.score) == 8 and script.trained == [(7, 1), (8, 1)]


@pytest.mark.parametrize("fail_at_score", [3, 9, 11, 15])
def test_a_selection_killed_anywhere_resumes_without_redoing_finished_work(fail_at_score):
    everything, uninterrupted = Script(EIGHT), new_state(range(8), 16, rung_epochs(16))
    successive_halving(uninterrupted, everything.train_to, everything.score)
    saved = []
    first = Script(EIGHT, fail_at_score)
    with pytest.raises(RuntimeError, match="killed"):
        successive_halving(new_state(range(8), 16, rung_epochs(16)), first.train_to, first.score,
                           save=lambda state: saved.append(json.dumps(state)))
    resumed = json.loads(saved[-1])  # what selection.json held when the process died
    second = Script(EIGHT)
    assert successive_halving(resumed, second.train_to, second.score) == 1
    # every score is computed once over both processes; only the seed whose score was lost is trained again
    assert first.scored + second.scored == everything.scored
    assert second.trained == [first.trained[-1], *everything.trained[len(first.trained):]]
    assert resumed["eliminations"] == uninterrupted["eliminations"]


@pytest.fixture
def tiny(planned, tmp_path, monkeypatch):
    """The planned phantom's stores in the environment, results in a fresh folder; returns (plan, multiclass model)."""
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    return plan, plan.pipeline("multiclass").model("multiclass")


def test_four_real_seeds_leave_the_winner_in_the_fold_folder_as_if_it_had_never_paused(tiny, tmp_path):
    plan, model = tiny
    [fold] = train(DATASET, "multiclass", 0, seeds=4, epochs=4, **QUICK)
    selection = json.loads((fold / SEEDS_FOLDER / STATE_FILE).read_text())
    winner = selection["winner"]
    assert selection["rungs"] == [1, 2] and selection["finished"] and selection["alive"] == [winner]
    assert [len(e["kept"]) for e in selection["eliminations"]] == [2, 1]
    assert (fold / SEEDS_FOLDER / PLOT_FILE).stat().st_size > 0 and (fold / "validation" / "summary.json").is_file()
    out_at = {s: e["epoch"] for e in selection["eliminations"] for s in e["eliminated"]}
    for seed in range(4):
        state = ckpt.load_checkpoint(fold / SEEDS_FOLDER / f"seed_{seed}" / ckpt.LATEST)
        assert state["settings"]["seed"] == seed and state["lr_schedule"]["max_steps"] == 4  # the full schedule
        assert state["epoch"] == out_at.get(seed, 2)  # paused at its last rung for good
    final = ckpt.load_checkpoint(fold / ckpt.LATEST)
    assert final["epoch"] == 4 and final["settings"]["seed"] == winner
    assert [r["epoch"] for r in final["history"]] == [0, 1, 2, 3]
    assert [c["epoch"] for c in selection["curves"][str(winner)]] == [0, 1, 2, 3]
    # the winner, paused after epochs 1 and 2 and moved into fold_0, ends bit-identical to a run that never paused
    straight = train_model(plan, model, 0, tmp_path / "straight", TrainSettings.from_overrides(
        model, epochs=4, seed=winner, final_validation=False, **QUICK))
    reference = ckpt.load_checkpoint(tmp_path / "straight" / ckpt.LATEST)
    for key, value in reference["network"].items():
        assert torch.equal(value, final["network"][key]), key
    assert [r["val_loss"] for r in straight["history"]] == [r["val_loss"] for r in final["history"]]
    log = (fold / "log.txt").read_text()
    assert "seed selection of multiclass, fold 0:" in log and "eliminated at epoch 1" in log and "winner" in log


def test_a_real_selection_stopped_after_a_rung_resumes_and_a_winner_can_train_longer(tiny, tmp_path, caplog):
    plan, model = tiny
    fold = tmp_path / "fold_0"
    scores = {(0, 1): 0.1, (1, 1): 0.4, (2, 1): 0.3, (3, 1): 0.2, (1, 2): 0.5, (2, 2): 0.6}
    first = Script(scores, fail_at_score=5)  # dies scoring rung 2, after seed 1 trained to epoch 2
    settings = TrainSettings.from_overrides(model, epochs=4, **QUICK)
    with pytest.raises(RuntimeError, match="killed"):
        train_seeds(plan, model, 0, fold, settings, 4, score=first.score)
    seeds = [fold / SEEDS_FOLDER / f"seed_{s}" / ckpt.LATEST for s in range(4)]
    before = {s: (p.stat().st_mtime_ns, ckpt.load_checkpoint(p)["epoch"]) for s, p in enumerate(seeds)}
    assert [e for _, e in before.values()] == [1, 2, 1, 1]
    with pytest.raises(LiversegError, match="selection.json: this selection was started with --epochs 4"):
        train_seeds(plan, model, 0, fold, TrainSettings.from_overrides(model, epochs=6, continue_training=True, **QUICK), 4)
    with pytest.raises(LiversegError, match=r"started with seeds \[0, 1, 2, 3\]; continue it with --seeds 4 --seed 0"):
        train_seeds(plan, model, 0, fold, TrainSettings.from_overrides(model, continue_training=True, **QUICK), 3)
    second = Script(scores)
    with caplog.at_level(logging.INFO, logger="liverseg"):
        result = train_seeds(plan, model, 0, fold, TrainSettings.from_overrides(model, epochs=4, continue_training=True,
                                                                                **QUICK), 4, score=second.score)
    assert "1 rung(s) of 2 done" in caplog.text
    assert second.scored == [(1, 2), (2, 2)]  # rung 1 is not scored again
    for seed in (0, 1, 3):  # eliminated at rung 1, or already at rung 2 when the process died: not trained again
        assert (seeds[seed].stat().st_mtime_ns, ckpt.load_checkpoint(seeds[seed])["epoch"]) == before[seed]
    assert ckpt.load_checkpoint(seeds[2])["epoch"] == 2
    assert result["seed_selection"]["winner"] == 2 and result["epochs"] == 4
    assert ckpt.load_checkpoint(fold / ckpt.LATEST)["settings"]["seed"] == 2
    # more epochs, refused above while seeds were compared, extend the winner's run once it is chosen
    longer = TrainSettings.from_overrides(model, epochs=6, continue_training=True, **QUICK)
    result = train_seeds(plan, model, 0, fold, longer, 4, score=second.score)
    assert result["epochs"] == 6 and second.scored == [(1, 2), (2, 2)]
    assert (seeds[2].stat().st_mtime_ns, ckpt.load_checkpoint(seeds[2])["epoch"]) != before[2]
    assert ckpt.load_checkpoint(seeds[2])["epoch"] == 2  # the seed's own folder stays where it won


def test_settings_that_cannot_go_with_a_selection_are_refused(tiny, tmp_path, capsys):
    _, model = tiny
    with pytest.raises(LiversegError, match="give --seeds or --time-budget, not both"):
        check_seed_settings(TrainSettings.from_overrides(model, time_budget_minutes=5), 4)
    with pytest.raises(LiversegError, match="--seeds must be a whole number >= 1"):
        check_seed_settings(TrainSettings.from_overrides(model), 0)
    with pytest.raises(LiversegError, match="stop_after_epoch is set by the seed selection itself"):
        check_seed_settings(TrainSettings.from_overrides(model, stop_after_epoch=2), 2)
    check_seed_settings(TrainSettings.from_overrides(model, time_budget_minutes=5), 1)  # one seed: an ordinary run
    broken = tmp_path / "broken" / SEEDS_FOLDER
    broken.mkdir(parents=True)
    (broken / STATE_FILE).write_text('{"seeds": [0, 1')  # e.g. a hand edit gone wrong
    with pytest.raises(LiversegError, match=r"selection.json: cannot be read \(.*\); delete the folder .*seeds to start"):
        train_seeds(tiny[0], model, 0, tmp_path / "broken", TrainSettings.from_overrides(model, continue_training=True), 2)
    (broken / STATE_FILE).write_text('{"format": "something else"}')
    with pytest.raises(LiversegError, match="selection.json: not a liverseg seed selection"):
        train_seeds(tiny[0], model, 0, tmp_path / "broken", TrainSettings.from_overrides(model, continue_training=True), 2)
    assert main(["-d", DATASET, "-c", "multiclass", "-f", "0", "--seeds", "3", "--time-budget", "2"]) == 2
    assert "error: --time-budget shortens each run" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before anything was written


def test_the_command_line_trains_two_seeds_with_early_stopping(tiny, tmp_path, capsys):
    argv = ["-d", DATASET, "-c", "multiclass", "-f", "0", "--seeds", "2", "--epochs", "2", "--early-stopping", "5",
            "--iters-per-epoch", "1", "--val-iters", "1", "-np", "0", "--threads", "1", "--device", "cpu",
            "--no-final-validation"]
    assert main(argv) == 0
    fold = tmp_path / "results" / DATASET / "multiclass" / "multiclass" / "fold_0"
    assert capsys.readouterr().out.strip() == str(fold)
    selection = json.loads((fold / SEEDS_FOLDER / STATE_FILE).read_text())
    assert selection["seeds"] == [0, 1] and selection["rungs"] == [1] and selection["winner"] in (0, 1)
    final = ckpt.load_checkpoint(fold / ckpt.LATEST)
    assert final["epoch"] == 2 and final["settings"]["early_stopping_patience"] == 5
