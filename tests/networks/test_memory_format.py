"""The layout networks run in: channels last for 3D convolutions on the CPU, the same results either way."""
from __future__ import annotations

import torch

from liverseg.networks import build_network
from liverseg.networks.memory_format import in_preferred_format, preferred_memory_format

TOPOLOGY = {"kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            "features_per_stage": [8, 16, 32]}


def test_3d_networks_use_channels_last_on_the_cpu_only_and_2d_networks_never():
    unet = build_network("unet", 1, 3, **TOPOLOGY)
    assert preferred_memory_format(unet, "cpu") == torch.channels_last_3d
    assert preferred_memory_format(unet, torch.device("cuda")) == torch.contiguous_format  # not measured on GPUs
    slices = build_network("unet_2d", 1, 3, kernel_sizes=[[1, 3, 3]] * 3, strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2]],
                           features_per_stage=[8, 16, 32])
    assert preferred_memory_format(slices, "cpu") == torch.contiguous_format


def test_channels_last_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    default = build_network("unet", 1, 3, **TOPOLOGY, deep_supervision=False)
    fast = build_network("unet", 1, 3, **TOPOLOGY, deep_supervision=False)
    fast.load_state_dict(default.state_dict())
    memory_format = in_preferred_format(fast, "cpu")
    assert fast.encoder.stages[0].blocks[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 8, 32, 32)
    out_default, out_fast = default(x), fast(x.contiguous(memory_format=memory_format))
    torch.testing.assert_close(out_fast, out_default, rtol=1e-4, atol=1e-4)
    out_default.square().mean().backward()
    out_fast.square().mean().backward()
    for (name, p), q in zip(default.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
