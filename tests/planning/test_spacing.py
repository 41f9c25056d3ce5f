"""Target spacing and the z policy from case spacings."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.planning.spacing import ANISOTROPY_THRESHOLD, choose_target_spacing, coarser_spacings, nnunet_target_spacing


def test_thick_slices_keep_the_median_slice_spacing_and_get_one_separate_z_policy():
    # Slice spacings 2.5-5 mm over 0.75-1.25 mm pixels: case ratios straddle nnU-Net's switch at 3.
    spacings = np.array([[2.5, 1.25, 1.25], [3.0, 0.75, 0.75], [4.0, 1.0, 1.0], [5.0, 0.8, 0.8], [3.5, 1.1, 1.1]])
    shapes = np.array([[80, 320, 320], [60, 512, 512], [70, 400, 400], [50, 448, 448], [64, 384, 384]])
    decision = choose_target_spacing(spacings, shapes)
    assert decision.target_spacing == (3.5, 1.0, 1.0)  # medians by hand: z 2.5 3 3.5 4 5; in-plane .75 .8 1 1.1 1.25
    assert decision.separate_z and decision.order_z_image == 0 and decision.order_z_label == 0
    assert decision.anisotropy == pytest.approx(3.5)
    assert "ratios 2.00-6.25" in decision.z_policy_reason  # per-case ratios 2.0, 4.0, 4.0, 6.25, 3.18
    # nnU-Net: median z 3.5 > 3 x 1.0 and 64 slices x 3 < 400 pixels -> 10th percentile of z, 2.7 mm.
    assert decision.nnunet_target_spacing[0] == pytest.approx(np.percentile(spacings[:, 0], 10))
    assert "nnU-Net would upsample to 2.7 mm" in decision.reason


def test_isotropic_data_is_resampled_in_3d():
    spacings = np.array([[0.8, 0.8, 0.8], [1.0, 0.7, 0.7], [1.2, 0.9, 0.9]])
    decision = choose_target_spacing(spacings, np.array([[300, 512, 512]] * 3))
    assert decision.target_spacing == (1.0, 0.8, 0.8)
    assert not decision.separate_z and decision.anisotropy < ANISOTROPY_THRESHOLD
    assert decision.nnunet_target_spacing == pytest.approx(decision.target_spacing)
    assert "3D cubic" in decision.z_policy_reason


def test_threshold_is_inclusive_at_twice_the_in_plane_spacing():
    assert choose_target_spacing([[2.0, 1.0, 1.0]], [[50, 200, 200]]).separate_z
    assert not choose_target_spacing([[1.99, 1.0, 1.0]], [[50, 200, 200]]).separate_z


def test_nnunet_keeps_the_median_when_the_volume_has_many_slices():
    # 4 mm slices but 200 of them against 256 pixels: "anisotropic voxels" fails, the median stays.
    spacings = np.array([[3.0, 1.0, 1.0], [4.0, 1.0, 1.0], [5.0, 1.0, 1.0]])
    assert nnunet_target_spacing(spacings, np.array([[200, 256, 256]] * 3))[0] == 4.0


def test_no_cases_is_a_user_error():
    with pytest.raises(LiversegError, match="no cases"):
        choose_target_spacing(np.zeros((0, 3)), np.zeros((0, 3)))


def test_coarser_spacings_make_thick_slice_grids_isotropic_first():
    grids = list(coarser_spacings((4.0, 1.0, 1.0), max_factor=8))
    assert grids[0] == (4.0, 1.0, 1.0)
    assert grids[1] == pytest.approx((4.0, 1.1, 1.1))
    assert all(g[0] == 4.0 for g in grids if g[1] < 4.0)  # z waits until in-plane has caught up
    first_isotropic = next(i for i, g in enumerate(grids) if g[1] == 4.0)
    assert grids[first_isotropic] == (4.0, 4.0, 4.0)
    assert grids[first_isotropic + 1] == pytest.approx((4.4, 4.4, 4.4))
    assert min(grids[-1][1:]) >= 8.0 and np.all(np.diff(np.array(grids), axis=0) >= -1e-9)
