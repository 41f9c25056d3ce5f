"""Window placement, padding and the Gaussian importance map."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.inference.windows import (axis_weight_sums, compute_steps, gaussian_importance_map, pad_to_patch,
                                        window_slices)


@pytest.mark.parametrize("size, patch, step", [
    (100, 40, 0.5), (70, 32, 0.5), (375, 224, 0.5), (68, 40, 0.5), (33, 32, 0.5), (32, 32, 0.5),
    (200, 48, 0.25), (200, 48, 1.0), (61, 16, 0.7), (17, 1, 0.5),
])
def test_steps_cover_the_axis_from_0_to_size_minus_patch(size, patch, step):
    (starts,) = compute_steps([size], [patch], step)
    assert starts[0] == 0 and starts[-1] == size - patch
    # nnU-Net's count, but never more windows than distinct offsets (a 1-voxel patch at step 0.5).
    assert len(starts) == min(math.ceil((size - patch) / (patch * step)) + 1, size - patch + 1)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()
    gaps = np.diff(starts)
    if len(gaps):  # evenly spread: no gap longer than a step, gaps differ by at most one voxel
        assert gaps.min() >= 1 and gaps.max() <= math.ceil(patch * step) and gaps.max() - gaps.min() <= 1


def test_steps_by_hand():
    # 100 - 40 = 60 to cover in steps of at most 20: 0, 20, 40, 60.
    # 70 - 32 = 38 in steps of at most 16: 3 gaps of 38/3 = 12.67 -> 0, 13, 25, 38.
    # 50 - 50 = 0: one window.
    assert compute_steps([100, 70, 50], [40, 32, 50], 0.5) == [[0, 20, 40, 60], [0, 13, 25, 38], [0]]


@pytest.mark.parametrize("step", [0, -0.5, 1.5])
def test_step_fraction_outside_0_1_is_a_user_error(step):
    with pytest.raises(LiversegError, match=r"outside \(0, 1\]"):
        compute_steps([64], [32], step)


def test_steps_need_an_image_at_least_as_large_as_the_patch():
    with pytest.raises(ValueError, match="pad first"):
        compute_steps([20, 64], [32, 32])


def test_window_slices_tile_the_image():
    size, patch = (20, 45, 37), (8, 16, 16)
    slices = list(window_slices(size, patch, 0.5))
    counts = [len(s) for s in compute_steps(size, patch, 0.5)]
    assert len(slices) == math.prod(counts)
    hits = np.zeros(size, int)
    for window in slices:
        assert tuple(s.stop - s.start for s in window) == patch
        hits[window] += 1
    assert hits.min() >= 1


@pytest.mark.parametrize("as_tensor", [False, True])
def test_pad_to_patch_centres_and_undoes(as_tensor):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 40, 19)).astype(np.float32) + 3
    data = torch.from_numpy(image) if as_tensor else image
    padded, undo = pad_to_patch(data, (8, 32, 32))
    assert type(padded) is type(data)
    padded = np.asarray(padded)
    assert padded.shape == (2, 8, 40, 32)
    np.testing.assert_array_equal(padded[undo], image)
    # z: 3 voxels to add -> 1 before, 2 after; x: 13 -> 6 before, 7 after; y already large enough.
    assert undo == (slice(None), slice(1, 6), slice(0, 40), slice(6, 25))
    outside = np.ones(padded.shape, bool)
    outside[undo] = False
    assert outside.sum() == padded.size - image.size and not padded[outside].any()


def test_pad_to_patch_returns_a_large_enough_image_itself():
    image = np.zeros((1, 8, 32, 32), np.float32)
    padded, undo = pad_to_patch(image, (8, 32, 32))
    assert padded is image
    assert padded[undo].shape == image.shape


@pytest.mark.parametrize("patch", [(8, 16, 16), (7, 15, 21), (40, 224, 224)])
def test_gaussian_map_peaks_at_1_in_the_centre_is_symmetric_and_positive(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0, abs=1e-6)
    centre = tuple(((p - 1) // 2, p // 2) for p in patch)  # the one or two middle voxels per axis
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in (g[idx].item() for idx in itertools.product(*centre)))
    for axis in range(3):
        assert torch.equal(g, torch.flip(g, [axis]))
    assert g.min().item() > 0
    # Decreasing away from the centre along each axis (non-strictly where the floor is reached).
    for axis, p in enumerate(patch):
        line = g[tuple(slice(None) if a == axis else centre[a][0] for a in range(3))]
        half = line[p // 2:]
        assert (half[1:] <= half[:-1]).all()


def test_gaussian_map_follows_the_formula_and_has_its_floor():
    patch, scale = (9, 17, 33), 1 / 8
    g = gaussian_importance_map(patch, sigma_scale=scale).double()
    sigma_x = 33 * scale
    for d in (1, 4, 9):  # unclamped values along x through the exact centre voxel (odd sizes)
        assert g[4, 8, 16 + d].item() == pytest.approx(math.exp(-d * d / (2 * sigma_x ** 2)), rel=1e-6)
    # The far corner would be exp(-8)^3 ~ 4e-11 unclamped; every factor is floored at 1e-6^(1/3).
    assert g.min().item() == pytest.approx(1e-6, rel=1e-5)
    assert gaussian_importance_map(patch, dtype=torch.float16).min().item() > 0


def test_axis_weight_sums_equal_the_summed_3d_maps():
    """The separable total weight equals the brute-force sum of every window's 3D map."""
    size, patch = (13, 40, 29), (8, 16, 16)
    steps = compute_steps(size, patch, 0.5)
    g = gaussian_importance_map(patch, dtype=torch.float64).numpy()
    brute = np.zeros(size)
    for window in window_slices(size, patch, 0.5):
        brute[window] += g
    wz, wy, wx = axis_weight_sums(size, patch, steps)
    np.testing.assert_allclose(wz[:, None, None] * wy[None, :, None] * wx[None, None, :], brute, rtol=1e-12)
