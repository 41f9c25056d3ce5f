"""Start an ``ahnet``'s encoder from a trained 2D model: ``liverseg_train ... --init-encoder-from PATH``.

``PATH`` is a weight file (a liverseg checkpoint, a 2D ``unet``'s state dict, any form
:func:`liverseg.networks.transfer.transfer_2d_encoder` reads) or a trained 2D model's fold folder
(``$LIVERSEG_RESULTS/<Dataset>/multiclass_2d/multiclass/fold_0``), whose ``checkpoint_best.pt``
is used (``checkpoint_latest.pt`` when no best one was written).

Before any model trains, :func:`check_encoder_source` makes sure that the model is an ``ahnet`` and
that the 2D encoder fits it tensor by tensor (on the meta device, no weights allocated); when the
source is a liverseg checkpoint, a mismatch also says how to plan the 2D model so that it fits.

When the run starts, :func:`start_from_2d_encoder` builds the model's network as the trainer
would (seeded with the run's seed, so the decoder starts as it would without the transfer), copies
the 2D encoder into it and writes it into the results folder as ``initial_weights.pt``: a
checkpoint of epoch 0 with the network and what was transferred (``encoder_transfer``). The run
starts from it through ``init_from``; its checkpoints record both ``init_encoder_from`` and
``init_from`` in their settings, and the log says what was copied. A continued run
(``--continue``) starts from its own checkpoint and never transfers again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from liverseg.errors import LiversegError
from liverseg.networks import AHNet, build_network
from liverseg.networks.transfer import TransferReport, encoder_weights, transfer_2d_encoder
from liverseg.planning.plans import ModelPlan, Plan
from liverseg.planning.topology import divisor_of, round_up
from liverseg.training import checkpoint as ckpt
from liverseg.training import distributed
from liverseg.training.settings import TrainSettings

log = logging.getLogger(__name__)

INITIAL_WEIGHTS = "initial_weights.pt"


def encoder_source(path: str | Path) -> Path:
    """The weight file ``path`` names: the file itself, or a fold folder's best (else latest) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in (ckpt.BEST, ckpt.LATEST):
            if (path / name).is_file():
                return path / name
        folds = sorted(p.name for p in path.glob("fold_*") if p.is_dir())
        hint = (f"; it holds {', '.join(folds)}: give one of them" if folds else
                "; give a trained 2D model's fold folder (<results>/<dataset>/<pipeline>/<model>/fold_<k>) or a weight file")
        raise LiversegError(f"{path}: no {ckpt.BEST} or {ckpt.LATEST} in this folder{hint}")
    if not path.exists():
        raise LiversegError(f"{path}: no such file or folder; give a 2D model's weight file (.pt) or its results folder "
                            "(<results>/<dataset>/<pipeline>/<model>/fold_<k>)")
    return path


def check_encoder_source(plan: Plan, model: ModelPlan, source: str | Path) -> Path:
    """The weight file of ``source`` once it is sure to fit ``model``'s ahnet encoder; a LiversegError otherwise."""
    with torch.device("meta"):
        network = _network(plan, model)
    if not isinstance(network, AHNet):
        raise LiversegError(f"--init-encoder-from starts an ahnet's encoder from a 2D model, but model {model.name} is a "
                            f"'{model.topology.network}'; make it an ahnet (\"network\": \"ahnet\" in its topology, e.g. with "
                            "liverseg_plan -p overrides.json), train only the ahnet model (-m), or leave out --init-encoder-from")
    path = encoder_source(source)
    try:
        encoder_weights(network, path)
    except LiversegError as error:
        raise LiversegError(f"{error}{_planning_hint(path, plan, model)}") from None
    return path


def start_from_2d_encoder(plan: Plan, model: ModelPlan, settings: TrainSettings, folder: Path, pipeline: str,
                          fold: int | str) -> TrainSettings:
    """``settings`` starting the run from ``initial_weights.pt`` with the transferred encoder (module docstring).

    Without ``init_encoder_from`` the settings are returned as they are. A continued run keeps the
    initial weights it started from (a run that started without them is continued without them).
    """
    if settings.init_encoder_from is None:
        return settings
    target = Path(folder) / INITIAL_WEIGHTS
    if settings.continue_training and target.is_file():
        log.info("continuing: the encoder was transferred from %s when this run started (%s); no new transfer",
                 settings.init_encoder_from, target)
        return dataclasses.replace(settings, init_from=target)
    if settings.continue_training and ckpt.newest_checkpoint(folder) is not None:
        log.warning("--init-encoder-from is ignored: this run continues from its checkpoint and started without a "
                    "transferred encoder")
        return dataclasses.replace(settings, init_encoder_from=None)
    if distributed.is_main():
        write_initial_weights(plan, model, settings, target, pipeline, fold)
    distributed.barrier()  # the other processes read the file rank 0 writes
    return dataclasses.replace(settings, init_from=target)


def write_initial_weights(plan: Plan, model: ModelPlan, settings: TrainSettings, target: Path, pipeline: str,
                          fold: int | str) -> TransferReport:
    """Write ``target``: the model's seeded network with the encoder of ``settings.init_encoder_from``; returns the report."""
    source = check_encoder_source(plan, model, settings.init_encoder_from)
    with torch.random.fork_rng(devices=[]):  # the caller's generators are left as they were
        torch.manual_seed(settings.seed)
        network = _network(plan, model)
    report = transfer_2d_encoder(network, source)
    record = {"source": str(settings.init_encoder_from), "file": str(source), "summary": report.summary(),
              "transferred": list(report.transferred), "values": report.values}
    ckpt.save_checkpoint(target, {
        "network": network.state_dict(), "optimizer": None, "lr_schedule": None, "grad_scaler": None, "epoch": 0,
        "rng": None, "history": [], "plan": plan.to_dict(), "pipeline": pipeline, "model": model.name,
        "model_plan": model.to_dict(), "fold": fold, "settings": settings.to_dict(), "encoder_transfer": record})
    log.info("%s starts from %s: its encoder from %s, its decoder initialised with seed %d", model.name, target, source,
             settings.seed)
    return report


def _network(plan: Plan, model: ModelPlan) -> torch.nn.Module:
    return build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                         **model.topology.network_kwargs())


def _planning_hint(path: Path, plan: Plan, model: ModelPlan) -> str:
    """How to plan the 2D model of a liverseg checkpoint so that its encoder fits ``model``'s ahnet ('' if unknown)."""
    try:
        state = ckpt.load_checkpoint(path)
    except LiversegError:
        return ""
    topology: dict[str, Any] = (state.get("model_plan") or {}).get("topology") or {}
    pipeline, name = state.get("pipeline"), state.get("model")
    if not topology or not pipeline or not name:
        return ""
    target = model.topology
    strides = [[1, s[1], s[2]] for s in target.strides]
    patch = list(round_up(topology["patch_size"], divisor_of(strides)))
    change = {"patch_size": patch, "kernel_sizes": [[1, k[1], k[2]] for k in target.kernel_sizes], "strides": strides,
              "features_per_stage": list(target.features_per_stage), "n_conv_per_stage": target.n_conv_per_stage}
    overrides = {"pipelines": {pipeline: {"models": {name: {"topology": change}}}}}
    return (f". The 2D model ({pipeline}/{name}) has {len(topology['features_per_stage'])} stages with features "
            f"{topology['features_per_stage']} and {topology['n_conv_per_stage']} convolution(s) per stage, the ahnet "
            f"({model.name}) {target.num_stages} with {list(target.features_per_stage)} and {target.n_conv_per_stage}: plan "
            f"the 2D model with the ahnet's in-plane topology, liverseg_plan -d {plan.dataset} -p FILE with FILE holding "
            f"{json.dumps(overrides)}, and train it again")
