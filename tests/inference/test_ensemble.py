"""Ensembles of pipelines on real tiny trained models: loading, averaging, inference.json and liverseg_predict."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli.predict import main
from liverseg.errors import LiversegError
from liverseg.inference.combine import Combined
from liverseg.inference.models import LoadedEnsemble, load_pipeline, read_inference_config, write_inference_config
from liverseg.inference.predictor import Predictor, average_combined
from liverseg.io.atomic import read_json
from liverseg.io.images import read_image
from liverseg.postprocessing import DEFAULT_STEPS, apply_steps

DATASET = "Dataset951_PredictPhantom"  # the session fixture's dataset (tests/inference/conftest.py)
PAIR = ["multiclass", "dual_binary"]
FAST = {"tta": False, "device": "cpu"}
CLI = ["--no-tta", "-np", "0", "--threads", "1", "--device", "cpu"]


@pytest.fixture
def results_copy(trained, tmp_path, monkeypatch):
    """A private copy of the results store (tests write inference.json or edit plans), in the environment."""
    trained.env(monkeypatch)
    copy = tmp_path / "results"
    shutil.copytree(trained.results, copy)
    monkeypatch.setenv("LIVERSEG_RESULTS", str(copy))
    return copy / DATASET


def _image(trained, k=0):
    return sitk.ReadImage(str(trained.heldout / f"phantom_{k:03d}_0000.nii.gz"))


def _members(trained, image, **options):
    return [Predictor.from_folder(DATASET, name, folds=[0], postprocessing="none", **FAST, **options).predict(
        image, keep_probabilities=True) for name in PAIR]


def _decided(probabilities):
    top = np.sort(probabilities, axis=0)
    return top[-1] - top[-2] > 2e-3


def test_a_list_of_pipelines_loads_an_ensemble(trained_env):
    loaded = load_pipeline(DATASET, PAIR, folds=[0])
    assert isinstance(loaded, LoadedEnsemble) and loaded.name == "multiclass+dual_binary"
    assert [m.name for m in loaded.members] == PAIR and loaded.folds == [0]
    assert [[m.name for m in member.models] for member in loaded.members] == [["multiclass"], ["liver", "tumour"]]
    assert [s["name"] for s in loaded.postprocessing] == list(DEFAULT_STEPS) and loaded.postprocessing_source == "plan"
    described = loaded.describe()
    assert described["pipeline"] == PAIR and [m["pipeline"] for m in described["members"]] == PAIR
    assert load_pipeline(DATASET, ["cascade"]).name == "cascade"  # a list of one is that pipeline
    with pytest.raises(LiversegError, match="an ensemble a list of two or more different names"):
        load_pipeline(DATASET, ["multiclass", "multiclass"])
    with pytest.raises(LiversegError, match="is loaded from a dataset"):
        load_pipeline(trained_env.dataset_dir / "multiclass", PAIR)
    with pytest.raises(LiversegError, match="pipeline 'unknown' of Dataset951_PredictPhantom is not trained"):
        load_pipeline(DATASET, ["multiclass", "unknown"])


def test_the_ensemble_averages_the_pipelines_label_and_tumour_probabilities(trained_env):
    image = _image(trained_env)
    multiclass, dual = _members(trained_env, image)
    predictor = Predictor.from_folder(DATASET, PAIR, folds=[0], postprocessing="none", **FAST)
    assert predictor.mirror_axes == {"multiclass/multiclass": None, "dual_binary/liver": None, "dual_binary/tumour": None}
    ensemble = predictor.predict(image, keep_probabilities=True)
    mean = (multiclass.probabilities.astype(np.float32) + dual.probabilities.astype(np.float32)) / 2
    np.testing.assert_allclose(ensemble.probabilities.astype(np.float32), mean, rtol=0, atol=2e-3)
    decided = _decided(mean)
    np.testing.assert_array_equal(ensemble.label[decided], mean.argmax(0)[decided])
    tumour = (multiclass.tumour_probability.astype(np.float32) + dual.tumour_probability.astype(np.float32)) / 2
    np.testing.assert_allclose(ensemble.tumour_probability.astype(np.float32), tumour, rtol=0, atol=2e-3)
    assert not np.array_equal(ensemble.probabilities, multiclass.probabilities)
    assert ensemble.seconds["network"] > 0 and ensemble.seconds["map_back"] > 0

    planned = Predictor.from_folder(DATASET, PAIR, folds=[0], postprocessing="plan", **FAST).predict(image)
    expected = apply_steps(ensemble.label, ensemble.geometry.spacing, list(DEFAULT_STEPS))
    np.testing.assert_array_equal(planned.label, expected)


def test_average_combined_of_constructed_outputs():
    a = Combined(np.zeros((1, 1, 2), np.uint8), np.array([[[[0.6, 0.2]]], [[[0.3, 0.3]]], [[[0.1, 0.5]]]], np.float32),
                 np.array([[[0.1, 0.5]]], np.float32))
    b = Combined(np.zeros((1, 1, 2), np.uint8), np.array([[[[0.0, 0.2]]], [[[0.8, 0.2]]], [[[0.2, 0.6]]]], np.float32),
                 np.array([[[0.9, 0.7]]], np.float32))
    mean = average_combined(iter([a, b]))
    np.testing.assert_allclose(mean.probabilities[:, 0, 0], [[0.3, 0.2], [0.55, 0.25], [0.15, 0.55]])
    np.testing.assert_array_equal(mean.label[0, 0], [1, 2])
    np.testing.assert_allclose(mean.tumour_probability[0, 0], [0.5, 0.6])
    assert a.probabilities[0, 0, 0, 0] == np.float32(0.6)  # the members are not changed


def test_members_whose_plans_define_a_grid_differently_get_their_own_grid(results_copy, trained):
    for plans in results_copy.glob("dual_binary/*/fold_*/plans.json"):
        content = json.loads(plans.read_text())
        content["preprocessing"]["fullres"]["target_spacing"][0] *= 1.25
        plans.write_text(json.dumps(content))
    predictor = Predictor.from_folder(DATASET, PAIR, folds=[0], postprocessing="none", **FAST)
    assert predictor.grid_keys == [{"multiclass": "fullres"}, {"liver": "dual_binary/fullres",
                                                               "tumour": "dual_binary/fullres"}]
    image = _image(trained, 1)
    prepared = predictor.prepare(image)
    assert set(prepared.grids) == {"fullres", "dual_binary/fullres"}
    members = _members(trained, image)
    mean = (members[0].probabilities.astype(np.float32) + members[1].probabilities.astype(np.float32)) / 2
    np.testing.assert_allclose(predictor.finish(prepared, predictor.infer(prepared), True).probabilities.astype(np.float32),
                               mean, rtol=0, atol=2e-3)


def test_inference_json_with_an_ensemble_is_what_liverseg_predict_uses(results_copy, trained, tmp_path):
    steps = ["largest_liver_component_fill_holes", "close_tumour"]
    path = write_inference_config(results_copy, PAIR, [0], steps, "latest")
    assert json.loads(path.read_text())["pipeline"] == PAIR
    assert read_inference_config(path)["pipeline"] == PAIR
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(trained.heldout / "phantom_002_0000.nii.gz", inputs)

    assert main(["-i", str(inputs), "-o", str(tmp_path / "chosen"), "--save-probabilities", *CLI]) == 0
    settings = read_json(tmp_path / "chosen" / "predict_settings.json")
    assert settings["pipeline"] == PAIR and settings["postprocessing_source"] == str(path)
    assert [s["name"] for s in settings["postprocessing"]] == steps
    assert all(p.endswith("checkpoint_latest.pt") for m in settings["members"] for ps in m["models"].values() for p in ps)
    for name in PAIR:
        assert main(["-i", str(inputs), "-o", str(tmp_path / name), "-d", DATASET, "-c", name, "-f", "0",
                     "--checkpoint", "latest", "--postprocessing", "none", "--save-probabilities", *CLI]) == 0
    assert main(["-i", str(inputs), "-o", str(tmp_path / "asked"), "-d", DATASET, "-c", *PAIR, "-f", "0", "--checkpoint",
                 "latest", "--postprocessing", str(_steps_file(tmp_path, steps)), *CLI]) == 0

    def probabilities(folder):
        with np.load(tmp_path / folder / "phantom_002.npz") as content:
            return content["probabilities"].astype(np.float32)

    mean = (probabilities("multiclass") + probabilities("dual_binary")) / 2
    np.testing.assert_allclose(probabilities("chosen"), mean, rtol=0, atol=2e-3)
    chosen = read_image(tmp_path / "chosen" / "phantom_002.nii.gz")[0]
    np.testing.assert_array_equal(chosen, read_image(tmp_path / "asked" / "phantom_002.nii.gz")[0])
    # the label map: the ensemble's argmax (the Python API's, before post-processing), post-processed with the steps
    raw = Predictor.from_folder(DATASET, PAIR, folds=[0], checkpoint="latest", postprocessing="none", **FAST).predict(
        inputs / "phantom_002_0000.nii.gz")
    np.testing.assert_array_equal(chosen, apply_steps(raw.label, raw.geometry.spacing, steps))


def _steps_file(tmp_path, steps):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(steps))
    return path


def test_bad_ensembles_in_inference_json_are_named(results_copy):
    path = results_copy / "inference.json"
    for content, message in (({"pipeline": [], "folds": [0]}, "a pipeline is a name, an ensemble a list"),
                             ({"pipeline": ["multiclass", "multiclass"], "folds": [0]}, "two or more different"),
                             ({"pipeline": 3, "folds": [0]}, r"expected \{\"pipeline\": NAME or \[NAME, NAME, ...\]")):
        path.write_text(json.dumps(content))
        with pytest.raises(LiversegError, match=f"inference.json: .*{message}"):
            read_inference_config(path)
