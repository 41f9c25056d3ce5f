"""Cross-validation folds: deterministic, disjoint, complete, stratified, written once."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from liverseg.data.splits import load_or_create_splits, make_splits, read_splits
from liverseg.errors import LiversegError

CASES = [f"case_{i:03d}" for i in range(60)]
# ATLAS-like phases with uneven counts: 23 A, 14 D, 9 NC, 8 P, 6 U.
PHASES = dict(zip(CASES, ["A"] * 23 + ["D"] * 14 + ["NC"] * 9 + ["P"] * 8 + ["U"] * 6))


def _check_partition(splits, cases):
    vals = [set(s["val"]) for s in splits]
    assert sorted(c for v in vals for c in v) == sorted(cases)  # each case held out exactly once
    for split in splits:
        keys = [k for k in ("train", "inner_val", "val") if k in split]
        members = [c for k in keys for c in split[k]]
        assert sorted(members) == sorted(cases)  # disjoint and complete within the fold
        for k in keys:
            assert split[k] == sorted(split[k])


def test_folds_are_disjoint_complete_and_balanced():
    splits = make_splits(CASES, num_folds=5)
    assert len(splits) == 5
    _check_partition(splits, CASES)
    assert [len(s["val"]) for s in splits] == [12] * 5
    assert all("inner_val" not in s for s in splits)
    odd = make_splits(CASES[:23], num_folds=5)
    assert sorted(len(s["val"]) for s in odd) == [4, 4, 5, 5, 5]


def test_splits_are_deterministic_whatever_the_case_order():
    shuffled = CASES.copy()
    random.Random(1).shuffle(shuffled)
    assert make_splits(CASES) == make_splits(shuffled)
    assert make_splits(CASES, seed=1) != make_splits(CASES, seed=2)
    assert make_splits(CASES, seed=12345) == make_splits(CASES)  # the default seed


def test_strata_are_spread_evenly_over_folds():
    splits = make_splits(CASES, num_folds=5, strata=PHASES)
    _check_partition(splits, CASES)
    per_fold = [Counter(PHASES[c] for c in s["val"]) for s in splits]
    for phase, total in Counter(PHASES.values()).items():
        counts = [fold[phase] for fold in per_fold]
        assert sum(counts) == total
        assert max(counts) - min(counts) <= 1, (phase, counts)
    assert max(len(s["val"]) for s in splits) - min(len(s["val"]) for s in splits) <= 1


def test_unstratified_folds_can_be_unbalanced_which_strata_prevent():
    """The stratification has teeth: with seed 0 some unstratified fold misses a phase entirely."""
    rare = dict(zip(CASES, ["rare"] * 5 + ["common"] * 55))
    unstratified = make_splits(CASES, num_folds=5, seed=0)
    stratified = make_splits(CASES, num_folds=5, seed=0, strata=rare)
    assert [sum(rare[c] == "rare" for c in s["val"]) for s in stratified] == [1] * 5
    assert any(sum(rare[c] == "rare" for c in s["val"]) != 1 for s in unstratified)


def test_inner_validation_comes_from_the_training_cases_only():
    splits = make_splits(CASES, num_folds=5, strata=PHASES, inner_validation_fraction=1 / 6)
    _check_partition(splits, CASES)
    for split in splits:
        assert (len(split["train"]), len(split["inner_val"]), len(split["val"])) == (40, 8, 12)  # the ATLAS paper's split
        assert not set(split["inner_val"]) & set(split["val"])
        # In proportion to the phases among the fold's 48 non-held-out cases, to within one case.
        pool = Counter(PHASES[c] for c in split["train"] + split["inner_val"])
        inner = Counter(PHASES[c] for c in split["inner_val"])
        for phase, n in pool.items():
            assert abs(inner[phase] - 8 * n / 48) < 1
    assert make_splits(CASES, inner_validation_fraction=0.01)[0]["inner_val"]  # at least one case


def test_impossible_requests_are_clear_errors():
    with pytest.raises(LiversegError, match="3 case.*5 folds"):
        make_splits(CASES[:3], num_folds=5)
    with pytest.raises(LiversegError, match="at least 2 folds"):
        make_splits(CASES, num_folds=1)
    with pytest.raises(LiversegError, match="repeated: case_001"):
        make_splits(CASES + ["case_001"])
    with pytest.raises(LiversegError, match="no stratum given for case.*case_059"):
        make_splits(CASES, strata={c: "A" for c in CASES[:59]})
    with pytest.raises(LiversegError, match="fraction"):
        make_splits(CASES, inner_validation_fraction=1.0)
    with pytest.raises(LiversegError, match="none to train on"):
        make_splits(CASES[:4], num_folds=2, inner_validation_fraction=0.9)


def test_splits_file_is_written_once_and_then_kept(tmp_path):
    path = tmp_path / "splits.json"
    first = load_or_create_splits(path, CASES, strata=PHASES, inner_validation_fraction=1 / 6)
    on_disk = json.loads(path.read_text())
    assert on_disk == first
    # Other parameters later do not change the folds: the file wins.
    again = load_or_create_splits(path, list(reversed(CASES)), seed=999)
    assert again == first
    assert json.loads(path.read_text()) == on_disk


def test_changed_case_list_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "splits.json"
    load_or_create_splits(path, CASES)
    before = path.read_text()
    changed = CASES[1:] + ["case_new"]
    with pytest.raises(LiversegError) as error:
        load_or_create_splits(path, changed)
    message = str(error.value)
    assert "added: case_new" in message and "removed: case_000" in message
    assert str(path) in message and "delete" in message
    assert path.read_text() == before
    regenerated = load_or_create_splits(path, changed, regenerate=True)
    _check_partition(regenerated, changed)
    assert json.loads(path.read_text()) == regenerated


def test_an_nnunet_splits_file_is_accepted(tmp_path):
    path = tmp_path / "splits_final.json"
    folds = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]}, {"train": ["a", "b"], "val": ["c"]}]
    path.write_text(json.dumps(folds))
    assert load_or_create_splits(path, ["a", "b", "c"], num_folds=3) == folds


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "cannot be read"),
        ("[]", "non-empty list"),
        ('[{"train": ["a"]}]', "'train' and 'val'"),
        ('[{"train": ["a", "b"], "val": ["b"]}]', "both in 'train' and 'val': b"),
        ('[{"train": "a", "val": ["b"]}]', "lists of case names"),
    ],
)
def test_broken_splits_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(LiversegError, match=match):
        read_splits(path)
    with pytest.raises(LiversegError, match="splits.json"):
        load_or_create_splits(path, ["a", "b"])
