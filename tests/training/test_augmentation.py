"""The training pipeline keeps image and label aligned, respects the axis rules and is reproducible."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.training.augmentation import (
    build_training_transforms,
    build_validation_transforms,
    sampling_region_size,
)

NO_INTENSITY = dict(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0, p_gamma=0,
                    p_gamma_inverted=0)
PATCH_ANISO = (12, 40, 40)
PATCH_ISO = (24, 24, 24)
THRESHOLDS = (0.5, 1.2)


def _seed(seed):
    np.random.seed(seed)
    torch.manual_seed(seed)


def _blobs(shape, seed=0, n=6, sigma=5.0, patch=None):
    """A smooth image: Gaussian blobs (sigma in voxels) on a zero background, centred within ``patch`` if given."""
    rng = np.random.default_rng(seed)
    patch = patch or shape
    low = [(s - p) // 2 for s, p in zip(shape, patch)]
    points = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        points[tuple(int(rng.integers(lo, lo + p)) for lo, p in zip(low, patch))] = rng.uniform(0.5, 1.0)
    image = ndimage.gaussian_filter(points, sigma=sigma)
    return (image / image.max() * 2.0).astype(np.float32)


def _run(pipeline, image, seg, seed):
    _seed(seed)
    out = pipeline(image=torch.from_numpy(image).clone(), segmentation=torch.from_numpy(seg).clone())
    return out["image"].numpy(), out["segmentation"]


def _labels_from_image(image):
    return ((image > THRESHOLDS[0]).astype(np.int16) + (image > THRESHOLDS[1]).astype(np.int16))


@pytest.mark.parametrize("label_interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("anisotropic, patch", [(True, PATCH_ANISO), (False, PATCH_ISO)])
def test_spatial_augmentation_keeps_label_aligned_with_image(anisotropic, patch, label_interpolation):
    # The label is a function of the image (two thresholds). After rotation, scaling, elastic deformation and
    # mirroring, thresholding the transformed image must give the transformed label wherever the label is not
    # at an edge: at edges, interpolating the label moves its boundary to mid-voxel, while the image keeps the
    # exact crossing, so one-voxel differences there are expected.
    pipeline = build_training_transforms(patch, anisotropic, mirror_axes=(0, 1, 2), elastic=True, p_elastic=1.0,
                                         p_rotation=1.0, p_scaling=1.0, label_interpolation=label_interpolation,
                                         **NO_INTENSITY)
    region = sampling_region_size(patch, anisotropic)
    sigma = (2.0, 6.0, 6.0) if anisotropic else 5.0
    cross = ndimage.generate_binary_structure(3, 1)
    for seed in range(4):
        image = _blobs(region, seed, sigma=sigma, patch=patch)[None]
        out_image, out_seg = _run(pipeline, image, _labels_from_image(image), seed)
        expected = _labels_from_image(out_image[0])
        label = out_seg[0].numpy()
        assert len(np.unique(expected)) == 3  # all three labels present: the comparison is not vacuous
        away = (ndimage.minimum_filter(expected, footprint=cross, mode="nearest")
                == ndimage.maximum_filter(expected, footprint=cross, mode="nearest"))
        assert away.mean() > 0.7
        assert np.mean(label[away] == expected[away]) > 0.999
        assert np.mean(label == expected) > 0.95
        # a label two voxels off would be caught
        assert np.mean(label[away] == np.roll(expected, 2, axis=2)[away]) < 0.99


@pytest.mark.parametrize("anisotropic, patch", [(True, PATCH_ANISO), (False, PATCH_ISO)])
@pytest.mark.parametrize("region_change", [-6, 0, 10])
def test_output_is_exactly_the_patch_size(anisotropic, patch, region_change):
    pipeline = build_training_transforms(patch, anisotropic, p_rotation=0.5, p_scaling=0.5, bias_field=True,
                                         slice_thickness=True)
    region = tuple(max(1, s + region_change) for s in patch)
    image = np.random.default_rng(0).normal(size=(2, *region)).astype(np.float32)
    seg = np.random.default_rng(1).integers(0, 3, size=(1, *region)).astype(np.int16)
    for seed in range(3):
        out_image, out_seg = _run(pipeline, image, seg, seed)
        assert out_image.shape == (2, *patch)
        assert out_seg.shape == (1, *patch) and out_seg.dtype == torch.int16


def test_anisotropic_rotation_and_scaling_leave_z_untouched():
    # channel 0 is a z ramp (value = slice index); in-plane rotation and scaling keep every slice on its own
    # value, while channel 1 (in-plane structure) does change
    patch = PATCH_ANISO
    region = sampling_region_size(patch, True, rotation_deg=45, max_scale=1.4)
    assert region[0] == patch[0]
    ramp = np.broadcast_to(np.arange(region[0], dtype=np.float32)[:, None, None], region)
    image = np.stack([ramp, _blobs(region, 3, sigma=(1.5, 5, 5), patch=patch)])
    seg = np.zeros((1, *region), dtype=np.int16)
    offsets = [(r - p) // 2 for r, p in zip(region, patch)]
    centre_crop = image[1, :, offsets[1]:offsets[1] + patch[1], offsets[2]:offsets[2] + patch[2]]

    def run(anisotropic, seed):
        pipeline = build_training_transforms(patch, anisotropic, mirror_axes=(), rotation_deg=45, p_rotation=1.0,
                                             p_scaling=1.0, **NO_INTENSITY)
        return _run(pipeline, image, seg, seed)[0]

    for seed in range(4):
        out = run(True, seed)
        expected_ramp = np.arange(patch[0], dtype=np.float32)[:, None, None]
        np.testing.assert_allclose(out[0], np.broadcast_to(expected_ramp, patch), atol=1e-3)
        assert np.abs(out[1] - centre_crop).max() > 0.1
    # rotating about all axes (isotropic settings) does mix slices: the check above can fail
    assert max(np.abs(run(False, seed)[0] - expected_ramp).max() for seed in range(4)) > 0.5


def test_anisotropic_affine_is_in_plane_rotation_with_one_scale():
    pipeline = build_training_transforms(PATCH_ANISO, True, rotation_deg=30, p_rotation=1.0, p_scaling=1.0,
                                         scale_range=(0.7, 1.4))
    spatial = pipeline.transforms[0]
    image = torch.zeros((1, *PATCH_ANISO))
    for seed in range(10):
        _seed(seed)
        affine = spatial.get_parameters(image=image)["affine"]
        np.testing.assert_allclose(affine[0], [1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(affine[:, 0], [1, 0, 0], atol=1e-12)
        block = affine[1:, 1:]  # s * R(theta): equal column norms s, orthogonal columns
        scale = np.linalg.norm(block[:, 0])
        assert 0.7 <= scale <= 1.4
        np.testing.assert_allclose(np.linalg.norm(block[:, 1]), scale, rtol=1e-9)
        assert abs(block[:, 0] @ block[:, 1]) < 1e-9
        assert abs(math.atan2(block[1, 0], block[0, 0])) <= math.radians(30) + 1e-9


@pytest.mark.parametrize("anisotropic, patch", [(True, PATCH_ANISO), (False, PATCH_ISO)])
def test_sampling_region_is_large_enough_for_any_rotation_and_zoom(anisotropic, patch):
    # an all-ones region: wherever the transformed patch reached past it, zero padding would show
    kwargs = dict(mirror_axes=(), rotation_deg=30, p_rotation=1.0, p_scaling=1.0, scale_range=(1.4, 1.4),
                  **NO_INTENSITY)
    pipeline = build_training_transforms(patch, anisotropic, **kwargs)
    region = sampling_region_size(patch, anisotropic, rotation_deg=30, max_scale=1.4)
    seg = np.zeros((1, *region), dtype=np.int16)
    minima = [_run(pipeline, np.ones((1, *region), np.float32), seg, seed)[0].min() for seed in range(12)]
    assert min(minima) > 0.999
    # a region only as large as the patch shows padding under the same transforms
    small = [_run(pipeline, np.ones((1, *patch), np.float32), np.zeros((1, *patch), np.int16), seed)[0].min()
             for seed in range(3)]
    assert max(small) < 0.5


def test_sampling_region_size_by_hand():
    # in-plane rotation of a 20 x 10 (y, x) rectangle by up to 30 degrees: y extent peaks at the diagonal angle
    # atan(10 / 20) = 26.6 degrees (sqrt(20^2 + 10^2) = 22.36 -> 23), x extent at 30 degrees
    # (20 sin 30 + 10 cos 30 = 18.66 -> 19); both rounded up to an even growth: 24 and 20; z untouched
    assert sampling_region_size((8, 20, 10), True, rotation_deg=30, max_scale=1.0) == (8, 24, 20)
    # zoom only: 1.4 * (8, 20, 10) in-plane -> (8, 28, 14)
    assert sampling_region_size((8, 20, 10), True, rotation_deg=0, max_scale=1.4) == (8, 28, 14)
    assert sampling_region_size((8, 20, 10), False, rotation_deg=0, max_scale=1.0) == (8, 20, 10)
    # isotropic 90-degree rotations can put any axis along any other: a cube needs no more than its diagonal
    region = sampling_region_size((10, 10, 10), False, rotation_deg=30, max_scale=1.0)
    assert all(10 < r <= math.ceil(10 * math.sqrt(3)) + 1 for r in region)


def test_mirroring_flips_requested_axes_only():
    pipeline = build_training_transforms(PATCH_ANISO, True, mirror_axes=(1, 2), p_rotation=0, p_scaling=0,
                                         **NO_INTENSITY)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *PATCH_ANISO)).astype(np.float32)
    seg = rng.integers(0, 3, size=(1, *PATCH_ANISO)).astype(np.int16)
    flips = {(): image, (2,): image[:, :, ::-1], (3,): image[:, :, :, ::-1], (2, 3): image[:, :, ::-1, ::-1]}
    seen = set()
    for seed in range(64):
        out_image, out_seg = _run(pipeline, image, seg, seed)
        matches = [axes for axes, flipped in flips.items() if np.array_equal(out_image, flipped)]
        assert len(matches) == 1, "output is not a y/x mirror image of the input"
        np.testing.assert_array_equal(out_seg.numpy(), np.flip(seg, matches[0]) if matches[0] else seg)
        seen.add(matches[0])
    assert seen == set(flips)  # each of the 4 combinations turns up (chance of missing one: ~1e-7)


def test_intensity_transforms_leave_segmentation_untouched():
    pipeline = build_training_transforms(PATCH_ANISO, True, mirror_axes=(), p_rotation=0, p_scaling=0,
                                         p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_low_resolution=1,
                                         p_gamma=1, p_gamma_inverted=0, bias_field=True, p_bias_field=1,
                                         slice_thickness=True, p_slice_thickness=1)
    region = tuple(s + 4 for s in PATCH_ANISO)
    image = _blobs(region, 1)[None] + 0.1
    seg = _labels_from_image(image)
    crop = seg[:, 2:-2, 2:-2, 2:-2]
    for seed in range(3):
        out_image, out_seg = _run(pipeline, image, seg, seed)
        np.testing.assert_array_equal(out_seg.numpy(), crop)
        assert np.abs(out_image - image[:, 2:-2, 2:-2, 2:-2]).max() > 0.05


def test_pipeline_is_reproducible_from_the_seeds_and_picklable():
    pipeline = build_training_transforms(PATCH_ANISO, True, p_rotation=0.5, p_scaling=0.5, bias_field=True,
                                         slice_thickness=True, p_noise=0.5, p_gamma=0.5)
    region = sampling_region_size(PATCH_ANISO, True)
    image = _blobs(region, 2)[None]
    seg = _labels_from_image(image)
    first = [_run(pipeline, image, seg, seed) for seed in range(3)]
    clone = pickle.loads(pickle.dumps(pipeline))  # workers that spawn instead of fork receive it pickled
    again = [_run(clone, image, seg, seed) for seed in range(3)]
    for (a_image, a_seg), (b_image, b_seg) in zip(first, again):
        np.testing.assert_array_equal(a_image, b_image)
        assert torch.equal(a_seg, b_seg)
    assert not np.array_equal(first[0][0], first[1][0])


def test_deep_supervision_targets_come_out_as_a_list():
    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    for pipeline in (build_training_transforms(PATCH_ANISO, True, deep_supervision_scales=scales),
                     build_validation_transforms(PATCH_ANISO, deep_supervision_scales=scales)):
        seg = np.ones((1, *PATCH_ANISO), dtype=np.int16)
        _, out_seg = _run(pipeline, np.zeros((1, *PATCH_ANISO), np.float32), seg, 0)
        assert [tuple(s.shape) for s in out_seg] == [(1, 12, 40, 40), (1, 12, 20, 20), (1, 6, 10, 10)]


def test_validation_transforms_cut_the_centre():
    # crop centre floor(size / 2), start = centre - patch // 2: (10 - 8, 30 - 24, 30 - 24) = (2, 6, 6)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 20, 60, 60)).astype(np.float32)
    seg = rng.integers(0, 3, size=(1, 20, 60, 60)).astype(np.int16)
    out_image, out_seg = _run(build_validation_transforms((16, 48, 48)), image, seg, 0)
    np.testing.assert_array_equal(out_image, image[:, 2:18, 6:54, 6:54])
    np.testing.assert_array_equal(out_seg.numpy(), seg[:, 2:18, 6:54, 6:54])


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=(32, 32)), "3D patch size"),
    (dict(patch_size=(8, 0, 16)), "3D patch size"),
    (dict(mirror_axes=(3,)), "mirror axes"),
    (dict(scale_range=(1.4, 0.7)), "scale range"),
    (dict(p_rotation=1.5), "p_rotation"),
    (dict(slice_thickness_max_factor=0.5), "slice_thickness_max_factor"),
    (dict(label_interpolation="cubic"), "label_interpolation"),
    (dict(rotation_deg=-10), "rotation_deg"),
    (dict(p_bias_field=-0.1), "p_bias_field"),
])
def test_bad_settings_are_rejected_clearly(kwargs, message):
    settings = dict(patch_size=PATCH_ANISO, anisotropic=True) | kwargs
    with pytest.raises(LiversegError, match=message):
        build_training_transforms(**settings)
