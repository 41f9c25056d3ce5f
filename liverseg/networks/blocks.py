"""Convolution blocks that know the size of what they produce.

The conv, norm and nonlinearity classes are arguments, so one code path builds 2D and 3D networks
(and a hybrid that mixes them). Every block answers, for an input spatial size, which feature maps
it materialises (:meth:`ConvNormAct.feature_maps`) and how large its output is
(:meth:`ConvNormAct.output_size`): the planner sums these to estimate activation memory without
running a forward pass.

A feature map is reported as ``(channels, spatial_size)``, spatial axes in ``(z, y, x)`` order
(``(y, x)`` in 2D), without the batch axis.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

FeatureMap = tuple[int, tuple[int, ...]]


def conv_output_size(input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int]) -> tuple[int, ...]:
    """Spatial size after a convolution (no dilation), per axis, as torch computes it."""
    return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(input_size, kernel_size, stride, padding))


def feature_map_elements(maps: Sequence[FeatureMap]) -> int:
    """Number of values in the given feature maps for one sample (channels times voxels, summed)."""
    return sum(channels * math.prod(size) for channels, size in maps)


def _as_tuple(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"{what} {list(values)} has {len(values)} entries; expected {dims} (one per spatial axis)")
    return values


def _spatial_dims(conv_op: type[nn.Module]) -> int:
    for base, dims in ((nn.Conv3d, 3), (nn.Conv2d, 2), (nn.Conv1d, 1)):
        if isinstance(conv_op, type) and issubclass(conv_op, base):
            return dims
    raise ValueError(f"conv_op must be a torch convolution class (Conv1d/2d/3d or a subclass), got {conv_op!r}")


def _keeps_separate_output(nonlin: nn.Module | None) -> bool:
    """Whether a nonlinearity allocates a new tensor (instead of overwriting its input in place)."""
    if nonlin is None or isinstance(nonlin, nn.Identity):
        return False
    return not getattr(nonlin, "inplace", False)


class ConvNormAct(nn.Module):
    """One convolution followed by an optional normalisation and an optional nonlinearity.

    The padding keeps the spatial size for stride 1 (odd kernels only), so a stride ``s`` divides
    the size by ``s`` exactly when the size is divisible by ``s``. The convolution has no bias
    when a normalisation follows (the norm's own shift makes it redundant).
    """

    def __init__(
        self,
        conv_op: type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        norm_op: type[nn.Module] | None = None,
        norm_kwargs: dict[str, Any] | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        dims = _spatial_dims(conv_op)
        self.kernel_size = _as_tuple(kernel_size, dims, "kernel size")
        self.stride = _as_tuple(stride, dims, "stride")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel size {list(self.kernel_size)} must hold odd positive integers")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride {list(self.stride)} must hold positive integers")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.padding = tuple(k // 2 for k in self.kernel_size)
        self.conv = conv_op(in_channels, out_channels, self.kernel_size, self.stride, self.padding, bias=norm_op is None)
        self.norm = norm_op(out_channels, **(norm_kwargs or {})) if norm_op is not None else None
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.nonlin is not None:
            x = self.nonlin(x)
        return x

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size of this block's output for an input of spatial size ``input_size``."""
        return conv_output_size(input_size, self.kernel_size, self.stride, self.padding)

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        """The distinct tensors this block allocates for an input of ``input_size``.

        These are the tensors autograd keeps for the backward pass: the convolution output (which
        the norm needs), the norm output (which an in-place nonlinearity overwrites and keeps) and
        the nonlinearity output only when it is not computed in place.
        """
        shape = (self.out_channels, self.output_size(input_size))
        count = 1 + (self.norm is not None) + _keeps_separate_output(self.nonlin)
        return [shape] * count


class StackedConvBlocks(nn.Module):
    """``n`` :class:`ConvNormAct` blocks in a row; only the first one has the stride.

    This is one resolution stage of a U-Net: the strided first convolution downsamples (nnU-Net
    style, no pooling layers), the others refine at the new resolution.
    """

    def __init__(
        self,
        n_convs: int,
        conv_op: type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        first_stride: int | Sequence[int] = 1,
        norm_op: type[nn.Module] | None = None,
        norm_kwargs: dict[str, Any] | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"a stage needs at least one convolution, got n_convs={n_convs}")
        common = dict(norm_op=norm_op, norm_kwargs=norm_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        blocks = [ConvNormAct(conv_op, in_channels, out_channels, kernel_size, first_stride, **common)]
        blocks += [ConvNormAct(conv_op, out_channels, out_channels, kernel_size, 1, **common) for _ in range(n_convs - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = blocks[0].kernel_size
        self.stride = blocks[0].stride

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size of this stage's output for an input of spatial size ``input_size``."""
        size = tuple(input_size)
        for block in self.blocks:
            size = block.output_size(size)
        return size

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        """The tensors all blocks of this stage allocate, in order (see :meth:`ConvNormAct.feature_maps`)."""
        maps: list[FeatureMap] = []
        size = tuple(input_size)
        for block in self.blocks:
            maps += block.feature_maps(size)
            size = block.output_size(size)
        return maps
