"""Combine rules on constructed probabilities: argmax, dual-binary merge, the cascade's box and paste."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.inference.combine import (COMBINE_RULES, Combined, argmax, cascade_paste, dual_binary_merge, get_combine_rule,
                                        label_probabilities, stage_box)
from liverseg.planning.parts import NetworkTopology, RegionOfInterest, SamplingSpec, TrainingSchedule
from liverseg.planning.plans import ModelPlan, PipelineSpec

TOPOLOGY = NetworkTopology("unet", (4, 8, 8), ((1, 3, 3), (3, 3, 3)), ((1, 1, 1), (1, 2, 2)), (4, 8))
SCHEDULE = TrainingSchedule(1, 1, 1, "sgd_nesterov", 0.01, 0.99, 3e-5, "poly", 0.9, "dice_ce")


def _model(name: str, learns: dict[int, int], preprocessing: str = "fullres", roi: RegionOfInterest | None = None) -> ModelPlan:
    return ModelPlan(name, learns, preprocessing, "liver", TOPOLOGY, 2, SamplingSpec(), SCHEDULE, roi=roi)


def _pipeline(combine: str, *models: ModelPlan) -> PipelineSpec:
    return PipelineSpec("p", "", True, "", combine, (), models)


def _grid(shape, spacing=(1.0, 1.0, 1.0), crop=((0, 30), (0, 40), (0, 40))) -> dict:
    """Properties of a preprocessed grid; ``crop`` is the box in original voxels, which every grid of a case shares."""
    crop = [list(c) for c in crop]
    return {"shape_after_resampling": list(shape), "spacing_after_resampling": list(spacing), "crop_bbox": crop}


class Case:
    """CaseModels over fixed probability maps; each grid is also the original grid (mapping back is the identity)."""

    def __init__(self, probabilities: dict[str, np.ndarray], grids: dict[str, dict], num_labels: int = 3) -> None:
        self.maps, self.grids, self.num_labels = probabilities, grids, num_labels
        self.asked: list[tuple[str, object]] = []

    def probabilities(self, model, box=None):
        self.asked.append((model, box))
        p = self.maps[model]
        return (p if box is None else p[(slice(None), *box)]).astype(np.float32)

    def grid(self, model):
        return self.grids[model]

    def to_original(self, model, probabilities):
        assert probabilities.shape[1:] == tuple(self.grids[model]["shape_after_resampling"])
        return probabilities.astype(np.float32)


def _softmax_like(*channels) -> np.ndarray:
    p = np.stack([np.asarray(c, dtype=np.float32) for c in channels])
    return p / p.sum(0, keepdims=True)


def test_argmax_takes_the_most_probable_label_and_averages_models():
    a = _softmax_like([[[0.7, 0.1, 0.2]]], [[[0.2, 0.6, 0.2]]], [[[0.1, 0.3, 0.6]]])
    b = _softmax_like([[[0.1, 0.1, 0.2]]], [[[0.8, 0.6, 0.2]]], [[[0.1, 0.3, 0.6]]])
    grids = {"m1": _grid((1, 1, 3)), "m2": _grid((1, 1, 3))}
    one = argmax(_pipeline("argmax", _model("m1", {1: 1, 2: 2})), Case({"m1": a}, grids))
    assert one.label.tolist() == [[[0, 1, 2]]] and one.label.dtype == np.uint8
    np.testing.assert_allclose(one.tumour_probability, a[2])
    two = argmax(_pipeline("argmax", _model("m1", {1: 1, 2: 2}), _model("m2", {1: 1, 2: 2})),
                 Case({"m1": a, "m2": b}, grids))
    np.testing.assert_allclose(two.probabilities, (a + b) / 2, rtol=1e-6)
    assert two.label.tolist() == [[[1, 1, 2]]]  # voxel 0: mean background 0.4 < mean liver 0.5


def test_a_binary_model_writes_its_class_as_the_label_it_stands_for():
    p = _softmax_like([[[0.9, 0.2]]], [[[0.1, 0.8]]])
    tumour = label_probabilities(p, _model("t", {2: 1}), 3)
    np.testing.assert_allclose(tumour, [p[0], np.zeros_like(p[0]), p[1]])
    liver = label_probabilities(p, _model("l", {1: 1, 2: 1}), 3)
    np.testing.assert_allclose(liver, [p[0], p[1], np.zeros_like(p[0])])
    combined = argmax(_pipeline("argmax", _model("t", {2: 1})), Case({"t": p}, {"t": _grid((1, 1, 2))}))
    assert combined.label.tolist() == [[[0, 2]]]


def test_dual_binary_merge_puts_tumour_only_inside_the_liver_mask():
    p_liver = np.array([[[0.9, 0.9, 0.1, 0.4, 0.6]]], dtype=np.float32)
    p_tumour = np.array([[[0.9, 0.1, 0.9, 0.4, 0.51]]], dtype=np.float32)
    liver, tumour = _model("liver", {1: 1, 2: 1}), _model("tumour", {2: 1})
    case = Case({"liver": np.stack([1 - p_liver, p_liver]), "tumour": np.stack([1 - p_tumour, p_tumour])},
                {"liver": _grid((1, 1, 5)), "tumour": _grid((1, 1, 5))})
    combined = dual_binary_merge(_pipeline("dual_binary_merge", tumour, liver), case)
    assert combined.label.tolist() == [[[2, 1, 0, 0, 2]]]
    expected = np.stack([1 - p_liver, p_liver * (1 - p_tumour), p_liver * p_tumour])
    np.testing.assert_allclose(combined.probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(combined.probabilities.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(combined.tumour_probability, p_tumour)


def test_dual_binary_merge_needs_a_liver_and_a_tumour_model():
    case = Case({}, {})
    with pytest.raises(LiversegError, match="one binary liver model .* one binary tumour model"):
        dual_binary_merge(_pipeline("dual_binary_merge", _model("a", {1: 1, 2: 2}), _model("b", {2: 1})), case)
    with pytest.raises(LiversegError, match="dual_binary_merge needs"):
        dual_binary_merge(_pipeline("dual_binary_merge", _model("a", {1: 1, 2: 1})), case)


def test_stage_box_scales_the_coarse_box_and_grows_it_by_the_margin_in_fine_voxels():
    mask = np.zeros((6, 10, 10), dtype=bool)
    mask[2:4, 3:5, 6:8] = True  # coarse box z [2, 4), y [3, 5), x [6, 8)
    coarse, fine = _grid((6, 10, 10), (3.0, 2.0, 2.0)), _grid((6, 20, 20), (3.0, 1.0, 1.0))
    # fine box before the margin: z [2, 4), y [6, 10), x [12, 16); margin 3 mm = 1 slice, 3 voxels in-plane
    box = stage_box(mask, coarse, fine, margin_mm=3.0)
    assert [(s.start, s.stop) for s in box] == [(1, 5), (3, 13), (9, 19)]
    clipped = stage_box(mask, coarse, fine, margin_mm=30.0)
    assert [(s.start, s.stop) for s in clipped] == [(0, 6), (0, 20), (0, 20)]
    assert stage_box(np.zeros_like(mask), coarse, fine, 3.0) is None
    with pytest.raises(ValueError, match="crop different boxes"):
        stage_box(mask, coarse, _grid((6, 20, 20), crop=[[0, 6], [0, 20], [1, 21]]), 3.0)


def test_cascade_paste_runs_stage_two_on_the_box_and_pastes_it_into_background():
    shape_coarse, shape_fine = (4, 6, 6), (4, 12, 12)
    coarse_p = np.zeros((3, *shape_coarse), dtype=np.float32)
    coarse_p[0] = 1.0
    coarse_p[:, 1:3, 2:4, 2:4] = np.array([0.1, 0.2, 0.7])[:, None, None, None]  # stage 1: tumour (whole liver) here
    fine_p = np.zeros((3, *shape_fine), dtype=np.float32)
    fine_p[1] = 0.6  # stage 2 says liver everywhere it is asked ...
    fine_p[0] = 0.4
    fine_p[:, 2, 6, 6] = [0.1, 0.1, 0.8]  # ... with a tumour voxel inside the box ...
    fine_p[:, 0, 0, 0] = [0.1, 0.1, 0.8]  # ... and one outside it, which must not survive
    roi = RegionOfInterest((1, 2), margin_mm=1.0, jitter_mm=0.0, from_model="coarse")
    pipeline = _pipeline("cascade_paste", _model("coarse", {1: 1, 2: 2}, "lowres"), _model("fine", {1: 1, 2: 2}, roi=roi))
    case = Case({"coarse": coarse_p, "fine": fine_p},
                {"coarse": _grid(shape_coarse, (3.0, 2.0, 2.0)), "fine": _grid(shape_fine, (3.0, 1.0, 1.0))})
    combined = cascade_paste(pipeline, case)
    # coarse box z [1, 3), y [2, 4), x [2, 4) -> fine z [1, 3), y [4, 8), x [4, 8); margin 1 mm: 0 slices, 1 voxel in-plane
    expected_box = (slice(1, 3), slice(3, 9), slice(3, 9))
    assert case.asked == [("coarse", None), ("fine", expected_box)]
    expected = np.zeros(shape_fine, dtype=np.uint8)
    expected[expected_box] = 1
    expected[2, 6, 6] = 2
    np.testing.assert_array_equal(combined.label, expected)
    outside = np.ones(shape_fine, dtype=bool)
    outside[expected_box] = False
    assert np.all(combined.probabilities[0][outside] == 1) and np.all(combined.probabilities[1:, outside] == 0)
    np.testing.assert_allclose(combined.probabilities[:, 2, 6, 6], [0.1, 0.1, 0.8])


def test_cascade_without_liver_in_stage_one_runs_stage_two_everywhere():
    coarse_p = np.zeros((3, 2, 3, 3), dtype=np.float32)
    coarse_p[0] = 1.0
    fine_p = _softmax_like(np.full((2, 6, 6), 0.2), np.full((2, 6, 6), 0.7), np.full((2, 6, 6), 0.1))
    roi = RegionOfInterest((1, 2), 10.0, 0.0, "coarse")
    pipeline = _pipeline("cascade_paste", _model("coarse", {1: 1, 2: 2}, "lowres"), _model("fine", {1: 1, 2: 2}, roi=roi))
    case = Case({"coarse": coarse_p, "fine": fine_p}, {"coarse": _grid((2, 3, 3)), "fine": _grid((2, 6, 6))})
    assert np.all(cascade_paste(pipeline, case).label == 1)
    assert case.asked[1] == ("fine", (slice(0, 2), slice(0, 6), slice(0, 6)))


def test_rules_are_registered_and_an_unknown_name_lists_them():
    assert {"argmax", "dual_binary_merge", "cascade_paste"} <= set(COMBINE_RULES.names())
    assert get_combine_rule("cascade_paste") is cascade_paste
    with pytest.raises(LiversegError, match="unknown combine rule 'vote'; available: argmax, cascade_paste, "
                                            "dual_binary_merge.*liverseg.combine_rules"):
        get_combine_rule("vote")


def test_a_registered_rule_is_found_by_name():
    @COMBINE_RULES.register("test_everything_liver")
    def everything_liver(pipeline, case):
        shape = tuple(case.grid(pipeline.models[0].name)["shape_after_resampling"])
        probabilities = np.zeros((case.num_labels, *shape), dtype=np.float32)
        probabilities[1] = 1
        return Combined(np.ones(shape, np.uint8), probabilities, probabilities[2])

    pipeline = _pipeline("argmax", _model("m", {1: 1, 2: 2}))
    result = get_combine_rule("test_everything_liver")(pipeline, Case({}, {"m": _grid((1, 2, 2))}))
    assert result.label.tolist() == [[[1, 1], [1, 1]]]
