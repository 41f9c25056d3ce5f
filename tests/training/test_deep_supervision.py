"""Deep supervision: nnU-Net's weights, nearest-exact target downsampling, the weighted sum.

Expected downsampled targets come from torch's own ``F.interpolate(mode="nearest-exact")`` (the
code uses strided slicing for whole factors) or from index arithmetic by hand.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from liverseg.training.deep_supervision import DeepSupervisionLoss, deep_supervision_weights, downsample_labels
from liverseg.training.losses import build_loss

# an anisotropic pyramid: no z pooling in the first stage (target patch 16 x 32 x 32)
PYRAMID = [(16, 32, 32), (16, 16, 16), (8, 8, 8)]


def _interpolated(labels: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(labels.float(), size=size, mode="nearest-exact").to(labels.dtype)


def _pyramid_case(seed: int = 0, num_classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    outputs = [torch.randn(2, num_classes, *size, generator=generator, dtype=torch.float64) for size in PYRAMID]
    target = torch.randint(0, num_classes, (2, 1, *PYRAMID[0]), generator=generator)
    mask = torch.rand(2, 1, *PYRAMID[0], generator=generator) > 0.3
    return outputs, target, mask


def test_weights_halve_per_level_and_nnunet_style_ignores_the_coarsest():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(1, zero_coarsest=True) == [1.0]
    # 1, 1/2, 1/4 sums to 1.75
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(2, zero_coarsest=True) == [1.0, 0.0]
    assert deep_supervision_weights(3, zero_coarsest=True) == pytest.approx([2 / 3, 1 / 3, 0.0])
    # 1, 1/2, 1/4, 1/8, 0 sums to 1.875
    expected = [1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875, 0.0]
    assert deep_supervision_weights(5, zero_coarsest=True) == pytest.approx(expected)
    # liverseg's unet has no head where nnU-Net has its zero-weight one: the same effective weights
    assert deep_supervision_weights(4) == pytest.approx(expected[:4])
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_default_weights_fit_the_outputs_of_the_unet():
    from liverseg.networks import build_network

    # 5 stages: heads at 16x32x32, 16x16x16, 8x8x8; none at 4x4x4 (nnU-Net's zero-weight level)
    net = build_network("unet", 1, 3, kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 4,
                        strides=[[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 3, features_per_stage=[2, 4, 4, 4, 4])
    outputs = net(torch.randn(1, 1, *PYRAMID[0]))
    assert [tuple(o.shape[2:]) for o in outputs] == PYRAMID
    target = torch.randint(0, 3, (1, 1, *PYRAMID[0]))
    DeepSupervisionLoss(build_loss("dice_ce"))(outputs, target).backward()
    # every head that ran gets a gradient (no head is wasted, and DDP sees no unused parameter)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters() if p.requires_grad)


def test_downsampling_picks_the_centre_of_each_block():
    row = torch.arange(8).view(1, 1, 1, 8)
    # factor 2: nearest-exact takes index floor((i + 0.5) * 2) = 2i + 1
    assert downsample_labels(row, (1, 4)).flatten().tolist() == [1, 3, 5, 7]
    # factor 4: 4i + 2
    assert downsample_labels(row, (1, 2)).flatten().tolist() == [2, 6]
    # 6 -> 4 is no whole factor: floor((i + 0.5) * 1.5) = 0, 2, 3, 5
    assert downsample_labels(torch.arange(6).view(1, 1, 6), (4,)).flatten().tolist() == [0, 2, 3, 5]


def test_downsampling_an_anisotropic_pyramid_matches_torch_nearest_exact():
    _, target, mask = _pyramid_case()
    for size in PYRAMID:
        for labels in (target, mask, target[:, 0]):
            small = downsample_labels(labels, size)
            assert small.shape == (*labels.shape[:-3], *size)
            assert small.dtype == labels.dtype
            expected = _interpolated(labels if labels.ndim == 5 else labels.unsqueeze(1), size)
            assert torch.equal(small, expected if labels.ndim == 5 else expected[:, 0])
    with pytest.raises(ValueError, match="larger"):
        downsample_labels(target, (32, 32, 32))


@pytest.mark.parametrize("with_mask", [False, True])
def test_loss_is_the_weighted_sum_over_levels(with_mask):
    outputs, target, mask = _pyramid_case(seed=1)
    base = build_loss("dice_ce")
    wrapped = DeepSupervisionLoss(base)
    expected = sum(
        weight * float(base(output, _interpolated(target, size), _interpolated(mask, size) if with_mask else None))
        for weight, output, size in zip([4 / 7, 2 / 7, 1 / 7], outputs, PYRAMID)
    )
    assert float(wrapped(outputs, target, mask if with_mask else None)) == pytest.approx(expected, rel=1e-12)


def test_with_zero_coarsest_the_last_output_is_not_evaluated_and_gets_no_gradient():
    outputs, target, _ = _pyramid_case(seed=2)
    outputs = [o.clone().requires_grad_(True) for o in outputs]
    broken = outputs[-1].detach().clone().fill_(float("nan")).requires_grad_(True)
    value = DeepSupervisionLoss(build_loss("dice_mbls"), zero_coarsest=True)([*outputs[:-1], broken], target)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outputs[:-1])
    assert broken.grad is None


def test_single_output_explicit_weights_and_premade_targets():
    outputs, target, mask = _pyramid_case(seed=3)
    base = build_loss("dice_focal")
    wrapped = DeepSupervisionLoss(base)
    assert float(wrapped(outputs[0], target, mask)) == float(base(outputs[0], target, mask))
    targets = [_interpolated(target, size) for size in PYRAMID]
    assert float(wrapped(outputs, targets)) == pytest.approx(float(wrapped(outputs, target)), rel=1e-12)
    equal = DeepSupervisionLoss(base, weights=[0.5, 0.25, 0.25])
    expected = sum(w * float(base(o, t)) for w, o, t in zip([0.5, 0.25, 0.25], outputs, targets))
    assert float(equal(outputs, target)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="3 outputs"):
        DeepSupervisionLoss(base, weights=[1.0, 0.0])(outputs, target)
    with pytest.raises(ValueError, match="2 targets given for 3 outputs"):
        wrapped(outputs, targets[:2])
    with pytest.raises(ValueError, match="at least one positive"):
        DeepSupervisionLoss(base, weights=[0.0, 0.0])
