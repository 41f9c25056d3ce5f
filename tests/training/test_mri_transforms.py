"""Bias-field and slice-thickness augmentation: properties derived by hand, not from the code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.training.mri_transforms import (
    BiasFieldTransform,
    SliceThicknessTransform,
    polynomial_exponents,
    thicken_slices,
)

SHAPE = (24, 40, 48)


def _params(transform, image, seed=0):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform.get_parameters(image=image)


def _positive_image(channels=1, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(1.0, 3.0, size=(channels, *SHAPE)).astype(np.float32)
    image[:, 0, 0, 0] = 0.0  # minimum 0: multiplying around the minimum is then plain multiplication
    return torch.from_numpy(image)


def test_polynomial_exponents_are_all_monomials_up_to_the_order():
    # the number of monomials of total degree <= n in 3 variables is C(n + 3, 3)
    for order in range(1, 5):
        exponents = polynomial_exponents(order)
        assert len(exponents) == math.comb(order + 3, 3) == len(set(exponents))
        assert all(sum(e) <= order for e in exponents)


@pytest.mark.parametrize("amplitude", [0.1, 0.4])
def test_bias_field_is_multiplicative_within_range_and_reaches_it(amplitude):
    transform = BiasFieldTransform(amplitude=amplitude, order=3)
    image = _positive_image()
    params = _params(transform, image, seed=3)
    out = transform._apply_to_image(image.clone(), **params)
    ratio = (out[0] / image[0])[image[0] > 0]
    # the field lies in [1 / (1 + a), 1 + a], and its log touches log(1 + a) somewhere
    assert ratio.min() >= 1 / (1 + amplitude) - 1e-5
    assert ratio.max() <= 1 + amplitude + 1e-5
    assert torch.log(ratio).abs().max() == pytest.approx(math.log1p(amplitude), rel=1e-4)


def test_bias_field_is_smooth_markov_bound():
    # The log field restricted to any grid line is a polynomial of degree <= n bounded by
    # M = log(1 + a) on [-1, 1] (up to the grid's sampling), so by Markov's inequality its slope is at most n^2 M
    # and neighbouring voxels (spacing h = 2 / (N - 1)) differ by at most n^2 M h.
    order, amplitude = 3, 0.4
    transform = BiasFieldTransform(amplitude=amplitude, order=order)
    image = torch.ones((1, *SHAPE))
    image[0, 0, 0, 0] = 0.0
    bound_m = math.log1p(amplitude) * 1.05  # 5% for the continuous maximum lying between grid points
    for seed in range(5):
        params = _params(transform, image, seed)
        log_field = torch.log(transform._apply_to_image(image.clone(), **params)[0, 1:, 1:, 1:])
        for axis, n in enumerate(SHAPE):
            step = torch.diff(log_field, dim=axis).abs().max().item()
            assert step <= order**2 * bound_m * 2 / (n - 1)
    # white noise of the same range breaks that bound: the test can fail
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, SHAPE).astype(np.float32)) * math.log1p(amplitude)
    assert torch.diff(noise, dim=2).abs().max().item() > order**2 * bound_m * 2 / (SHAPE[2] - 1)


def test_bias_field_commutes_with_affine_intensity_maps():
    # applied around the channel minimum, the field commutes with a * image + b (a > 0): z-scoring does not matter
    transform = BiasFieldTransform(amplitude=0.3)
    image = _positive_image(seed=1) * 2.0 - 1.5
    params = _params(transform, image, seed=7)
    out = transform._apply_to_image(image.clone(), **params)
    out_affine = transform._apply_to_image(image.clone() * 0.5 - 3.0, **params)
    torch.testing.assert_close(out_affine, out * 0.5 - 3.0, atol=1e-5, rtol=1e-5)


def test_bias_field_zero_amplitude_is_identity_and_twin_is_deterministic():
    image = _positive_image()
    identity = BiasFieldTransform(amplitude=0.0)
    torch.testing.assert_close(identity._apply_to_image(image.clone(), **_params(identity, image)), image)
    transform = BiasFieldTransform()
    params = _params(transform, image, seed=4)
    first = transform._apply_to_image(image.clone(), **params)
    assert torch.equal(first, transform._apply_to_image(image.clone(), **params))
    assert not torch.allclose(first, image)


def test_bias_field_channels_share_a_field_only_when_synchronised():
    image = _positive_image(channels=2)
    image[1] = image[0]
    for synchronize, same in ((True, True), (False, False)):
        transform = BiasFieldTransform(amplitude=0.3, synchronize_channels=synchronize)
        out = transform(image=image.clone())
        assert torch.allclose(out["image"][0], out["image"][1]) == same


def test_mri_transforms_leave_segmentation_untouched():
    image = _positive_image()
    seg = torch.from_numpy(np.random.default_rng(0).integers(0, 3, size=(1, *SHAPE)).astype(np.int16))
    for transform in (BiasFieldTransform(amplitude=0.4), SliceThicknessTransform(factor=2.5)):
        out = transform(image=image.clone(), segmentation=seg.clone())
        assert torch.equal(out["segmentation"], seg)
        assert not torch.allclose(out["image"], image)


def test_bias_field_rejects_order_zero():
    with pytest.raises(LiversegError, match="order"):
        BiasFieldTransform(order=0)


def test_slice_thickness_factor_one_is_identity():
    volume = torch.from_numpy(np.random.default_rng(2).normal(size=SHAPE).astype(np.float32))
    assert torch.equal(thicken_slices(volume, 1.0), volume)


@pytest.mark.parametrize("factor", [1.5, 2.0, 2.7])
def test_slice_thickness_keeps_a_volume_constant_along_z(factor):
    # every output slice is a weighted average of input slices: equal slices stay the same, in-plane detail kept
    slice_ = np.random.default_rng(3).normal(size=SHAPE[1:]).astype(np.float32)
    volume = torch.from_numpy(np.broadcast_to(slice_, SHAPE).copy())
    torch.testing.assert_close(thicken_slices(volume, factor), volume, atol=1e-5, rtol=1e-5)


def test_slice_thickness_two_removes_alternating_slices():
    # +1, -1, +1, ... along z averaged in pairs is 0 everywhere, and interpolating zeros gives zeros
    signs = torch.tensor([(-1.0) ** z for z in range(SHAPE[0])])
    volume = signs[:, None, None].expand(SHAPE).clone()
    assert thicken_slices(volume, 2.0).abs().max() < 1e-6


def test_slice_thickness_keeps_a_z_ramp_inside():
    # pair averages of a ramp are the ramp at the pair centres; linear interpolation of a linear function
    # reproduces it exactly wherever it interpolates (all but the first and last slice, which are clamped)
    ramp = torch.arange(SHAPE[0], dtype=torch.float32)[:, None, None].expand(SHAPE).clone()
    out = thicken_slices(ramp, 2.0)
    torch.testing.assert_close(out[1:-1], ramp[1:-1], atol=1e-5, rtol=0)
    assert out[0].mean() == pytest.approx(0.5)  # clamped to the first pair's average (0 + 1) / 2


def test_slice_thickness_removes_high_z_frequencies():
    # After averaging to Z / f slices only frequencies below 1 / (2 f) cycles per slice survive, apart from what
    # linear interpolation leaks back; white noise along z loses most of its power above that cut-off.
    rng = np.random.default_rng(5)
    volume = torch.from_numpy(rng.normal(size=(64, 16, 16)).astype(np.float32))
    factor = 3.0
    power_in = torch.fft.rfft(volume, dim=0).abs().pow(2).mean(dim=(1, 2))
    power_out = torch.fft.rfft(thicken_slices(volume, factor), dim=0).abs().pow(2).mean(dim=(1, 2))
    frequencies = torch.fft.rfftfreq(64)
    high = frequencies > 1 / (2 * factor)
    assert power_out[high].sum() < 0.1 * power_in[high].sum()
    # what passes the cut-off mostly survives (the box average attenuates it only partly)
    low = (frequencies > 0) & (frequencies < 1 / (4 * factor))
    assert power_out[low].sum() > 0.5 * power_in[low].sum()


def test_slice_thickness_draws_factors_in_range_and_rejects_thinner_slices():
    transform = SliceThicknessTransform(factor=(1.0, 2.5), synchronize_channels=False)
    image = _positive_image(channels=3)
    np.random.seed(0)
    factors = [f for _ in range(20) for f in transform.get_parameters(image=image)["factors"]]
    assert len(factors) == 60 and all(1.0 <= f <= 2.5 for f in factors) and len(set(factors)) == 60
    with pytest.raises(ValueError, match=">= 1"):
        thicken_slices(image[0], 0.5)
