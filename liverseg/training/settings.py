"""How one training run goes: the plan's schedule plus the command line's overrides, validated once.

:class:`TrainSettings` is what the trainer reads: the numbers of the model's ``schedule`` in
plans.json, changed by ``--epochs``, ``--iters-per-epoch``, ``--lr``, ``--batch-size`` and the
other options of ``liverseg_train``. :meth:`TrainSettings.from_overrides` builds it and checks
every value, and that the plan's network, loss, optimiser and schedule names exist, so a mistake
stops the run before any work with a message saying what to change. The settings remember which
values were given explicitly: a resumed run (``--continue``) takes every other value from its
checkpoint (:meth:`TrainSettings.resumed`), so continuing never silently switches to other numbers.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from liverseg.errors import LiversegError
from liverseg.inference.device import DEVICE_CHOICES, autocast_dtype, available_cpus
from liverseg.networks import get_network
from liverseg.planning.plans import ModelPlan
from liverseg.training.losses import get_loss
from liverseg.training.optim import LR_SCHEDULES, OPTIMIZERS

PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_SAVE_EVERY = 1
DEFAULT_SEED = 0
# Values a resumed run takes from its checkpoint unless given again; where the run happens
# (device, workers) and what to do now (continue, init_from, final validation) are not among them.
RESUMED_FIELDS = ("epochs", "iterations_per_epoch", "validation_iterations", "learning_rate", "batch_size", "save_every",
                  "seed", "precision", "early_stopping_patience")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs besides the plan.

    ``precision``: ``auto`` = fp16 autocast with a gradient scaler on CUDA, bf16 autocast on a CPU
    with native bf16 instructions (fp32 on others); ``fp32``; ``bf16`` = bf16 autocast on either
    device. ``num_workers`` (augmentation processes) and ``threads`` (torch threads of the training
    process) of None are chosen for the device (:func:`resolve_workers`).
    ``time_budget_minutes`` shortens the schedule so the training epochs end within that many
    minutes (:mod:`liverseg.training.budget`). ``early_stopping_patience`` ends the run when the
    online validation loss has not improved for that many epochs (0: never;
    :mod:`liverseg.training.early_stopping`). ``stop_after_epoch`` pauses the run after that many
    epochs without changing its schedule (a later ``continue_training`` goes on exactly as if it had
    never paused; multi-seed selection trains its seeds rung by rung this way). ``init_from`` is a
    checkpoint whose network weights start the run (e.g. a cascade's second stage from its first);
    a continued run that has a checkpoint resumes from it instead. ``init_encoder_from`` is a 2D
    model (weight file or results folder) whose encoder starts an ``ahnet``'s
    (:mod:`liverseg.training.init_encoder`, which turns it into ``init_from`` once the transfer is
    done). ``explicit`` names the fields the user gave (the others came from the plan or the defaults).
    """

    epochs: int
    iterations_per_epoch: int
    validation_iterations: int
    learning_rate: float
    batch_size: int
    save_every: int = DEFAULT_SAVE_EVERY
    seed: int = DEFAULT_SEED
    device: str = "auto"
    num_workers: int | None = None
    threads: int | None = None
    precision: str = "auto"
    continue_training: bool = False
    init_from: Path | None = None
    init_encoder_from: Path | None = None
    final_validation: bool = True
    time_budget_minutes: float | None = None
    early_stopping_patience: int = 0
    stop_after_epoch: int | None = None
    explicit: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("iterations_per_epoch", 1), ("validation_iterations", 0), ("batch_size", 1),
                              ("save_every", 1), ("seed", 0), ("num_workers", 0), ("threads", 1),
                              ("early_stopping_patience", 0), ("stop_after_epoch", 1)):
            value = getattr(self, name)
            if value is None and name in ("num_workers", "threads", "stop_after_epoch"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise LiversegError(f"{_option(name)} must be a whole number >= {minimum}; got {value!r}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
            raise LiversegError(f"{_option('learning_rate')} must be a positive number; got {lr!r}")
        budget = self.time_budget_minutes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)
                                   or not math.isfinite(budget) or budget <= 0):
            raise LiversegError(f"{_option('time_budget_minutes')} must be a positive number of minutes; got {budget!r}")
        if self.early_stopping_patience and not self.validation_iterations:
            raise LiversegError(f"{_option('early_stopping_patience')} watches the online validation loss, and "
                                f"{_option('validation_iterations')} is 0; give --val-iters 1 or more")
        if self.precision not in PRECISIONS:
            raise LiversegError(f"{_option('precision')} must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        device = str(self.device).lower()
        if device not in DEVICE_CHOICES and not device.startswith("cuda:"):
            raise LiversegError(f"{_option('device')} must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N); "
                                f"got {self.device!r}")

    @classmethod
    def from_overrides(cls, model: ModelPlan, **values: Any) -> "TrainSettings":
        """The model's schedule and batch size from the plan, with every non-None value in ``values`` replacing it.

        Keys are the field names (``epochs``, ``learning_rate``, ``batch_size``, ...). Also checks
        that the names the plan gives (network, loss, optimiser, learning-rate schedule) exist.
        """
        names = {f.name for f in fields(cls)} - {"explicit"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise LiversegError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        check_plan_names(model)
        given = {k: v for k, v in values.items() if v is not None}
        if given.get("init_from") is not None and given.get("continue_training"):
            raise LiversegError("--init-from starts a new run from other weights and --continue resumes this one; "
                                "give one of them")
        if given.get("init_from") is not None and given.get("init_encoder_from") is not None:
            raise LiversegError("--init-from and --init-encoder-from both give the weights the run starts from; give one "
                                "of them")
        for key in ("init_from", "init_encoder_from"):
            if given.get(key) is not None:
                given[key] = Path(given[key])
        schedule = model.schedule
        base = {
            "epochs": schedule.epochs,
            "iterations_per_epoch": schedule.iterations_per_epoch,
            "validation_iterations": schedule.validation_iterations,
            "learning_rate": schedule.learning_rate,
            "batch_size": model.batch_size,
        }
        return cls(**{**base, **given, "explicit": frozenset(given)})

    @property
    def end_epoch(self) -> int:
        """The number of completed epochs after which this call of the trainer returns (``stop_after_epoch`` or the end)."""
        return self.epochs if self.stop_after_epoch is None else min(self.epochs, self.stop_after_epoch)

    def resumed(self, saved: Mapping[str, Any], completed_epochs: int) -> "TrainSettings":
        """The settings of a run continued from a checkpoint saved with ``saved`` after ``completed_epochs``.

        Values not given now come from the checkpoint, and so does the record of an encoder transfer
        (``init_encoder_from``). ``epochs`` may grow (extending the schedule) but not fall below the
        epochs already done; the learning rate cannot change mid-run.
        """
        taken = {name: saved[name] for name in RESUMED_FIELDS if name not in self.explicit and name in saved}
        if self.init_encoder_from is None and saved.get("init_encoder_from"):
            taken["init_encoder_from"] = Path(saved["init_encoder_from"])  # the record of how the run started
        merged = replace(self, **taken)
        if merged.epochs < completed_epochs:
            raise LiversegError(f"--epochs {merged.epochs} is fewer than the {completed_epochs} epochs this run has already "
                                f"done; give at least {completed_epochs}")
        if "learning_rate" in self.explicit and "learning_rate" in saved and self.learning_rate != saved["learning_rate"]:
            raise LiversegError(f"--lr {self.learning_rate:g} differs from the {saved['learning_rate']:g} this run started with; "
                                "the schedule cannot change its initial rate mid-run (start a new run, or drop --lr)")
        return merged

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (for checkpoints and logs)."""
        d = asdict(self)
        d["init_from"] = None if self.init_from is None else str(self.init_from)
        d["init_encoder_from"] = None if self.init_encoder_from is None else str(self.init_encoder_from)
        d["explicit"] = sorted(self.explicit)
        return d


def resolve_workers(settings: TrainSettings, device: torch.device, cpus: int | None = None) -> TrainSettings:
    """``settings`` with augmentation workers and torch threads chosen for ``device`` where they are None.

    CPU: one worker when there are at least two cores, the network gets the other cores. CUDA: a
    worker per core but one (at most 8), torch keeps every core. ``cpus`` is the number of cores
    this process may use (default: all it sees; a DDP process gets its share of the machine).
    """
    cpus = available_cpus() if cpus is None else max(1, int(cpus))
    workers = settings.num_workers
    if workers is None:
        workers = min(8, max(1, cpus - 1)) if device.type == "cuda" else min(1, cpus - 1)
    threads = settings.threads
    if threads is None:
        threads = cpus if device.type == "cuda" else max(1, cpus - workers)
    return replace(settings, num_workers=workers, threads=threads)


def training_precision(device: torch.device, precision: str) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype (None = fp32) and whether a gradient scaler is needed, for ``precision`` on ``device``."""
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    dtype = autocast_dtype(device, "auto")
    return dtype, dtype == torch.float16


def check_plan_names(model: ModelPlan) -> None:
    """Raise a LiversegError when the model's network, loss, optimiser or schedule name is not registered."""
    try:
        get_network(model.topology.network)
        get_loss(model.schedule.loss)
        OPTIMIZERS.get(model.schedule.optimizer)
        LR_SCHEDULES.get(model.schedule.lr_schedule)
    except LiversegError as e:
        raise LiversegError(f"model {model.name}: {e}") from None


_OPTIONS = {"epochs": "--epochs", "iterations_per_epoch": "--iters-per-epoch", "validation_iterations": "--val-iters",
            "learning_rate": "--lr", "batch_size": "--batch-size", "save_every": "--save-every", "seed": "--seed",
            "num_workers": "-np", "threads": "--threads", "time_budget_minutes": "--time-budget", "precision": "--precision", "device": "--device",
            "early_stopping_patience": "--early-stopping", "init_from": "--init-from", "init_encoder_from": "--init-encoder-from"}


def _option(name: str) -> str:
    """How a setting is called on the command line and in Python, for messages."""
    return f"{_OPTIONS[name]} ({name})" if name in _OPTIONS else name
