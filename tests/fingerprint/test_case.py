"""One case's fingerprint, read from real NIfTI files, against values known by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.fingerprint.case import compute_case_fingerprint, is_axis_aligned, percentile_key

SPACING_ZYX = (4.0, 0.9, 0.8)
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix())


def _write(path, array, direction=IDENTITY, spacing_zyx=SPACING_ZYX):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_zyx[::-1])
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _case(tmp_path, direction=IDENTITY):
    """Two channels, body box non-zero, a liver with two lesions; returns paths and the arrays."""
    shape = (10, 30, 40)
    rng = np.random.default_rng(7)
    body = np.zeros(shape, bool)
    body[1:9, 4:28, 3:37] = True
    ch0 = np.where(body, rng.normal(100, 20, shape), 0).astype(np.float32)
    ch1 = np.where(body, rng.normal(-50, 5, shape), 0).astype(np.float32)
    ch1[0, 0, 0] = 3.0  # one stray non-zero voxel in the second channel widens the crop
    label = np.zeros(shape, np.uint8)
    label[2:8, 6:26, 5:30] = 1
    label[3:5, 8:12, 8:15] = 2  # lesion 4 x 7 pixels
    label[6, 20:25, 10:12] = 2  # lesion at the edge of the liver box in y
    paths = [_write(tmp_path / "c_0000.nii.gz", ch0, direction), _write(tmp_path / "c_0001.nii.gz", ch1, direction)]
    return paths, _write(tmp_path / "c.nii.gz", label, direction), np.stack([ch0, ch1]), label


def test_geometry_crop_liver_and_lesions(tmp_path):
    images, label_path, _, _ = _case(tmp_path)
    stats = compute_case_fingerprint(images, label_path).stats
    assert stats["shape"] == [10, 30, 40]
    assert stats["spacing"] == pytest.approx(SPACING_ZYX)
    assert stats["extent_mm"] == pytest.approx([40.0, 27.0, 32.0])
    assert stats["image_volume_ml"] == pytest.approx(10 * 30 * 40 * 4.0 * 0.9 * 0.8 / 1000)
    assert stats["axis_aligned"] is True and stats["original_orientation"] == "LPS"
    assert stats["crop_bbox"] == [[0, 9], [0, 28], [0, 37]]
    assert stats["shape_after_crop"] == [9, 28, 37]

    liver = stats["liver"]
    assert liver["bbox"] == [[2, 8], [6, 26], [5, 30]]
    assert liver["extent_mm"] == pytest.approx([24.0, 18.0, 20.0])
    assert liver["num_voxels"] == 6 * 20 * 25
    assert liver["volume_ml"] == pytest.approx(6 * 20 * 25 * 4.0 * 0.9 * 0.8 / 1000)

    assert stats["num_lesions"] == 2
    first, second = stats["lesions"]
    assert first["bbox"] == [[3, 5], [8, 12], [8, 15]]
    assert first["longest_axial_diameter_mm"] == pytest.approx(math.hypot(4 * 0.9, 7 * 0.8))
    assert second["extent_mm"] == pytest.approx([4.0, 4.5, 1.6])
    assert stats["tumour_volume_ml"] == pytest.approx((56 + 10) * 4.0 * 0.9 * 0.8 / 1000)


def test_intensity_statistics_use_exactly_the_foreground(tmp_path):
    images, label_path, arrays, label = _case(tmp_path)
    fp = compute_case_fingerprint(images, label_path, samples_per_case=10**6)
    for c in range(2):
        voxels = arrays[c][label > 0].astype(np.float64)
        stats = fp.stats["foreground_intensity"][str(c)]
        assert stats["num_voxels"] == voxels.size
        assert stats["mean"] == pytest.approx(voxels.mean())
        assert stats["std"] == pytest.approx(voxels.std())
        assert stats["min"] == voxels.min() and stats["max"] == voxels.max()
        for q in (0.5, 2, 50, 98, 99.5):
            assert stats[percentile_key(q)] == pytest.approx(np.percentile(voxels, q))
        # Fewer foreground voxels than the budget: the sample is all of them.
        np.testing.assert_array_equal(np.sort(fp.foreground_samples[c]), np.sort(voxels.astype(np.float32)))


def test_sampling_is_bounded_seeded_and_drawn_from_the_foreground(tmp_path):
    images, label_path, arrays, label = _case(tmp_path)
    a = compute_case_fingerprint(images, label_path, case_id="c", samples_per_case=500, seed=1).foreground_samples
    b = compute_case_fingerprint(images, label_path, case_id="c", samples_per_case=500, seed=1).foreground_samples
    other = compute_case_fingerprint(images, label_path, case_id="c", samples_per_case=500, seed=2).foreground_samples
    assert a.shape == (2, 500)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    # Channels stay paired: every sampled (ch0, ch1) pair is one foreground voxel.
    pairs = {(float(x), float(y)) for x, y in zip(arrays[0][label > 0], arrays[1][label > 0])}
    assert all((float(x), float(y)) in pairs for x, y in a.T)
    assert len({tuple(p) for p in a.T}) == 500  # without replacement


def test_stored_orientation_does_not_change_the_measures(tmp_path):
    (tmp_path / "lps").mkdir()
    (tmp_path / "ras").mkdir()
    lps = compute_case_fingerprint(*_case(tmp_path / "lps")[:2]).stats
    ras = compute_case_fingerprint(*_case(tmp_path / "ras", RAS)[:2]).stats
    assert ras["original_orientation"] == "RAS" and ras["axis_aligned"] is True
    assert ras["original_direction"] == pytest.approx(RAS)
    for key in ("shape", "spacing", "shape_after_crop", "num_lesions"):
        assert ras[key] == lps[key]
    assert ras["liver"]["extent_mm"] == pytest.approx(lps["liver"]["extent_mm"])
    assert sorted(l["volume_ml"] for l in ras["lesions"]) == pytest.approx(sorted(l["volume_ml"] for l in lps["lesions"]))


def test_oblique_case_and_empty_label(tmp_path):
    images, label_path, _, label = _case(tmp_path, OBLIQUE)
    _write(label_path, np.zeros_like(label), OBLIQUE)
    fp = compute_case_fingerprint(images, label_path)
    assert fp.stats["axis_aligned"] is False
    assert fp.stats["liver"] is None and fp.stats["num_lesions"] == 0 and fp.stats["lesions"] == []
    assert fp.stats["foreground_intensity"] == {"0": None, "1": None}
    assert fp.foreground_samples.shape == (2, 0)


def test_axis_aligned_detection():
    assert is_axis_aligned((0, 1, 0, 0, 0, -1, 1, 0, 0))
    assert not is_axis_aligned(OBLIQUE)


def test_label_on_another_grid_is_a_user_error(tmp_path):
    images, label_path, _, label = _case(tmp_path)
    _write(label_path, label[:, :-1])
    with pytest.raises(LiversegError, match="c.nii.gz.*label shape"):
        compute_case_fingerprint(images, label_path)
