"""Trainers by name: the default loop, a user-registered trainer chosen by the plan or --trainer, plugins."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from liverseg.cli.train import main
from liverseg.errors import LiversegError
from liverseg.training.run import train
from liverseg.training.trainer import train_model
from liverseg.training.trainers import ENTRY_POINT_GROUP, TRAINERS, available_trainers, get_trainer

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (tests/conftest.py)
QUICK = {"epochs": 1, "iterations_per_epoch": 1, "validation_iterations": 0, "num_workers": 0, "device": "cpu",
         "final_validation": False}


@pytest.fixture
def isolated_trainers(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test disappear after it (the table is swapped for a copy)."""
    monkeypatch.setattr(TRAINERS, "_entries", dict(TRAINERS._entries))
    modules_before = set(sys.modules)
    yield TRAINERS
    for name in set(sys.modules) - modules_before:
        if name.startswith("plugin_trainer"):
            del sys.modules[name]


@pytest.fixture
def env(planned, tmp_path, monkeypatch):
    """The planned phantom with a plan copy the test may edit, results in a fresh folder."""
    monkeypatch.setenv("LIVERSEG_RAW", str(planned["raw"]))
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(planned["preprocessed"], preprocessed)
    monkeypatch.setenv("LIVERSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))
    return preprocessed / DATASET / "plans.json"


def test_an_unknown_trainer_lists_the_known_ones():
    assert "default" in available_trainers()
    with pytest.raises(LiversegError, match="unknown trainer 'nope'.*default"):
        get_trainer("nope")


def test_the_plan_names_the_trainer_and_the_command_line_overrides_it(env, isolated_trainers):
    calls = []

    @TRAINERS.register("recording")
    def recording(plan, model, fold, results_dir, settings, pipeline=None):
        calls.append((model.name, fold, settings.epochs))
        return train_model(plan, model, fold, results_dir, settings, pipeline=pipeline)

    plan = json.loads(env.read_text())
    plan["pipelines"]["multiclass"]["models"]["multiclass"]["schedule"]["trainer"] = "recording"
    env.write_text(json.dumps(plan))
    folder = train(DATASET, "multiclass", 0, **QUICK)[0]
    assert calls == [("multiclass", 0, 1)] and (folder / "checkpoint_latest.pt").is_file()
    train(DATASET, "multiclass", 0, trainer="default", **QUICK)  # --trainer wins over the plan
    assert len(calls) == 1


def test_an_unknown_trainer_stops_before_anything_trains(env, capsys):
    assert main(["-d", DATASET, "-c", "multiclass", "-f", "0", "--trainer", "mine", "--epochs", "1"]) == 2
    assert "unknown trainer 'mine'" in capsys.readouterr().err
    plan = json.loads(env.read_text())
    plan["pipelines"]["multiclass"]["models"]["multiclass"]["schedule"]["trainer"] = "mine"
    env.write_text(json.dumps(plan))
    with pytest.raises(LiversegError, match="plans.json.*schedule: unknown trainer name 'mine'; known: default"):
        train(DATASET, "multiclass", 0, **QUICK)


def test_an_installed_plugin_trainer_is_found_by_name(isolated_trainers, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "plugin_trainer_demo.py").write_text("def noop(*args, **kwargs):\n    return {'trained': False}\n")
    info = site / "liverseg_trainer_demo-0.1.dist-info"  # what pip leaves behind
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: liverseg_trainer_demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nnoop = plugin_trainer_demo:noop\n")
    monkeypatch.syspath_prepend(str(site))
    assert "noop" in available_trainers() and "plugin_trainer_demo" not in sys.modules
    assert get_trainer("noop")() == {"trained": False}
