"""Normalisation schemes and the MRI body mask, on a synthetic body lying in Rician noise.

Expected statistics are computed from the phantom's true body mask, not from body_mask.
"""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.preprocessing.normalize import NORMALIZATION, body_mask, normalize, otsu_threshold, scheme_for_channel

VESSEL_VALUE = 3000.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def phantom() -> dict[str, np.ndarray]:
    """A 20 x 256 x 256 'abdomen': elliptic body with lungs open to the top slice, a bright vessel,
    a bright speck in the air, and magnitude (Rician) noise everywhere."""
    rng = np.random.default_rng(0)
    shape = (20, 256, 256)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = np.broadcast_to(((yy - 128) / 100.0) ** 2 + ((xx - 128) / 115.0) ** 2 < 1, shape)
    lungs = ((((yy - 100) / 30.0) ** 2 + ((np.abs(xx - 128) - 50) / 25.0) ** 2) < 1) & (zz < 8)
    vessel = (((yy - 150) / 4.0) ** 2 + ((xx - 140) / 4.0) ** 2 < 1) & (zz >= 0)
    tissue = np.where(body, 300.0 + 60.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0), 0.0)
    tissue = np.where(lungs, 10.0, tissue)
    tissue = np.where(vessel, VESSEL_VALUE, tissue)
    tissue[:, 5:9, 5:9] = 600.0  # a bright artefact in the air, outside the body
    noise = rng.normal(0, 25, (2, *shape))
    image = np.hypot(tissue + noise[0], noise[1]).astype(np.float32)
    return {"image": image, "body": body.copy(), "lungs": np.broadcast_to(lungs, shape).copy(), "vessel": np.broadcast_to(vessel, shape).copy()}


def test_scheme_follows_the_channel_name():
    assert scheme_for_channel("CT") == "ct"
    assert scheme_for_channel(" ct ") == "ct"
    for name in ("MRI", "T1", "T2", "portal venous", "ADC"):
        assert scheme_for_channel(name) == "zscore_foreground"


def test_body_mask_finds_the_body_with_its_holes_and_without_the_artefact(phantom):
    mask = body_mask(phantom["image"])
    assert mask.shape == phantom["image"].shape and mask.dtype == bool
    assert _dice(mask, phantom["body"]) > 0.97
    assert np.mean(mask[phantom["lungs"]]) > 0.99  # dark lungs are inside the body
    assert not mask[:, 5:9, 5:9].any()


def test_body_mask_holds_a_layered_body_with_bright_fat_and_dark_muscle():
    """Bright fat around a darker muscle layer, the fat open to the air on one side: a plain Otsu
    split falls between fat and the rest and loses the inside; the body must still be found whole."""
    rng = np.random.default_rng(2)
    shape = (6, 200, 200)
    _, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = np.hypot((yy - 100) / 80.0, (xx - 100) / 90.0)
    body = np.broadcast_to(r < 1, shape)
    tissue = np.select([r < 0.8, r < 0.86, r < 1], [600.0, 400.0, 2500.0], default=0.0)
    tissue[:, 160:, 95:105] = np.where(r[:, 160:, 95:105] < 1, 400.0, 0.0)  # the fat ring is open at the back
    noise = rng.normal(0, 20, (2, *shape))
    image = np.hypot(tissue + noise[0], noise[1]).astype(np.float32)
    assert _dice(body_mask(image), body) > 0.97


def test_body_mask_holds_the_liver_of_phantom_cases():
    from liverseg.data.phantom_case import generate_case

    for index in (0, 10):
        case = generate_case(index, seed=0, size="tiny")
        assert np.mean(body_mask(case.image)[case.label > 0]) > 0.999


def test_body_mask_at_full_resolution_matches(phantom):
    """A volume small enough to need no subsampling takes the direct path and agrees."""
    small = phantom["image"][:, ::2, ::2]
    assert _dice(body_mask(small), phantom["body"][:, ::2, ::2]) > 0.97


def test_body_mask_of_a_featureless_volume_is_everything():
    assert body_mask(np.full((3, 40, 40), 5.0, dtype=np.float32)).all()


def test_otsu_threshold_splits_two_clusters():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 5, 3000)])
    assert 20 < otsu_threshold(values) < 85


def test_zscore_foreground_standardises_the_clipped_body(phantom):
    image, body = phantom["image"], phantom["body"]
    out = normalize(image[None], ["zscore_foreground"])[0]
    assert out.dtype == np.float32
    low, high = np.percentile(image[body], [0.5, 99.5])
    clipped = np.clip(image[body], low, high).astype(np.float64)
    mean, std = clipped.mean(), clipped.std()
    # The found mask differs from the true body in a few border voxels only.
    np.testing.assert_allclose(out, (np.clip(image, low, high) - mean) / std, atol=0.03)
    assert abs(out[body].mean()) < 0.02 and abs(out[body].std() - 1) < 0.02
    # The vessel is clipped to the body's 99.5th percentile, not left far out.
    assert out[phantom["vessel"]].max() == pytest.approx(out.max())
    assert out.max() < (VESSEL_VALUE - mean) / std / 2


def test_zscore_foreground_keeps_the_background(phantom):
    image = phantom["image"]
    out = normalize(image[None], ["zscore_foreground"])[0]
    air = ~phantom["body"]
    assert np.std(out[air]) > 0
    # Outside the body the same increasing affine map applies as inside (clipping aside).
    low_clip = out.min()
    unclipped = air & (out > low_clip) & (out < out.max())
    assert np.corrcoef(image[unclipped], out[unclipped])[0, 1] > 0.9999


def test_percentile_scheme_maps_2nd_and_98th_body_percentiles_to_0_and_1(phantom):
    image, body = phantom["image"], phantom["body"]
    out = normalize(image[None], ["percentile"])[0]
    low, high = np.percentile(out[body], [2, 98])
    assert low == pytest.approx(0, abs=0.01)
    assert high == pytest.approx(1, abs=0.01)
    assert out.max() > 1.5  # no clipping: the vessel stays bright


def test_ct_clips_to_dataset_percentiles_then_standardises():
    image = np.array([-1000, -100, 100, 150, 300, 2000], dtype=np.float32).reshape(1, 1, 2, 3)
    stats = {"mean": 100.0, "std": 50.0, "percentile_00_5": -100.0, "percentile_99_5": 300.0, "median": 90.0}
    out = normalize(image, ["ct"], [stats])
    np.testing.assert_allclose(out.ravel(), [-4, -4, 0, 1, 4, 4])


def test_ct_without_dataset_statistics_is_a_clear_error():
    with pytest.raises(LiversegError, match="percentile_99_5"):
        normalize(np.zeros((1, 2, 2, 2), dtype=np.float32), ["ct"], [{"mean": 0, "std": 1, "percentile_00_5": 0}])
    with pytest.raises(LiversegError, match="liverseg_fingerprint"):
        normalize(np.zeros((1, 2, 2, 2), dtype=np.float32), ["ct"])


def test_each_channel_gets_its_own_scheme(phantom):
    image = np.stack([phantom["image"][:4], np.full((4, 256, 256), 250.0, dtype=np.float32)])
    stats = [None, {"mean": 200.0, "std": 25.0, "percentile_00_5": 0.0, "percentile_99_5": 1000.0}]
    out = normalize(image, ["zscore_foreground", "ct"], stats)
    np.testing.assert_allclose(out[1], 2.0)
    np.testing.assert_allclose(out[0], normalize(image[:1], ["zscore_foreground"])[0])


def test_unknown_scheme_and_wrong_counts_are_refused():
    image = np.zeros((2, 2, 2, 2), dtype=np.float32)
    with pytest.raises(LiversegError, match="unknown normalization 'zscore_fancy'.*percentile"):
        normalize(image, ["zscore_fancy", "ct"])
    with pytest.raises(LiversegError, match="one per channel"):
        normalize(image, ["percentile"])
    with pytest.raises(LiversegError, match="one per channel"):
        normalize(image, ["percentile", "percentile"], [None])


def test_a_user_registered_scheme_is_used_by_name():
    name = "test_negate"
    if name not in NORMALIZATION:
        NORMALIZATION.register(name)(lambda channel, stats: -channel)
    image = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(normalize(image, [name]), -image)
