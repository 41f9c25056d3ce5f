"""Running named steps in order with parameters, and loading step lists for --postprocessing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.postprocessing import (
    DEFAULT_STEPS,
    POSTPROCESSING,
    apply_steps,
    available_steps,
    load_postprocessing,
    normalise_steps,
)

SPACING = (2.0, 1.0, 1.0)  # 0.002 ml per voxel
BUILT_IN = ["close_tumour", "largest_liver_component_fill_holes", "open_liver_border_band",
            "remove_small_lesions", "remove_tumour_outside_liver"]


def _two_halves() -> np.ndarray:
    """Liver with a lesion split by one liver column into halves of 30 voxels (0.06 ml) each."""
    label = np.zeros((8, 30, 30), np.uint8)
    label[1:7, 3:27, 3:27] = 1
    label[3:5, 10:15, 10:13] = 2
    label[3:5, 10:15, 14:17] = 2
    return label


def test_built_in_steps_are_registered():
    assert set(BUILT_IN) <= set(POSTPROCESSING.names())
    assert set(BUILT_IN) <= set(available_steps())
    assert set(DEFAULT_STEPS) <= set(BUILT_IN)


def test_steps_run_in_the_given_order():
    label = _two_halves()
    whole = label.copy()
    whole[3:5, 10:15, 13] = 2  # the closing joins the halves: 70 voxels = 0.14 ml
    small = {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.1}}
    # Closing first: one lesion of 0.14 ml survives the 0.1 ml minimum.
    np.testing.assert_array_equal(apply_steps(label, SPACING, ["close_tumour", small]), whole)
    # Size filter first: both 0.06 ml halves go (to liver), nothing is left to close.
    no_tumour = np.where(label == 2, 1, label).astype(np.uint8)
    np.testing.assert_array_equal(apply_steps(label, SPACING, [small, "close_tumour"]), no_tumour)


def test_parameters_reach_the_step():
    label = _two_halves()  # two lesions of 0.06 ml
    removed = np.where(label == 2, 1, label)
    keep = {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.059}}
    np.testing.assert_array_equal(apply_steps(label, SPACING, [keep]), label)
    drop = {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.061}}
    np.testing.assert_array_equal(apply_steps(label, SPACING, [drop]), removed)
    np.testing.assert_array_equal(apply_steps(label, SPACING, ["remove_small_lesions"]), removed)  # default 0.1 ml


def test_no_steps_return_an_equal_copy():
    label = _two_halves()
    out = apply_steps(label, SPACING, [])
    np.testing.assert_array_equal(out, label)
    out[0, 0, 0] = 2
    assert label[0, 0, 0] == 0


def test_unknown_step_lists_the_registered_names():
    with pytest.raises(LiversegError, match="unknown post-processing step 'fill_holes'") as error:
        apply_steps(_two_halves(), SPACING, ["fill_holes"])
    for name in BUILT_IN:
        assert name in str(error.value)


def test_unknown_parameter_lists_the_step_parameters():
    with pytest.raises(LiversegError, match=r"close_tumour\) has no parameter size; its parameters: kernel, radius_mm"):
        apply_steps(_two_halves(), SPACING, [{"name": "close_tumour", "params": {"size": 3}}])


@pytest.mark.parametrize("steps, message", [
    ("close_tumour", "expected a list of steps"),
    ([{"params": {}}], "step 1 must be a step name or"),
    ([{"name": "close_tumour", "params": [1, 3, 3]}], "params must be an object"),
    ([{"name": "close_tumour", "kernel": [1, 3, 3]}], "step 1 must be a step name or"),
])
def test_malformed_step_lists_are_user_errors(steps, message):
    with pytest.raises(LiversegError, match=message):
        normalise_steps(steps)


def test_bad_label_and_spacing_are_user_errors():
    with pytest.raises(LiversegError, match="holds values"):
        apply_steps(np.full((2, 2, 2), 3, np.uint8), SPACING, [])
    with pytest.raises(LiversegError, match="spacing must be three positive numbers"):
        apply_steps(_two_halves(), (2.0, 0.0, 1.0), [])


_SEEN: dict[str, object] = {}


def _probability_threshold(label, spacing, probabilities=None, cutoff=0.5):
    """A user step: tumour voxels with a tumour probability below ``cutoff`` become liver."""
    _SEEN["shape"] = None if probabilities is None else probabilities.shape
    out = label.copy()
    out[(label == 2) & (probabilities[2] < cutoff)] = 1
    return out


if "test_probability_threshold" not in POSTPROCESSING:
    POSTPROCESSING.register("test_probability_threshold")(_probability_threshold)


def _needs_a_cutoff(label, spacing, cutoff):
    return label.copy()


if "test_needs_a_cutoff" not in POSTPROCESSING:
    POSTPROCESSING.register("test_needs_a_cutoff")(_needs_a_cutoff)


def test_missing_required_parameter_is_a_user_error():
    with pytest.raises(LiversegError, match=r"step 1 \(test_needs_a_cutoff\): missing a required argument: 'cutoff'"):
        normalise_steps(["test_needs_a_cutoff"])
    assert normalise_steps([{"name": "test_needs_a_cutoff", "params": {"cutoff": 1}}])[0]["params"] == {"cutoff": 1}


def test_step_declaring_probabilities_receives_them():
    label = _two_halves()
    probabilities = np.zeros((3,) + label.shape, np.float32)
    probabilities[2, :, :, 14:] = 0.9  # only the right half is confident
    steps = [{"name": "test_probability_threshold", "params": {"cutoff": 0.5}}]
    out = apply_steps(label, SPACING, steps, probabilities)
    expected = label.copy()
    expected[3:5, 10:15, 10:13] = 1
    np.testing.assert_array_equal(out, expected)
    assert _SEEN["shape"] == probabilities.shape
    with pytest.raises(LiversegError, match="do not match the label map"):
        apply_steps(label, SPACING, [], probabilities[:, :-1])


def test_load_none_and_plan():
    assert load_postprocessing("none", DEFAULT_STEPS) == []
    plan = ["close_tumour", {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.2}}]
    assert load_postprocessing("plan", plan) == [
        {"name": "close_tumour", "params": {}},
        {"name": "remove_small_lesions", "params": {"min_volume_ml": 0.2}},
    ]
    assert [s["name"] for s in load_postprocessing("plan")] == list(DEFAULT_STEPS)


@pytest.mark.parametrize("wrap", [False, True])
def test_load_from_a_json_file(tmp_path, wrap):
    steps = ["largest_liver_component_fill_holes",
             {"name": "remove_tumour_outside_liver", "params": {"mode": "dual_binary"}},
             {"name": "close_tumour", "params": {"kernel": [1, 5, 5]}}]
    path = tmp_path / "post.json"
    path.write_text(json.dumps({"steps": steps} if wrap else steps))
    loaded = load_postprocessing(path)
    assert [s["name"] for s in loaded] == [s if isinstance(s, str) else s["name"] for s in steps]
    assert loaded[2]["params"] == {"kernel": [1, 5, 5]}
    apply_steps(_two_halves(), SPACING, loaded)  # the loaded list runs


def test_load_errors_name_the_file_and_the_step(tmp_path):
    with pytest.raises(LiversegError, match="post-processing file not found; give 'none', 'plan'"):
        load_postprocessing(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('["close_tumour",')
    with pytest.raises(LiversegError, match=r"broken.json: not valid JSON"):
        load_postprocessing(broken)
    bad_value = tmp_path / "bad_value.json"
    bad_step = {"name": "remove_tumour_outside_liver", "params": {"mode": "binary"}}
    bad_value.write_text(json.dumps(["close_tumour", bad_step]))
    with pytest.raises(LiversegError, match=r"bad_value.json: step 2 \(remove_tumour_outside_liver\): mode must be"):
        load_postprocessing(bad_value)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"steps": ["close_holes"]}))
    with pytest.raises(LiversegError, match=r"unknown.json: step 1: unknown post-processing step 'close_holes'"):
        load_postprocessing(unknown)
