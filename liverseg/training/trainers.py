"""Trainers by name: the plan's ``schedule.trainer`` picks the function that trains a model.

"Trainer not found" is the most common complaint about nnU-Net, whose trainers are classes found
by walking its package. Here a trainer is a function with the signature of
:func:`liverseg.training.trainer.train_model`::

    trainer(plan, model, fold, results_dir, settings, pipeline=None) -> dict

registered under a name, and a plan says which one each model uses (``"trainer": "default"``
in its ``schedule``; ``liverseg_train --trainer NAME`` overrides it for one run). Register your
own without editing liverseg, in a module imported before training::

    from liverseg.training.trainers import TRAINERS
    from liverseg.training.trainer import train_model

    @TRAINERS.register("long_warmup")
    def long_warmup(plan, model, fold, results_dir, settings, pipeline=None):
        ...  # e.g. change settings, then call train_model(...)

or from an installed package through the ``liverseg.trainers`` entry-point group (loaded when a
plan or the command line asks for a name that is not registered)::

    [project.entry-points."liverseg.trainers"]
    long_warmup = "my_package.training:long_warmup"
"""
from __future__ import annotations

from typing import Any, Callable

from liverseg.registry import Registry

ENTRY_POINT_GROUP = "liverseg.trainers"
DEFAULT_TRAINER = "default"

Trainer = Callable[..., dict[str, Any]]
TRAINERS: Registry[Trainer] = Registry("trainer", entry_point_group=ENTRY_POINT_GROUP)


@TRAINERS.register(DEFAULT_TRAINER)
def default_trainer(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """liverseg's training loop (:func:`liverseg.training.trainer.train_model`)."""
    from liverseg.training.trainer import train_model  # late: the loop imports torch and the data pipeline

    return train_model(*args, **kwargs)


def available_trainers() -> list[str]:
    """Names a plan or ``--trainer`` may use: registered trainers plus those installed packages declare."""
    return TRAINERS.available()


def get_trainer(name: str) -> Trainer:
    """The trainer called ``name``; loads an entry-point plugin on first use, a LiversegError listing the known ones otherwise."""
    return TRAINERS.get(name)
