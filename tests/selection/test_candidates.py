"""Candidates on constructed cross-validation folders: which ones, their label maps, ensemble averaging."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.inference.predictor import canonical_geometry
from liverseg.io.images import write_image
from liverseg.selection.candidates import Candidate, make_candidates

SHAPE, SPACING = (3, 4, 5), (2.0, 1.0, 1.0)


def _write(folder, case, label, probabilities):
    folder.mkdir(parents=True, exist_ok=True)
    write_image(label.astype(np.uint8), canonical_geometry(SHAPE, SPACING), folder / f"{case}.nii.gz")
    np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities.astype(np.float16))


def _random_probabilities(seed):
    p = np.random.default_rng(seed).random((3, *SHAPE)).astype(np.float32)
    return p / p.sum(0)


def test_every_pipeline_then_every_ensemble_of_two_or_more(tmp_path):
    folders = {name: tmp_path / name for name in ("multiclass", "dual_binary", "cascade")}
    names = [c.name for c in make_candidates(folders)]
    assert names == ["multiclass", "dual_binary", "cascade", "multiclass+dual_binary", "multiclass+cascade",
                     "dual_binary+cascade", "multiclass+dual_binary+cascade"]
    assert [c.name for c in make_candidates(folders, ensembles=False)] == list(folders)
    pair = make_candidates(folders)[3]
    assert pair.is_ensemble and pair.folders == (folders["multiclass"], folders["dual_binary"])


def test_an_ensemble_averages_the_saved_probabilities_and_takes_the_argmax(tmp_path):
    a, b = _random_probabilities(0), _random_probabilities(1)
    _write(tmp_path / "a", "case", a.argmax(0), a)
    _write(tmp_path / "b", "case", b.argmax(0), b)
    ensemble = Candidate(("a", "b"), (tmp_path / "a", tmp_path / "b"))
    mean = (a.astype(np.float16).astype(np.float32) + b.astype(np.float16).astype(np.float32)) / 2
    np.testing.assert_allclose(ensemble.probabilities("case"), mean, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ensemble.label("case"), mean.argmax(0))
    assert not np.array_equal(mean.argmax(0), a.argmax(0))  # the average decides some voxels differently

    cache = tmp_path / "cache"
    cache.mkdir()
    first = ensemble.label("case", cache)
    (tmp_path / "a" / "case.npz").unlink()  # the cached label map is read back, not averaged again
    np.testing.assert_array_equal(ensemble.label("case", cache), first)


def test_a_single_pipeline_uses_its_own_label_map_not_the_argmax(tmp_path):
    # a dual_binary merge: p_liver 0.6 and p_tumour 0.6 make tumour, though [0.4, 0.24, 0.36] has its maximum at 0
    p_liver, p_tumour = 0.6, 0.6
    probabilities = np.empty((3, *SHAPE), dtype=np.float32)
    probabilities[0], probabilities[1], probabilities[2] = 1 - p_liver, p_liver * (1 - p_tumour), p_liver * p_tumour
    label = np.full(SHAPE, 2, dtype=np.uint8)
    _write(tmp_path / "dual_binary", "case", label, probabilities)
    single = Candidate(("dual_binary",), (tmp_path / "dual_binary",))
    np.testing.assert_array_equal(single.label("case"), label)
    assert not single.is_ensemble and probabilities.argmax(0).max() == 0


def test_unreadable_or_mismatched_files_are_named(tmp_path):
    a = _random_probabilities(0)
    _write(tmp_path / "a", "case", a.argmax(0), a)
    (tmp_path / "b").mkdir()
    np.savez_compressed(tmp_path / "b" / "case.npz", probabilities=np.zeros((3, 2, 2, 2), dtype=np.float16))
    with pytest.raises(LiversegError, match=r"b: case.npz has shape \(3, 2, 2, 2\) but another member's has"):
        Candidate(("a", "b"), (tmp_path / "a", tmp_path / "b")).probabilities("case")
    (tmp_path / "b" / "case.npz").write_bytes(b"not a zip")
    with pytest.raises(LiversegError, match=r"case.npz: cannot be read as cross-validation probabilities"):
        Candidate(("b",), (tmp_path / "b",)).probabilities("case")
