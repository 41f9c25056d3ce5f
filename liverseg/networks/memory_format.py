"""The tensor layout a network runs fastest in on the device at hand.

On a CPU, oneDNN convolves 3D feature maps fastest with channels last (``channels_last_3d``:
each voxel's channels side by side in memory): the fast preset's liver model trains 10% faster
per step on one thread and 18% faster on two than in PyTorch's default layout, the tumour model
7% (``benchmarks/training_speed.py``), because the full-resolution layers have only 8 channels,
which the default layout handles poorly. Networks with 2D convolutions (``unet_2d`` folds slices
into the batch) keep the default layout, and so does every network on a GPU, where this has not
been measured. The layout changes only how tensors are stored: results are the same up to
floating-point rounding.
"""
from __future__ import annotations

import torch
from torch import nn

_CONVOLUTIONS_3D = (nn.Conv3d, nn.ConvTranspose3d)
_CONVOLUTIONS_2D = (nn.Conv2d, nn.ConvTranspose2d)


def preferred_memory_format(network: nn.Module, device: torch.device | str) -> torch.memory_format:
    """``channels_last_3d`` for a network of 3D convolutions on the CPU, PyTorch's default layout otherwise."""
    if torch.device(device).type != "cpu":
        return torch.contiguous_format
    modules = list(network.modules())
    if any(isinstance(m, _CONVOLUTIONS_2D) for m in modules) or not any(isinstance(m, _CONVOLUTIONS_3D) for m in modules):
        return torch.contiguous_format
    return torch.channels_last_3d


def in_preferred_format(network: nn.Module, device: torch.device | str) -> torch.memory_format:
    """Store ``network``'s weights in :func:`preferred_memory_format` (in place); returns the format for its inputs."""
    memory_format = preferred_memory_format(network, device)
    if memory_format is not torch.contiguous_format:
        network.to(memory_format=memory_format)
    return memory_format
