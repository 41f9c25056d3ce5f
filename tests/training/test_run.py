"""train(): results folders from plans.json, model order, log file, hand-edited plans and bad requests."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from liverseg.errors import LiversegError
from liverseg.planning.plans import RegionOfInterest, load_plan
from liverseg.training import checkpoint as ckpt
from liverseg.training.run import parse_fold, train, training_order

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)
FAST = {"iterations_per_epoch": 1, "validation_iterations": 1, "num_workers": 0, "threads": 1, "device": "cpu"}


@pytest.fixture
def env(planned, tmp_path, monkeypatch):
    """The planned stores in the environment, with fresh results; ``env["edit"]()`` gives a private plans.json to change."""
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    monkeypatch.setenv("LIVERSEG_RESULTS", str(tmp_path / "results"))

    def private_plan():
        copy = tmp_path / "preprocessed"
        shutil.copytree(planned["preprocessed"], copy)
        monkeypatch.setenv("LIVERSEG_PREPROCESSED", str(copy))
        return copy / DATASET / "plans.json"

    return {**planned, "results": tmp_path / "results", "edit": private_plan}


def test_results_folder_holds_the_plan_copy_log_and_training_files(env):
    folders = train("TrainerPhantom", "multiclass", 0, epochs=1, **FAST)
    folder = env["results"] / DATASET / "multiclass" / "multiclass" / "fold_0"
    assert folders == [folder]
    assert (folder / "plans.json").read_bytes() == (env["preprocessed"] / DATASET / "plans.json").read_bytes()
    log = (folder / "log.txt").read_text()
    assert "epoch 0: train loss" in log and "validation phantom_" in log and "liverseg_train: dataset Dataset902" in log
    assert {ckpt.LATEST, ckpt.BEST, "progress.png", "validation"} <= {p.name for p in folder.iterdir()}


def test_every_model_of_the_pipeline_trains_unless_one_is_asked_for(env):
    both = train(DATASET, "dual_binary", "all", epochs=1, **{**FAST, "validation_iterations": 0})
    assert [f.relative_to(env["results"]).as_posix() for f in both] == [
        f"{DATASET}/dual_binary/liver/fold_all", f"{DATASET}/dual_binary/tumour/fold_all"]
    assert ckpt.load_checkpoint(both[1] / ckpt.LATEST)["model"] == "tumour"
    one = train(DATASET, "dual_binary", "all", model="tumour", epochs=2, continue_training=True,
                **{**FAST, "validation_iterations": 0})
    assert one == [both[1]] and ckpt.load_checkpoint(both[1] / ckpt.LATEST)["epoch"] == 2


@pytest.mark.parametrize("pipeline, fold, model, message", [
    ("multi", 0, None, "has no pipeline 'multi'; pipelines you can train: multiclass, dual_binary"),
    ("cascade", 0, None, "pipeline 'cascade' was not planned for Dataset902_TrainerPhantom (the median volume"),
    ("dual_binary", 0, "tumor", "pipeline dual_binary has no model 'tumor'; models: liver, tumour"),
    ("multiclass", 9, None, "fold 9 does not exist"),
    ("multiclass", "first", None, "fold must be a number (0, 1, ...) or 'all'; got 'first'"),
])
def test_bad_requests_stop_before_anything_is_written(env, pipeline, fold, model, message):
    with pytest.raises(LiversegError) as error:
        train(DATASET, pipeline, fold, model=model, epochs=1, **FAST)
    assert message in str(error.value)
    assert not env["results"].exists()


def test_bad_overrides_name_the_plan_and_the_option(env):
    with pytest.raises(LiversegError, match=r"plans.json: pipelines.multiclass.models.multiclass: --epochs \(epochs\) must be"):
        train(DATASET, "multiclass", 0, epochs=-3, **FAST)
    with pytest.raises(LiversegError, match="unknown training setting"):
        train(DATASET, "multiclass", 0, epoch=3)


def _edit(path, change):
    content = json.loads(path.read_text())
    change(content["pipelines"]["multiclass"]["models"]["multiclass"])
    path.write_text(json.dumps(content))


def test_a_hand_edited_plan_is_used_and_checked(env):
    path = env["edit"]()
    _edit(path, lambda m: m["schedule"].update(epochs=1, iterations_per_epoch=1, validation_iterations=0))
    folder = train(DATASET, "multiclass", "all", num_workers=0, threads=1, device="cpu", final_validation=False)[0]
    saved = ckpt.load_checkpoint(folder / ckpt.LATEST)
    assert (saved["epoch"], saved["settings"]["iterations_per_epoch"], saved["settings"]["validation_iterations"]) == (1, 1, 0)

    _edit(path, lambda m: m["topology"].update(patch_size=[15, 48, 48]))
    with pytest.raises(LiversegError) as error:
        train(DATASET, "multiclass", 0, **FAST)
    assert str(path) in str(error.value)
    assert "patch_size [15, 48, 48] is not divisible by the product of the strides" in str(error.value)

    _edit(path, lambda m: (m["topology"].update(patch_size=[16, 48, 48]), m["schedule"].update(loss="tversky")))
    with pytest.raises(LiversegError) as error:
        train(DATASET, "multiclass", 0, **FAST)
    assert str(path) in str(error.value) and "unknown loss name 'tversky'; known: " in str(error.value)


def test_cascade_stages_train_in_order_and_stage_two_can_start_from_stage_one(env):
    path = env["edit"]()
    content = json.loads(path.read_text())
    coarse = content["pipelines"]["multiclass"]["models"]["multiclass"]
    fine = {**coarse, "roi": {"labels": [1, 2], "margin_mm": 15, "jitter_mm": 10, "from_model": "coarse"}}
    narrow = {**fine, "topology": {**coarse["topology"], "features_per_stage": [4, 8, 16, 32]}}
    content["pipelines"]["cascade"].update(emitted=True, models={"fine": fine, "coarse": coarse})
    content["pipelines"]["cascade_narrow"] = {**content["pipelines"]["cascade"], "models": {"coarse": coarse, "fine": narrow}}
    path.write_text(json.dumps(content))
    settings = {**FAST, "epochs": 1, "validation_iterations": 0, "final_validation": False}

    folders = train(DATASET, "cascade", "all", init_stage2_from_stage1=True, **settings)
    assert [f.parent.name for f in folders] == ["coarse", "fine"]  # plans.json lists fine first
    log = (folders[1] / "log.txt").read_text()
    assert "fine starts from the weights of coarse" in log and "network initialised from" in log
    narrow_folders = train(DATASET, "cascade_narrow", "all", init_stage2_from_stage1=True, **settings)
    assert "fine starts from scratch" in (narrow_folders[1] / "log.txt").read_text()
    with pytest.raises(LiversegError, match="the first stage \\(coarse\\) has no checkpoint"):
        train(DATASET, "cascade", 0, model="fine", init_stage2_from_stage1=True, **settings)
    assert not (env["results"] / DATASET / "cascade" / "fine" / "fold_0").exists()


def test_training_order_puts_each_stage_after_its_source(env):
    plan = load_plan(env["preprocessed"] / DATASET / "plans.json")
    base = plan.pipeline("multiclass").model("multiclass")
    a = replace(base, name="a", roi=RegionOfInterest((1,), 5.0, 0.0, "b"))
    b = replace(base, name="b", roi=RegionOfInterest((1,), 5.0, 0.0, "c"))
    c = replace(base, name="c")
    assert [m.name for m in training_order([a, b, c])] == ["c", "b", "a"]
    assert [m.name for m in training_order([a])] == ["a"]  # its source is not being trained: nothing to wait for
    circle = replace(c, roi=RegionOfInterest((1,), 5.0, 0.0, "a"))
    with pytest.raises(LiversegError, match="in a circle"):
        training_order([a, b, circle])


@pytest.mark.parametrize("text, fold", [("0", 0), (" 3 ", 3), ("all", "all"), ("ALL", "all"), (2, 2)])
def test_folds_are_numbers_or_all(text, fold):
    assert parse_fold(text) == fold


@pytest.mark.parametrize("text", ["-1", "1.5", "", "fold0", True])
def test_other_folds_are_refused(text):
    with pytest.raises(LiversegError, match="fold must be a number"):
        parse_fold(text)
