"""Start an ``ahnet``'s encoder from a 2D model: its kernels gain a z axis of length 1.

The hybrid's encoder (:mod:`liverseg.networks.ahnet`) is a 2D network applied to every slice, with
the same parameter names as our 2D ``unet``'s encoder. A 2D kernel ``(O, I, ky, kx)`` becomes the
in-plane kernel ``(O, I, 1, ky, kx)``; normalisation weights and biases are copied as they are.
After the transfer the hybrid's encoder computes, on every slice, exactly what the 2D encoder
computes on that slice as an image; the decoder keeps its own initialisation.

Accepted sources, as a mapping or as a path to a ``.pt`` file (read with ``weights_only=True``,
so a file cannot run code; nothing is ever downloaded):

- a 2D ``unet`` state dict (``UNet(..., dims=2).state_dict()``; only ``encoder.*`` is used);
- a liverseg training checkpoint of such a model (its ``"network"`` entry);
- an encoder's own state dict (``unet.encoder.state_dict()``, keys ``stages.*``);
- the same from a 3D ``unet`` with ``[1, ky, kx]`` kernels trained on one-slice patches
  (kernels ``(O, I, 1, ky, kx)``, copied as they are);
- any of these saved from a ``DistributedDataParallel`` wrapper (keys prefixed ``module.``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from liverseg.errors import LiversegError
from liverseg.io.torch_files import load_torch_file

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
_DDP_PREFIX = "module."


@dataclass(frozen=True)
class TransferReport:
    """What a transfer did: hybrid tensors that received 2D weights, and what was left alone.

    ``not_transferred``: hybrid encoder tensors the source had no value for (only without
    ``strict``; they keep their initialisation). ``unused``: source tensors not copied (the 2D
    decoder and heads; with ``strict=False`` also encoder tensors the hybrid does not have).
    """

    source: str
    transferred: tuple[str, ...]
    not_transferred: tuple[str, ...]
    unused: tuple[str, ...]
    values: int

    def summary(self) -> str:
        """One line for the log."""
        text = (f"transferred {len(self.transferred)} encoder tensors ({self.values:,} values) from {self.source}; "
                f"{len(self.unused)} source tensors not used (its decoder and heads)")
        if self.not_transferred:
            text += f"; {len(self.not_transferred)} encoder tensors keep their initialisation"
        return text


def transfer_2d_encoder(ahnet: nn.Module, source: Mapping[str, Any] | str | Path, strict: bool = True) -> TransferReport:
    """Copy a 2D model's encoder weights into ``ahnet``'s encoder, adding the z axis to the kernels.

    ``source`` is one of the forms in the module docstring. With ``strict`` every tensor of the
    hybrid's encoder must receive a value and every encoder tensor of the source must have a place;
    otherwise missing ones keep their initialisation and extra ones are ignored (both reported).
    Shapes must match (the 2D model has the hybrid's stages, widths, in-plane kernels and input
    channels), or a :class:`LiversegError` names the tensor and both shapes. Nothing is changed
    unless the whole transfer can be done.
    """
    converted, report = encoder_weights(ahnet, source, strict)
    with torch.no_grad():
        targets = ahnet.state_dict(keep_vars=True)
        for key, value in converted.items():
            targets[key].copy_(value)
    log.info("%s", report.summary())
    return report


def encoder_weights(ahnet: nn.Module, source: Mapping[str, Any] | str | Path,
                    strict: bool = True) -> tuple[dict[str, Tensor], TransferReport]:
    """The values :func:`transfer_2d_encoder` would copy into ``ahnet`` (shaped for it) and its report; nothing is changed.

    The same checks and errors as the transfer, so a run can be checked before it trains (``ahnet``
    may live on the meta device).
    """
    name = str(source) if isinstance(source, (str, Path)) else "the given state dict"
    weights = load_2d_weights(source) if isinstance(source, (str, Path)) else _state_dict_of(source, name)
    own = {key: value for key, value in ahnet.state_dict().items() if key.startswith(ENCODER_PREFIX)}
    if not own:
        raise LiversegError(f"the target network ({type(ahnet).__name__}) has no encoder parameters "
                            f"('{ENCODER_PREFIX}*'); transfer 2D weights into an ahnet")
    encoder, unused = _encoder_part(weights)
    if not encoder:
        raise LiversegError(f"{name}: holds no encoder tensors (keys '{ENCODER_PREFIX}*' or 'stages.*'); give the state "
                            "dict or checkpoint of a 2D liverseg unet")
    missing = sorted(set(own) - set(encoder))
    extra = sorted(set(encoder) - set(own))
    if strict and (missing or extra):
        raise LiversegError(_stage_mismatch(name, missing, extra))
    converted = {key: _with_z_axis(key, encoder[key], own[key], name) for key in own if key in encoder}
    report = TransferReport(name, tuple(converted), tuple(missing), tuple(sorted(unused + extra)),
                            sum(v.numel() for v in converted.values()))
    return converted, report


def load_2d_weights(path: str | Path) -> dict[str, Tensor]:
    """The network state dict stored in ``path`` (a state dict or a liverseg checkpoint), on the CPU."""
    loaded = load_torch_file(path, "no such weight file; give the path of a 2D model's state dict or checkpoint (.pt)",
                             "cannot be read as torch weights; give a file written by torch.save(model.state_dict(), "
                             "...) or a liverseg checkpoint")
    return _state_dict_of(loaded, str(path))


def _state_dict_of(loaded: Any, name: str) -> dict[str, Tensor]:
    """The tensors of a state dict, or of a checkpoint's ``"network"`` entry, without a DDP prefix."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("network"), Mapping):
        loaded = loaded["network"]
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise LiversegError(f"{name}: not a state dict (a mapping of parameter names to tensors) nor a checkpoint "
                            "with a 'network' state dict; save the 2D model with torch.save(model.state_dict(), path)")
    return {(key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key): value for key, value in loaded.items()}


def _encoder_part(weights: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Encoder tensors under the hybrid's names (``encoder.*``), and the names of all other tensors."""
    if any(key.startswith(ENCODER_PREFIX) for key in weights):
        encoder = {key: value for key, value in weights.items() if key.startswith(ENCODER_PREFIX)}
        return encoder, sorted(key for key in weights if not key.startswith(ENCODER_PREFIX))
    if all(key.startswith("stages.") for key in weights):  # an encoder's own state dict
        return {ENCODER_PREFIX + key: value for key, value in weights.items()}, []
    return {}, sorted(weights)


def _with_z_axis(key: str, value: Tensor, target: Tensor, source: str) -> Tensor:
    """``value`` shaped like ``target``: a 2D kernel gains a z axis of length 1, everything else must match."""
    own, given = tuple(target.shape), tuple(value.shape)
    if len(own) == 5 and own[2] == 1 and len(given) == 4:
        value = value.unsqueeze(2)
    if tuple(value.shape) != own:
        expected = f"{own} (a 2D kernel {own[:2] + own[3:]})" if len(own) == 5 and own[2] == 1 else f"{own}"
        raise LiversegError(
            f"{source}: tensor {key} has shape {given} but the hybrid's encoder needs {expected}; the 2D model must "
            "have the same stages, features per stage, in-plane kernel sizes and input channels as the ahnet's plan")
    return value.detach().to(dtype=target.dtype, device=target.device)


def _stage_mismatch(source: str, missing: list[str], extra: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} encoder tensor(s) of the ahnet are not in it (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} encoder tensor(s) of it have no place in the ahnet (e.g. {extra[0]})")
    return (f"{source}: its encoder does not have the ahnet's layout: {'; '.join(parts)}; the 2D model needs the same "
            "number of stages and convolutions per stage, or pass strict=False to transfer the matching part only")
