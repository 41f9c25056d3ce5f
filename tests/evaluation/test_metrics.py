"""Segmentation metrics on constructed masks with values derived by hand, and against the oracles."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.evaluation.metrics import (
    assd,
    dice,
    evaluate_case,
    hausdorff,
    hausdorff_percentile,
    rmse,
    surface_dice,
    tumor_burden,
)
from liverseg.evaluation.surfaces import SurfaceDistances, surface_distances

SPACING = (3.0, 0.8, 0.6)


def _box(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def _distances(forward, backward, wf=None, wb=None):
    forward, backward = np.asarray(forward, float), np.asarray(backward, float)
    return SurfaceDistances(
        "voxels", forward, backward,
        np.ones(forward.size) if wf is None else np.asarray(wf, float),
        np.ones(backward.size) if wb is None else np.asarray(wb, float),
    )


# --- overlap ------------------------------------------------------------------------------------

def test_dice_of_shifted_boxes_and_empty_conventions():
    a = _box((4, 12, 12), (1, 1, 1), (2, 10, 10))
    b = _box((4, 12, 12), (1, 1, 2), (2, 10, 10))  # shifted by one column: 180 of 200 voxels shared
    assert dice(a, b) == pytest.approx(2 * 180 / 400)
    empty = np.zeros_like(a)
    assert dice(a, empty) == 0.0
    assert math.isnan(dice(empty, empty))
    assert dice(empty, empty, both_empty=1.0) == 1.0


def test_tumor_burden_and_rmse():
    label = np.zeros((2, 10, 10), np.uint8)
    label[0, :7] = 1  # 70 liver voxels
    label[1, :3] = 2  # 30 tumour voxels
    assert tumor_burden(label) == pytest.approx(30 / 100)
    assert tumor_burden(np.zeros_like(label)) == 0.0
    assert rmse([0.1, 0.2, 0.3], [0.1, 0.4, 0.0]) == pytest.approx(math.sqrt((0 + 0.04 + 0.09) / 3))
    assert rmse([0.1, math.nan], [0.3, 0.2]) == pytest.approx(0.2)


# --- definitions on hand-made distance sets -----------------------------------------------------

def test_three_hd95_definitions_differ_as_defined():
    d = _distances([0, 0, 0, 0, 10], [1, 1])
    # pooled: sorted [0,0,0,0,1,1,10], rank 6*0.95 = 5.7 -> 1 + 0.7*(10-1)
    assert hausdorff_percentile(d, 95, "pooled") == pytest.approx(7.3)
    # directed: rank 4*0.95 = 3.8 -> 0 + 0.8*10 = 8; other direction 1 -> max 8
    assert hausdorff_percentile(d, 95, "max_directed") == pytest.approx(8.0)
    # area-weighted: cumulative fractions 0.2..1.0 reach 0.95 at the 5th value (10); other side 1
    assert hausdorff_percentile(d, 95, "area_weighted") == pytest.approx(10.0)
    # weights move the area-weighted percentile: the far point only holds 1% of the area
    weighted = _distances([0, 0, 0, 0, 10], [1, 1], wf=[24.75, 24.75, 24.75, 24.75, 1.0])
    assert hausdorff_percentile(weighted, 95, "area_weighted") == pytest.approx(1.0)
    assert hausdorff(d) == 10.0


def test_two_assd_definitions():
    d = _distances([1, 1, 1, 1], [4, 6])
    assert assd(d, "pooled") == pytest.approx((4 + 10) / 6)
    assert assd(d, "mean_of_directed") == pytest.approx((1 + 5) / 2)
    weighted = _distances([1, 3], [2], wf=[3.0, 1.0], wb=[2.0])
    assert assd(weighted, "pooled") == pytest.approx((3 + 3 + 4) / 6)
    assert assd(weighted, "mean_of_directed") == pytest.approx(((3 + 3) / 4 + 2) / 2)


def test_surface_dice_counts_weights_within_the_tolerance_inclusive():
    d = _distances([0, 5, 6], [5.0, 7], wf=[1, 2, 3], wb=[4, 5])
    assert surface_dice(d, 5.0) == pytest.approx((1 + 2 + 4) / 15)
    assert surface_dice(_distances([], [1.0]), 5.0) == 0.0  # exactly one empty surface
    assert math.isnan(surface_dice(_distances([], []), 5.0))
    assert surface_dice(_distances([], []), 5.0, both_empty=1.0) == 1.0


def test_distances_are_nan_when_either_mask_is_empty():
    d = _distances([np.inf], [])
    assert math.isnan(hausdorff(d)) and math.isnan(assd(d)) and math.isnan(hausdorff_percentile(d))


# --- constructed masks --------------------------------------------------------------------------

def test_single_voxels_with_anisotropic_offset():
    a = _box((9, 9, 9), (2, 2, 2), (1, 1, 1))
    b = _box((9, 9, 9), (4, 3, 6), (1, 1, 1))  # offset (2, 1, 4) voxels
    expected = math.sqrt((2 * 3.0) ** 2 + (1 * 0.8) ** 2 + (4 * 0.6) ** 2)
    d = surface_distances(a, b, SPACING, "voxels")
    assert hausdorff(d) == pytest.approx(expected, abs=1e-5)
    for definition in ("pooled", "max_directed", "area_weighted"):
        assert hausdorff_percentile(d, 95, definition) == pytest.approx(expected, abs=1e-5)
    for definition in ("pooled", "mean_of_directed"):
        assert assd(d, definition) == pytest.approx(expected, abs=1e-5)


def test_single_voxel_surfels_offset_along_z():
    """Corners of A at z = -0.5, +0.5 voxels; of B at k - 0.5, k + 0.5: half at (k-1)*sz, half at k*sz."""
    k, sz = 2, SPACING[0]
    a = _box((9, 9, 9), (2, 2, 2), (1, 1, 1))
    b = np.roll(a, k, axis=0)
    d = surface_distances(a, b, SPACING, "surfels")
    np.testing.assert_allclose(np.sort(d.reference_to_prediction), [(k - 1) * sz] * 4 + [k * sz] * 4, atol=1e-5)
    assert hausdorff(d) == pytest.approx(k * sz)
    assert assd(d, "mean_of_directed") == pytest.approx((k - 0.5) * sz)
    assert hausdorff_percentile(d, 95, "area_weighted") == pytest.approx(k * sz)
    assert surface_dice(d, 5.0) == pytest.approx(0.5)  # 3 mm within, 6 mm not
    assert surface_dice(d, 6.0) == pytest.approx(1.0)  # the tolerance is inclusive


def test_plates_of_different_width_separate_the_hd95_definitions():
    """A: one slice of 3 x 10 voxels at z=0; B: 3 x 11 at z=1, one column wider.

    Every voxel of a one-voxel-thick plate is a boundary voxel. A->B: 30 distances d0 = sz.
    B->A: 30 x d0 and 3 x d1 = sqrt(sz^2 + sx^2) (the extra column).
    """
    sz, sy, sx = 2.0, 0.9, 0.7
    a = _box((4, 5, 14), (1, 1, 1), (1, 3, 10))
    b = _box((4, 5, 14), (2, 1, 1), (1, 3, 11))
    d = surface_distances(a, b, (sz, sy, sx), "voxels")
    d0, d1 = sz, math.hypot(sz, sx)
    assert hausdorff(d) == pytest.approx(d1, abs=1e-5)
    # pooled: 60 x d0 then 3 x d1; rank 62*0.95 = 58.9 lies among the d0 values
    assert hausdorff_percentile(d, 95, "pooled") == pytest.approx(d0, abs=1e-5)
    # directed B->A: 30 x d0 then 3 x d1; rank 32*0.95 = 30.4 lies among the d1 values
    assert hausdorff_percentile(d, 95, "max_directed") == pytest.approx(d1, abs=1e-5)
    assert assd(d, "pooled") == pytest.approx((60 * d0 + 3 * d1) / 63, abs=1e-5)
    assert assd(d, "mean_of_directed") == pytest.approx((d0 + (30 * d0 + 3 * d1) / 33) / 2, abs=1e-5)


def test_masks_touching_the_volume_border():
    """A fills the volume, B lacks its top slice; the volume border is surface for both.

    A's boundary: 96 border voxels; its top face (30 voxels) is sz from B's top face, the rest lie on
    B's boundary. B's boundary: 78 voxels; 12 of them (its top face inside the rim) are not on A's
    boundary and lie min(sz, rows to the rim * sy, columns to the rim * sx) from it.
    """
    sz, sy, sx = SPACING
    a = np.ones((4, 5, 6), bool)
    b = a.copy()
    b[3] = False
    d = surface_distances(a, b, SPACING, "voxels")
    assert d.reference_to_prediction.size == 96 and d.prediction_to_reference.size == 78
    np.testing.assert_allclose(np.sort(d.reference_to_prediction), [0.0] * 66 + [sz] * 30, atol=1e-5)
    top = [min(sz, min(y, 4 - y) * sy, min(x, 5 - x) * sx) for y in range(1, 4) for x in range(1, 5)]
    np.testing.assert_allclose(np.sort(d.prediction_to_reference), np.sort([0.0] * 66 + top), atol=1e-5)
    assert sorted(set(np.round(top, 6))) == [0.6, 0.8, 1.2]
    assert hausdorff(d) == pytest.approx(sz)
    assert assd(d, "pooled") == pytest.approx((30 * sz + sum(top)) / (96 + 78), abs=1e-5)
    assert assd(d, "mean_of_directed") == pytest.approx((30 * sz / 96 + sum(top) / 78) / 2, abs=1e-5)


# --- evaluate_case -------------------------------------------------------------------------------

def _labels():
    reference = np.zeros((6, 20, 20), np.uint8)
    reference[1:5, 2:18, 2:18] = 1
    reference[2:4, 5:9, 5:9] = 2
    prediction = np.zeros_like(reference)
    prediction[1:5, 2:18, 3:18] = 1
    return reference, prediction


def test_evaluate_case_structures_and_empty_tumour_conventions():
    reference, prediction = _labels()  # prediction finds the liver, misses the tumour
    atlas = evaluate_case(reference, prediction, SPACING, profile="atlas")
    liver_ref, liver_pred = 4 * 16 * 16, 4 * 16 * 15
    assert atlas["liver_dice"] == pytest.approx(2 * liver_pred / (liver_ref + liver_pred))
    assert atlas["tumor_dice"] == 0.0 and atlas["tumor_surface_dice"] == 0.0
    assert math.isnan(atlas["tumor_hd"]) and math.isnan(atlas["tumor_assd"]) and math.isnan(atlas["tumor_hd95"])
    assert atlas["tumor_burden_reference"] == pytest.approx(32 / liver_ref)
    assert atlas["tumor_burden_prediction"] == 0.0
    assert atlas["tumor_burden_abs_error"] == pytest.approx(32 / liver_ref)
    # Neither has a tumour: NaN under atlas, 1 under the lesion-style default; distances NaN in both.
    no_tumour = np.where(reference == 2, 1, reference).astype(np.uint8)
    atlas = evaluate_case(no_tumour, prediction, SPACING, profile="atlas")
    default = evaluate_case(no_tumour, prediction, SPACING, profile="default")
    assert math.isnan(atlas["tumor_dice"]) and math.isnan(atlas["tumor_surface_dice"])
    assert default["tumor_dice"] == 1.0 and default["tumor_surface_dice"] == 1.0
    assert math.isnan(default["tumor_hd"]) and math.isnan(atlas["tumor_hd"])


def test_evaluate_case_liver_distances_are_those_of_the_union_mask():
    reference, prediction = _labels()
    result = evaluate_case(reference, prediction, SPACING, profile="atlas")
    # Liver = labels 1 and 2: the prediction lacks one column (x = 2) of the reference's liver.
    d = surface_distances(reference > 0, prediction > 0, SPACING, "voxels")
    assert result["liver_hd"] == hausdorff(d) == pytest.approx(SPACING[2], abs=1e-5)
    assert result["liver_assd"] == assd(d, "mean_of_directed")


def test_evaluate_case_rejects_bad_labels():
    reference, prediction = _labels()
    with pytest.raises(LiversegError, match="values \\[3\\]"):
        evaluate_case(reference, np.where(prediction == 1, 3, 0), SPACING)
    with pytest.raises(LiversegError, match="non-integer"):
        evaluate_case(reference, prediction * 0.5, SPACING)
    with pytest.raises(LiversegError, match="shape"):
        evaluate_case(reference, prediction[:, :10], SPACING)
    with pytest.raises(LiversegError, match="spacing"):
        evaluate_case(reference, prediction, (1.0, 0.0, 1.0))
    with pytest.raises(LiversegError, match="unknown metric profile"):
        evaluate_case(reference, prediction, SPACING, profile="brats")


# --- oracles (only where installed; they are not run-time dependencies) --------------------------

def _blobs(seed, shape=(16, 28, 24), count=3):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        c, r = rng.integers(0, shape), rng.integers(2, 6, 3)
        mask |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxel_definitions_agree_with_medpy(seed):
    binary = pytest.importorskip("medpy.metric.binary")
    reference, prediction = _blobs(seed), _blobs(seed + 100)
    d = surface_distances(reference, prediction, SPACING, "voxels")
    assert hausdorff(d) == pytest.approx(binary.hd(prediction, reference, SPACING), abs=1e-5)
    assert hausdorff_percentile(d, 95, "pooled") == pytest.approx(binary.hd95(prediction, reference, SPACING), abs=1e-5)
    assert assd(d, "pooled") == pytest.approx(binary.assd(prediction, reference, SPACING), abs=1e-5)  # MedPy >= 0.5.2
    medpy_04 = (binary.asd(prediction, reference, SPACING) + binary.asd(reference, prediction, SPACING)) / 2
    assert assd(d, "mean_of_directed") == pytest.approx(medpy_04, abs=1e-5)
    assert dice(reference, prediction) == pytest.approx(binary.dc(prediction, reference))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # its scipy.ndimage.filters imports
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surfel_definitions_agree_with_deepmind(seed):
    sd = pytest.importorskip("surface_distance")
    reference, prediction = _blobs(seed), _blobs(seed + 100)
    d = surface_distances(reference, prediction, SPACING, "surfels")
    theirs = sd.compute_surface_distances(reference, prediction, SPACING)
    assert surface_dice(d, 5.0) == pytest.approx(sd.compute_surface_dice_at_tolerance(theirs, 5.0), abs=1e-9)
    assert hausdorff_percentile(d, 95, "area_weighted") == pytest.approx(sd.compute_robust_hausdorff(theirs, 95), abs=1e-5)
    assert hausdorff(d) == pytest.approx(sd.compute_robust_hausdorff(theirs, 100), abs=1e-5)
    directed = sd.compute_average_surface_distance(theirs)
    assert assd(d, "mean_of_directed") == pytest.approx(sum(directed) / 2, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_agreement_with_monai(seed):
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    reference, prediction = _blobs(seed), _blobs(seed + 100)

    def onehot(mask):
        return torch.as_tensor(np.stack([~mask, mask])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_hd95 = float(compute_hausdorff_distance(onehot(prediction), onehot(reference), percentile=95, spacing=SPACING)[0, 0])
        theirs_sd = float(compute_surface_dice(onehot(prediction), onehot(reference), class_thresholds=[5.0],
                                               spacing=SPACING, use_subvoxels=True)[0, 0])
    voxels = surface_distances(reference, prediction, SPACING, "voxels")
    surfels = surface_distances(reference, prediction, SPACING, "surfels")
    assert hausdorff_percentile(voxels, 95, "max_directed") == pytest.approx(theirs_hd95, abs=1e-4)
    assert surface_dice(surfels, 5.0) == pytest.approx(theirs_sd, abs=1e-5)
