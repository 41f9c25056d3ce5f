"""Segmentation losses on constructed logits whose values are known by hand.

Logits are built from chosen probabilities (``log p``), so the expected Dice, cross-entropy and
margin penalties follow from arithmetic on those probabilities; MONAI's DiceCELoss and a numpy
focal loss serve as independent implementations.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.training.losses import (
    DEFAULT_LOSS,
    ENTRY_POINT_GROUP,
    LOSSES,
    SegmentationLoss,
    available_losses,
    build_loss,
    margin_penalty,
)

ALL_LOSSES = ["dice_ce", "dice_focal", "mbls", "dice_mbls", "ce", "dice"]
SMOOTH = 1e-5


def _confident_logits(target: torch.Tensor, num_classes: int, value: float) -> torch.Tensor:
    """Logits (B, K, *spatial) with ``value`` at the target class and 0 elsewhere."""
    onehot = torch.nn.functional.one_hot(target, num_classes).movedim(-1, 1)
    return value * onehot.to(torch.float64)


def _binary_logits(fg_probability: torch.Tensor) -> torch.Tensor:
    """2-class logits (B, 2, *spatial) whose softmax gives ``fg_probability`` for class 1."""
    p = fg_probability.to(torch.float64)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _random_case(seed: int = 0, num_classes: int = 3, shape=(2, 4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, shape, generator=generator)
    mask = torch.rand(shape, generator=generator) > 0.4
    return logits, target, mask


def test_registry_has_the_losses_and_rejects_unknown_names_and_parameters():
    assert set(ALL_LOSSES) <= set(LOSSES.names())
    assert DEFAULT_LOSS == "dice_ce"
    with pytest.raises(LiversegError, match="unknown loss 'dice_bce'.*dice_ce.*mbls"):
        build_loss("dice_bce")
    with pytest.raises(LiversegError, match="no parameter gama.*gamma"):
        build_loss("dice_focal", gama=2)
    with pytest.raises(LiversegError, match="weight_ce.*>= 0"):
        build_loss("dice_ce", weight_ce=-1)
    with pytest.raises(LiversegError, match="must be a number"):
        build_loss("mbls", margin="ten")
    with pytest.raises(LiversegError, match="at least one term"):
        SegmentationLoss()


@pytest.fixture
def isolated_losses(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test disappear after it (the table is swapped for a copy)."""
    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))
    modules_before = set(sys.modules)
    yield LOSSES
    for name in set(sys.modules) - modules_before:
        if name.startswith("plugin_loss"):
            del sys.modules[name]


def test_a_user_registered_loss_is_found_by_name(isolated_losses):
    @LOSSES.register("twice_ce")
    def _twice_ce() -> SegmentationLoss:
        return SegmentationLoss(weight_ce=2.0)

    logits = torch.zeros(1, 4, 3, 3)
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    assert float(build_loss("twice_ce")(logits, target)) == pytest.approx(2 * math.log(4))


def test_an_installed_plugin_loss_is_loaded_by_name_only_when_asked_for(isolated_losses, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "plugin_loss_demo.py").write_text(
        "from liverseg.training.losses import SegmentationLoss\n\n"
        "def half_ce(scale=0.5):\n    return SegmentationLoss(weight_ce=scale)\n"
    )
    (site / "plugin_loss_broken.py").write_text("import a_module_that_does_not_exist\n")
    info = site / "liverseg_loss_demo-0.1.dist-info"  # what pip leaves behind
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: liverseg_loss_demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nhalf_ce = plugin_loss_demo:half_ce\nbroken = plugin_loss_broken:loss\n"
    )
    monkeypatch.syspath_prepend(str(site))
    assert {"half_ce", "broken"} <= set(available_losses())
    assert "plugin_loss_demo" not in sys.modules
    loss = build_loss("half_ce", scale=0.25)
    assert float(loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))) == pytest.approx(0.25 * math.log(2))
    assert "half_ce" in LOSSES
    with pytest.raises(LiversegError, match="loss 'broken': cannot load.*liverseg_loss_demo.*ModuleNotFoundError"):
        build_loss("broken")


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_uniform_logits_give_cross_entropy_log_k(num_classes):
    target = torch.arange(24).reshape(1, 2, 3, 4) % num_classes
    logits = torch.zeros(1, num_classes, 2, 3, 4)
    assert float(build_loss("ce")(logits, target)) == pytest.approx(math.log(num_classes), rel=1e-6)
    # all logits equal: every distance is 0 <= margin, so MbLS adds nothing
    assert float(build_loss("mbls")(logits, target)) == pytest.approx(math.log(num_classes), rel=1e-6)


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "ce", "dice"])
def test_a_perfect_prediction_costs_almost_nothing(name):
    target = torch.tensor([[[0, 1, 2, 2], [1, 1, 0, 2]]]).unsqueeze(1)  # (1, 1, 2, 4): every class present
    logits = _confident_logits(target[:, 0], 3, 30.0)
    assert 0 <= float(build_loss(name)(logits, target)) < 1e-9


def test_mbls_on_a_perfect_huge_logit_prediction_pays_the_hand_computed_penalty():
    target = torch.tensor([[0, 1, 2, 1, 2, 0]])
    logits = _confident_logits(target, 3, 30.0)
    # per voxel: distances (30, 30, 0) from the winning logit; max(0, d - 10) = (20, 20, 0);
    # mean over the 3 classes = 40/3; times lambda = 0.1; cross-entropy ~ 2 exp(-30) ~ 0
    expected = 0.1 * 40 / 3
    assert float(build_loss("mbls")(logits, target)) == pytest.approx(expected, rel=1e-9)
    terms = build_loss("dice_mbls").terms(logits, target)
    assert float(terms["margin"]) == pytest.approx(40 / 3)
    assert float(terms["dice"]) < 1e-9 and float(terms["ce"]) < 1e-9
    # with the winning logit 8 ahead, no distance exceeds the margin: the loss is pure CE
    near = _confident_logits(target, 3, 8.0)
    assert float(build_loss("mbls")(near, target)) == pytest.approx(math.log(1 + 2 * math.exp(-8)), rel=1e-9)
    # a smaller margin, by hand: max(0, 8 - 5) = 3 for the two losing classes -> mean 2
    assert float(build_loss("mbls", margin=5.0).terms(near, target)["margin"]) == pytest.approx(2.0)


def test_margin_penalty_per_voxel_by_hand():
    logits = torch.tensor([[[0.0], [12.0], [25.0]]])  # one voxel, K = 3 (B, K, 1)
    # distances (25, 13, 0) - 10 -> relu (15, 3, 0), mean over 3 classes = 6
    assert margin_penalty(logits, 10.0).tolist() == [[6.0]]


def test_soft_dice_of_a_two_by_two_image_by_hand():
    target = torch.tensor([[[1, 1], [0, 0]]])
    # hard prediction [[1, 0], [1, 0]]: overlap 1, |P| = 2, |G| = 2 -> Dice (2 * 1 + s) / (4 + s)
    hard = _binary_logits(torch.tensor([[[1 - 1e-12, 1e-12], [1 - 1e-12, 1e-12]]]))
    assert float(build_loss("dice")(hard, target)) == pytest.approx(1 - (2 + SMOOTH) / (4 + SMOOTH), abs=1e-9)
    # soft prediction: sum(p * y) = 0.75 + 0.25, sum(p) = 1.7, sum(y) = 2
    soft = _binary_logits(torch.tensor([[[0.75, 0.25], [0.5, 0.2]]], dtype=torch.float64))
    expected = 1 - (2 * 1.0 + SMOOTH) / (1.7 + 2 + SMOOTH)
    assert float(build_loss("dice")(soft, target)) == pytest.approx(expected, rel=1e-12)
    # its cross-entropy: mean of -log p_target over the 4 pixels
    expected_ce = -(math.log(0.75) + math.log(0.25) + math.log(0.5) + math.log(0.8)) / 4
    assert float(build_loss("ce")(soft, target)) == pytest.approx(expected_ce, rel=1e-12)


def test_batch_dice_pools_the_batch_while_sample_dice_averages_it():
    target = torch.tensor([[[1, 1, 0, 0]], [[1, 1, 0, 0]]])  # (B=2, 1, 4)
    # sample 0 predicts its two foreground pixels exactly, sample 1 predicts nothing
    p = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    logits = _binary_logits(p)
    # pooled: overlap 2, |P| = 2, |G| = 4 -> 4/6; per sample: Dice 1 and ~0 -> mean 1/2
    assert float(build_loss("dice", batch_dice=True)(logits, target)) == pytest.approx(1 - 4 / 6, abs=1e-6)
    assert float(build_loss("dice", batch_dice=False)(logits, target)) == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_dice_ce_matches_monai(batch_dice):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target, _ = _random_case(seed=3)
    oracle = monai_losses.DiceCELoss(
        include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice, smooth_nr=SMOOTH, smooth_dr=SMOOTH
    )
    ours = build_loss("dice_ce", batch_dice=batch_dice)
    assert float(ours(logits, target.unsqueeze(1))) == pytest.approx(float(oracle(logits, target.unsqueeze(1))), rel=1e-10)


def test_focal_matches_a_numpy_focal_loss_and_reduces_to_cross_entropy_at_gamma_0():
    logits, target, _ = _random_case(seed=4)
    x = logits.numpy()
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    p_t = np.take_along_axis(probs, target.numpy()[:, None], axis=1)[:, 0]
    expected = np.mean(-((1 - p_t) ** 2) * np.log(p_t))
    assert float(build_loss("dice_focal").terms(logits, target)["focal"]) == pytest.approx(expected, rel=1e-10)
    focal_0 = build_loss("dice_focal", gamma=0.0).terms(logits, target)
    plain = build_loss("dice_ce").terms(logits, target)
    assert float(focal_0["focal"]) == pytest.approx(float(plain["ce"]), rel=1e-12)
    assert float(focal_0["focal"]) == pytest.approx(np.mean(-np.log(p_t)), rel=1e-10)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_masked_voxels_are_ignored(name):
    loss = build_loss(name)
    logits, target, mask = _random_case(seed=5)
    outside = ~mask.unsqueeze(1)
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target.unsqueeze(1), mask.unsqueeze(1))
    value.backward()
    assert torch.all(logits.grad.masked_select(outside) == 0)
    assert logits.grad.masked_select(~outside).abs().sum() > 0

    # other predictions and labels outside the mask change nothing
    generator = torch.Generator().manual_seed(9)
    changed_logits = torch.where(outside, 50 * torch.randn(logits.shape, generator=generator, dtype=torch.float64), logits.detach())
    changed_target = torch.where(mask, target, (target + 1) % 3)
    assert float(loss(changed_logits, changed_target, mask)) == float(value.detach())

    # the masked loss equals the unmasked loss on the counted voxels alone (pooled as one sample,
    # which is what batch Dice does)
    counted_logits = logits.detach().movedim(1, -1)[mask].T.unsqueeze(0)  # (1, K, N)
    counted_target = target[mask].unsqueeze(0)  # (1, N)
    assert float(value.detach()) == pytest.approx(float(loss(counted_logits, counted_target)), rel=1e-12)


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_gradients_are_finite_also_without_foreground_and_without_counted_voxels(name, scale):
    loss = build_loss(name)
    logits, _, mask = _random_case(seed=6)
    logits = (scale * logits.float()).requires_grad_(True)
    empty = torch.zeros(mask.shape, dtype=torch.long)
    for current_mask in (None, mask, torch.zeros_like(mask)):
        logits.grad = None
        value = loss(logits, empty, current_mask)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    # nothing counted: the loss is 0 (the Dice term of an empty class with nothing predicted is 0 too)
    assert float(value.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_an_empty_target_with_an_empty_prediction_has_dice_loss_near_0_by_the_smoothing():
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    p_fg = torch.full((1, 2, 2), 1e-7, dtype=torch.float64)
    # Dice = s / (sum(p) + s) with sum(p) = 4e-7 and s = 1e-5
    expected = 1 - SMOOTH / (4e-7 + SMOOTH)
    assert float(build_loss("dice")(_binary_logits(p_fg), target)) == pytest.approx(expected, rel=1e-9)


def test_target_layouts_and_dtypes_are_equivalent():
    logits, target, mask = _random_case(seed=7)
    loss = build_loss("dice_mbls")
    reference = float(loss(logits, target, mask))
    assert float(loss(logits, target.unsqueeze(1), mask.unsqueeze(1).float())) == reference
    assert float(loss(logits, target.float().unsqueeze(1), mask)) == reference
    # 2D inputs work the same way
    assert torch.isfinite(loss(logits[:, :, 0], target[:, 0], mask[:, 0]))


def test_low_precision_logits_are_computed_in_float32():
    logits, target, _ = _random_case(seed=8)
    value = build_loss("dice_ce")(logits.to(torch.bfloat16), target)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(build_loss("dice_ce")(logits.to(torch.bfloat16).double(), target)), rel=1e-6)


def test_bad_targets_are_reported():
    logits, target, _ = _random_case(seed=9)
    with pytest.raises(LiversegError, match=r"values 0\.\.3 .* 3 classes .*plans\.json"):
        build_loss("dice_ce")(logits, target.clamp(max=2) + (target == 2).long())
    with pytest.raises(ValueError, match="K >= 2"):
        build_loss("ce")(logits[:, :1], torch.zeros_like(target))
    with pytest.raises(ValueError, match="does not match"):
        build_loss("ce")(logits, target[:, :2])
