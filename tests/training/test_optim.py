"""Optimiser factory, the poly schedule (values, resume, extension) and gradient clipping."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from liverseg.errors import LiversegError
from liverseg.training.losses import build_loss
from liverseg.training.optim import OPTIMIZERS, PolyLR, build_lr_schedule, build_optimizer, clip_gradients, poly_lr


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv3d(1, 3, kernel_size=1)


def _schedule(max_steps: int, initial_lr: float = 0.01) -> PolyLR:
    return PolyLR(build_optimizer("sgd", _model().parameters(), lr=initial_lr), initial_lr, max_steps)


def test_sgd_is_nesterov_with_nnunet_defaults_and_adam_takes_its_rate():
    sgd = build_optimizer("sgd", _model().parameters(), lr=0.01)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    adam = build_optimizer("adam", _model().parameters(), lr=2e-4, weight_decay=0.0)
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (2e-4, 0.0)
    assert OPTIMIZERS.names() == ["adam", "adamw", "sgd", "sgd_nesterov"]
    assert isinstance(build_optimizer("adamw", _model().parameters(), lr=1e-3), torch.optim.AdamW)
    plain = build_optimizer("sgd", _model().parameters(), lr=0.01, nesterov=False).param_groups[0]
    forced = build_optimizer("sgd_nesterov", _model().parameters(), lr=0.01, nesterov=False).param_groups[0]
    assert (plain["nesterov"], forced["nesterov"]) == (False, True)


def test_bad_optimiser_settings_are_user_errors():
    params = list(_model().parameters())
    with pytest.raises(LiversegError, match="unknown optimizer 'rmsprop'; available: adam, adamw, sgd, sgd_nesterov"):
        build_optimizer("rmsprop", params, lr=0.01)
    for lr in (0, -1e-3, float("nan"), "0.01"):
        with pytest.raises(LiversegError, match="learning rate"):
            build_optimizer("sgd", params, lr=lr)
    with pytest.raises(LiversegError, match="weight decay"):
        build_optimizer("adam", params, lr=1e-3, weight_decay=-1)
    with pytest.raises(LiversegError, match="momentum"):
        build_optimizer("sgd", params, lr=1e-3, momentum=1.0)
    with pytest.raises(LiversegError, match="Nesterov"):
        build_optimizer("sgd", params, lr=1e-3, momentum=0.0)
    with pytest.raises(LiversegError, match="positive whole number"):
        PolyLR(build_optimizer("sgd", params, lr=0.01), 0.01, max_steps=0)


def test_poly_values_at_known_steps():
    schedule = _schedule(max_steps=10)
    seen = [schedule.optimizer.param_groups[0]["lr"]]
    for _ in range(10):
        schedule.step()
        seen.append(schedule.optimizer.param_groups[0]["lr"])
    # 0.01 * (1 - t/10) ** 0.9; 0.5 ** 0.9 = 0.535887..., 0.9 ** 0.9 = 0.909532...
    assert seen[0] == 0.01
    assert seen[1] == pytest.approx(0.01 * 0.9095325, rel=1e-6)
    assert seen[5] == pytest.approx(0.01 * 0.5358867, rel=1e-6)
    assert seen[10] == 0.0
    assert all(a > b for a, b in zip(seen, seen[1:]))
    assert schedule.get_last_lr() == [0.0]
    assert poly_lr(0.01, 12, 10) == 0.0


def test_state_dict_round_trip_resumes_the_same_curve():
    uninterrupted = _schedule(max_steps=20)
    expected = [uninterrupted.step() for _ in range(20)]

    first = _schedule(max_steps=20)
    for _ in range(7):
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    # a resumed run builds its scheduler from scratch (even with other numbers) and loads the state
    resumed = _schedule(max_steps=999, initial_lr=0.5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.optimizer.param_groups[0]["lr"] == expected[6]
    assert [resumed.step() for _ in range(13)] == expected[7:]


@pytest.mark.parametrize("extend_at", [5, 10])
def test_extending_the_schedule_continues_on_the_longer_curve(extend_at):
    schedule = _schedule(max_steps=10)
    for _ in range(extend_at):
        schedule.step()
    schedule.set_max_steps(15)
    # from here on, identical to a run planned with 15 steps from the start
    planned = _schedule(max_steps=15)
    for _ in range(extend_at):
        planned.step()
    assert schedule.lr == planned.lr == pytest.approx(0.01 * (1 - extend_at / 15) ** 0.9)
    assert schedule.optimizer.param_groups[0]["lr"] == planned.lr
    assert [schedule.step() for _ in range(15 - extend_at)] == [planned.step() for _ in range(15 - extend_at)]
    with pytest.raises(LiversegError, match="already at step 15"):
        schedule.set_max_steps(12)


def test_finished_run_extended_restarts_at_the_hand_computed_rate():
    schedule = _schedule(max_steps=1000)
    for _ in range(1000):
        schedule.step()
    assert schedule.lr == 0.0
    schedule.set_max_steps(1500)
    # (1 - 1000/1500) ** 0.9 = (1/3) ** 0.9 = 0.372041...
    assert schedule.lr == pytest.approx(0.01 * 0.3720410, rel=1e-6)


def test_schedules_by_name_and_the_constant_schedule():
    optimizer = build_optimizer("adam", _model().parameters(), lr=2e-4)
    constant = build_lr_schedule("constant", optimizer, 2e-4, max_steps=3)
    assert [constant.step() for _ in range(5)] == [2e-4] * 5
    constant.set_max_steps(10)
    assert optimizer.param_groups[0]["lr"] == 2e-4
    assert isinstance(build_lr_schedule("poly", optimizer, 2e-4, max_steps=3), PolyLR)
    with pytest.raises(LiversegError, match="unknown learning-rate schedule 'cosine'; available: constant, poly"):
        build_lr_schedule("cosine", optimizer, 2e-4, max_steps=3)


def test_clipping_scales_the_global_norm_down_to_the_limit():
    first, second = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    first.grad, second.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert float(clip_gradients([first, second], max_norm=1.0)) == pytest.approx(5.0)
    assert (float(first.grad), float(second.grad)) == pytest.approx((0.6, 0.8), rel=1e-5)
    model = _model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    norm = float(clip_gradients(model))  # 12 by default; 3 weights + 3 biases of 2.0: norm sqrt(24) < 12
    assert norm == pytest.approx(24**0.5)
    assert all(torch.all(p.grad == 2.0) for p in model.parameters())


@pytest.fixture
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds waiting, badly so on a loaded machine (0.08 s vs 3-9 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sgd_poly_and_dice_ce_learn_a_toy_segmentation(one_thread):
    torch.manual_seed(0)
    image = torch.randn(2, 1, 4, 8, 8)
    target = (image > 0.5).long() + (image > 1.5).long()  # three classes by intensity
    model = nn.Sequential(nn.Conv3d(1, 8, 1), nn.LeakyReLU(), nn.Conv3d(8, 3, 1))
    optimizer = build_optimizer("sgd", model.parameters(), lr=0.05)
    schedule = PolyLR(optimizer, 0.05, max_steps=60)
    loss = build_loss("dice_ce")
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        value = loss(model(image), target)
        value.backward()
        clip_gradients(model)
        optimizer.step()
        schedule.step()
        losses.append(float(value.detach()))
    assert losses[-1] < 0.5 * losses[0]
