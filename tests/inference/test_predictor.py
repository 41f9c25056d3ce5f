"""The Predictor on real tiny trained models: inputs, geometry, agreement with training, pipelines, post-processing."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.evaluation.metrics import dice
from liverseg.inference.predictor import Predictor, canonical_geometry
from liverseg.io.images import read_image
from liverseg.postprocessing import apply_steps
from liverseg.training.validation import VALIDATION_FOLDER

FAST = {"tta": False, "postprocessing": "none"}


def _image(trained, k: int = 0) -> sitk.Image:
    return sitk.ReadImage(str(trained.heldout / f"phantom_{k:03d}_0000.nii.gz"))


def _decided_argmax(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of float16 probabilities and where it is certain (top two more than float16 rounding apart)."""
    p = probabilities.astype(np.float32)
    top = np.sort(p, axis=0)
    return p.argmax(0), top[-1] - top[-2] > 2e-3


def _same_header(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-12)


def test_a_simpleitk_image_a_path_and_a_numpy_array_give_the_same_labels(trained_env):
    predictor = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], **FAST)
    image = _image(trained_env)
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LPS"
    from_sitk = predictor.predict(image)
    _same_header(from_sitk.to_sitk(), image)
    assert from_sitk.label.shape == sitk.GetArrayFromImage(image).shape and from_sitk.label.dtype == np.uint8
    from_path = predictor.predict(trained_env.heldout / "phantom_000_0000.nii.gz")
    np.testing.assert_array_equal(from_path.label, from_sitk.label)

    array = sitk.GetArrayFromImage(image)  # (z, y, x), identity direction
    spacing = image.GetSpacing()[::-1]
    from_numpy = predictor.predict(array, spacing=spacing)
    np.testing.assert_array_equal(from_numpy.label, from_sitk.label)
    with_channel = predictor.predict(array[None], geometry=canonical_geometry(array.shape, spacing, image.GetOrigin()))
    np.testing.assert_array_equal(with_channel.label, from_sitk.label)
    assert with_channel.lesion_report["lesions"] == from_sitk.lesion_report["lesions"]  # same origin, same world centroids


@pytest.mark.parametrize("orientation", ["RAS", "LPI", "ASL"])
def test_a_flipped_or_permuted_image_gets_the_same_labels_in_its_own_geometry(trained_env, orientation):
    predictor = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], tta=False)
    image = _image(trained_env, 1)
    stored = sitk.DICOMOrient(image, orientation)  # the same voxels in the world, stored in another order
    assert stored.GetDirection() != image.GetDirection()
    prediction = predictor.predict(stored)
    _same_header(prediction.to_sitk(), stored)
    reference = predictor.predict(image)
    np.testing.assert_array_equal(prediction.label, reference.label)  # canonical arrays agree
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(prediction.to_sitk(), "LPS"))
    np.testing.assert_array_equal(back, reference.label)


def test_labels_and_probabilities_equal_the_training_validation_of_the_same_weights(trained_env):
    fold_dir = trained_env.dataset_dir / "multiclass" / "multiclass" / "fold_0"
    predictor = Predictor.from_folder(fold_dir, checkpoint="latest", **FAST)  # validation runs the final weights
    validation = fold_dir / VALIDATION_FOLDER
    cases = sorted(p.name.removesuffix(".npz") for p in validation.glob("*.npz"))
    assert cases
    for case in cases:
        prediction = predictor.predict(trained_env.raw / trained_env.dataset / "imagesTr" / f"{case}_0000.nii.gz",
                                       keep_probabilities=True)
        written, _ = read_image(validation / f"{case}.nii.gz")
        np.testing.assert_array_equal(prediction.label, written)
        saved = np.load(validation / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(prediction.probabilities.astype(np.float32), saved.astype(np.float32), atol=1e-3)


def test_two_folds_average_their_probabilities(trained_env):
    image = _image(trained_env, 2)
    single = [Predictor.from_folder(trained_env.dataset, "multiclass", folds=[k], **FAST).predict(image, keep_probabilities=True)
              for k in (0, 1)]
    both = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0, 1], **FAST).predict(image, keep_probabilities=True)
    p0, p1, p01 = (p.probabilities.astype(np.float32) for p in (*single, both))
    np.testing.assert_allclose(p01, (p0 + p1) / 2, atol=2e-3)
    assert np.abs(p01 - p0).max() > 0.01 and np.abs(p01 - p1).max() > 0.01
    argmax, decided = _decided_argmax(both.probabilities)
    np.testing.assert_array_equal(both.label[decided], argmax[decided])


def test_dual_binary_merges_its_two_models_as_their_single_predictions_say(trained_env):
    image = _image(trained_env, 0)
    pipeline_dir = trained_env.dataset_dir / "dual_binary"
    merged = Predictor.from_folder(pipeline_dir, folds=[0], **FAST).predict(image, keep_probabilities=True)
    liver = Predictor.from_folder(pipeline_dir / "liver", folds=[0], **FAST).predict(image, keep_probabilities=True)
    tumour = Predictor.from_folder(pipeline_dir / "tumour", folds=[0], **FAST).predict(image, keep_probabilities=True)
    p_liver = liver.probabilities[1].astype(np.float32)  # the liver model's class is written as label 1
    p_tumour = tumour.probabilities[2].astype(np.float32)  # the tumour model's as label 2
    assert not tumour.probabilities[1].any() and not liver.probabilities[2].any()
    assert merged.probabilities.shape == (3, *merged.label.shape)
    np.testing.assert_allclose(merged.probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)
    decided = (np.abs(p_liver - 0.5) > 2e-3) & (np.abs(p_tumour - 0.5) > 2e-3)  # away from float16 rounding at 0.5
    expected = np.where(p_liver > 0.5, np.where(p_tumour > 0.5, 2, 1), 0)
    np.testing.assert_array_equal(merged.label[decided], expected[decided])
    assert set(np.unique(merged.label)) <= {0, 1, 2}


def test_the_cascade_gives_a_three_class_map_in_the_input_geometry(trained_env):
    image = _image(trained_env, 0)
    predictor = Predictor.from_folder(trained_env.dataset, "cascade", **FAST)
    assert predictor.mirror_axes == {"coarse": None, "fine": None}
    prediction = predictor.predict(image, keep_probabilities=True)
    _same_header(prediction.to_sitk(), image)
    assert prediction.probabilities.shape == (3, *prediction.label.shape)
    np.testing.assert_allclose(prediction.probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)
    argmax, decided = _decided_argmax(prediction.probabilities)
    np.testing.assert_array_equal(prediction.label[decided], argmax[decided])
    assert set(np.unique(prediction.label)) <= {0, 1, 2}


def test_mirroring_is_in_plane_on_thick_slices_and_on_every_axis_otherwise(trained_env):
    predictor = Predictor.from_folder(trained_env.dataset, "cascade")
    # fine grid: z 3.1 mm over 1.1 mm in-plane; coarse grid: 3.1 over 2.2 mm, under the 2x anisotropy threshold
    assert predictor.mirror_axes == {"coarse": (0, 1, 2), "fine": (1, 2)}
    # dual_binary's liver model was trained without mirroring (its plan's "mirroring": "none"): one pass
    assert Predictor.from_folder(trained_env.dataset, "dual_binary").mirror_axes == {"liver": None, "tumour": (1, 2)}
    assert Predictor.from_folder(trained_env.dataset, "cascade", mirror_axes=[2]).mirror_axes == {"coarse": (2,), "fine": (2,)}
    with pytest.raises(LiversegError, match="mirror axes"):
        Predictor.from_folder(trained_env.dataset, "cascade", mirror_axes=[3])
    with_tta = predictor.predict(_image(trained_env), keep_probabilities=True)
    without = Predictor.from_folder(trained_env.dataset, "cascade", tta=False).predict(_image(trained_env), keep_probabilities=True)
    assert not np.array_equal(with_tta.probabilities, without.probabilities)


def test_postprocessing_none_plan_and_a_list_of_steps(trained_env, tmp_path):
    image = _image(trained_env, 1)
    raw = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], tta=False, postprocessing="none")
    plain = raw.predict(image, keep_probabilities=True)
    probabilities = plain.probabilities.astype(np.float32)
    planned = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], tta=False, postprocessing="plan")
    steps = list(trained_env.plan.pipeline("multiclass").postprocessing)
    assert [s["name"] for s in planned.postprocessing] == steps
    spacing = plain.geometry.spacing
    np.testing.assert_array_equal(planned.predict(image).label, apply_steps(plain.label, spacing, steps, probabilities))
    listed = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], tta=False,
                                   postprocessing=[{"name": "close_tumour", "params": {"kernel": [1, 5, 5]}}])
    expected = apply_steps(plain.label, spacing, [{"name": "close_tumour", "params": {"kernel": [1, 5, 5]}}])
    np.testing.assert_array_equal(listed.predict(image).label, expected)
    with pytest.raises(LiversegError, match="no_such_step"):
        Predictor.from_folder(trained_env.dataset, "multiclass", postprocessing=["no_such_step"])


def test_the_lesion_report_counts_the_lesions_of_the_written_label(trained_env):
    prediction = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[1], tta=False).predict(_image(trained_env, 2))
    label = prediction.label
    _, count = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
    report = prediction.lesion_report
    assert report["num_lesions"] == count
    voxel_ml = np.prod(prediction.geometry.spacing) / 1000
    assert report["tumour_volume_ml"] == pytest.approx(np.count_nonzero(label == 2) * voxel_ml)
    assert report["liver_volume_ml"] == pytest.approx(np.count_nonzero(label > 0) * voxel_ml)
    lesion_map = prediction.lesion_map()
    assert lesion_map.max() == count and np.array_equal(lesion_map > 0, label == 2)
    tumour = prediction.tumour_probability.astype(np.float64)
    for lesion in report["lesions"]:
        mean = tumour[lesion_map == lesion["id"]].mean()
        assert lesion["mean_tumour_probability"] == pytest.approx(mean, abs=1e-3)
        assert lesion["uncertainty"] == pytest.approx(1 - mean, abs=1e-3)


def test_bf16_and_fp32_give_the_same_dice(trained_env):
    image = trained_env.raw / trained_env.dataset / "imagesTr" / "phantom_000_0000.nii.gz"
    reference, _ = read_image(trained_env.raw / trained_env.dataset / "labelsTr" / "phantom_000.nii.gz")
    scores = {}
    for precision in (True, False):
        predictor = Predictor.from_folder(trained_env.dataset, "multiclass", use_bf16=precision, **FAST)
        label = predictor.predict(image).label
        scores[precision] = [dice(reference >= k, label >= k) for k in (1, 2)]
    assert scores[True] == pytest.approx(scores[False], abs=0.01)


@pytest.mark.parametrize("make, message", [
    (lambda a: np.stack([a, a]), r"has 2 channel\(s\) but the model expects 1 \(MRI\)"),
    (lambda a: a[0], r"must be \(z, y, x\) or \(channels, z, y, x\); got shape"),
    (lambda a: a[None, None], r"must be \(z, y, x\) or \(channels, z, y, x\)"),
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a), "NaN or infinite"),
])
def test_bad_arrays_are_user_errors_naming_the_case(trained_env, make, message):
    predictor = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], **FAST)
    array = sitk.GetArrayFromImage(_image(trained_env)).astype(np.float32)
    with pytest.raises(LiversegError, match=message) as error:
        predictor.predict(make(array), spacing=(3.0, 1.0, 1.0), case_id="case_x")
    assert "case_x" in str(error.value)


def test_a_numpy_array_needs_its_spacing_and_bad_options_are_refused(trained_env):
    predictor = Predictor.from_folder(trained_env.dataset, "multiclass", folds=[0], **FAST)
    array = sitk.GetArrayFromImage(_image(trained_env))
    with pytest.raises(LiversegError, match="needs its spacing"):
        predictor.predict(array)
    with pytest.raises(LiversegError, match="needs its spacing"):
        predictor.predict(array, spacing=(0, 1, 1))
    with pytest.raises(LiversegError, match="^case: expected a 3D single-channel image, got dimension 2"):
        predictor.predict(_image(trained_env)[:, :, 0])
    with pytest.raises(LiversegError, match="step fraction"):
        Predictor.from_folder(trained_env.dataset, "multiclass", step=0)
    with pytest.raises(LiversegError, match="batch_windows"):
        Predictor.from_folder(trained_env.dataset, "multiclass", batch_windows=0)


@pytest.mark.slow
def test_a_small_phantom_model_scores_as_in_its_training_validation_and_keeps_every_grid(tmp_path, monkeypatch):
    """Train on `small` phantoms; the predictor reproduces the training validation's Dice, bf16 matches fp32,
    and held-out scans (one stored flipped) get label maps on exactly their own grids."""
    from liverseg.data.phantom import generate_dataset
    from liverseg.inference.run import predict_folder
    from liverseg.io.atomic import read_json
    from liverseg.planning.plan_dataset import plan_dataset
    from liverseg.training.run import train

    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(tmp_path / name))
    dataset = "Dataset956_SmallPredict"
    generate_dataset(tmp_path / "raw" / dataset, 6, size="small", num_workers=2)
    plan_dataset(dataset, num_workers=2, preset="fast", verify=False)
    folder = train(dataset, "multiclass", 0, epochs=3, iterations_per_epoch=20, validation_iterations=2, num_workers=1,
                   device="cpu")[0]
    summary = read_json(folder / VALIDATION_FOLDER / "summary.json")
    scores = {}
    for use_bf16 in ("auto", False):
        predictor = Predictor.from_folder(dataset, "multiclass", folds=[0], checkpoint="latest", use_bf16=use_bf16, **FAST)
        for row in summary["cases"]:
            image = tmp_path / "raw" / dataset / "imagesTr" / f"{row['case']}_0000.nii.gz"
            reference, _ = read_image(tmp_path / "raw" / dataset / "labelsTr" / f"{row['case']}.nii.gz")
            prediction = predictor.predict(image, keep_probabilities=True)
            label = prediction.label
            scores[use_bf16, row["case"]] = [dice(reference == k, label == k) for k in (1, 2)]
            if use_bf16 == "auto":  # the training validated with the same precision
                written, _ = read_image(folder / VALIDATION_FOLDER / f"{row['case']}.nii.gz")
                np.testing.assert_array_equal(label, written)
                saved = np.load(folder / VALIDATION_FOLDER / f"{row['case']}.npz")["probabilities"].astype(np.float32)
                np.testing.assert_allclose(prediction.probabilities.astype(np.float32), saved, atol=1e-3)
                expected = [np.nan if row["dice"][str(k)] is None else row["dice"][str(k)] for k in (1, 2)]
                np.testing.assert_allclose(scores[use_bf16, row["case"]], expected, atol=1e-4)
    for row in summary["cases"]:
        np.testing.assert_allclose(scores["auto", row["case"]], scores[False, row["case"]], atol=0.01)

    heldout = generate_dataset(tmp_path / "heldout", 3, seed=7, size="small") / "imagesTr"
    stored = sitk.DICOMOrient(sitk.ReadImage(str(heldout / "phantom_000_0000.nii.gz")), "RAS")
    sitk.WriteImage(stored, str(heldout / "flipped_0000.nii.gz"))
    run = predict_folder(heldout, tmp_path / "predictions", model=dataset, pipeline="multiclass", folds=[0], num_workers=1)
    assert sorted(run.predicted) == ["flipped", "phantom_000", "phantom_001", "phantom_002"]
    for case in run.predicted:
        _same_header(sitk.ReadImage(str(tmp_path / "predictions" / f"{case}.nii.gz")),
                     sitk.ReadImage(str(heldout / f"{case}_0000.nii.gz")))
