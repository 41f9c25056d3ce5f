"""The names a plan may use for networks, losses, optimisers, trainers, combine rules and post-processing steps.

A plan names these parts as strings, and they are checked here when a plan is built or loaded,
so a typo in a hand-edited plans.json fails at once and not hours into training. Networks,
losses, optimisers, learning-rate schedules, trainers and post-processing steps are looked up in their
registries (which include the names installed plugins declare), and so are combine rules; the
planner's own vocabularies are listed in :data:`KNOWN_NAMES`.
"""
from __future__ import annotations

from typing import Callable

from liverseg.errors import LiversegError
from liverseg.networks import available_networks
from liverseg.postprocessing import available_steps
from liverseg.training.losses import available_losses
from liverseg.training.optim import LR_SCHEDULES, OPTIMIZERS
from liverseg.training.trainers import available_trainers

KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    # What a model's patch must hold: the liver box, lesion boxes plus context, or the whole volume.
    "bbox_target": ("liver", "lesions", "volume"),
    # The grid a model works on: the plan's target spacing, or the cascade's coarse spacing.
    "resolution": ("full", "low"),
    # Which axes a model is mirrored along: nnU-Net's (in-plane on thick slices, else all), or none.
    "mirroring": ("auto", "none"),
    # When a pipeline is worth training: always, or only when volumes are much larger than a patch.
    "emit": ("always", "large_volume"),
}


def _combine_rules() -> list[str]:
    """How the models of a pipeline become one 3-class label map (the inference registry)."""
    from liverseg.inference.combine import COMBINE_RULES  # late: the combine rules import the plan classes

    return COMBINE_RULES.available()


_REGISTRIES: dict[str, Callable[[], list[str]]] = {
    "combine": _combine_rules,
    "network": available_networks,
    "loss": available_losses,
    "optimizer": OPTIMIZERS.names,
    "lr_schedule": LR_SCHEDULES.names,
    "postprocessing": available_steps,
    "trainer": available_trainers,
}


def known_names(kind: str) -> tuple[str, ...]:
    """The names of one kind (``network``, ``loss``, ``combine``, ...) that a plan may use."""
    if kind in _REGISTRIES:
        return tuple(_REGISTRIES[kind]())
    try:
        return KNOWN_NAMES[kind]
    except KeyError:
        raise ValueError(f"no list of {kind} names; kinds: {', '.join([*_REGISTRIES, *KNOWN_NAMES])}") from None


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a known ``kind`` name; a LiversegError listing the known ones otherwise."""
    names = known_names(kind)
    if name not in names:
        raise LiversegError(f"unknown {kind} name {name!r}; known: {', '.join(names)}")
    return str(name)
