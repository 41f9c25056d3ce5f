"""Training settings: the plan's schedule, command-line overrides, validation, and what a resumed run keeps."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.inference.device import bf16_supported
from liverseg.planning.plans import ModelPlan, NetworkTopology, SamplingSpec, TrainingSchedule
from liverseg.training.settings import TrainSettings, check_plan_names, resolve_workers, training_precision


def _model(network: str = "unet", **schedule: object) -> ModelPlan:
    topology = NetworkTopology(network="unet", patch_size=(16, 32, 32), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                               strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), features_per_stage=(4, 8, 16))
    base = {"epochs": 20, "iterations_per_epoch": 50, "validation_iterations": 10, "optimizer": "sgd_nesterov",
            "learning_rate": 0.01, "momentum": 0.99, "weight_decay": 3e-5, "lr_schedule": "poly", "poly_exponent": 0.9,
            "loss": "dice_ce"}
    model = ModelPlan(name="multiclass", learns={1: 1, 2: 2}, preprocessing="fullres", bbox_target="liver", topology=topology,
                      batch_size=3, sampling=SamplingSpec(), schedule=TrainingSchedule(**{**base, **schedule}))
    # A plan can name a network registered only in another process (a plugin): bypass the dataclass check.
    if network != "unet":
        object.__setattr__(model.topology, "network", network)
    return model


def test_plan_values_are_the_defaults_and_given_values_replace_them():
    settings = TrainSettings.from_overrides(_model())
    assert (settings.epochs, settings.iterations_per_epoch, settings.validation_iterations) == (20, 50, 10)
    assert (settings.learning_rate, settings.batch_size, settings.explicit) == (0.01, 3, frozenset())
    changed = TrainSettings.from_overrides(_model(), epochs=2, learning_rate=0.1, batch_size=None, init_from="x.pt")
    assert (changed.epochs, changed.learning_rate, changed.batch_size, changed.init_from) == (2, 0.1, 3, Path("x.pt"))
    assert changed.explicit == {"epochs", "learning_rate", "init_from"}
    assert changed.to_dict()["init_from"] == "x.pt" and changed.to_dict()["explicit"] == ["epochs", "init_from", "learning_rate"]


@pytest.mark.parametrize("values, message", [
    ({"epochs": -1}, "--epochs (epochs) must be a whole number >= 1; got -1"),
    ({"epochs": 0}, "--epochs"),
    ({"iterations_per_epoch": 0}, "--iters-per-epoch"),
    ({"validation_iterations": -2}, "--val-iters"),
    ({"batch_size": 0}, "--batch-size (batch_size) must be a whole number >= 1"),
    ({"batch_size": 2.5}, "--batch-size"),
    ({"save_every": 0}, "--save-every"),
    ({"num_workers": -1}, "-np"),
    ({"learning_rate": -0.1}, "--lr (learning_rate) must be a positive number"),
    ({"learning_rate": float("nan")}, "--lr"),
    ({"precision": "fp8"}, "--precision"),
    ({"device": "tpu"}, "--device"),
    ({"epochs_per_fold": 3}, "unknown training setting(s) epochs_per_fold"),
    ({"continue_training": True, "init_from": "a.pt"}, "give one of them"),
])
def test_bad_values_are_rejected_with_the_option_named(values, message):
    with pytest.raises(LiversegError) as error:
        TrainSettings.from_overrides(_model(), **values)
    assert message in str(error.value)


def test_a_validation_iteration_count_of_zero_is_allowed():
    assert TrainSettings.from_overrides(_model(), validation_iterations=0).validation_iterations == 0


def test_names_the_plan_gives_must_be_registered():
    check_plan_names(_model())
    with pytest.raises(LiversegError, match="model multiclass: unknown network 'no_such_net'; available: .*unet"):
        TrainSettings.from_overrides(_model(network="no_such_net"))


def test_a_resumed_run_keeps_its_settings_unless_given_again():
    first = TrainSettings.from_overrides(_model(), epochs=2, iterations_per_epoch=3, seed=7, batch_size=2)
    saved = first.to_dict()
    plain = TrainSettings.from_overrides(_model(), continue_training=True).resumed(saved, completed_epochs=1)
    assert (plain.epochs, plain.iterations_per_epoch, plain.seed, plain.batch_size) == (2, 3, 7, 2)
    assert plain.continue_training  # what to do now is not taken from the checkpoint
    extended = TrainSettings.from_overrides(_model(), continue_training=True, epochs=5, num_workers=0).resumed(saved, 2)
    assert (extended.epochs, extended.iterations_per_epoch, extended.num_workers) == (5, 3, 0)
    with pytest.raises(LiversegError, match="--epochs 1 is fewer than the 2 epochs"):
        TrainSettings.from_overrides(_model(), continue_training=True, epochs=1).resumed(saved, 2)
    with pytest.raises(LiversegError, match="--lr 0.5 differs from the 0.01"):
        TrainSettings.from_overrides(_model(), continue_training=True, learning_rate=0.5).resumed(saved, 1)


def test_settings_are_frozen():
    settings = TrainSettings.from_overrides(_model())
    with pytest.raises(AttributeError):
        settings.epochs = 3  # type: ignore[misc]
    assert replace(settings, epochs=3).epochs == 3


@pytest.mark.parametrize("device, cpus, given, expected", [
    ("cpu", 2, {}, (1, 1)),          # one augmentation worker, the other core for the network
    ("cpu", 1, {}, (0, 1)),
    ("cpu", 8, {}, (1, 7)),
    ("cpu", 2, {"num_workers": 0}, (0, 2)),
    ("cpu", 2, {"threads": 2}, (1, 2)),
    ("cuda", 16, {}, (8, 16)),
    ("cuda", 4, {}, (3, 4)),
])
def test_workers_and_threads_are_chosen_for_the_device(monkeypatch, device, cpus, given, expected):
    monkeypatch.setattr("liverseg.training.settings.available_cpus", lambda: cpus)
    settings = resolve_workers(TrainSettings.from_overrides(_model(), **given), torch.device(device))
    assert (settings.num_workers, settings.threads) == expected


def test_precision_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training_precision(cpu, "fp32") == (None, False) and training_precision(cuda, "fp32") == (None, False)
    assert training_precision(cpu, "bf16") == (torch.bfloat16, False)
    assert training_precision(cuda, "auto") == (torch.float16, True)  # fp16 needs the gradient scaler
    assert training_precision(cpu, "auto") == ((torch.bfloat16 if bf16_supported() else None), False)
