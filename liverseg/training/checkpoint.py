"""Training checkpoints: everything a run needs to continue exactly, written so a kill cannot corrupt one.

A checkpoint is a dictionary saved with ``torch.save``:

- ``format`` (:data:`CHECKPOINT_FORMAT`) and ``version``: what the file is;
- ``network``, ``optimizer``, ``lr_schedule`` and ``grad_scaler`` (None without mixed precision):
  the state dictionaries;
- ``epoch``: epochs completed; ``ema_dice`` and ``best_ema_dice``: the exponential moving average
  of the validation pseudo-Dice now and at its best (None before any validation);
- ``rng``: the states of Python's ``random``, numpy's global generator, torch's CPU generator and
  every CUDA generator, so the next epoch draws the same patches and augmentations as an
  uninterrupted run would;
- ``processes`` and ``rng_ranks`` (DDP runs): the number of processes and every process's
  ``rng`` states, so a run continued with as many processes continues identically
  (:mod:`liverseg.training.distributed`); ``early_stopping``: whether and why the run stopped early;
- ``history``: the per-epoch records (:mod:`liverseg.training.history`);
- ``plan`` (the whole plans.json content), ``pipeline``, ``model``, ``fold`` and ``settings``: what
  was trained, so a checkpoint explains itself without its folder.

Everything is tensors or plain Python values, so :func:`load_checkpoint` reads files with
``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code when loaded. Files
are written through :func:`liverseg.io.atomic.atomic_output` (a temporary file renamed over the
old one), so a process killed while saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output
from liverseg.io.torch_files import load_torch_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "liverseg-checkpoint"
CHECKPOINT_VERSION = 1
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"
_REQUIRED = ("network", "optimizer", "lr_schedule", "epoch", "rng", "history", "plan", "model", "settings")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> float:
    """Write ``state`` (the keys of the module docstring) to ``path`` atomically; returns the seconds it took."""
    start = time.perf_counter()
    with atomic_output(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, tmp)
    return time.perf_counter() - start


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint (tensors on the CPU); a LiversegError says what is wrong with a bad file."""
    path = Path(path)
    state = load_torch_file(path, "no such checkpoint",
                            "cannot be read as a checkpoint; the file is damaged or not a liverseg checkpoint: delete "
                            "it (a run continues from the other checkpoint of its folder) or start the run again")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise LiversegError(f"{path}: not a liverseg checkpoint (no '{CHECKPOINT_FORMAT}' marker); liverseg can only "
                            "continue from or initialise with checkpoints written by liverseg_train")
    if state.get("version") != CHECKPOINT_VERSION:
        raise LiversegError(f"{path}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}; it was "
                            "written by another liverseg version")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise LiversegError(f"{path}: checkpoint lacks {', '.join(missing)}; the file is incomplete, delete it")
    return state


def newest_checkpoint(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint of ``folder`` with the most completed epochs (latest or best) and its content, or None.

    With ``save_every > 1`` the best checkpoint can be newer than the latest one; both hold the
    whole training state, so continuing from the newer loses fewer epochs.
    """
    found = []
    for name in (LATEST, BEST):
        path = Path(folder) / name
        if path.is_file():
            found.append((path, load_checkpoint(path)))
    if not found:
        return None
    return max(found, key=lambda item: item[1]["epoch"])


def load_network_weights(network: nn.Module, checkpoint: Mapping[str, Any], source: str | Path) -> None:
    """Load a checkpoint's network weights into ``network``; a LiversegError when the architectures differ."""
    weights = checkpoint["network"]
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        details = []
        if missing or unexpected:
            details.append(f"{len(missing)} parameter(s) missing and {len(unexpected)} unexpected"
                           f" (e.g. {(missing + unexpected)[0]})")
        if shapes:
            k = shapes[0]
            details.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(weights[k].shape)} in the checkpoint, "
                           f"{tuple(own[k].shape)} here)")
        raise LiversegError(f"{source}: its network does not match this model's architecture ({'; '.join(details)}); "
                            "the plan's topology (stages, features, kernels, classes, channels) must be the same")
    network.load_state_dict(weights)


def architectures_match(network: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Whether the checkpoint's network weights fit ``network`` (same parameter names and shapes)."""
    own, weights = network.state_dict(), checkpoint["network"]
    return set(own) == set(weights) and all(tuple(own[k].shape) == tuple(weights[k].shape) for k in own)


def rng_states() -> dict[str, Any]:
    """The states of every random generator a training run draws from, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Put every random generator back into the state :func:`rng_states` recorded."""
    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("the checkpoint has the random states of %d GPU(s), this machine has %d: GPU randomness differs",
                        len(cuda), torch.cuda.device_count())
        for index, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
