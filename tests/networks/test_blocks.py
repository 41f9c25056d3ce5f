"""Blocks build 2D and 3D layers from one code path and report the feature maps they really produce."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from liverseg.networks.blocks import ConvNormAct, StackedConvBlocks, conv_output_size, feature_map_elements


def produced_maps(module: nn.Module, x: torch.Tensor) -> list[tuple[int, tuple[int, ...]]]:
    """(channels, spatial size) of each distinct tensor the module's layers output, in forward order.

    Found with forward hooks on every leaf layer; an in-place layer returns a tensor whose storage
    was already seen, so it does not count twice.
    """
    seen: dict[int, tuple[int, tuple[int, ...]]] = {}

    def hook(_module, _inputs, output):
        seen.setdefault(output.untyped_storage().data_ptr(), (output.shape[1], tuple(output.shape[2:])))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        module(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


VARIANTS = {
    "norm+inplace": dict(norm_op=True, nonlin_kwargs={"inplace": True}, expected_maps=2),
    "norm+separate": dict(norm_op=True, nonlin_kwargs={"inplace": False}, expected_maps=3),
    "inplace only": dict(norm_op=False, nonlin_kwargs={"inplace": True}, expected_maps=1),
    "separate only": dict(norm_op=False, nonlin_kwargs={"inplace": False}, expected_maps=2),
}
OPS = {2: (nn.Conv2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.InstanceNorm3d)}


def make_block(dims, variant, kernel, stride, in_channels=2, out_channels=5):
    conv_op, norm_op = OPS[dims]
    spec = VARIANTS[variant]
    return ConvNormAct(conv_op, in_channels, out_channels, kernel, stride,
                       norm_op=norm_op if spec["norm_op"] else None, norm_kwargs={"affine": True},
                       nonlin=nn.LeakyReLU, nonlin_kwargs=spec["nonlin_kwargs"])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dims,kernel,stride,size", [
    (3, (1, 3, 3), (1, 2, 2), (5, 12, 9)),
    (3, (3, 3, 3), (2, 2, 2), (7, 8, 11)),
    (3, (3, 5, 1), (1, 1, 3), (4, 6, 10)),
    (2, (3, 3), (2, 1), (9, 6)),
])
def test_reported_feature_maps_equal_the_real_ones(variant, dims, kernel, stride, size):
    block = make_block(dims, variant, kernel, stride)
    x = torch.randn(2, 2, *size)
    # "Same" padding with odd kernels: every axis shrinks to ceil(size / stride).
    expected_size = tuple(math.ceil(s / st) for s, st in zip(size, stride))
    assert block.output_size(size) == expected_size
    assert tuple(block(x).shape) == (2, 5, *expected_size)
    reported = block.feature_maps(size)
    assert reported == produced_maps(block, x)
    assert reported == [(5, expected_size)] * VARIANTS[variant]["expected_maps"]


def test_stage_strides_only_its_first_convolution_and_reports_every_block():
    stage = StackedConvBlocks(3, nn.Conv3d, 1, 4, (1, 3, 3), (1, 2, 2), nn.InstanceNorm3d, {"affine": True},
                              nn.LeakyReLU, {"inplace": True})
    strides = [block.conv.stride for block in stage.blocks]
    assert strides == [(1, 2, 2), (1, 1, 1), (1, 1, 1)]
    size = (3, 10, 14)
    x = torch.randn(1, 1, *size)
    assert stage.output_size(size) == (3, 5, 7)
    assert tuple(stage(x).shape) == (1, 4, 3, 5, 7)
    assert stage.feature_maps(size) == produced_maps(stage, x) == [(4, (3, 5, 7))] * 6
    assert feature_map_elements(stage.feature_maps(size)) == 6 * 4 * 3 * 5 * 7


def test_the_conv_has_a_bias_only_without_a_norm():
    assert make_block(3, "norm+inplace", 3, 1).conv.bias is None
    assert make_block(3, "inplace only", 3, 1).conv.bias is not None


def test_conv_output_size_agrees_with_torch_for_any_padding():
    for size, kernel, stride, padding in [((9, 4), (3, 1), (2, 1), (0, 0)), ((10, 7), (5, 3), (3, 2), (2, 1))]:
        conv = nn.Conv2d(1, 1, kernel, stride, padding)
        assert conv_output_size(size, kernel, stride, padding) == tuple(conv(torch.zeros(1, 1, *size)).shape[2:])


@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel_size=(2, 3, 3)), "odd"),
    (dict(kernel_size=(3, 3)), "3 \\(one per spatial axis\\)"),
    (dict(stride=(1, 0, 1)), "positive"),
    (dict(out_channels=0), "positive"),
])
def test_bad_block_arguments_are_rejected(kwargs, message):
    args = dict(conv_op=nn.Conv3d, in_channels=1, out_channels=2, kernel_size=3, stride=1) | kwargs
    with pytest.raises(ValueError, match=message):
        ConvNormAct(**args)


def test_a_stage_needs_a_convolution():
    with pytest.raises(ValueError, match="at least one"):
        StackedConvBlocks(0, nn.Conv3d, 1, 2, 3)


@pytest.mark.parametrize("op", [nn.Linear, nn.ConvTranspose3d])
def test_only_plain_convolutions_are_accepted(op):
    # A transposed convolution would make output_size wrong: it upsamples.
    with pytest.raises(ValueError, match="convolution class"):
        ConvNormAct(op, 1, 2, 3)
