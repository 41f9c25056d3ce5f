"""Optimisers, the poly learning-rate schedule and gradient clipping.

nnU-Net's default is SGD with Nesterov momentum 0.99, learning rate 1e-2, weight decay 3e-5,
poly decay with exponent 0.9 over the epochs and gradients clipped to norm 12. The ATLAS paper
(Lambert et al. 2023) trained with Adam at 2e-4. Optimisers by name: ``"sgd"`` (Nesterov unless
turned off), ``"sgd_nesterov"`` (always Nesterov), ``"adam"``, ``"adamw"`` (decoupled weight
decay); a user registers another with ``@OPTIMIZERS.register("name")`` on a factory taking
``(params, lr, weight_decay, momentum, nesterov)``. Schedules by name (:func:`build_lr_schedule`):
``"poly"`` and ``"constant"`` (the ATLAS paper kept Adam's rate fixed).

The poly schedule and extended runs: the learning rate at step ``t`` is always
``initial_lr * (1 - t / max_steps) ** exponent``, computed from the current ``max_steps``. When a
run is extended (``set_max_steps``, e.g. a finished 1000-epoch run continued to 1500), the rest of
the schedule is exactly what a run planned with the new length from the start would use from that
step on. For a finished run this raises the rate from ~0 to ``(1 - 1000/1500) ** 0.9 = 0.37`` of
the initial rate, a warm restart that then decays to 0 again; extending mid-run raises it a
little (step 500 of 1000 -> 1500: from 0.54 to 0.69 of the initial rate). The alternative, decaying
from the current rate, would leave a finished run at a rate near 0 and make the extension useless.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from liverseg.errors import LiversegError
from liverseg.registry import Registry

OPTIMIZERS: Registry[Callable[..., Optimizer]] = Registry("optimizer")
GRAD_CLIP_NORM = 12.0
POLY_EXPONENT = 0.9


def build_optimizer(
    name: str,
    params: Iterable[Any],
    lr: float,
    weight_decay: float = 3e-5,
    momentum: float = 0.99,
    nesterov: bool = True,
) -> Optimizer:
    """The optimiser registered as ``name`` (``"sgd"`` or ``"adam"``) over ``params``.

    ``momentum`` and ``nesterov`` apply to SGD only. Invalid values (from a plan or a command-line
    override) are user errors.
    """
    factory = OPTIMIZERS.get(name)
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise LiversegError(f"the learning rate must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, numbers.Real) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise LiversegError(f"weight decay must be a number >= 0, got {weight_decay!r}")
    if not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1):
        raise LiversegError(f"momentum must be in [0, 1), got {momentum!r}")
    return factory(params, float(lr), float(weight_decay), float(momentum), bool(nesterov))


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[Any], lr: float, weight_decay: float, momentum: float, nesterov: bool) -> Optimizer:
    if nesterov and momentum == 0:
        raise LiversegError("Nesterov SGD needs a momentum > 0 (nnU-Net uses 0.99); set a momentum or turn Nesterov off")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd_nesterov")
def _sgd_nesterov(params: Iterable[Any], lr: float, weight_decay: float, momentum: float, nesterov: bool) -> Optimizer:
    return _sgd(params, lr, weight_decay, momentum, True)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[Any], lr: float, weight_decay: float, momentum: float, nesterov: bool) -> Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[Any], lr: float, weight_decay: float, momentum: float, nesterov: bool) -> Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def poly_lr(initial_lr: float, step: int, max_steps: int, exponent: float = POLY_EXPONENT) -> float:
    """The poly learning rate ``initial_lr * (1 - step / max_steps) ** exponent``; 0 from ``max_steps`` on."""
    if step >= max_steps:
        return 0.0
    return initial_lr * (1 - step / max_steps) ** exponent


class PolyLR:
    """Poly learning-rate decay over ``max_steps`` steps (nnU-Net steps once per epoch).

    The optimiser's learning rate is set to the step-0 value at construction; ``step()`` advances
    one step (call it after the optimiser steps of that epoch or iteration). ``state_dict`` and
    ``load_state_dict`` make a resumed run continue exactly; ``set_max_steps`` lengthens (or
    shortens) the schedule, see the module docstring for how the curve behaves.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, max_steps: int, exponent: float = POLY_EXPONENT) -> None:
        if not (math.isfinite(initial_lr) and initial_lr > 0):
            raise LiversegError(f"the initial learning rate must be positive, got {initial_lr!r}")
        if not (math.isfinite(exponent) and exponent > 0):
            raise LiversegError(f"the poly exponent must be positive, got {exponent!r}")
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.exponent = float(exponent)
        self.current_step = 0
        self.max_steps = _positive_steps(max_steps)
        self._apply()

    @property
    def lr(self) -> float:
        """The learning rate of the current step."""
        return poly_lr(self.initial_lr, self.current_step, self.max_steps, self.exponent)

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group (torch scheduler convention)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> float:
        """Advance one step and set the optimiser's learning rate; returns the new rate."""
        self.current_step += 1
        self._apply()
        return self.lr

    def set_max_steps(self, max_steps: int) -> None:
        """Change the schedule's length, e.g. to continue a finished run for more epochs.

        It cannot end before the current step.
        """
        max_steps = _positive_steps(max_steps)
        if max_steps < self.current_step:
            raise LiversegError(
                f"cannot end the schedule at step {max_steps}: training is already at step {self.current_step}; "
                f"ask for at least {self.current_step}"
            )
        self.max_steps = max_steps
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the schedule (plain numbers, safe for ``torch.load(weights_only=True)``)."""
        return {"initial_lr": self.initial_lr, "max_steps": self.max_steps, "exponent": self.exponent, "current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved schedule and set the optimiser's learning rate to its current value."""
        self.initial_lr = float(state["initial_lr"])
        self.max_steps = int(state["max_steps"])
        self.exponent = float(state["exponent"])
        self.current_step = int(state["current_step"])
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class ConstantLR(PolyLR):
    """A fixed learning rate with :class:`PolyLR`'s interface (steps, state dict, ``set_max_steps``)."""

    @property
    def lr(self) -> float:
        """The learning rate: always the initial one."""
        return self.initial_lr


LR_SCHEDULES: Registry[Callable[..., PolyLR]] = Registry("learning-rate schedule")
LR_SCHEDULES.register("poly")(PolyLR)
LR_SCHEDULES.register("constant")(ConstantLR)


def build_lr_schedule(name: str, optimizer: Optimizer, initial_lr: float, max_steps: int, exponent: float = POLY_EXPONENT) -> PolyLR:
    """The schedule ``name`` (``"poly"`` or ``"constant"``) driving ``optimizer`` over ``max_steps`` steps."""
    return LR_SCHEDULES.get(name)(optimizer, initial_lr, max_steps, exponent)


def clip_gradients(parameters: nn.Module | Iterable[Tensor], max_norm: float = GRAD_CLIP_NORM) -> Tensor:
    """Scale the gradients so their global L2 norm is at most ``max_norm`` (nnU-Net: 12); returns the norm before.

    Under mixed precision call ``scaler.unscale_(optimizer)`` first, so the norm is measured on the
    true gradients. A non-finite norm is returned, not raised: the grad scaler skips such steps.
    """
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def _positive_steps(max_steps: Any) -> int:
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise LiversegError(f"the number of scheduler steps (epochs) must be a positive whole number, got {max_steps!r}")
    return int(max_steps)
