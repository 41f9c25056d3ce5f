"""How much memory training a topology takes: the number patch size and batch size must obey.

The network reports it: every block of a liverseg network knows which feature maps it keeps for
the backward pass for a given input size, and :meth:`liverseg.networks.unet.UNet.activation_memory_bytes`
sums them (the network is built on the meta device, so no weights are allocated). Training memory
is then::

    bytes = batch x count x MIXED_PRECISION_PEAK + parameters x 4 bytes x PARAMETER_COPIES + RESERVED

with ``count`` the activation bytes of one sample counted at 4 bytes per element.
``MIXED_PRECISION_PEAK`` = 0.7 is the measured peak of a mixed-precision training step (bf16 or
fp16 autocast: what the trainer runs on a GPU and on CPUs with bf16 support) relative to that
count. It was calibrated on this CPU against the peak resident memory (VmHWM) of a training step
of the real ``unet`` under bf16 autocast, batch 2: 0.63 and 0.65 of the count for planned 40x224x224
and 32x128x128 patches with 32-320 features, 0.69 for a tiny 8-64 feature network on 16x64x64
where fixed costs weigh more (``tests/planning/test_memory.py`` repeats the measurement). Plain
float32 training peaks at about 1.25x the count (``tests/networks/test_unet.py``): twice as much, so give half the real
memory as the budget when training in float32. ``PARAMETER_COPIES`` = 4: weights, gradients and
two optimiser buffers (SGD momentum, or Adam's two moments). ``RESERVED`` = 0.5 GiB stands for
the CUDA context, cuDNN workspaces and allocator slack.

Anchor: nnU-Net's default network (32-320 features, 6 stages) on 40x224x224 patches with batch 2,
what nnU-Net plans for 8 GB on thick-slice liver MRI, comes out at 6.6 GiB. GB means GiB
(1024**3 bytes) throughout the planner, as GPU memory is counted.

A network registered without ``activation_memory_bytes`` is estimated as the ``unet`` of the same
topology.
"""
from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING

import torch

from liverseg.networks import build_network

if TYPE_CHECKING:
    from liverseg.planning.plans import NetworkTopology

log = logging.getLogger(__name__)

GIB = 1024**3
MIXED_PRECISION_PEAK = 0.7
PARAMETER_COPIES = 4
RESERVED_BYTES = 0.5 * GIB


@functools.lru_cache(maxsize=256)
def _ghost(network: str, in_channels: int, num_classes: int, kwargs_key: str) -> torch.nn.Module:
    """The network built on the meta device (shapes only), cached per architecture."""
    kwargs = json.loads(kwargs_key)
    with torch.device("meta"):
        net = build_network(network, in_channels, num_classes, **kwargs)
    if not hasattr(net, "activation_memory_bytes"):
        log.info("network '%s' does not report its activation memory; estimating it as the unet of the same topology", network)
        with torch.device("meta"):
            net = build_network("unet", in_channels, num_classes, **kwargs)
    return net


def _network(topology: "NetworkTopology", in_channels: int, num_classes: int) -> torch.nn.Module:
    return _ghost(topology.network, in_channels, num_classes, json.dumps(topology.network_kwargs(), sort_keys=True))


def activation_count_bytes(topology: "NetworkTopology", num_input_channels: int = 1, num_classes: int = 3) -> int:
    """Bytes of the feature maps one training sample keeps for backward, at 4 bytes per element."""
    return int(_network(topology, num_input_channels, num_classes).activation_memory_bytes(topology.patch_size, 1, 4))


def parameter_count(topology: "NetworkTopology", num_input_channels: int = 1, num_classes: int = 3) -> int:
    """Number of trainable parameters of the topology's network."""
    return int(sum(p.numel() for p in _network(topology, num_input_channels, num_classes).parameters()))


def memory_per_sample(topology: "NetworkTopology", num_input_channels: int = 1, num_classes: int = 3) -> float:
    """Bytes one more sample in the batch adds to a mixed-precision training step."""
    return activation_count_bytes(topology, num_input_channels, num_classes) * MIXED_PRECISION_PEAK


def estimate_training_memory(topology: "NetworkTopology", batch_size: int, num_input_channels: int = 1, num_classes: int = 3) -> float:
    """Estimated peak memory in bytes of one mixed-precision training step with ``batch_size``."""
    fixed = parameter_count(topology, num_input_channels, num_classes) * 4 * PARAMETER_COPIES + RESERVED_BYTES
    return float(batch_size * memory_per_sample(topology, num_input_channels, num_classes) + fixed)
