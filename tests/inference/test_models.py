"""Finding and loading trained models from real results folders of tiny trained pipelines."""
from __future__ import annotations

import shutil

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.inference.models import (INFERENCE_FILE, describe_trained, load_pipeline, read_inference_config,
                                       trained_datasets, write_inference_config)
from liverseg.io.atomic import write_json
from liverseg.training.checkpoint import BEST, LATEST, load_checkpoint

DATASET = "Dataset951_PredictPhantom"  # the session fixture's dataset (tests/inference/conftest.py)


@pytest.fixture
def results_copy(trained, tmp_path, monkeypatch):
    """A private copy of the results store (tests change it), in the environment."""
    trained.env(monkeypatch)
    copy = tmp_path / "results"
    shutil.copytree(trained.results, copy)
    monkeypatch.setenv("LIVERSEG_RESULTS", str(copy))
    return copy / DATASET


def test_the_only_trained_dataset_and_the_plans_recommended_pipeline_with_every_fold(trained_env):
    loaded = load_pipeline()
    assert loaded.dataset == DATASET and loaded.pipeline.name == trained_env.plan.recommended == "multiclass"
    assert loaded.folds == [0, 1] and [m.name for m in loaded.models] == ["multiclass"]
    assert loaded.postprocessing_source == "plan"
    assert [s["name"] for s in loaded.postprocessing] == list(trained_env.plan.pipeline("multiclass").postprocessing)
    paths = loaded.models[0].checkpoints
    assert paths == [trained_env.dataset_dir / "multiclass" / "multiclass" / f"fold_{k}" / BEST for k in (0, 1)]


@pytest.mark.parametrize("name", [DATASET, "PredictPhantom", "951"])
def test_a_dataset_by_name_folder_name_or_id(trained_env, name):
    loaded = load_pipeline(name, "dual_binary", folds=["0"])
    assert loaded.dataset == DATASET and loaded.folds == [0]
    assert [m.name for m in loaded.models] == ["liver", "tumour"]


def test_weights_are_the_checkpoints_in_eval_mode_without_deep_supervision(trained_env):
    loaded = load_pipeline(DATASET, "cascade", checkpoint="latest")
    assert [m.name for m in loaded.models] == ["coarse", "fine"]  # the first stage first
    fine = loaded.model("fine")
    assert fine.spec == trained_env.plan.preprocessing["fullres"]
    assert loaded.model("coarse").spec == trained_env.plan.preprocessing["lowres"]
    network = fine.networks[0]
    saved = load_checkpoint(trained_env.dataset_dir / "cascade" / "fine" / "fold_0" / LATEST)["network"]
    for key, value in network.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert not network.training
    output = network(torch.zeros(1, 1, *fine.plan.topology.patch_size))
    assert isinstance(output, torch.Tensor) and output.shape[1] == fine.plan.num_classes


def test_pipeline_model_and_fold_folders(trained_env):
    pipeline_dir = trained_env.dataset_dir / "dual_binary"
    by_pipeline = load_pipeline(pipeline_dir)
    assert by_pipeline.pipeline.name == "dual_binary" and by_pipeline.folds == [0]
    assert by_pipeline.pipeline.combine == "dual_binary_merge"

    alone = load_pipeline(pipeline_dir / "tumour")
    assert [m.name for m in alone.models] == ["tumour"] and alone.folds == [0]
    assert alone.pipeline.combine == "argmax" and alone.postprocessing == []  # the pipeline's steps need both models

    one_fold = load_pipeline(pipeline_dir / "liver" / "fold_0")
    assert [m.name for m in one_fold.models] == ["liver"] and one_fold.folds == [0]
    with pytest.raises(LiversegError, match="is fold 0, but folds"):
        load_pipeline(pipeline_dir / "liver" / "fold_0", folds=[1])
    with pytest.raises(LiversegError, match="holds pipeline dual_binary, but pipeline multiclass"):
        load_pipeline(pipeline_dir, pipeline="multiclass")


def test_best_falls_back_to_latest_and_latest_must_exist(results_copy):
    fold = results_copy / "multiclass" / "multiclass" / "fold_1"
    (fold / BEST).unlink()
    assert load_pipeline(DATASET).models[0].checkpoints[1] == fold / LATEST
    (fold / LATEST).rename(fold / BEST)
    assert load_pipeline(DATASET).folds == [0, 1]
    with pytest.raises(LiversegError, match=r"fold\(s\) 1 have no latest checkpoint.*multiclass: 0"):
        load_pipeline(DATASET, folds=[0, 1], checkpoint="latest")


def test_a_fold_missing_for_one_model_is_left_out_or_refused(results_copy):
    liver = results_copy / "dual_binary" / "liver"
    shutil.copytree(liver / "fold_0", liver / "fold_1")  # fold 1 trained for the liver model only
    assert load_pipeline(DATASET, "dual_binary").folds == [0]
    with pytest.raises(LiversegError, match=r"fold\(s\) 1 .*liver: 0, 1; tumour: 0"):
        load_pipeline(DATASET, "dual_binary", folds=[1])


def test_inference_json_chooses_pipeline_folds_and_postprocessing(results_copy):
    steps = [{"name": "close_tumour", "params": {"kernel": [1, 5, 5]}}]
    path = write_inference_config(results_copy, "dual_binary", [0], steps, checkpoint="latest")
    assert read_inference_config(path) == {"pipeline": "dual_binary", "folds": [0], "postprocessing": steps,
                                           "checkpoint": "latest"}
    loaded = load_pipeline(DATASET)
    assert loaded.pipeline.name == "dual_binary" and loaded.folds == [0]
    assert loaded.postprocessing == steps and loaded.postprocessing_source == str(path)
    assert all(m.checkpoints[0].name == LATEST for m in loaded.models)
    with pytest.raises(LiversegError, match=r"fold\(s\) 1 have no"):  # asked-for folds win
        load_pipeline(DATASET, folds=[1])
    explicit = load_pipeline(DATASET, "multiclass")  # an explicit pipeline ignores inference.json
    assert explicit.pipeline.name == "multiclass" and explicit.postprocessing_source == "plan"


@pytest.mark.parametrize("content, message", [
    ({"pipeline": "multiclass"}, "expected"),
    ({"pipeline": "multiclass", "folds": [0], "steps": []}, "unknown key"),
    ({"pipeline": "multiclass", "folds": ["x"]}, "fold must be a number"),
    ({"pipeline": "multiclass", "folds": [0], "postprocessing": ["no_such_step"]}, "no_such_step"),
    ({"pipeline": "multiclass", "folds": [0], "checkpoint": "final"}, "checkpoint must be one of"),
])
def test_a_bad_inference_json_names_the_file(results_copy, content, message):
    write_json(results_copy / INFERENCE_FILE, content)
    with pytest.raises(LiversegError, match=message) as error:
        load_pipeline(DATASET)
    assert INFERENCE_FILE in str(error.value)


def test_errors_list_what_exists(trained_env, tmp_path, monkeypatch):
    with pytest.raises(LiversegError, match=f"datasets with trained models there: {DATASET}"):
        load_pipeline("Unknown")
    with pytest.raises(LiversegError, match=r"pipeline 'nope' .* trained: cascade \(coarse: folds 0; fine: folds 0\), "
                                            r"dual_binary \(liver: folds 0; tumour: folds 0\), multiclass"):
        load_pipeline(DATASET, "nope")
    with pytest.raises(LiversegError, match=r"fold\(s\) 4 have no best checkpoint"):
        load_pipeline(DATASET, "multiclass", folds=[4])
    with pytest.raises(LiversegError, match="no trained models here"):
        load_pipeline(tmp_path)
    with pytest.raises(LiversegError, match="results folder not found"):
        load_pipeline(tmp_path / "missing")

    empty = tmp_path / "empty_results"
    empty.mkdir()
    monkeypatch.setenv("LIVERSEG_RESULTS", str(empty))
    with pytest.raises(LiversegError, match="no trained models in .*liverseg_train"):
        load_pipeline()
    shutil.copytree(trained_env.dataset_dir, empty / DATASET)
    shutil.copytree(trained_env.dataset_dir, empty / "Dataset952_Other")
    assert trained_datasets(empty) == ["Dataset951_PredictPhantom", "Dataset952_Other"]
    with pytest.raises(LiversegError, match=f"several datasets .*{DATASET}, Dataset952_Other.*-d NAME"):
        load_pipeline()


def test_describe_trained_lists_pipelines_models_and_folds(trained):
    assert describe_trained(trained.dataset_dir) == (
        "cascade (coarse: folds 0; fine: folds 0), dual_binary (liver: folds 0; tumour: folds 0), "
        "multiclass (multiclass: folds 0, 1)")
