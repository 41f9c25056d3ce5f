"""Resampling: geometry of the voxel grid, separate z, labels without mixed values, round trips.

Expected values come from the voxel-box convention written out by hand: output voxel ``i`` of an
axis resampled from ``n`` to ``m`` voxels sits at input coordinate ``(i + 0.5) * n / m - 0.5``.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.io.images import read_image
from liverseg.preprocessing.resample import resample_image, resample_label, resample_probabilities, target_shape


def _source_coordinate(i: np.ndarray, n: int, m: int) -> np.ndarray:
    return (i + 0.5) * n / m - 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _ball_label(shape, spacing, centre_mm, radii_mm) -> np.ndarray:
    """Liver ball (1) holding a tumour ball (2), drawn from physical voxel centres."""
    axes = [(np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, spacing, centre_mm)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    label = np.zeros(shape, dtype=np.uint8)
    label[r < radii_mm[0]] = 1
    label[r < radii_mm[1]] = 2
    return label


def test_target_shape_covers_the_same_extent():
    assert target_shape((80, 512, 512), (3.0, 0.7, 0.7), (3.0, 1.0, 1.0)) == (80, 358, 358)  # 358.4
    assert target_shape((5, 5, 5), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == (3, 3, 3)  # 2.5 rounds up
    assert target_shape((1, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)  # never 0
    with pytest.raises(ValueError):
        target_shape((4, 4, 4), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("order_inplane,order_z,separate_z", [(0, 0, True), (1, 1, True), (3, 0, True), (3, 1, True), (3, 0, False)])
@pytest.mark.parametrize("new_shape", [(7, 13, 9), (15, 30, 41)])
def test_constant_image_stays_constant(order_inplane, order_z, separate_z, new_shape):
    image = np.full((2, 10, 20, 24), 42.5, dtype=np.float32)
    out = resample_image(image, new_shape, order_inplane, order_z, separate_z)
    assert out.shape == (2, *new_shape) and out.dtype == np.float32
    np.testing.assert_allclose(out, 42.5, rtol=1e-5)


def test_linear_interpolation_reproduces_a_ramp_in_plane_and_along_z():
    z, y, x = np.meshgrid(np.arange(7), np.arange(6), np.arange(10), indexing="ij")
    image = np.stack([x, z]).astype(np.float32)  # channel 0 ramps along x, channel 1 along z
    out = resample_image(image, (12, 6, 17), order_inplane=1, order_z=1)
    expected_x = np.clip(_source_coordinate(np.arange(17), 10, 17), 0, 9)
    expected_z = np.clip(_source_coordinate(np.arange(12), 7, 12), 0, 6)
    np.testing.assert_allclose(out[0], np.broadcast_to(expected_x, (12, 6, 17)), atol=1e-5)
    np.testing.assert_allclose(out[1], np.broadcast_to(expected_z[:, None, None], (12, 6, 17)), atol=1e-5)


def test_antialiased_downsampling_keeps_a_ramp_away_from_the_edges():
    image = np.broadcast_to(np.arange(40, dtype=np.float32), (1, 3, 40, 40)).copy()
    out = resample_image(image, (3, 20, 20), order_inplane=1)
    interior = np.arange(2, 18)  # the filter reaches two input voxels to each side
    np.testing.assert_allclose(out[0, 1, 5, interior], _source_coordinate(interior, 40, 20), atol=1e-4)


def test_cubic_interpolation_follows_a_smooth_function():
    n, m = 64, 100
    image = np.broadcast_to(np.sin(2 * np.pi * np.arange(n) / 40), (1, 2, 3, n)).astype(np.float32)
    out = resample_image(image, (2, 3, m), order_inplane=3)
    inner = np.arange(4, m - 4)
    expected = np.sin(2 * np.pi * _source_coordinate(inner, n, m) / 40)
    assert np.max(np.abs(out[0, 0, 1, inner] - expected)) < 2e-4  # plain linear interpolation: 3e-3


def test_unchanged_z_spacing_never_mixes_slices():
    image = np.empty((1, 10, 16, 16), dtype=np.float32)
    image[0] = (np.arange(10) ** 2 * 3.0)[:, None, None]  # each slice its own value
    out = resample_image(image, (10, 23, 11), order_inplane=3, order_z=1)
    np.testing.assert_allclose(out[0], np.broadcast_to((np.arange(10) ** 2 * 3.0)[:, None, None], (10, 23, 11)), rtol=1e-5)


def test_nearest_along_z_copies_whole_slices_while_3d_cubic_mixes_them():
    values = np.array([0, 100, 0, 100, 100, 0, 0, 100, 0, 100], dtype=np.float32)
    image = np.broadcast_to(values[:, None, None], (1, 10, 12, 12)).copy()
    out = resample_image(image, (7, 9, 9), order_inplane=3, order_z=0, separate_z=True)
    nearest = np.floor((np.arange(7) + 0.5) * 10 / 7).astype(int)
    np.testing.assert_allclose(out[0], np.broadcast_to(values[nearest][:, None, None], (7, 9, 9)), atol=1e-4)
    mixed = resample_image(image, (7, 9, 9), order_inplane=3, separate_z=False)
    assert not np.all(np.isin(np.round(mixed, 3), [0, 100]))


def test_in_plane_pass_is_per_slice_then_z():
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.normal(size=(1, 10, 24, 24)), (0, 0, 2, 2)).astype(np.float32)
    out = resample_image(image, (5, 17, 17), order_inplane=3, order_z=0)
    for k in range(5):
        source = int(np.floor((k + 0.5) * 2))
        alone = resample_image(image[:, source : source + 1], (1, 17, 17), order_inplane=3)
        np.testing.assert_allclose(out[0, k], alone[0, 0], atol=1e-6)


def test_linear_along_z_blends_neighbouring_slices():
    image = np.broadcast_to((np.arange(10, dtype=np.float32) * 10)[:, None, None], (1, 10, 4, 4)).copy()
    out = resample_image(image, (7, 4, 4), order_inplane=3, order_z=1)
    interior = np.arange(1, 6)
    np.testing.assert_allclose(out[0, interior, 2, 2], 10 * _source_coordinate(interior, 10, 7), atol=1e-3)


def test_smooth_image_survives_a_round_trip():
    zz, yy, xx = np.meshgrid(np.arange(12), np.arange(40), np.arange(40), indexing="ij")
    image = np.exp(-((zz - 6) ** 2 / 20 + (yy - 19) ** 2 / 60 + (xx - 21) ** 2 / 60)).astype(np.float32)[None]
    there = resample_image(image, (12, 57, 57), order_inplane=3)
    back = resample_image(there, (12, 40, 40), order_inplane=3)
    assert np.max(np.abs(back - image)) < 0.02


def test_label_round_trip_through_a_nifti_file(tmp_path):
    spacing = (3.0, 0.8, 0.8)
    label = _ball_label((16, 60, 60), spacing, (24.0, 24.0, 24.0), (18.0, 7.0))
    image = sitk.GetImageFromArray(label)
    image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, str(tmp_path / "label.nii.gz"))
    read, geometry = read_image(tmp_path / "label.nii.gz")
    new_shape = target_shape(read.shape, geometry.spacing, (3.0, 1.0, 1.0))
    assert new_shape == (16, 48, 48)
    resampled = resample_label(read, new_shape)
    # Against the same balls drawn directly on the new grid (an independent construction).
    direct = _ball_label(new_shape, (3.0, 1.0, 1.0), (24.0, 24.0, 24.0), (18.0, 7.0))
    assert _dice(resampled > 0, direct > 0) > 0.97
    assert _dice(resampled == 2, direct == 2) > 0.9
    back = resample_label(resampled, read.shape)
    assert back.shape == read.shape and back.dtype == read.dtype
    assert _dice(back > 0, read > 0) > 0.95
    assert _dice(back == 2, read == 2) > 0.9


@pytest.mark.parametrize("mode", ["onehot_linear", "nearest"])
@pytest.mark.parametrize("new_shape", [(6, 11, 13), (20, 40, 33)])
def test_label_values_are_never_mixed(mode, new_shape):
    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.normal(size=(12, 24, 24)), 2)
    label = np.select([noise < -0.05, noise > 0.05], [-1, 7], default=3).astype(np.int16)
    out = resample_label(label, new_shape, mode=mode, order_z=1)
    assert out.shape == new_shape and out.dtype == np.int16
    assert set(np.unique(out)) <= {-1, 3, 7}
    assert set(np.unique(out)) == {-1, 3, 7}  # smooth blobs survive


def test_onehot_label_takes_the_majority_on_downsampling():
    # Along x: 6 voxels of label 0, then 4 of label 5. Halving x, output voxel 3 averages inputs
    # 5..8 with antialiasing weights 1/8, 3/8, 3/8, 1/8: 7/8 label 5. Output 2 (inputs 3..6) is 7/8 label 0.
    label = np.zeros((2, 2, 10), dtype=np.uint8)
    label[..., 6:] = 5
    out = resample_label(label, (2, 2, 5))
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0, 5, 5])


def test_single_valued_and_unchanged_labels():
    label = np.full((3, 4, 5), 2, dtype=np.uint8)
    np.testing.assert_array_equal(resample_label(label, (6, 2, 9)), np.full((6, 2, 9), 2))
    same = resample_label(label, label.shape)
    assert same is not label and np.array_equal(same, label)


def test_probabilities_stay_in_range_and_keep_their_sum():
    tumour = np.zeros((1, 4, 16, 16), dtype=np.float32)
    tumour[0, :, 5:11, 5:11] = 1.0
    probs = np.concatenate([1 - tumour, tumour])
    cubic_raw = resample_image(probs, (4, 29, 29), order_inplane=3)
    assert cubic_raw.min() < 0 or cubic_raw.max() > 1  # cubic overshoots at the sharp edge
    cubic = resample_probabilities(probs, (4, 29, 29), order_inplane=3)
    assert cubic.min() >= 0 and cubic.max() <= 1
    linear = resample_probabilities(probs, (7, 29, 29), order_inplane=1, order_z=1)
    np.testing.assert_allclose(linear.sum(axis=0), 1.0, atol=1e-5)


def test_input_is_not_modified_or_aliased():
    image = np.random.default_rng(0).random((1, 3, 4, 5)).astype(np.float32)
    copy = image.copy()
    out = resample_image(image, (3, 4, 5))
    out[...] = 0
    np.testing.assert_array_equal(image, copy)


def test_bad_orders_and_modes_are_refused():
    image = np.zeros((1, 2, 3, 4), dtype=np.float32)
    with pytest.raises(LiversegError, match="order_inplane"):
        resample_image(image, (2, 3, 4), order_inplane=2)
    with pytest.raises(LiversegError, match="unknown label resampling mode"):
        resample_label(image[0].astype(np.uint8), (2, 3, 4), mode="linear")
    with pytest.raises(LiversegError, match="order_z"):
        resample_label(image[0].astype(np.uint8), (2, 3, 4), order_z=3)
    with pytest.raises(ValueError):
        resample_image(image[0], (2, 3, 4))


def test_3d_mode_interpolates_z_with_the_in_plane_kernel():
    """Without separate z, the z pass equals the in-plane pass applied to z (checked by transposing)."""
    rng = np.random.default_rng(7)
    image = ndimage.gaussian_filter(rng.normal(size=(1, 9, 6, 8)), 1).astype(np.float32)
    for order in (1, 3):
        out = resample_image(image, (14, 6, 8), order_inplane=order, separate_z=False)
        # Put z in the y position; the in-plane pass then works on (z, x) with x unchanged.
        transposed = resample_image(image.transpose(0, 2, 1, 3).copy(), (6, 14, 8), order_inplane=order)
        np.testing.assert_allclose(out, transposed.transpose(0, 2, 1, 3), atol=1e-5)
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (1, 7, 3, 3)).copy()
    out = resample_image(ramp, (12, 3, 3), order_inplane=1, separate_z=False)
    np.testing.assert_allclose(out[0, :, 1, 1], np.clip(_source_coordinate(np.arange(12), 7, 12), 0, 6), atol=1e-5)


@pytest.mark.parametrize("new_shape", [(12, 17, 19), (17, 17, 19), (7, 30, 9)])
def test_onehot_labels_equal_the_argmax_of_resampled_indicators(new_shape):
    """The fast path (background never resampled, in-plane pass only on a label's own slices)
    gives what resampling every label's indicator over the whole volume and taking the argmax gives."""
    rng = np.random.default_rng(11)
    noise = ndimage.gaussian_filter(rng.normal(size=(12, 24, 26)), 2)
    label = np.where(noise > 0.03, 1, 0).astype(np.uint8)
    label[4:7][ndimage.gaussian_filter(rng.normal(size=(3, 24, 26)), 1.5)[:] > 0.1] = 2  # in slices 4-6 only
    values = np.array([0, 1, 2])
    indicators = (label[None] == values[:, None, None, None]).astype(np.float32)
    fractions = resample_image(indicators, new_shape, order_inplane=1, order_z=1)
    expected = values[np.argmax(fractions, axis=0)]
    top_two = np.sort(fractions, axis=0)[-2:]
    clear = top_two[1] - top_two[0] > 1e-4  # leave out exact ties, where the tie rules differ
    out = resample_label(label, new_shape, order_z=1)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(out[clear], expected[clear])
