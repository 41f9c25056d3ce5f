"""The greedy post-processing decision, with scores given per step list by a table written by hand."""
from __future__ import annotations

import pytest

from liverseg.errors import LiversegError
from liverseg.postprocessing import DEFAULT_STEPS
from liverseg.selection.criterion import Score
from liverseg.selection.postprocessing_choice import choose_postprocessing, optional_steps

A, B, C = DEFAULT_STEPS  # largest_liver_component_fill_holes, remove_tumour_outside_liver, close_tumour


def _scorer(table, calls):
    """Scores of step lists by the step names in them (the criterion is the liver Dice here)."""
    def evaluate(steps):
        names = tuple(s["name"] for s in steps)
        calls.append(names)
        criterion, f1 = table[names]
        return Score(criterion, criterion, f1, 3)
    return evaluate


def test_a_step_stays_unless_the_list_scores_better_without_it():
    table = {(A, B, C): (0.80, 0.5), (B, C): (0.70, 0.5),  # A helps: kept
             (A, C): (0.85, 0.5),  # B hurts: removed
             (A,): (0.85, 0.5)}  # C changes nothing: kept, as the plan wanted
    calls = []
    choice = choose_postprocessing(_scorer(table, calls), [A, B, C])
    assert [s["name"] for s in choice.steps] == [A, C]
    assert [(d.step["name"], d.action, d.outcome) for d in choice.decisions] == [
        (A, "remove", "kept"), (B, "remove", "removed"), (C, "remove", "kept")]
    b = choice.decisions[1]
    assert b.with_step.criterion == pytest.approx(0.80) and b.without_step.criterion == pytest.approx(0.85)
    assert choice.start_score.criterion == pytest.approx(0.80) and choice.score.criterion == pytest.approx(0.85)
    assert calls == [(A, B, C), (B, C), (A, C), (A,)]


def test_lesion_f1_breaks_a_tie_in_removal_and_optional_steps_must_strictly_help():
    small = {"name": "remove_small_lesions", "params": {}}
    band = {"name": "open_liver_border_band", "params": {}}
    table = {(A,): (0.80, 0.5), (): (0.80, 0.6),  # removing A: the same criterion, better F1
             ("remove_small_lesions",): (0.80, 0.7),  # better F1 at the same criterion: added
             ("remove_small_lesions", "open_liver_border_band"): (0.80, 0.7)}  # a tie: not added
    choice = choose_postprocessing(_scorer(table, []), [A], [small, band])
    assert [s["name"] for s in choice.steps] == ["remove_small_lesions"]
    assert [d.outcome for d in choice.decisions] == ["removed", "added", "not added"]


def test_optional_steps_are_the_registered_ones_not_in_the_list():
    built_in = {*DEFAULT_STEPS, "open_liver_border_band", "remove_small_lesions"}  # other tests may register more
    names = [s["name"] for s in optional_steps([{"name": n, "params": {}} for n in DEFAULT_STEPS])]
    assert [n for n in names if n in built_in] == ["open_liver_border_band", "remove_small_lesions"]
    assert not set(names) & set(DEFAULT_STEPS) and names == sorted(names)
    assert all(s["params"] == {} for s in optional_steps([]))
    assert {s["name"] for s in optional_steps([])} >= built_in


def test_no_steps_and_repeated_steps():
    choice = choose_postprocessing(_scorer({(): (0.5, 0.5)}, []), [])
    assert choice.steps == [] and choice.decisions == ()
    with pytest.raises(LiversegError, match="names a step twice"):
        choose_postprocessing(_scorer({}, []), [A, A])
