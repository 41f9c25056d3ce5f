"""Model selection: on constructed cross-validation predictions whose scores are known by hand, and end to end
on real tiny trained pipelines (files written, inference.json, errors, the command)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from liverseg.cli.find_best import main
from liverseg.errors import LiversegError
from liverseg.inference.models import read_inference_config
from liverseg.inference.predictor import canonical_geometry
from liverseg.io.atomic import read_json
from liverseg.io.dataset import RawDataset
from liverseg.io.images import read_image, write_image
from liverseg.postprocessing import DEFAULT_STEPS
from liverseg.selection.find_best import FIND_BEST_FILE, find_best, select

SHAPE, SPACING = (8, 16, 16), (2.0, 1.0, 1.0)
ATLAS = list(DEFAULT_STEPS)
# Other tests may register steps of their own in this process; they are tried as optional steps too.
BUILT_IN = {*ATLAS, "open_liver_border_band", "remove_small_lesions"}


def _reference():
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:6, 4:12, 4:12] = 1  # whole liver 4 * 8 * 8 = 256 voxels
    label[3:5, 6:8, 6:8] = 2  # one lesion of 8 voxels (16 mm^3 = 0.016 ml)
    return label


def _one_hot(label):
    return np.stack([label == k for k in range(3)]).astype(np.float32)


def _scenario(root):
    """References and two pipelines' predictions of two identical cases.

    ``a``: right but for a stray liver blob of 8 voxels (argmax of soft probabilities there);
    ``b``: the lesion called liver (softly). Their mean is exactly the reference.
    """
    reference = _reference()
    a = reference.copy()
    a[0:2, 0:2, 0:2] = 1
    pa = _one_hot(a)
    pa[:, 0:2, 0:2, 0:2] = np.array([0.4, 0.6, 0.0])[:, None, None, None]
    b = np.where(reference == 2, 1, reference).astype(np.uint8)
    pb = _one_hot(b)
    pb[:, 3:5, 6:8, 6:8] = np.array([0.0, 0.6, 0.4])[:, None, None, None]
    geometry = canonical_geometry(SHAPE, SPACING)
    references = {}
    for case in ("case_1", "case_2"):
        references[case] = root / "labels" / f"{case}.nii.gz"
        write_image(reference, geometry, references[case])
        for name, label, probabilities in (("a", a, pa), ("b", b, pb)):
            write_image(label, geometry, root / name / f"{case}.nii.gz")
            np.savez_compressed(root / name / f"{case}.npz", probabilities=probabilities.astype(np.float16))
    return {"a": root / "a", "b": root / "b"}, references


def _row(results, name):
    return next(r for r in results if r.candidate.name == name)


def test_the_best_candidate_by_hand_computed_scores_is_chosen(tmp_path):
    folders, references = _scenario(tmp_path)
    results, choice, cases = select(folders, references, {"a": ATLAS, "b": ATLAS}, num_workers=2, cache=tmp_path)
    assert [r.candidate.name for r in results] == ["a+b", "a", "b"] and cases == ["case_1", "case_2"]
    a, b, ensemble = _row(results, "a").score, _row(results, "b").score, _row(results, "a+b").score
    assert a.liver_dice == pytest.approx(2 * 256 / (256 + 264)) and a.tumour_dice == 1.0 and a.lesion_f1 == 1.0
    assert a.criterion == pytest.approx((2 * 256 / 520 + 1) / 2)
    assert (b.liver_dice, b.tumour_dice, b.lesion_f1, b.criterion) == (1.0, 0.0, 0.0, 0.5)
    assert (ensemble.criterion, ensemble.lesion_f1, ensemble.n_cases) == (1.0, 1.0, 2)
    # on the exact reference, every plan step changes nothing (kept); the optional ones break the 16 mm^3 lesion
    assert [(d.step["name"], d.outcome) for d in choice.decisions if d.step["name"] in BUILT_IN] == [
        *((s, "kept") for s in ATLAS), ("open_liver_border_band", "not added"), ("remove_small_lesions", "not added")]
    assert [s["name"] for s in choice.steps] == ATLAS and choice.score.criterion == 1.0


def test_a_helping_step_is_kept_and_a_hurting_one_removed(tmp_path):
    folders, references = _scenario(tmp_path)
    hurting = {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.05}}  # removes the true lesion
    plan = [ATLAS[0], hurting, "close_tumour"]
    results, choice, _ = select(folders, references, {"a": plan, "b": plan}, ensembles=False)
    assert [r.candidate.name for r in results] == ["a", "b"]
    decisions = {d.step["name"]: d for d in choice.decisions}
    keep_largest = decisions["largest_liver_component_fill_holes"]
    # with every step: blob gone but lesion gone too; without the component step the blob stays as well
    assert keep_largest.outcome == "kept" and keep_largest.with_step.criterion == 0.5
    assert keep_largest.without_step.criterion == pytest.approx((2 * 256 / 520 + 0) / 2)
    small = decisions["remove_small_lesions"]
    assert small.outcome == "removed" and (small.with_step.criterion, small.without_step.criterion) == (0.5, 1.0)
    assert decisions["close_tumour"].outcome == "kept"  # changes nothing
    assert [s["name"] for s in choice.steps] == ["largest_liver_component_fill_holes", "close_tumour"]
    assert choice.score.criterion == 1.0 and choice.start_score.criterion == 0.5
    optional = [(d.step["name"], d.outcome) for d in choice.decisions[3:] if d.step["name"] in BUILT_IN]
    assert optional == [("open_liver_border_band", "not added"), ("remove_tumour_outside_liver", "not added")]


def test_only_cases_every_pipeline_predicted_count(tmp_path):
    folders, references = _scenario(tmp_path)
    (folders["b"] / "case_2.nii.gz").unlink()
    results, _, cases = select(folders, references, {"a": [], "b": []}, try_optional_steps=False)
    assert cases == ["case_1"] and {r.score.n_cases for r in results} == {1}
    (folders["b"] / "case_1.npz").unlink()
    with pytest.raises(LiversegError, match=r"no case has cross-validation predictions from every pipeline \(a, b\)"):
        select(folders, references, {"a": [], "b": []})


def _dice(reference, prediction):
    return 2 * np.count_nonzero(reference & prediction) / (np.count_nonzero(reference) + np.count_nonzero(prediction))


def test_find_best_on_trained_pipelines_writes_its_choice_for_prediction(trained_copy):
    env = trained_copy
    result = find_best(env.dataset, device="cpu", num_workers=2)
    names = [r.candidate.name for r in result.candidates]
    assert sorted(names) == ["dual_binary", "dual_binary+multiclass", "multiclass"]
    assert result.folds == [0, 1] and result.cases == sorted(c for s in env.splits for c in s["val"])

    # the multiclass row, recomputed here from its crossval label maps and the raw labels
    raw = RawDataset(env.raw / env.dataset)
    liver, tumour = [], []
    for case in result.cases:
        reference = read_image(raw.label_file(case))[0]
        predicted = read_image(env.dataset_dir / "multiclass" / "crossval" / f"{case}.nii.gz")[0]
        liver.append(_dice(reference > 0, predicted > 0))
        tumour.append(1.0 if not (reference == 2).any() and not (predicted == 2).any() else
                      _dice(reference == 2, predicted == 2))
    row = next(r for r in result.candidates if r.candidate.name == "multiclass").score
    assert row.liver_dice == pytest.approx(np.mean(liver)) and row.tumour_dice == pytest.approx(np.mean(tumour))

    config = read_inference_config(env.dataset_dir / "inference.json")
    best = result.best.candidate
    assert config["pipeline"] == (best.members[0] if len(best.members) == 1 else list(best.members))
    assert config["folds"] == [0, 1] and config["checkpoint"] == "best"
    assert config["postprocessing"] == result.postprocessing.steps
    report = read_json(env.dataset_dir / FIND_BEST_FILE)
    assert [c["name"] for c in report["candidates"]] == names and report["best"]["name"] == best.name
    assert report["candidates"][0]["criterion"] == pytest.approx(result.best.score.criterion)
    assert set(report["per_case"]["multiclass"]) == set(result.cases)
    table = result.table()
    assert f"| **{best.name}** (best) |" in table and "| step | trial | criterion with" in table
    assert not list(env.dataset_dir.glob(".find_best_*"))  # the scratch folder is gone

    only = find_best(env.dataset, ["multiclass"], folds=["1"], device="cpu", num_workers=0, try_optional_steps=False)
    assert [r.candidate.name for r in only.candidates] == ["multiclass"] and only.cases == sorted(env.splits[1]["val"])
    assert read_inference_config(env.dataset_dir / "inference.json")["folds"] == [1]


def test_clear_errors(trained_copy):
    env = trained_copy
    tumour_fold_1 = env.dataset_dir / "dual_binary" / "tumour" / "fold_1"
    shutil.rmtree(tumour_fold_1)
    with pytest.raises(LiversegError, match=r"dual_binary lacks fold\(s\) 1 \(tumour: 1\)\. Train them with"):
        find_best(env.dataset, device="cpu")
    with pytest.raises(LiversegError, match="pipeline\\(s\\) cascade of Dataset961_SelectPhantom are not trained; "
                       "trained: dual_binary, multiclass"):
        find_best(env.dataset, ["cascade"])
    with pytest.raises(LiversegError, match=r"fold all cannot be used for model selection: .*splits.json has folds 0 to 1"):
        find_best(env.dataset, folds=["all"])
    with pytest.raises(LiversegError, match="fold 2 cannot be used"):
        find_best(env.dataset, folds=[2])
    for pipeline in ("dual_binary", "multiclass"):
        shutil.rmtree(env.dataset_dir / pipeline)
    with pytest.raises(LiversegError, match="nothing is trained; train the pipelines' folds with liverseg_train"):
        find_best(env.dataset)
    with pytest.raises(LiversegError, match="no trained models for dataset 'Unknown'"):
        find_best("Unknown")


def test_the_command_prints_the_table_and_exits_2_on_errors(trained_copy, capsys):
    env = trained_copy
    assert main(["-d", "SelectPhantom", "-c", "multiclass", "--no-ensembles", "--device", "cpu", "-np", "0",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| **multiclass** (best) |" in out and "Chosen: multiclass with post-processing" in out
    assert json.loads((env.dataset_dir / "inference.json").read_text())["pipeline"] == "multiclass"
    assert main(["-d", "SelectPhantom", "-f", "7"]) == 2
    assert "error: fold 7 cannot be used for model selection" in capsys.readouterr().err
