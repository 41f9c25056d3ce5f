"""Training within a time budget: the epochs that fit, the shares of a pipeline's models, a real shortened run."""
from __future__ import annotations

import math

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.plans import load_plan
from liverseg.training.budget import budget_shares, epochs_within_budget, model_work
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import train_model

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)


def _history(*seconds: float) -> list[dict]:
    return [{"epoch": i, "epoch_seconds": s} for i, s in enumerate(seconds)]


@pytest.mark.parametrize("seconds, budget, requested, expected", [
    ((10.0,), 100.0, 50, 10),                 # 10 s per epoch: 9 more fit in the 90 s left
    ((10.0, 20.0), 100.0, 50, 6),             # mean 15 s, 70 s left: 4 more
    ((40.0, 10.0, 10.0, 10.0), 200.0, 50, 17),  # the slow first epoch no longer counts: 13 more at 10 s
    ((10.0,), 1000.0, 20, 20),                # the budget is no limit: the requested epochs
    ((30.0, 30.0), 50.0, 20, 2),              # already over budget: stop after the epochs done
    ((), 10.0, 20, 20),                       # nothing measured yet: keep the request
])
def test_epochs_within_budget_from_the_pace_of_the_last_epochs(seconds, budget, requested, expected):
    assert epochs_within_budget(_history(*seconds), budget, requested) == expected


def test_the_budgeted_end_moves_later_again_when_epochs_get_faster():
    slow_start = _history(30.0)
    assert epochs_within_budget(slow_start, 300.0, 100) == 10  # 30 s per epoch: 9 more
    faster = _history(30.0, 15.0, 15.0, 15.0)
    assert epochs_within_budget(faster, 300.0, 100) == 4 + 15  # 225 s left at 15 s per epoch


def test_budget_shares_follow_the_planned_work_of_each_model(planned):
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    liver, tumour = plan.pipeline("dual_binary").model("liver"), plan.pipeline("dual_binary").model("tumour")
    voxels = [math.prod(m.topology.patch_size) * m.batch_size for m in (liver, tumour)]
    shares = budget_shares([liver, tumour], 600.0, epochs=10, iterations_per_epoch=5)
    assert shares == pytest.approx([600.0 * v / sum(voxels) for v in voxels])
    assert model_work(liver, 10, 5) == voxels[0] * 50
    assert budget_shares([liver, tumour], -5.0) == [0.0, 0.0]


def test_a_budgeted_run_shortens_its_schedule_and_records_it(planned, tmp_path, monkeypatch):
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    model = plan.pipeline("multiclass").model("multiclass")
    # A budget of one millisecond: the run stops after its first epoch, whatever this machine's speed.
    settings = TrainSettings.from_overrides(model, epochs=50, iterations_per_epoch=1, validation_iterations=0,
                                            num_workers=0, threads=1, device="cpu", final_validation=False,
                                            time_budget_minutes=1e-3 / 60)
    summary = train_model(plan, model, 0, tmp_path / "run", settings)
    assert summary["epochs"] == 1
    assert [r["epoch"] for r in summary["history"]] == [0]


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), True])
def test_a_budget_must_be_positive_minutes(planned, budget):
    plan = load_plan(planned["preprocessed"] / DATASET / "plans.json")
    with pytest.raises(LiversegError, match="--time-budget"):
        TrainSettings.from_overrides(plan.pipeline("multiclass").model("multiclass"), time_budget_minutes=budget)
